"""The model adapter over loopback, through the real `openai` client, against the stub.

The stub records every request, so these tests check what actually went over the
wire for each structured-output mode, and how each failure is classified.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
import requests

from aifixer import fixer
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.llm import Model, grammar_subset
from aifixer.settings import Settings
from aifixer_sandbox.model_stub import MODEL_ID, make_app
from aifixer_sandbox.serve import serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

API_KEY = "sk-test-Zq8Xw2Lk5Vb9Nm3Rt7Yp1Hs4"
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "root_cause", "failure_class", "fields"],
    "properties": {
        "summary": {"type": "string", "maxLength": 120},
        "root_cause": {"type": "string"},
        "failure_class": {"type": "string", "enum": ["ImagePull", "OOMKilled"]},
        "fields": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
    },
}
EVIDENCE = "Workload: Deployment shop/report-api\nPods:\n- report-api-1: OOMKilled, restarts 4"


@pytest.fixture
def stub() -> Iterator[Callable[..., str]]:
    """stub(script=(), **make_app kwargs) -> base URL of a fresh stub model server."""
    stops = []

    def start(script=(), **kwargs) -> str:
        url, stop = serve_in_thread(make_app(script, **kwargs), "model-stub")
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def model(url: str, mode: str = "json_object_schema", timeout: float = 5.0) -> Model:
    return Model(
        Settings(
            model_base_url=f"{url}/v1",
            model_name="qwen2.5-coder-1.5b",
            model_api_key=API_KEY,
            model_structured_output=mode,
            model_timeout_s=timeout,
            _env_file=None,
        )
    )


def recorded(url: str) -> list[dict]:
    return requests.get(f"{url}/stub/requests", timeout=5).json()


def ask(m: Model) -> dict:
    answer, _ = m.chat_json("You diagnose.", EVIDENCE, SCHEMA, name="diagnosis", max_tokens=200)
    return answer


# -- what each mode sends ------------------------------------------------------------------


def test_json_schema_mode_sends_a_strict_named_schema_without_length_bounds(stub):
    url = stub()
    answer = ask(model(url, "json_schema"))
    sent = recorded(url)[0]
    fmt = sent["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "diagnosis" and fmt["json_schema"]["strict"] is True
    wire = fmt["json_schema"]["schema"]
    assert wire["properties"]["failure_class"]["enum"] == ["ImagePull", "OOMKilled"]
    assert "maxLength" not in json.dumps(wire) and "maxItems" not in json.dumps(wire)
    assert sent["model"] == "qwen2.5-coder-1.5b" and sent["temperature"] == 0
    assert sent["max_tokens"] == 200
    assert answer["failure_class"] == "OOMKilled"  # the stub read it from the evidence


def test_json_object_schema_mode_sends_a_grammar_ready_schema_as_llama_cpp_wants(stub):
    url = stub()
    ask(model(url, "json_object_schema"))
    fmt = recorded(url)[0]["response_format"]
    assert fmt["type"] == "json_object"
    wire = fmt["schema"]
    # Structure and enums go as they are; length bounds (one grammar rule per
    # character in llama.cpp) stay behind and are enforced on the reply.
    assert wire["properties"]["failure_class"]["enum"] == ["ImagePull", "OOMKilled"]
    assert wire["required"] == SCHEMA["required"]
    assert "maxLength" not in json.dumps(wire) and "minLength" not in json.dumps(wire)


def test_grammar_subset_rewrites_regex_escapes_llama_cpp_cannot_parse():
    schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Mi|Gi)?$", "maxLength": 16}
    assert grammar_subset(schema) == {"type": "string", "pattern": "^[0-9]+([.][0-9]+)?(Mi|Gi)?$"}


@pytest.mark.parametrize(
    "mode, response_format",
    [
        ("json_object", {"type": "json_object"}),
        ("none", None),
    ],
)
def test_modes_without_a_schema_on_the_wire_put_it_in_the_prompt(stub, mode, response_format):
    url = stub()
    answer = ask(model(url, mode))
    sent = recorded(url)[0]
    assert sent.get("response_format") == response_format
    system = sent["messages"][0]
    assert (
        system["role"] == "system"
        and json.dumps(SCHEMA, separators=(",", ":")) in system["content"]
    )
    assert sent["messages"][1] == {"role": "user", "content": EVIDENCE}
    assert answer["summary"].startswith("stub:")


def test_usage_names_the_model_that_answered_and_adds_up(stub):
    url = stub()
    m = model(url)
    _, first = m.chat_json("s", EVIDENCE, SCHEMA, name="diagnosis", max_tokens=100)
    _, second = m.chat_json("s", EVIDENCE, SCHEMA, name="diagnosis", max_tokens=100)
    assert first.model == MODEL_ID  # the server's own id: the stub says it is one
    assert first.completion_tokens > 0 and first.seconds > 0
    assert m.total.completion_tokens == first.completion_tokens + second.completion_tokens


def test_a_fenced_reply_is_extracted(stub):
    url = stub(["fenced"])
    assert ask(model(url))["failure_class"] == "OOMKilled"


def test_chat_text_returns_the_text(stub):
    url = stub()
    text, usage = model(url).chat_text("Speak.", "Workload: Deployment shop/report-api", 80)
    assert "report-api" in text and usage.model == MODEL_ID
    assert "response_format" not in recorded(url)[0]


def test_models_endpoint_lists_the_stub(stub):
    url = stub()
    ids = [m["id"] for m in requests.get(f"{url}/v1/models", timeout=5).json()["data"]]
    assert ids == [MODEL_ID]


# -- failures, classified -----------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["not_json", "invalid", "http_400"])
def test_unusable_replies_and_client_errors_are_permanent(stub, behaviour):
    url = stub([behaviour])
    with pytest.raises(PermanentError) as err:
        ask(model(url))
    assert err.value.system == "model"
    assert len(recorded(url)) == 1  # no retry underneath


@pytest.mark.parametrize("behaviour, status", [("http_500", 500), ("http_429", 429)])
def test_server_errors_and_rate_limits_are_transient_and_not_retried_by_the_sdk(
    stub, behaviour, status
):
    url = stub([behaviour, behaviour, behaviour])
    with pytest.raises(TransientError) as err:
        ask(model(url))
    assert err.value.status == status
    assert len(recorded(url)) == 1
    if status == 429:
        assert err.value.retry_after == 1.0


def test_a_reply_slower_than_the_timeout_is_transient(stub):
    url = stub(["slow"], slow_s=3.0)
    with pytest.raises(TransientError) as err:
        ask(model(url, timeout=0.5))
    assert "Timeout" in err.value.message


def test_an_unreachable_endpoint_is_transient(stub):
    url = stub()
    dead = url.rsplit(":", 1)[0] + ":9"  # discard port on loopback: nothing listens
    with pytest.raises(TransientError):
        ask(model(dead, timeout=2.0))


def test_the_api_key_never_appears_in_logs(stub, caplog):
    caplog.set_level(logging.DEBUG)
    url = stub(["answer", "http_500", "not_json", "http_400"])
    m = model(url)
    ask(m)
    for _ in range(3):
        with pytest.raises((TransientError, PermanentError)) as err:
            ask(m)
        assert API_KEY not in str(err.value)
    assert "model stub answered diagnosis" in caplog.text  # the adapter does log
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(m.__dict__.get("settings", ""))


# -- the fixer through the adapter ----------------------------------------------------------


@pytest.fixture
def two_images(monkeypatch):
    """A second candidate beside the restore (an older tag): the model has a choice to make,
    so it is asked (with one candidate and nothing to tune, hybrid does not ask it)."""
    from aifixer import manifests, playbooks
    from aifixer.models import FieldChange, FixProposal
    from tests.unit.test_fixer import BAD_IMAGE, IMAGE, deployment

    older = manifests.clean(deployment())
    manifests.set_path(older, IMAGE, "web/storefront:3.0.8")
    other = FixProposal(
        source="playbook",
        strategy="older-image",
        rationale="An older tag.",
        manifest=older,
        changes=[FieldChange(path=IMAGE, before=BAD_IMAGE, after="web/storefront:3.0.8")],
    )
    real = playbooks.candidates
    monkeypatch.setattr(playbooks, "candidates", lambda *a: [*real(*a), other])


@pytest.mark.parametrize(
    "behaviour, why",
    [
        ("hostile_name", "not usable"),  # outside the schema's paths: never parsed into a fix
        ("hostile_privileged", "not usable"),
        ("hostile_host_path", "not usable"),
        ("extra_edits", "not usable"),
        ("not_json", "not usable"),
        ("hostile_registry", "is expected to be empty"),  # an image is not the model's to tune
    ],
)
def test_hostile_model_replies_never_become_the_proposal(stub, two_images, behaviour, why):
    from tests.unit.test_fixer import (
        GOOD_IMAGE,
        IMAGE,
        changed,
        diagnosis,
        make_evidence,
        make_incident,
    )

    url = stub([behaviour])
    s = Settings(
        model_base_url=f"{url}/v1",
        model_api_key=API_KEY,
        fix_strategy="hybrid",
        model_structured_output="json_object_schema",
        model_timeout_s=5,
        _env_file=None,
    )
    proposal, rejections = fixer.propose(Model(s), make_incident(), make_evidence(), diagnosis(), s)
    assert proposal is not None and proposal.source == "playbook"
    assert changed(proposal) == {IMAGE: GOOD_IMAGE}
    assert len(rejections) == 1 and rejections[0].source == "model"
    assert why in " ".join(rejections[0].reasons)
    assert recorded(url)[0]["response_format"]["schema"]["properties"]["choice"]


def test_model_strategy_against_the_stub_reverts_the_changed_field(stub):
    from tests.unit.test_fixer import (
        GOOD_IMAGE,
        IMAGE,
        changed,
        diagnosis,
        make_evidence,
        make_incident,
    )

    url = stub()
    s = Settings(
        model_base_url=f"{url}/v1",
        fix_strategy="model",
        model_timeout_s=5,
        model_structured_output="json_schema",
        _env_file=None,
    )
    proposal, rejections = fixer.propose(Model(s), make_incident(), make_evidence(), diagnosis(), s)
    assert rejections == []
    assert proposal is not None and proposal.source == "model"
    assert changed(proposal) == {IMAGE: GOOD_IMAGE}
