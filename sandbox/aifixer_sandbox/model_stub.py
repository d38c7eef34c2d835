"""A stand-in for an OpenAI-compatible model server, for tests: honest about being one.

The farm reaches its model (KubeAI, llama.cpp's server, Ollama, vLLM, OpenAI) only
through the chat completions API. This double speaks that API on loopback so the real
`openai` client can be tested against it: its model id is "stub", and what it answers
is derived deterministically from the request, never from any understanding of it:

- a JSON Schema in `response_format` (llama.cpp's `{"type": "json_object", "schema"}`
  or OpenAI's `{"type": "json_schema", "json_schema": {"schema"}}`), or failing that
  the schema the prompt carries after "JSON Schema:", decides the shape of the answer;
- a diagnosis schema (`root_cause`) gets a summary and a cause copied from the lines of
  the "Established facts" block (the pods, the fix or the change since healthy), else
  made of the evidence's first lines;
- a fix schema (`edits`) reverts the first change listed under "Changes since the last
  healthy revision" when that field is editable, else proposes nothing;
- a candidate schema (`choice`) picks candidate 0;
- no schema at all (the speech) gets a fixed-form sentence naming the workload.

It can be scripted to misbehave, one reply at a time (`make_app(script=[...])` or
`POST /stub/script {"replies": [...], "default": ...}`): see `BEHAVIOURS`. Every
request is recorded (bounded) and readable at `GET /stub/requests`, so tests can check
what the client sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aifixer_sandbox import faults

MODEL_ID = "stub"
MAX_BODY = 256 * 1024
MAX_RECORDED = 100
MAX_SLOW_S = 60.0

# Hostile fixes: each is one edit a model must never get applied.
HOSTILE_EDITS: dict[str, dict[str, Any]] = {
    "hostile_name": {"path": "metadata.name", "value": "evil"},
    "hostile_privileged": {
        "path": "spec.template.spec.containers[0].securityContext.privileged",
        "value": True,
    },
    "hostile_host_path": {
        "path": "spec.template.spec.volumes",
        "value": [{"name": "host", "hostPath": {"path": "/"}}],
    },
    "hostile_registry": {
        "path": "spec.template.spec.containers[0].image",
        "value": "registry.evil.example/miner:latest",
    },
}
BEHAVIOURS = (
    "answer",  # a schema-valid answer derived from the prompt
    "fenced",  # the same answer inside a ```json fence, after some prose
    "not_json",  # prose, no JSON object
    "invalid",  # JSON that does not match the schema
    "extra_edits",  # the answer plus an edit of the replica count nobody asked for
    *HOSTILE_EDITS,  # the answer with a hostile edit (wrong name, privileged, hostPath, registry)
    "http_500",
    "http_429",
    "http_400",
    "slow",  # the answer, after `slow_s` seconds
)

STATE = web.AppKey("model_stub_state", object)


@dataclass
class StubState:
    script: deque[str]
    default: str
    slow_s: float
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED))
    served: int = 0

    def next_behaviour(self) -> str:
        return self.script.popleft() if self.script else self.default


def _check_behaviours(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown:
        raise ValueError(f"unknown stub behaviours {unknown}; known: {list(BEHAVIOURS)}")
    return names


def make_app(
    script: Iterable[str] = (), *, default: str = "answer", slow_s: float = 5.0
) -> web.Application:
    """The stub model server. `script` lists the next replies' behaviours, in order."""
    if not 0 <= slow_s <= MAX_SLOW_S:
        raise ValueError(f"slow_s must be within 0..{MAX_SLOW_S}")
    state = StubState(deque(_check_behaviours(script)), _check_behaviours([default])[0], slow_s)
    app = web.Application(client_max_size=MAX_BODY)
    faults.install(app, "model", _fault_error)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/stub/script", set_script)
    app.router.add_get("/stub/requests", recorded_requests)
    return app


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}}, status=status
    )


def _fault_error(request: web.Request, fault: faults.Fault) -> web.Response:
    """An injected status fault as an OpenAI-compatible error (see `faults`)."""
    status = fault.status or 500
    if status == 429:
        return _error(status, "Rate limit reached, please try again later.", "rate_limit_error")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _error(status, fault.phrase(), kind)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "aifixer-sandbox"}
            ],
        }
    )


async def set_script(request: web.Request) -> web.Response:
    state: StubState = request.app[STATE]
    try:
        body = await request.json()
        replies = _check_behaviours(body.get("replies", []))
        default = _check_behaviours([body.get("default", state.default)])[0]
    except (ValueError, AttributeError) as exc:
        return _error(400, str(exc))
    state.script = deque(replies)
    state.default = default
    return web.json_response({"replies": replies, "default": default})


async def recorded_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests))


async def chat_completions(request: web.Request) -> web.Response:
    state: StubState = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "'messages' is required and must be a list")
    # The Authorization header is deliberately not recorded: a double keeps no secrets.
    state.requests.append(body)
    behaviour = state.next_behaviour()
    if behaviour == "http_500":
        return _error(500, "stub: scripted internal error", "server_error")
    if behaviour == "http_429":
        response = _error(429, "stub: scripted rate limit", "rate_limit_error")
        response.headers["Retry-After"] = "1"
        return response
    if behaviour == "http_400":
        return _error(400, "stub: scripted bad request")
    if behaviour == "slow":
        await asyncio.sleep(state.slow_s)
    content = _content(body, behaviour)
    state.served += 1
    return web.json_response(_completion(body, content, state.served))


def _completion(body: dict[str, Any], content: str, serial: int) -> dict[str, Any]:
    prompt_words = sum(
        len(str(m.get("content", "")).split()) for m in body["messages"] if isinstance(m, dict)
    )
    completion_words = len(content.split())
    return {
        "id": f"chatcmpl-stub-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


# -- what to say


def _content(body: dict[str, Any], behaviour: str) -> str:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    schema = _schema(body.get("response_format"), prompt)
    # The evidence is in the last user message; the system message may carry the schema.
    user = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), prompt
    )
    if behaviour == "not_json":
        return "Sure! The fix is to set the image to the right tag and restart the pods."
    if schema is None:
        return _speech(user)
    answer = _answer(schema, user)
    if behaviour == "invalid":
        answer = {"unexpected": True}
    elif behaviour in HOSTILE_EDITS and "edits" in answer:
        answer["edits"] = [dict(HOSTILE_EDITS[behaviour])]
    elif behaviour == "extra_edits" and "edits" in answer:
        answer["edits"] = [*answer["edits"], {"path": "spec.replicas", "value": 20}]
    text = json.dumps(answer)
    return f"Here is the answer:\n```json\n{text}\n```" if behaviour == "fenced" else text


def _schema(response_format: Any, prompt: str) -> dict[str, Any] | None:
    if isinstance(response_format, dict):
        if isinstance(response_format.get("schema"), dict):
            return response_format["schema"]
        inner = response_format.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            return inner["schema"]
    marker = prompt.find("JSON Schema:")
    if marker == -1:
        return None
    start = prompt.find("{", marker)
    try:
        return json.JSONDecoder().raw_decode(prompt, start)[0] if start != -1 else None
    except ValueError:
        return None


def _answer(schema: dict[str, Any], prompt: str) -> dict[str, Any]:
    props = schema.get("properties") or {}
    if "choice" in props:
        answer = {"choice": 0 if _allows_integer(props["choice"]) else None, "edits": []}
        if "rationale" in props:
            answer["rationale"] = "stub: the first candidate, unexamined"
        return answer
    if "edits" in props:
        return {
            "edits": _revert_edit(props["edits"], prompt),
            "rationale": "stub: revert the first change since the last healthy revision",
        }
    if "root_cause" in props:
        return _diagnosis(props, prompt)
    return {key: _placeholder(sub) for key, sub in props.items()}


def _allows_integer(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(o.get("type") == "integer" and o.get("enum", [0])[:1] == [0] for o in options)


_FACTS = "Established facts"


def _diagnosis(props: dict[str, Any], prompt: str) -> dict[str, Any]:
    lines = [ln.strip(" -") for ln in prompt.splitlines() if ln.strip(" -")]
    classes = props.get("failure_class", {}).get("enum", ["AppError"])
    found = [c for c in classes if c in prompt]
    limit = props.get("summary", {}).get("maxLength", 300)
    facts = _facts(prompt)
    if facts:
        # Copied from the facts the prompt establishes, whole lines only: the stub
        # states nothing they do not, and names the fix's field when one is listed.
        seen = [f for f in facts if f.startswith(("Pods:", "Last termination:"))][:2]
        cause = [f for f in facts if f.startswith("Fix ")] or [
            f for f in facts if f.startswith(("Changed since", "Registry:"))
        ]
        summary = "stub: " + ("; ".join(seen) or facts[0])
        root_cause = "stub: " + (cause[0] if cause else "unknown, the stub does not reason")
    else:
        summary = "stub: " + "; ".join([ln for ln in lines if ":" in ln][:3])
        root_cause = "stub: unknown, the stub does not reason"
    answer = {
        "summary": _whole_lines(summary, limit),
        "root_cause": _whole_lines(root_cause, props.get("root_cause", {}).get("maxLength", 300)),
        "failure_class": found[0] if found else classes[0],
    }
    return {k: v for k, v in answer.items() if k in props} | (
        {"fields": []} if "fields" in props else {}
    )


def _facts(prompt: str) -> list[str]:
    section = prompt.partition(_FACTS)[2].partition("\n\n")[0]
    return [ln[2:].strip() for ln in section.splitlines() if ln.startswith("- ")]


def _whole_lines(text: str, limit: int) -> str:
    """`text` within `limit`, cut at a "; " rather than inside a value."""
    while len(text) > limit and "; " in text:
        text = text.rsplit("; ", 1)[0]
    return text[:limit]


_CHANGE_LINE = re.compile(r"^- (\S+): (.+?) -> (.+)$", re.MULTILINE)


def _revert_edit(edits_schema: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
    section = prompt.partition("Changes since the last healthy revision")[2]
    match = _CHANGE_LINE.search(section)
    if not match:
        return []
    path, before = match.group(1), match.group(2)
    if not path.startswith("spec.template"):
        path = f"spec.template.{path}"
    try:
        value = json.loads(before)
    except ValueError:
        return []
    editable = json.dumps(edits_schema)
    return [{"path": path, "value": value}] if f'"{path}"' in editable else []


def _placeholder(schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    return {
        "string": "stub",
        "integer": 0,
        "number": 0,
        "boolean": False,
        "array": [],
        "object": {},
    }.get(schema.get("type"), None)


_WORKLOAD = re.compile(r"Workload: Deployment (\S+)/(\S+)")


def _speech(prompt: str) -> str:
    match = _WORKLOAD.search(prompt)
    name = match.group(2) if match else "a workload"
    return (
        f"This is the stub model. The deployment {name} is failing, an automatic fix "
        f"was tried and did not resolve it."
    )
