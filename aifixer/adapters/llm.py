"""The model adapter: an OpenAI-compatible chat endpoint, treated as untrusted.

KubeAI, Ollama, vLLM, llama.cpp's server and OpenAI itself all speak the chat
completions API, so the farm reaches any of them through the `openai` client with a
base URL and a model name. What differs is how each is asked for structured output,
which `settings.model_structured_output` names:

- "json_schema": `{"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}`
  (OpenAI, vLLM). Strict mode accepts only a subset of JSON Schema, so length and
  range bounds are left out of what is sent; they are still enforced here.
- "json_object_schema": `{"type": "json_object", "schema": schema}`, as llama.cpp's
  server wants it (it compiles the schema to a grammar and rejects "json_schema").
- "json_object": plain JSON mode (Ollama); the schema goes into the system prompt.
- "none": no response_format at all; the schema goes into the system prompt.

Whatever the mode, a reply is used only once it parses and validates against the
full schema: anything else is a `PermanentError`, never a best guess.

The SDK's own retries are off (`max_retries=0`): whether and when to retry is
decided once, by the task layer, from `TransientError` (with backoff, jitter and a
bound). SDK retries underneath would multiply those attempts, hold a worker for
minutes on a slow CPU model, and retry the 500 llama.cpp returns for a request
format it will never accept.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import jsonschema
import openai

from ..settings import Settings
from .errors import PermanentError, TransientError, bounded, is_transient_status

log = logging.getLogger(__name__)

SYSTEM = "model"

# Keywords OpenAI's strict mode refuses; the local validation still applies them.
_STRICT_UNSUPPORTED = frozenset(
    {"minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "pattern"}
)


@dataclass(frozen=True)
class Usage:
    """What one answer cost, and which model gave it (the server's own id)."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    requests: int = 0  # answers received

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            model=other.model or self.model,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            seconds=self.seconds + other.seconds,
            requests=self.requests + other.requests,
        )


class Model:
    """One chat model behind an OpenAI-compatible endpoint.

    `total` adds up the usage of every answer this instance received, so a caller can
    report tokens and seconds per incident.
    """

    def __init__(self, settings: Settings) -> None:
        self.name = settings.model_name
        self.structured_output = settings.model_structured_output
        self.total = Usage(model=self.name)
        self._client = openai.OpenAI(
            base_url=settings.model_base_url,
            api_key=settings.model_api_key.get_secret_value(),
            timeout=settings.model_timeout_s,
            max_retries=0,
        )

    def chat_json(
        self,
        system: str,
        user: str,
        schema: dict[str, Any],
        *,
        name: str,
        max_tokens: int,
        temperature: float = 0,
    ) -> tuple[dict[str, Any], Usage]:
        """Ask for one JSON object that validates against `schema`.

        Args:
            system, user: the prompt.
            schema: a JSON Schema for an object; the reply must validate against it.
            name: the schema's name (letters, digits, `_`, `-`), for the endpoint and logs.
            max_tokens: the bound on the answer's length.
        Returns:
            The validated object and what it cost.
        Raises:
            TransientError: the endpoint cannot be reached, timed out, 5xx or 429.
            PermanentError: any other refusal, or a reply that is not a JSON object
                valid against `schema`.
        """
        jsonschema.Draft202012Validator.check_schema(schema)
        messages, response_format = self._structured_request(system, user, schema, name)
        text, usage = self._complete(messages, max_tokens, temperature, response_format, name)
        return parse_reply(text, schema), usage

    def chat_text(self, system: str, user: str, max_tokens: int) -> tuple[str, Usage]:
        """Ask for plain text. Raises like `chat_json`, except for the validation."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self._complete(messages, max_tokens, 0, None, "text")

    def _structured_request(
        self, system: str, user: str, schema: dict[str, Any], name: str
    ) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
        mode = self.structured_output
        if mode == "json_schema":
            response_format: dict[str, Any] | None = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": strict_subset(schema), "strict": True},
            }
        elif mode == "json_object_schema":
            response_format = {"type": "json_object", "schema": grammar_subset(schema)}
        elif mode == "json_object":
            response_format = {"type": "json_object"}
        else:
            response_format = None
        if mode in ("json_object", "none"):
            # The endpoint does not see the schema: the prompt must carry it.
            system = (
                f"{system}\n\nReply with one JSON object and nothing else. It must validate "
                f"against this JSON Schema:\n{json.dumps(schema, separators=(',', ':'))}"
            )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return messages, response_format

    def _complete(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        response_format: dict[str, Any] | None,
        name: str,
    ) -> tuple[str, Usage]:
        kwargs: dict[str, Any] = {}
        if response_format is not None:
            kwargs["response_format"] = response_format
        started = time.monotonic()
        try:
            response = self._client.chat.completions.create(
                model=self.name,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                **kwargs,
            )
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise TransientError(SYSTEM, f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc
        seconds = time.monotonic() - started
        usage = _usage(response, self.name, seconds)
        self.total = self.total + usage
        log.info(
            "model %s answered %s: %d prompt + %d completion tokens in %.1fs",
            usage.model,
            name,
            usage.prompt_tokens,
            usage.completion_tokens,
            seconds,
        )
        choices = response.choices or []
        text = choices[0].message.content if choices else None
        if not text:
            raise PermanentError(SYSTEM, f"empty reply to {name}")
        if choices[0].finish_reason == "length":
            log.warning("model reply to %s was cut at max_tokens=%d", name, max_tokens)
        return text, usage


def _status_error(exc: openai.APIStatusError) -> TransientError | PermanentError:
    status = exc.status_code
    body = bounded(exc.response.text if exc.response is not None else str(exc))
    message = f"HTTP {status}: {body}"
    if is_transient_status(status):
        return TransientError(SYSTEM, message, status=status, retry_after=_retry_after(exc))
    return PermanentError(SYSTEM, message, status=status)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the task's own backoff applies instead
        return None


def _usage(response: Any, default_model: str, seconds: float) -> Usage:
    counted = getattr(response, "usage", None)
    return Usage(
        model=getattr(response, "model", None) or default_model,
        prompt_tokens=getattr(counted, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(counted, "completion_tokens", 0) or 0,
        seconds=seconds,
        requests=1,
    )


def strict_subset(schema: Any) -> Any:
    """A copy of `schema` without the keywords OpenAI's strict mode refuses."""
    return _pruned(schema, _STRICT_UNSUPPORTED)


# llama.cpp compiles the schema into a GBNF grammar: a string length bound becomes one
# nested rule per character (a 400-character bound makes a grammar that takes longer to
# build than the answer), and its grammar parser knows no regex escapes such as `\.`
# or `\d`. Bounds are enforced on the reply here instead; escapes become classes.
_GRAMMAR_UNSUPPORTED = frozenset({"minLength", "maxLength"})
_REGEX_ESCAPES = {r"\.": "[.]", r"\d": "[0-9]", r"\-": "-", r"\_": "_"}


def grammar_subset(schema: Any) -> Any:
    """A copy of `schema` a llama.cpp server turns into a small, valid grammar."""
    return _pruned(schema, _GRAMMAR_UNSUPPORTED, _plain_pattern)


def _plain_pattern(pattern: str) -> str:
    for escape, plain in _REGEX_ESCAPES.items():
        pattern = pattern.replace(escape, plain)
    return pattern


def _pruned(schema: Any, drop: frozenset[str], pattern=None) -> Any:
    """A copy of `schema` without the keywords in `drop`, patterns passed through `pattern`."""
    if isinstance(schema, list):
        return [_pruned(sub, drop, pattern) for sub in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":  # property names are data, not keywords
            out[key] = {prop: _pruned(sub, drop, pattern) for prop, sub in value.items()}
        elif key == "pattern" and pattern is not None and isinstance(value, str):
            out[key] = pattern(value)
        elif key not in drop:
            out[key] = _pruned(value, drop, pattern)
    return out


def extract_json_object(text: str) -> str:
    """The first balanced `{...}` in a reply, past any ```json fence or prose around it.

    Raises:
        ValueError: there is no complete object in `text`.
    """
    start = text.find("{")
    while start != -1:
        end = _balanced_end(text, start)
        if end is not None:
            return text[start : end + 1]
        start = text.find("{", start + 1)
    raise ValueError("no complete JSON object in the reply")


def _balanced_end(text: str, start: int) -> int | None:
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i
    return None


def parse_reply(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Extract, parse and validate a reply. Raises PermanentError with the reason."""
    try:
        value = json.loads(extract_json_object(text))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise PermanentError(SYSTEM, f"reply is not JSON ({exc}): {bounded(text, 200)}") from exc
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise PermanentError(
            SYSTEM, f"reply does not match the schema at {where}: {bounded(error.message, 200)}"
        )
    return value
