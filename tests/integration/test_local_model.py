"""The embedded model for real: the GGUF assembled from its packages, llama.cpp's server
on loopback, the farm's own model adapter against it, and one scenario end to end.

The model file is assembled once into the ordinary cache (later runs only check its
stamp) and one server serves every test here, as it serves every scenario of the demo.
Answers take 9–25 s on two cores, so every wait is bounded generously.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from aifixer import localmodel
from aifixer.adapters.llm import Model
from aifixer.settings import Settings
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.harness import FarmRun
from aifixer_sandbox.scenario import bundled_dir

pytestmark = [pytest.mark.integration, pytest.mark.model]

SCENARIOS = bundled_dir()
COMPLETIONS = "POST /v1/chat/completions"

OOM_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["failure_class", "field", "memory_limit_mib"],
    "properties": {
        "failure_class": {"type": "string", "enum": ["OOMKilled", "ImagePull", "CommandNotFound"]},
        "field": {"type": "string", "enum": ["resources.limits.memory", "image", "command"]},
        "memory_limit_mib": {"type": "integer", "minimum": 1, "maximum": 4096},
    },
}


@pytest.fixture(scope="module")
def server() -> localmodel.LocalModelServer:
    """This process's one model server (stopped at exit, like the demo's)."""
    return localmodel.shared_server()


def _completions_logged(server: localmodel.LocalModelServer) -> int:
    return server.log_path.read_text(errors="replace").count(COMPLETIONS)


@pytest.mark.timeout(600)  # the first run assembles 1.1 GB from the part packages
def test_server_is_up_with_the_verified_model(server):
    assert server.running()
    assert server.model_path.stat().st_size == localmodel.QWEN_CODER.size
    assert 0 < server.cold_start_s < localmodel.READY_TIMEOUT_S
    assert server.rss_bytes() > 500 * 2**20  # the weights are loaded


@pytest.mark.timeout(300)
def test_model_adapter_gets_a_schema_valid_answer(server):
    model = Model(
        Settings(
            _env_file=None,
            model_base_url=server.base_url,
            model_name=localmodel.MODEL_NAME,
            model_structured_output=localmodel.STRUCTURED_OUTPUT,
            model_timeout_s=120,
        )
    )
    answer, usage = model.chat_json(
        "You diagnose failing Kubernetes Deployments. Answer in JSON.",
        "Container report-api was OOMKilled (exit 137) five times; its memory limit is "
        "64Mi and its logs show a peak of 96Mi. Which failure class, which field to "
        "change, and what memory limit in MiB?",
        OOM_SCHEMA,
        name="oom_fix",
        max_tokens=80,
    )
    jsonschema.validate(answer, OOM_SCHEMA)
    assert usage.model  # the server's own id for the model that answered
    assert usage.completion_tokens > 0 and usage.seconds > 0


def _flip_one_byte(good: Path, bad: Path) -> None:
    shutil.copyfile(good, bad)
    with bad.open("r+b") as f:
        f.seek(good.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stamp", ["absent", "copied"])
def test_a_corrupted_model_file_is_refused_and_removed(server, tmp_path, stamp):
    artifact = localmodel.QWEN_CODER
    bad = tmp_path / artifact.file_name
    _flip_one_byte(server.model_path, bad)
    if stamp == "copied":  # a stamp for another file must not vouch for this one
        good_stamp = server.model_path.with_name(server.model_path.name + ".verified")
        shutil.copyfile(good_stamp, bad.with_name(bad.name + ".verified"))
    with pytest.raises(localmodel.ModelFileError, match="SHA-256"):
        localmodel.assemble(tmp_path)
    assert not bad.exists()


def test_a_truncated_model_file_is_refused_without_hashing(tmp_path):
    bad = tmp_path / localmodel.QWEN_CODER.file_name
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(localmodel.ModelFileError, match="64 bytes, expected"):
        localmodel.assemble(tmp_path)
    assert not bad.exists()


@pytest.mark.scenario
@pytest.mark.timeout(900)
def test_the_farm_fixes_a_scenario_with_the_embedded_model(server, tmp_path):
    sc = scenario_mod.load(SCENARIOS / "oom-report-api.yaml")
    asked_before = _completions_logged(server)
    with FarmRun(
        sc,
        tmp_path / "run",
        speed=30,
        model=localmodel.start_local_model,
        extra_env=localmodel.FARM_ENV,
    ) as run:
        assert run.env["AIFIXER_MODEL_BASE_URL"] == server.base_url
        report = run.report(run.wait(timeout=600))
    summary = json.dumps(report, indent=2)
    assert report["complete"] and report["model"] == localmodel.MODEL_NAME, summary
    assert [i["outcome"] for i in report["incidents"]] == ["fixed"], summary
    assert sorted(report["incidents"][0]["changed_paths"]) == sorted(sc.expect.changed), summary
    # The farm really asked this server, not a stand-in.
    assert _completions_logged(server) > asked_before, summary
