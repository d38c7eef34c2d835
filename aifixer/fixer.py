"""The fixer: what the model is asked, and what is done with its answers.

The model is an untrusted adapter. Everything it is given is bounded and redacted;
everything it returns is constrained by a JSON schema, validated, and then held to
what the deterministic parts of aifixer would accept:

- `diagnose` asks for a structured diagnosis; if the model fails or answers badly, a
  diagnosis written from the evidence alone takes its place (the PR shows either).
- `propose` turns the diagnosis into a whole corrected Deployment by one of three
  strategies (`settings.fix_strategy`):
  * "playbooks": the first playbook candidate the guardrails accept;
  * "model": the model writes a few typed edits on allow-listed fields of the live
    Deployment. Never a whole manifest: small models rewrite fields they were not
    asked about, and an edit list is what a JSON schema can pin down;
  * "hybrid": the model picks among the playbook candidates and may adjust the values
    the chosen one changes. Edits outside the candidate's fields are dropped; an
    invalid answer or a refused result falls back to the best candidate that passes.
  Every proposal goes through `guardrails.check`; each refusal is recorded.
- `speech` has the model word the phone message, checks it is short, plain and safe
  to read aloud, and falls back to a template.

`redact` (the farm's one policy, `aifixer.redact`) strips credential-looking strings
from everything that leaves the process: prompts, rationales, speech.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal, get_args

from . import guardrails, manifests, playbooks, untrusted
from .adapters.errors import AdapterError
from .adapters.llm import Model
from .models import (
    Diagnosis,
    Evidence,
    FailureClass,
    FixProposal,
    Incident,
    IncidentState,
    Manifest,
    Rejection,
)
from .redact import REDACTED, redact
from .settings import Settings

log = logging.getLogger(__name__)

FAILURE_CLASSES: tuple[str, ...] = get_args(FailureClass)
CONTAINERS = "spec.template.spec.containers"

# -- prompts -----------------------------------------------------------------------------


@cache
def _template(name: str) -> Template:
    return Template((resources.files("aifixer") / "prompts" / f"{name}.txt").read_text("utf-8"))


def prompt(template: str, /, **values: Any) -> str:
    """Fill the template file `prompts/<template>.txt`; redacted, since it leaves the process."""
    return redact(_template(template).substitute(values))


# -- the evidence, as the model reads it ---------------------------------------------------

# Small on purpose: a CPU model reads ~50 prompt tokens a second, so every line of
# evidence costs time on every incident.
MAX_PODS, MAX_EVENTS, MAX_LOG_LINES, MAX_POD_LOGS, MAX_CHANGES = 3, 5, 6, 2, 10
MAX_VALUE = 160
MAX_EVIDENCE = 3500

EXIT_CODES = {
    1: "the application exited with an error",
    2: "the shell or program was misused (bad arguments)",
    126: "the command was found but is not executable",
    127: "the command was not found in the image",
    137: "killed by SIGKILL, usually for exceeding the memory limit",
    139: "segmentation fault",
    143: "stopped by SIGTERM",
}


def _clip(value: Any, limit: int = MAX_VALUE) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(value: Any) -> str:
    """A value as JSON, so a model (or a reader) can copy it back exactly."""
    return _clip(json.dumps(value, separators=(",", ":")))


def deployment_path(path: str) -> str:
    """A template-diff path as a path in the Deployment (the diff may be template-rooted)."""
    return path if path.startswith("spec.template") else f"spec.template.{path}"


def render_evidence(incident: Incident, evidence: Evidence) -> str:
    """The evidence as short plain-text sections, bounded in every dimension."""
    w = incident.workload
    # Most telling first: when the whole is cut to its bound, log lines go before facts.
    sections = [
        f"Workload: Deployment {w.namespace}/{w.name} (detected failure class: "
        f"{incident.failure_class})",
        _section(
            "Changes since the last healthy revision",
            [
                f"- {deployment_path(c.path)}: {_json(c.before)} -> {_json(c.after)}"
                for c in evidence.template_diff[:MAX_CHANGES]
            ],
        ),
        _section("Pods", [_pod_line(p) for p in _failing_pods(evidence)[:MAX_PODS]]),
        _section(
            "Warning events",
            _warning_lines(evidence),
        ),
        _section("Facts", _facts(evidence)),
        _section("Containers now", _containers(evidence.deployment)),
        _section("Container output", _pod_logs(evidence.pod_logs)),
        _section(
            "Recent log lines",
            [f"- [{ln.pod}] {_clip(ln.line, 200)}" for ln in evidence.logs[-MAX_LOG_LINES:]],
        ),
    ]
    text = "\n\n".join(s for s in sections if s)
    return text if len(text) <= MAX_EVIDENCE else text[:MAX_EVIDENCE] + "\n(evidence cut)"


def SYSTEM_PROMPT() -> str:  # noqa: N802 - reads as the constant it is
    """One system prompt for every evidence-based call.

    The diagnosis, fix and choice prompts all start with this system prompt and the
    same evidence, so a server that caches the prompt prefix (llama.cpp does) reads
    the evidence once per incident instead of once per call.
    """
    return prompt("system")


def _warning_lines(evidence: Evidence) -> list[str]:
    """One line per Warning reason: the newest message, the total count, how many objects.

    The same BackOff on every pod says nothing more the second time; the model reads
    each line at the price of its tokens.
    """
    by_reason: dict[str, list] = {}
    for e in evidence.events:
        if e.type == "Warning":
            by_reason.setdefault(e.reason, []).append(e)
    lines = []
    for reason, events in list(by_reason.items())[-MAX_EVENTS:]:
        newest = events[-1]
        objects = len({e.object for e in events})
        where = newest.object if objects == 1 else f"{objects} objects"
        lines.append(
            f"- {reason} (x{sum(e.count for e in events)}) {where}: {_clip(newest.message)}"
        )
    return lines


def _section(title: str, lines: list[str]) -> str:
    return f"{title}:\n" + "\n".join(lines) if lines else ""


def _containers(deployment: Manifest) -> list[str]:
    lines = []
    for i, c in enumerate(manifests.get_path(deployment, CONTAINERS, []) or []):
        fields = {
            k: c[k]
            for k in (
                "image",
                "command",
                "args",
                "resources",
                "ports",
                "env",
                "readinessProbe",
                "livenessProbe",
                "startupProbe",
            )
            if k in c
        }
        if "env" in fields:
            fields["env"] = [_masked(var) for var in fields["env"]]
        lines.append(f"- containers[{i}] {c.get('name')}: {_clip(fields, 900)}")
    return lines


def _masked(var: Any) -> Any:
    """An env var whose name says credential keeps its name, not its literal value."""
    if (
        isinstance(var, dict)
        and "value" in var
        and guardrails.CREDENTIAL_NAME.search(str(var.get("name")))
    ):
        return {**var, "value": REDACTED}
    return var


def _failing_pods(evidence: Evidence) -> list:
    return [p for p in evidence.pods if p.reasons or not p.ready] or evidence.pods


def _pod_line(pod) -> str:
    line = (
        f"- {pod.name}: {pod.phase}, {'ready' if pod.ready else 'not ready'}, "
        f"restarts {pod.restart_count}"
    )
    if pod.reasons:
        line += f", reasons {', '.join(pod.reasons)}"
    if pod.last_termination:
        line += f"; last termination {_clip(pod.last_termination)}"
    return line


def _pod_logs(pod_logs: dict[str, str]) -> list[str]:
    # The previous container's output is the crash's own account: it goes first.
    keys = sorted(pod_logs, key=lambda k: (not k.endswith("/previous"), k))[:MAX_POD_LOGS]
    lines: list[str] = []
    for key in keys:
        tail = [ln for ln in pod_logs[key].splitlines() if ln.strip()][-5:]
        lines.extend(f"- [{key}] {_clip(ln, 200)}" for ln in tail)
    return lines


def _exit_codes(evidence: Evidence) -> list[int]:
    codes = []
    for pod in evidence.pods:
        code = (pod.last_termination or {}).get("exitCode")
        if isinstance(code, int) and code not in codes:
            codes.append(code)
    return codes


def _facts(evidence: Evidence) -> list[str]:
    return [
        f"- exit code {code}: {EXIT_CODES[code]}"
        for code in _exit_codes(evidence)
        if code in EXIT_CODES
    ]


# -- diagnose ----------------------------------------------------------------------------

DIAGNOSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    # Every property is a token the CPU model must write (~8 a second): the fields a
    # diagnosis names are read off the revision diff instead.
    "required": ["summary", "root_cause", "failure_class"],
    "properties": {
        "summary": {"type": "string", "minLength": 10, "maxLength": 400},
        "root_cause": {"type": "string", "minLength": 5, "maxLength": 400},
        "failure_class": {"type": "string", "enum": list(FAILURE_CLASSES)},
    },
}

CLASS_PHRASES = {
    "ImagePull": "its pods cannot pull their container image",
    "CrashLoop": "its container exits soon after starting and is restarted again and again",
    "OOMKilled": "its container is killed for using more memory than its limit",
    "ProbeFailure": "its health probes fail",
    "Unschedulable": "its pods cannot be scheduled on any node",
    "ConfigError": "its pods cannot start: a ConfigMap, Secret or key they reference is missing",
    "AppError": "its application logs errors while the pods look healthy",
}
# Where each class usually lies, when the revision history names no changed field.
CLASS_FIELDS = {
    "ImagePull": ["image"],
    "CrashLoop": ["command", "args", "env"],
    "OOMKilled": ["resources.limits.memory"],
    "ProbeFailure": ["readinessProbe", "livenessProbe"],
    "Unschedulable": ["resources.requests"],
    "ConfigError": ["env"],
    "AppError": [],
}


def diagnose(model: Model, incident: Incident, evidence: Evidence) -> Diagnosis:
    """The model's diagnosis, or one written from the evidence if the model fails."""
    user = prompt(
        "diagnose.user",
        evidence=render_evidence(incident, evidence),
        classes=", ".join(FAILURE_CLASSES),
    )
    try:
        answer, _ = model.chat_json(
            SYSTEM_PROMPT(), user, DIAGNOSIS_SCHEMA, name="diagnosis", max_tokens=150
        )
    except AdapterError as exc:
        log.warning(
            "[%s] model diagnosis unusable, writing one from the evidence: %s",
            incident.workload.key,
            exc,
        )
        return playbook_diagnosis(incident, evidence)
    summary, root_cause = redact(answer["summary"].strip()), redact(answer["root_cause"].strip())
    found = untrusted.findings(f"{summary}\n{root_cause}", known_words(incident, evidence))
    if found:
        # Read aloud and put in the PR: it may not relay what a log line dictated.
        log.warning(
            "[%s] model diagnosis carries %s; writing one from the evidence",
            incident.workload.key,
            " and ".join(found),
        )
        return playbook_diagnosis(incident, evidence)
    return Diagnosis(
        summary=summary,
        root_cause=root_cause,
        failure_class=answer["failure_class"],
        fields=[c.path for c in evidence.template_diff][:5],
        source="model",
    )


def known_words(incident: Incident, evidence: Evidence | None) -> list[str]:
    """What the workload itself is called and runs: never a finding in text about it."""
    w = incident.workload
    words = [w.key, w.name, w.namespace]
    if evidence is not None:
        words += [i for rev in evidence.revisions for i in rev.images]
        for spec in (evidence.deployment, evidence.last_healthy_template):
            words += [
                c.get("image", "")
                for c in guardrails.pod_spec(spec).get("containers") or []
                if isinstance(c, dict) and isinstance(c.get("image"), str)
            ]
    return words


def playbook_diagnosis(incident: Incident, evidence: Evidence) -> Diagnosis:
    """A diagnosis from the evidence alone: what the PR shows when the model fails."""
    fc = incident.failure_class
    w = incident.workload
    seen = _what_was_seen(evidence)
    summary = f"Deployment {w.namespace}/{w.name} is failing: {CLASS_PHRASES[fc]}."
    if seen:
        summary += f" Seen: {seen}."
    changes = evidence.template_diff
    if changes:
        described = "; ".join(
            f"{deployment_path(c.path)} changed from {_clip(c.before, 60)} to {_clip(c.after, 60)}"
            for c in changes[:3]
        )
        root_cause = f"Since the last healthy revision, {described}: the likeliest cause."
        fields = [deployment_path(c.path) for c in changes[:5]]
    else:
        root_cause = _cause_without_history(fc, evidence)
        fields = _class_fields(fc, evidence.deployment)
    return Diagnosis(
        summary=redact(summary),
        root_cause=redact(root_cause),
        failure_class=fc,
        fields=fields,
        source="playbook",
    )


def _what_was_seen(evidence: Evidence) -> str:
    parts = []
    reasons = sorted({r for p in evidence.pods for r in p.reasons})
    if reasons:
        parts.append(f"pod reasons {', '.join(reasons)}")
    restarts = max((p.restart_count for p in evidence.pods), default=0)
    if restarts:
        parts.append(f"up to {restarts} restarts")
    for code in _exit_codes(evidence)[:2]:
        parts.append(f"exit code {code}" + (f" ({EXIT_CODES[code]})" if code in EXIT_CODES else ""))
    warning = next((e for e in reversed(evidence.events) if e.type == "Warning"), None)
    if warning and _REASON_WORD.fullmatch(warning.reason or ""):
        # The reason only: an event's message is free text anyone who can create
        # events wrote, and this diagnosis is read aloud.
        parts.append(f"event {warning.reason}")
    return "; ".join(parts)


_REASON_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _cause_without_history(fc: str, evidence: Evidence) -> str:
    codes = [c for c in _exit_codes(evidence) if c in EXIT_CODES]
    if codes:
        return f"The container's exit code {codes[0]} means {EXIT_CODES[codes[0]]}."
    warning = next((e for e in reversed(evidence.events) if e.type == "Warning"), None)
    if warning:
        return f"The cluster reports {warning.reason}: {_clip(warning.message, 200)}"
    return (
        f"No field changed since the last healthy revision; the failure ({fc}) "
        f"needs a person to look at the application."
    )


def _class_fields(fc: str, deployment: Manifest) -> list[str]:
    containers = manifests.get_path(deployment, CONTAINERS, []) or []
    return [
        f"{CONTAINERS}[{i}].{suffix}" for i in range(len(containers)) for suffix in CLASS_FIELDS[fc]
    ][:5]


# -- typed edits ---------------------------------------------------------------------------

# Unbounded repetition plus maxLength: a `{0,252}` would grow a grammar by 252 rules.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_QUANTITY = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|Ki|Mi|Gi)?$",
    "maxLength": 16,
}
_STRINGS = {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 200}}
_SECONDS = {"type": "integer", "minimum": 0, "maximum": 3600}
_PORT = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$"},
    ]
}
_KEY_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {
        "name": {"type": "string", "pattern": _NAME, "maxLength": 253},
        "key": {"type": "string", "pattern": _NAME, "maxLength": 253},
    },
}
_ENV_VAR = {
    "anyOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "value"],
            "properties": {
                "name": {"type": "string", "pattern": _NAME, "maxLength": 253},
                "value": {"type": "string", "maxLength": 500},
            },
        },
        *(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "valueFrom"],
                "properties": {
                    "name": {"type": "string", "pattern": _NAME, "maxLength": 253},
                    "valueFrom": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [ref],
                        "properties": {ref: _KEY_REF},
                    },
                },
            }
            for ref in ("configMapKeyRef", "secretKeyRef")
        ),
    ]
}
_PROBE_FIELDS = {
    "initialDelaySeconds": _SECONDS,
    "periodSeconds": _SECONDS,
    "timeoutSeconds": _SECONDS,
    "failureThreshold": _SECONDS,
}

# The value type of an editable field, by the end of its path.
_TYPED_SUFFIXES: list[tuple[re.Pattern[str], dict[str, Any]]] = [
    (re.compile(r"\.image$"), {"type": "string", "minLength": 1, "maxLength": 200}),
    (re.compile(r"\.resources\.(limits|requests)\.(memory|cpu)$"), _QUANTITY),
    (re.compile(r"\.(command|args)$"), _STRINGS),
    (re.compile(r"\.env$"), {"type": "array", "maxItems": 50, "items": _ENV_VAR}),
    (re.compile(r"\.env\[\d+\]\.value$"), {"type": "string", "maxLength": 500}),
    (
        re.compile(r"\.(configMapKeyRef|secretKeyRef)\.(name|key)$"),
        {"type": "string", "pattern": _NAME, "maxLength": 253},
    ),
    (re.compile(r"\.containerPort$"), {"type": "integer", "minimum": 1, "maximum": 65535}),
    (re.compile(r"\.(httpGet|tcpSocket)\.port$"), _PORT),
    (re.compile(r"\.httpGet\.path$"), {"type": "string", "pattern": "^/", "maxLength": 200}),
    (
        re.compile(r"Probe\.(initialDelaySeconds|periodSeconds|timeoutSeconds|failureThreshold)$"),
        _SECONDS,
    ),
]


def value_schema(
    path: str, example: Any = None, *, max_replicas: int = 20
) -> dict[str, Any] | None:
    """The JSON schema of the value at `path`, from its name, else from an example value."""
    if path == "spec.replicas":
        return {"type": "integer", "minimum": 1, "maximum": max_replicas}
    for pattern, schema in _TYPED_SUFFIXES:
        if pattern.search(path):
            return schema
    if isinstance(example, bool):
        return {"type": "boolean"}
    if isinstance(example, int):
        return {"type": "integer"}
    if isinstance(example, str):
        return {"type": "string", "maxLength": 500}
    if isinstance(example, list) and all(isinstance(v, str) for v in example):
        return _STRINGS
    return None


def editable_paths(manifest: Manifest) -> list[str]:
    """The fields of `manifest` a model may edit: allow-listed, and present (or filling a probe)."""
    paths = ["spec.replicas"]
    for i, c in enumerate(manifests.get_path(manifest, CONTAINERS, []) or []):
        base = f"{CONTAINERS}[{i}]"
        paths += [f"{base}.{f}" for f in ("image", "command", "args", "env")]
        paths += [
            f"{base}.resources.{s}.{r}" for s in ("limits", "requests") for r in ("memory", "cpu")
        ]
        for j, var in enumerate(c.get("env") or []):
            if "value" in var:
                paths.append(f"{base}.env[{j}].value")
            for ref in ("configMapKeyRef", "secretKeyRef"):
                if ref in (var.get("valueFrom") or {}):
                    paths += [f"{base}.env[{j}].valueFrom.{ref}.{k}" for k in ("name", "key")]
        paths += [f"{base}.ports[{j}].containerPort" for j in range(len(c.get("ports") or []))]
        for probe in guardrails.PROBES:
            paths += _probe_paths(f"{base}.{probe}", c.get(probe))
    return [p for p in paths if guardrails.is_allowed_path(p)]


def _probe_paths(base: str, probe: Any) -> list[str]:
    if not isinstance(probe, dict):
        return []
    paths = [f"{base}.{f}" for f in _PROBE_FIELDS]
    if "httpGet" in probe:
        paths += [f"{base}.httpGet.path", f"{base}.httpGet.port"]
    if "tcpSocket" in probe:
        paths.append(f"{base}.tcpSocket.port")
    if "exec" in probe:
        paths.append(f"{base}.exec.command")
    return paths


def edits_schema(typed: dict[str, dict[str, Any]], max_items: int) -> dict[str, Any]:
    """An array of {path, value} whose value type follows the path, paths grouped by type."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for path, schema in typed.items():
        key = json.dumps(schema, sort_keys=True)
        groups.setdefault(key, (schema, []))[1].append(path)
    options = [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "value"],
            "properties": {"path": {"type": "string", "enum": paths}, "value": schema},
        }
        for schema, paths in groups.values()
    ]
    if not options:
        return {"type": "array", "maxItems": 0}
    items = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "array", "maxItems": max_items, "items": items}


def _rationale_schema() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": 300}


def apply_edits(base: Manifest, edits: list[dict[str, Any]]) -> Manifest:
    """A copy of `base` with each edit's value set at its path."""
    out = copy.deepcopy(base)
    for edit in edits:
        try:
            manifests.set_path(out, edit["path"], copy.deepcopy(edit["value"]))
        except (IndexError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot set {edit['path']}: {exc}") from exc
    return out


# -- propose -----------------------------------------------------------------------------


class _Attempts:
    """The proposals tried, and why each one was refused."""

    def __init__(self, evidence: Evidence, settings: Settings) -> None:
        self.evidence = evidence
        self.settings = settings
        self.live = evidence.deployment
        self.base = manifests.clean(self.live)
        self.rejections: list[Rejection] = []

    def reject(self, source: str, strategy: str, reasons: list[str]) -> None:
        self.rejections.append(
            Rejection(source=source, strategy=strategy, reasons=[redact(r) for r in reasons])
        )

    def accept(self, proposal: FixProposal) -> FixProposal | None:
        """`proposal` if it changes something and the guardrails let it through."""
        if not proposal.changes:
            self.reject(proposal.source, proposal.strategy, ["the proposal changes nothing"])
            return None
        reasons = guardrails.check(self.live, proposal.manifest, self.evidence, self.settings)
        if reasons:
            log.warning(
                "%s fix from %s refused: %s", proposal.source, proposal.strategy, "; ".join(reasons)
            )
            self.reject(proposal.source, proposal.strategy, reasons)
            return None
        return proposal

    def first_candidate(self, candidates: list[FixProposal]) -> FixProposal | None:
        for candidate in candidates:
            accepted = self.accept(self.restated(candidate))
            if accepted is not None:
                return accepted
        return None

    def restated(
        self,
        candidate: FixProposal,
        manifest: Manifest | None = None,
        *,
        source: Literal["model", "playbook"] = "playbook",
        strategy: str | None = None,
        rationale: str | None = None,
    ) -> FixProposal:
        """A proposal whose changes are recomputed from the live Deployment, not trusted."""
        result = manifests.clean(manifest if manifest is not None else candidate.manifest)
        return FixProposal(
            source=source,
            strategy=strategy or candidate.strategy,
            rationale=redact(rationale or candidate.rationale),
            manifest=result,
            changes=manifests.diff(self.base, result),
        )


def propose(
    model: Model,
    incident: Incident,
    evidence: Evidence,
    diagnosis: Diagnosis,
    settings: Settings,
    *,
    examples: Sequence[str] = (),
    remembered: FixProposal | None = None,
) -> tuple[FixProposal | None, list[Rejection]]:
    """A corrected Deployment the guardrails accept, by `settings.fix_strategy`, or None.

    Args:
        examples: one-line summaries of similar past incidents, shown to the model.
        remembered: a fix that verified on a similar past incident, replayed on this
            Deployment; tried before the playbooks' candidates, held to the same checks.

    Returns the proposal (None when nothing passes) and every refusal on the way.
    """
    attempts = _Attempts(evidence, settings)
    strategy = settings.fix_strategy
    shown = _render_examples(examples)
    if strategy == "model":
        proposal = _propose_model(model, incident, evidence, diagnosis, attempts, shown)
    else:
        candidates = _candidates(evidence, incident, diagnosis, settings, remembered)
        if strategy == "hybrid" and candidates:
            proposal = _propose_hybrid(
                model, incident, evidence, diagnosis, candidates, attempts, shown
            )
        else:
            # "playbooks"; and "hybrid" with no candidate: aifixer knows no fix for this
            # fault, and a person is better placed than a model writing one unaided.
            proposal = attempts.first_candidate(candidates)
    return proposal, attempts.rejections


def _candidates(
    evidence: Evidence,
    incident: Incident,
    diagnosis: Diagnosis,
    settings: Settings,
    remembered: FixProposal | None = None,
) -> list[FixProposal]:
    """The remembered fix, then playbook candidates for the detected class, then for the
    diagnosed one if it differs."""
    classes = [incident.failure_class]
    if diagnosis.failure_class not in classes:
        classes.append(diagnosis.failure_class)
    found = [remembered] if remembered is not None else []
    for fc in classes:
        found += playbooks.candidates(evidence, fc, settings)
    out: list[FixProposal] = []
    seen: set[str] = set()
    for candidate in found:
        key = json.dumps(manifests.clean(candidate.manifest), sort_keys=True)  # not its claims
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


MAX_EXAMPLES = 3


def _render_examples(examples: Sequence[str]) -> str:
    """The prompt's `$examples`: empty, or a short block of past incidents."""
    if not examples:
        return ""
    lines = "\n".join(f"- {_clip(e, 320)}" for e in examples[:MAX_EXAMPLES])
    return f"\nSimilar past incidents (for reference; this one may differ):\n{lines}\n"


def _diagnosis_line(diagnosis: Diagnosis) -> str:
    return _clip(f"{diagnosis.summary} Cause: {diagnosis.root_cause}", 600)


def _propose_model(
    model: Model,
    incident: Incident,
    evidence: Evidence,
    diagnosis: Diagnosis,
    attempts: _Attempts,
    examples: str,
) -> FixProposal | None:
    base = attempts.base
    typed = {
        p: s
        for p in editable_paths(base)
        if (
            s := value_schema(
                p, manifests.get_path(base, p), max_replicas=attempts.settings.max_replicas
            )
        )
    }
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["edits", "rationale"],
        "properties": {
            "edits": {**edits_schema(typed, 4), "minItems": 1},
            "rationale": _rationale_schema(),
        },
    }
    editable = "\n".join(f"- {p}: {_clip(manifests.get_path(base, p), 120)}" for p in typed)
    user = prompt(
        "fix.user",
        evidence=render_evidence(incident, evidence),
        diagnosis=_diagnosis_line(diagnosis),
        examples=examples,
        editable=editable,
    )
    try:
        answer, _ = model.chat_json(SYSTEM_PROMPT(), user, schema, name="fix_edits", max_tokens=300)
        result = apply_edits(base, answer["edits"])
    except (AdapterError, ValueError) as exc:
        attempts.reject("model", "model", [f"the model's answer is not usable: {exc}"])
        return None
    proposal = FixProposal(
        source="model",
        strategy="model",
        rationale=_rationale(answer["rationale"], incident, evidence),
        manifest=result,
        changes=manifests.diff(base, result),
    )
    return attempts.accept(proposal)


def _rationale(text: str, incident: Incident, evidence: Evidence) -> str:
    """The model's explanation of its edits, unless it relays what it must not."""
    found = untrusted.findings(text, known_words(incident, evidence))
    if found:
        return f"Edits written by the model (its explanation carried {found[0]} and is withheld)."
    return redact(text)


def _propose_hybrid(
    model: Model,
    incident: Incident,
    evidence: Evidence,
    diagnosis: Diagnosis,
    candidates: list[FixProposal],
    attempts: _Attempts,
    examples: str,
) -> FixProposal | None:
    chosen = _model_choice(model, incident, evidence, diagnosis, candidates, attempts, examples)
    if chosen is not None and (accepted := attempts.accept(chosen)) is not None:
        return accepted
    return attempts.first_candidate(candidates)


def _model_choice(
    model: Model,
    incident: Incident,
    evidence: Evidence,
    diagnosis: Diagnosis,
    candidates: list[FixProposal],
    attempts: _Attempts,
    examples: str,
) -> FixProposal | None:
    """The candidate the model chose, with its adjustments held to the candidate's fields."""
    base = attempts.base
    restated = [attempts.restated(c) for c in candidates]
    typed: dict[str, dict[str, Any]] = {}
    for candidate in restated:
        for change in candidate.changes:
            if not _adjustable(change.path):
                continue
            schema = value_schema(
                change.path, change.after, max_replicas=attempts.settings.max_replicas
            )
            if schema is not None:
                typed.setdefault(change.path, schema)
    schema = {
        "type": "object",
        "additionalProperties": False,
        # No rationale: each candidate carries its own, and every word the model writes
        # here is a second of CPU before the fix is applied.
        "required": ["choice", "edits"],
        "properties": {
            "choice": {
                "anyOf": [
                    {"type": "integer", "enum": list(range(len(candidates)))},
                    {"type": "null"},
                ]
            },
            "edits": edits_schema(typed, 3),
        },
    }
    user = prompt(
        "hybrid.user",
        evidence=render_evidence(incident, evidence),
        diagnosis=_diagnosis_line(diagnosis),
        examples=examples,
        candidates=_render_candidates(restated),
    )
    try:
        answer, _ = model.chat_json(
            SYSTEM_PROMPT(), user, schema, name="fix_choice", max_tokens=160
        )
    except AdapterError as exc:
        attempts.reject("model", "hybrid", [f"the model's answer is not usable: {exc}"])
        return None
    if answer["choice"] is None:
        log.info(
            "[%s] the model chose none of %d candidates", incident.workload.key, len(candidates)
        )
        return None
    candidate = restated[answer["choice"]]
    result, dropped = _held_to(base, candidate, answer["edits"])
    if dropped:
        log.warning(
            "[%s] dropped model edits outside candidate %s: %s",
            incident.workload.key,
            candidate.strategy,
            ", ".join(e["path"] for e in dropped),
        )
    adjusted = " (values adjusted by the model)" if answer["edits"] and not dropped else ""
    return attempts.restated(
        candidate,
        result,
        source="model",
        strategy=f"hybrid:{candidate.strategy}",
        rationale=f"{candidate.rationale} Chosen by the model among {len(candidates)} "
        f"candidate(s){adjusted}.",
    )


def _adjustable(path: str) -> bool:
    """Fields whose value the model may tune in a chosen candidate: amounts, not text.

    A memory limit or a replica count is a judgment the model can improve on; a
    command, an image or an environment value restored from the last healthy revision
    is exact, and a small model "adjusting" it only breaks it.
    """
    return ".resources." in path or path.endswith("replicas")


def _render_candidates(candidates: list[FixProposal]) -> str:
    lines = []
    for i, c in enumerate(candidates):
        lines.append(f"[{i}] {c.strategy}: {_clip(c.rationale, 300)}")
        lines += [f"    {ch.path}: {_json(ch.before)} -> {_json(ch.after)}" for ch in c.changes[:5]]
    return "\n".join(lines)


def _held_to(
    base: Manifest, candidate: FixProposal, edits: list[dict[str, Any]]
) -> tuple[Manifest, list[dict[str, Any]]]:
    """The candidate with each edit that stays within its fields; and the edits dropped."""
    allowed = [c.path for c in candidate.changes]
    result, dropped = candidate.manifest, []
    for edit in edits:
        try:
            trial = apply_edits(result, [edit])
        except ValueError:
            dropped.append(edit)
            continue
        if all(_within(change.path, allowed) for change in manifests.diff(base, trial)):
            result = trial
        else:
            dropped.append(edit)
    return result, dropped


def _within(path: str, allowed: list[str]) -> bool:
    return any(path == a or path.startswith((f"{a}.", f"{a}[")) for a in allowed)


# -- speech ------------------------------------------------------------------------------

MAX_SPEECH_WORDS = 60
MIN_SPEECH_WORDS = 8
_URL = re.compile(r"(?i)\b(?:https?://|www\.)|\b[\w-]+\.(?:com|io|org|net|dev)\b")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"[*_#`>|~]+")
_BULLET = re.compile(r"(?m)^\s*(?:[-+•]|\d+[.)])\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LONG_NUMBER = re.compile(r"\d{5,}")


def speech(model: Model, state: IncidentState, settings: Settings) -> str:
    """What the phone says about the incident (without the question it then asks)."""
    w = state.incident.workload
    user = prompt(
        "speech.user",
        namespace=w.namespace,
        workload=w.name,
        failure=CLASS_PHRASES[state.incident.failure_class],
        diagnosis=_clip(state.diagnosis.summary if state.diagnosis else "none", 300),
        tried=_what_was_tried(state),
        language=settings.call_language,
    )
    try:
        text, _ = model.chat_text(prompt("speech.system"), user, max_tokens=160)
    except AdapterError as exc:
        log.warning("[%s] model speech unusable, using the template: %s", w.key, exc)
        return template_speech(state)
    checked = clean_speech(text, w.name, known=known_words(state.incident, state.evidence))
    if checked is None:
        log.warning(
            "[%s] model speech failed validation, using the template: %s",
            w.key,
            _clip(redact(text), 200),
        )
        return template_speech(state)
    return checked


def clean_speech(text: str, workload: str, known: Sequence[str] = ()) -> str | None:
    """`text` stripped of markup, if it is fit to be read aloud; else None.

    Not fit: too short or long, links, numbers, markup, anything `redact` would change,
    and anything `untrusted.findings` names (instructions, advice the guardrails
    refuse, numbers and links relayed from logs); `known` are the workload's own names.
    """
    text = _LINK.sub(r"\1", text)
    text = _BULLET.sub("", text)
    text = _MARKUP.sub("", text)
    text = " ".join(text.split()).strip(" \"'")
    # The phone adapter asks the question itself; a model that asks too is cut there.
    sentences = [s for s in _SENTENCE.split(text) if not s.rstrip().endswith("?")]
    text = " ".join(sentences)
    words = text.split()
    non_space = [c for c in text if not c.isspace()]
    if not MIN_SPEECH_WORDS <= len(words) <= MAX_SPEECH_WORDS:
        return None
    if _URL.search(text) or _LONG_NUMBER.search(text) or any(c in text for c in "{}[]<>\\"):
        return None
    if sum(c.isdigit() for c in non_space) > 0.1 * len(non_space):
        return None
    if redact(text) != text or not text.isprintable():
        return None
    if _spoken(workload) not in _spoken(text):
        return None
    if untrusted.findings(text, [workload, *known]):
        return None
    return text


def _spoken(text: str) -> str:
    return " ".join(re.sub(r"[-_./]", " ", text.lower()).split())


def template_speech(state: IncidentState) -> str:
    """The message when the model cannot write it: plain, bounded, always available."""
    w = state.incident.workload
    text = (
        f"The deployment {_spoken(w.name)} in namespace {_spoken(w.namespace)} is broken: "
        f"{CLASS_PHRASES[state.incident.failure_class]}. {_what_was_tried(state)}"
    )
    words = redact(text).split()
    if len(words) > MAX_SPEECH_WORDS:
        words = words[:MAX_SPEECH_WORDS]
        words[-1] = words[-1].rstrip(".,;:") + "."
    return " ".join(words)


def _what_was_tried(state: IncidentState) -> str:
    known = known_words(state.incident, state.evidence)

    def _brief(text: str) -> str:
        return brief(text, known=known)

    verified = state.verification is not None and state.verification.ok
    if state.pr_error and verified and state.pull_request and state.pull_request.draft:
        return (
            "A fix was applied and works, but the change to Git could not be checked, so "
            "its pull request is a draft that needs a hand edit: the fix is live but not in "
            "Git yet, and the next sync may undo it."
        )
    if state.pr_error and state.verification is not None and state.verification.ok:
        return (
            "A fix was applied and works, but its pull request could not be opened, so the "
            "fix is live but not in Git, and the next sync may undo it."
        )
    if state.error:
        return f"The automatic repair stopped: {_brief(state.error)}."
    if state.proposal is not None and state.verification is not None and not state.verification.ok:
        undone = " It was rolled back." if state.verification.rolled_back else ""
        return (
            f"A fix was applied, {_brief(state.proposal.rationale)}, but it did not work: "
            f"{_brief(state.verification.reason)}.{undone}"
        )
    if state.proposal is None and state.rejections:
        reason = state.rejections[-1].reasons[0] if state.rejections[-1].reasons else "refused"
        return f"A fix was found but not applied, because {_brief(reason)}."
    if state.proposal is None:
        return "No safe automatic fix was found."
    return f"A fix was prepared, {_brief(state.proposal.rationale)}, but not confirmed."


_FIELD_PREFIX = re.compile(r"\bspec\.template\.spec\.(?:containers\[\d+\]\.)?")


def brief(text: str, words: int = 14, known: Sequence[str] = ()) -> str:
    """The first clause of `text`, in at most `words` words, fit to be read aloud.

    Text that carries what `untrusted.findings` names (a value a model proposed, a
    server's message quoting one) is not read out: its place is the incident record.
    """
    if untrusted.findings(text, known):
        return "for reasons kept in the incident record"
    text = re.sub(r"[\[\]{}<>\\]", " ", _FIELD_PREFIX.sub("", redact(text)))
    first = re.split(r"(?<=[.;])\s", " ".join(text.split()), maxsplit=1)[0].rstrip(".;:")
    cut = first.split()[:words]
    return " ".join(cut) + ("..." if len(first.split()) > words else "")
