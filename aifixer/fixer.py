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

from . import grounding, guardrails, manifests, playbooks, untrusted
from .adapters.errors import AdapterError
from .adapters.llm import Model
from .models import (
    Diagnosis,
    Evidence,
    FailureClass,
    FieldChange,
    FixProposal,
    Incident,
    IncidentState,
    Manifest,
    ObjectRef,
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

EXIT_CODES = grounding.EXIT_CODES


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
        f"Workload: {w.kind} {w.namespace}/{w.name} (detected failure class: "
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


object_facts = grounding.object_facts  # what the claims and Services beside it show


def _facts(evidence: Evidence) -> list[str]:
    return [
        f"- exit code {code}: {EXIT_CODES[code]}"
        for code in _exit_codes(evidence)
        if code in EXIT_CODES
    ] + [f"- {fact}" for fact in object_facts(evidence)]


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

CLASS_PHRASES = grounding.CLASS_PHRASES
CLASS_FIELDS = grounding.CLASS_FIELDS


def diagnose(
    model: Model,
    incident: Incident,
    evidence: Evidence,
    changes: Sequence[FieldChange] = (),
    *,
    verified: bool = False,
) -> Diagnosis:
    """The model's explanation, written from facts established without it, or one written
    from those facts alone if the model fails or says what the facts do not state.

    Args:
        changes: the fix (live -> fixed) once one is known; with `verified`, the change
            applied and verified. The explanation must then name a field it changed.
    """
    facts = grounding.establish(incident, evidence, changes, verified=verified)
    user = prompt(
        "diagnose.user",
        evidence=render_evidence(incident, evidence),
        facts=facts.text(),
        classes=", ".join(FAILURE_CLASSES),
    )
    try:
        answer, _ = model.chat_json(
            SYSTEM_PROMPT(), user, DIAGNOSIS_SCHEMA, name="diagnosis", max_tokens=150
        )
    except AdapterError as exc:
        log.warning(
            "[%s] model diagnosis unusable, writing one from the facts: %s",
            incident.workload.key,
            exc,
        )
        return _written(incident, facts)
    summary, root_cause = redact(answer["summary"].strip()), redact(answer["root_cause"].strip())
    text = f"{summary}\n{root_cause}"
    found = untrusted.findings(text, known_words(incident, evidence, changes))
    found += grounding.problems(text, facts)
    if found:
        # Read first in the PR, heard on the call: it may neither relay what a log line
        # dictated nor state what the facts do not.
        log.warning(
            "[%s] model diagnosis not grounded (%s); writing one from the facts",
            incident.workload.key,
            "; ".join(found[:4]),
        )
        return _written(incident, facts)
    return Diagnosis(
        summary=summary,
        root_cause=root_cause,
        failure_class=answer["failure_class"],
        fields=(facts.fields or facts.class_fields)[:5],
        source="model",
    )


def known_words(
    incident: Incident, evidence: Evidence | None, changes: Sequence[FieldChange] = ()
) -> list[str]:
    """What the workload itself is called and runs, or is set to run by the fix: never a
    finding in text about it."""
    w = incident.workload
    words = [w.key, w.name, w.namespace]
    words += [c.after for c in changes if isinstance(c.after, str) and c.path.endswith(".image")]
    if evidence is not None:
        words += [i for rev in evidence.revisions for i in rev.images]
        for spec in (evidence.deployment, evidence.last_healthy_template):
            words += [
                c.get("image", "")
                for c in guardrails.pod_spec(spec).get("containers") or []
                if isinstance(c, dict) and isinstance(c.get("image"), str)
            ]
        for t in evidence.existing_tags:
            repo = t.image.rsplit(":", 1)[0] if ":" in t.image.rsplit("/", 1)[-1] else t.image
            words += [t.image, f"{repo}:{t.tag}"]
    return words


def _state_changes(state: IncidentState) -> list[FieldChange]:
    if state.apply is not None:
        return state.apply.changes
    return state.proposal.changes if state.proposal is not None else []


def playbook_diagnosis(
    incident: Incident,
    evidence: Evidence,
    changes: Sequence[FieldChange] = (),
    *,
    verified: bool = False,
) -> Diagnosis:
    """A diagnosis from the facts alone: what the PR shows when the model's is not usable."""
    return _written(incident, grounding.establish(incident, evidence, changes, verified=verified))


def _written(incident: Incident, facts: grounding.Facts) -> Diagnosis:
    summary, root_cause, fields = grounding.written(facts)
    return Diagnosis(
        summary=summary,
        root_cause=root_cause,
        failure_class=incident.failure_class,
        fields=fields,
        source="playbook",
    )


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
        if proposal.target is not None:
            reasons = object_reasons(self.evidence, proposal, self.settings)
        else:
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
        """A proposal whose changes are recomputed from the live Deployment (or the live
        object it fixes), not trusted."""
        result = manifests.clean(manifest if manifest is not None else candidate.manifest)
        if candidate.target is not None:
            live = object_of(self.evidence, candidate.target)
            base = manifests.clean(live) if live is not None else {}
            return candidate.model_copy(
                update={"manifest": result, "changes": manifests.diff(base, result)}
            )
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
        # A fix to a claim or a Service is a fact-given value the model has no better
        # choice for: the candidates are tried as they come.
        if strategy == "hybrid" and candidates and not any(c.target for c in candidates):
            proposal = _propose_hybrid(
                model, incident, evidence, diagnosis, candidates, attempts, shown
            )
        else:
            # "playbooks"; and "hybrid" with no candidate: aifixer knows no fix for this
            # fault, and a person is better placed than a model writing one unaided.
            proposal = attempts.first_candidate(candidates)
    return proposal, attempts.rejections


def fallbacks(
    incident: Incident,
    evidence: Evidence,
    diagnosis: Diagnosis,
    settings: Settings,
    *,
    remembered: FixProposal | None = None,
) -> list[FixProposal]:
    """The playbooks' candidates the guardrails accept, best first, as they were proposed
    (no model adjustment): what a next attempt may try when the chosen fix does not
    verify. None under the `model` strategy, which leaves the playbooks out.
    """
    if settings.fix_strategy == "model":
        return []
    attempts = _Attempts(evidence, settings)
    found = (
        attempts.accept(attempts.restated(c))
        for c in _candidates(evidence, incident, diagnosis, settings, remembered)
    )
    return [p for p in found if p is not None]


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


def object_of(evidence: Evidence, target: ObjectRef) -> Manifest | None:
    """The live object a proposal targets, as the evidence read it (with the phase and
    volume that decide whether a claim may be re-created)."""
    if target.kind == "PersistentVolumeClaim":
        for claim in evidence.claims:
            if claim.name == target.name:
                return {**claim.manifest, "status": {"phase": claim.phase}}
    elif target.kind == "Service":
        for svc in evidence.services:
            if svc.name == target.name:
                return svc.manifest
    return None


def object_reasons(evidence: Evidence, proposal: FixProposal, settings: Settings) -> list[str]:
    """`guardrails.check_object` for a proposal that fixes a claim or a Service."""
    target = proposal.target
    live = object_of(evidence, target) if target is not None else None
    if target is None or live is None:
        return ["the proposal names no object the evidence read"]
    meta = proposal.manifest.get("metadata") if isinstance(proposal.manifest, dict) else None
    if not isinstance(meta, dict) or (
        proposal.manifest.get("kind"),
        meta.get("namespace"),
        meta.get("name"),
    ) != (target.kind, target.namespace, target.name):
        return ["the proposal is not the object it names"]
    return guardrails.check_object(
        live, proposal.manifest, evidence.deployment, evidence.storage_classes, settings
    )


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
    if len(candidates) == 1 and not typed:
        # Nothing the answer could change: "0" applies the candidate, and "none" falls
        # back to it (the model cannot veto). Not asked: its seconds are before the fix.
        log.info("[%s] one candidate, no value to tune: the model is not asked",
                 incident.workload.key)  # fmt: skip
        return None
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
#
# The call is heard, at night, by someone just woken: plain sentences in the call's
# language, at most MAX_SPEECH_WORDS words, saying which workload (and namespace), what
# was seen, what was tried and what became of it. Never a raw status message, a field
# path, a quotation or an ellipsis. The template is written from the record's
# structured facts (failure class, the fields the fix changed, the outcome), never from
# its free text; the model's wording is held to the same rules (`speech_problems`).

MAX_SPEECH_WORDS = 60
MIN_SPEECH_WORDS = 8
LANGUAGES = ("en", "fr")
LANGUAGE_NAMES = {"en": "English", "fr": "French"}

_URL = re.compile(r"(?i)\b(?:https?://|www\.)|\b[\w-]+\.(?:com|io|org|net|dev)\b")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"[*_#`>|~]+")
_BULLET = re.compile(r"(?m)^\s*(?:[-+•]|\d+[.)])\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LONG_NUMBER = re.compile(r"\d{5,}")
_ELLIPSIS = re.compile(r"\.\s*\.|…")
_QUOTE = re.compile(r"[\"“”„«»‘’`]|(?<!\w)'|'(?!\w)")
# A field path (spec.template.spec..., containers[0]) or a dotted identifier.
_PATH = re.compile(r"\[\d+\]|\b[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*|\bspec\.")
# Kubernetes' own words for a state (OOMKilled, CrashLoopBackOff, ImagePullBackOff,
# ConfigMap, ReplicaSet...), and what a status message is made of: "0 of 1",
# "within 45s", "512Mi", "500m", "exit code 137".
_JARGON = re.compile(
    r"\b[A-Za-z]*[a-z][A-Z]\w*|\b[A-Z]{2,}[a-z]\w*"
    r"|(?i:\b(?:rollout|rolling\s+update|replicasets?|backoff|kubectl|kubelet|"
    r"crashloop\w*|oomkill\w*|imagepull\w*|errimage\w*|exit\s+code|"
    r"\d+\s+of\s+\d+\s+(?:new\s+)?replicas?|waiting\s+for\s+deployment))\b"
)
_RAW_AMOUNT = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s|Mi|Gi|Ki|Ti|M|G|m|h)\b|\b\d+\s+of\s+\d+\b")
_STATUS_PUNCTUATION = re.compile(r":[^:]*:")  # "x: y: z", how status messages chain causes

# The words counted to tell the languages apart; a speech must use its own more.
_LANGUAGE_WORDS = {
    "en": frozenset(
        "the is was were and but to of in it its not could so no has be been this that "
        "with did does after".split()
    ),
    "fr": frozenset(
        "le la les l de du des d est été et mais il elle son sa ses pas n dans un une "
        "donc ne qu que au aux rien personne".split()
    ),
}

# What was seen, as a person says it (the sentence's predicate).
SPOKEN_CLASS: dict[str, dict[str, str]] = {
    "en": {
        "ImagePull": "cannot start because its image cannot be pulled",
        "CrashLoop": "keeps crashing at start",
        "OOMKilled": "ran out of memory",
        "ProbeFailure": "keeps failing its health checks",
        "Unschedulable": "cannot start because no node has room for it",
        "ConfigError": "cannot start because a setting or a secret it needs is missing",
        "AppError": "is running but its application keeps reporting errors",
        "VolumePending": "cannot start because its storage volume is never created",
        "NoEndpoints": "is running but its service sends traffic to none of its pods",
    },
    "fr": {
        "ImagePull": "ne démarre pas car son image ne peut pas être téléchargée",
        "CrashLoop": "plante sans cesse au démarrage",
        "OOMKilled": "a manqué de mémoire",
        "ProbeFailure": "échoue sans cesse à ses contrôles de santé",
        "Unschedulable": "ne démarre pas car aucun nœud n'a de place pour lui",
        "ConfigError": "ne démarre pas car un réglage ou un secret dont il a besoin manque",
        "AppError": "tourne mais son application signale sans cesse des erreurs",
        "VolumePending": "ne démarre pas car son volume de stockage n'est jamais créé",
        "NoEndpoints": "tourne mais son service n'envoie le trafic à aucun de ses pods",
    },
}

_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "opening": "The deployment {name}, in namespace {namespace}, {seen}.",
        "tried": "A fix was tried: {change}.",
        "prepared": "A fix was prepared: {change}.",
        "live": "A fix is live and works: {change}.",
        "copy_live": "A fix works on a temporary copy: {change}.",
        "copy_tried": "A fix was tried on a temporary copy: {change}.",
        "rolled_back": "It did not make the deployment healthy, so it was undone.",
        "copy_failed": "It did not work there, and the deployment itself was left as it was.",
        "not_undone": "It did not work, and it could not be undone, so it may still be live.",
        "nothing_safe": "No safe fix could be tried, so nothing was changed.",
        "draft_pr": (
            "But its pull request is a draft that needs a hand edit; until then, the next "
            "sync may undo it."
        ),
        "pr_failed": (
            "But its pull request could not be opened, so it is not in Git and the next "
            "sync may undo it."
        ),
        "copy_draft_pr": (
            "But its pull request is a draft that needs a hand edit; until then, the "
            "deployment stays as it was."
        ),
        "copy_pr_failed": (
            "But its pull request could not be opened, so the deployment stays as it was "
            "until the fix is in Git."
        ),
        "person_after": "Someone changed the deployment meanwhile, so it was left as they set it.",
        "person_before": (
            "Someone changed the deployment first, so nothing was applied and it was left "
            "as they set it."
        ),
        "stopped": "The repair stopped before changing anything.",
        "not_confirmed": "It could not be confirmed that it works.",
        "one_more": "{change}, along with one other setting",
        "more": "{change}, along with {n} other settings",
        "earlier": "A {nth} fix did not help and was undone: {change}.",
        "earlier_short": "A {nth} fix did not help and was undone.",
        "tried_nth": "Then a {nth} fix was tried: {change}.",
        "prepared_nth": "Then a {nth} fix was prepared: {change}.",
        "live_nth": "Then a {nth} fix was tried, and it is live and works: {change}.",
        "stopped_nth": "Then the repair stopped before trying a {nth} fix.",
        "nth": "first second third fourth",
    },
    "fr": {
        "opening": "Le déploiement {name}, dans l'espace de noms {namespace}, {seen}.",
        "tried": "Un correctif a été essayé : {change}.",
        "prepared": "Un correctif a été préparé : {change}.",
        "live": "Un correctif est en place et fonctionne : {change}.",
        "copy_live": "Un correctif fonctionne sur une copie temporaire : {change}.",
        "copy_tried": "Un correctif a été essayé sur une copie temporaire : {change}.",
        "rolled_back": "Il n'a pas remis le déploiement en état, donc il a été annulé.",
        "copy_failed": (
            "Il n'y a pas fonctionné, et le déploiement lui-même a été laissé tel quel."
        ),
        "not_undone": (
            "Il n'a pas fonctionné et n'a pas pu être annulé, donc il est peut-être encore en "
            "place."
        ),
        "nothing_safe": "Aucun correctif sûr n'a pu être essayé, donc rien n'a été modifié.",
        "draft_pr": (
            "Mais sa demande de fusion est un brouillon à corriger à la main ; d'ici là, la "
            "prochaine synchronisation peut l'annuler."
        ),
        "pr_failed": (
            "Mais sa demande de fusion n'a pas pu être ouverte, donc il n'est pas dans Git "
            "et la prochaine synchronisation peut l'annuler."
        ),
        "copy_draft_pr": (
            "Mais sa demande de fusion est un brouillon à corriger à la main ; d'ici là, le "
            "déploiement reste tel quel."
        ),
        "copy_pr_failed": (
            "Mais sa demande de fusion n'a pas pu être ouverte, donc le déploiement reste tel "
            "quel tant que le correctif n'est pas dans Git."
        ),
        "person_after": (
            "Quelqu'un a modifié le déploiement entre-temps, donc il a été laissé tel quel."
        ),
        "person_before": (
            "Quelqu'un a modifié le déploiement avant, donc rien n'a été appliqué et il a "
            "été laissé tel quel."
        ),
        "stopped": "La réparation s'est arrêtée avant de modifier quoi que ce soit.",
        "not_confirmed": "Il n'a pas pu être confirmé qu'il fonctionne.",
        "one_more": "{change}, ainsi qu'un autre réglage",
        "more": "{change}, ainsi que {n} autres réglages",
        "earlier": "Un {nth} correctif n'a pas aidé et a été annulé : {change}.",
        "earlier_short": "Un {nth} correctif n'a pas aidé et a été annulé.",
        "tried_nth": "Puis un {nth} correctif a été essayé : {change}.",
        "prepared_nth": "Puis un {nth} correctif a été préparé : {change}.",
        "live_nth": "Puis un {nth} correctif a été essayé, il est en place et fonctionne : {change}.",
        "stopped_nth": "Puis la réparation s'est arrêtée avant d'essayer un {nth} correctif.",
        "nth": "premier deuxième troisième quatrième",
    },
}

# How the phrases above name a StatefulSet or a DaemonSet instead of a Deployment.
_KIND_WORDS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "en": {
        "StatefulSet": (
            ("The deployment", "The stateful set"),
            ("the deployment", "the stateful set"),
        ),
        "DaemonSet": (("The deployment", "The daemon set"), ("the deployment", "the daemon set")),
    },
    "fr": {
        "StatefulSet": (("Le déploiement", "Le composant"), ("le déploiement", "le composant")),
        "DaemonSet": (("Le déploiement", "Le composant"), ("le déploiement", "le composant")),
    },
}

# The change a fix made, in words, by the field it touched.
_CHANGES: dict[str, dict[str, str]] = {
    "en": {
        "memory_limit": "the memory limit",
        "memory_request": "the memory request",
        "cpu_limit": "the processor limit",
        "cpu_request": "the processor request",
        "raised": "{what} was raised from {before} to {after}",
        "lowered": "{what} was lowered from {before} to {after}",
        "set": "{what} was set to {after}",
        "changed_amount": "{what} was changed",
        "megabytes": "megabytes",
        "gigabytes": "gigabytes",
        "millicores": "millicores",
        "image_back_version": "the image was set back to version {tag}",
        "image_version": "the image was changed to version {tag}",
        "image_back": "the image was set back to an earlier one",
        "image": "the image was changed",
        "command": "its start command was changed",
        "env": "its environment variables were changed",
        "probe": "its health check settings were changed",
        "ports": "its ports were changed",
        "replicas": "the number of copies was changed from {before} to {after}",
        "other": "one of its settings was changed",
    },
    "fr": {
        "memory_limit": "la limite de mémoire",
        "memory_request": "la réservation de mémoire",
        "cpu_limit": "la limite de processeur",
        "cpu_request": "la réservation de processeur",
        "raised": "{what} a été relevée de {before} à {after}",
        "lowered": "{what} a été abaissée de {before} à {after}",
        "set": "{what} a été fixée à {after}",
        "changed_amount": "{what} a été modifiée",
        "megabytes": "mégaoctets",
        "gigabytes": "gigaoctets",
        "millicores": "millicœurs",
        "image_back_version": "l'image a été ramenée à la version {tag}",
        "image_version": "l'image a été changée pour la version {tag}",
        "image_back": "l'image a été ramenée à une version précédente",
        "image": "l'image a été changée",
        "command": "sa commande de démarrage a été modifiée",
        "env": "ses variables d'environnement ont été modifiées",
        "probe": "les réglages de ses contrôles de santé ont été modifiés",
        "ports": "ses ports ont été modifiés",
        "replicas": "le nombre de copies est passé de {before} à {after}",
        "other": "un de ses réglages a été modifié",
    },
}

SpeechOutcome = Literal[
    "rolled_back",  # a fix was applied, did not work, and the original is back
    "copy_failed",  # a fix did not work on a temporary copy; the workload was never changed
    "not_undone",  # a fix was applied, did not work, and is not (or not yet) undone
    "nothing_safe",  # no fix passed the guardrails, or none was found
    "draft_pr",  # the fix is live and verified; its pull request is a draft to hand-edit
    "pr_failed",  # the fix is live and verified; its pull request could not be opened
    "person_after",  # a person changed the workload after the fix: left as they set it
    "person_before",  # a person changed the workload before the fix: nothing applied
    "stopped",  # the repair stopped before changing anything
    "not_confirmed",  # a fix was applied, and its check did not conclude
]
SPEECH_OUTCOMES: tuple[str, ...] = get_args(SpeechOutcome)

# How the pipeline words a person's change: read only in a record written before
# `IncidentState.person_changed` existed (a rolling upgrade), to choose a sentence.
_PERSON_CHANGED = re.compile(r"changed by someone else|someone else changed")


def call_language(value: str) -> str:
    """The call's language ("en", "fr") from a setting: "fr", "fr-FR", "FR_fr"..."""
    language = value.strip().lower().replace("_", "-").split("-")[0]
    if language not in LANGUAGES:
        raise ValueError(f"call language {value!r}: one of {', '.join(LANGUAGES)}")
    return language


def speech(model: Model, state: IncidentState, settings: Settings) -> str:
    """What the phone says about the incident (without the question it then asks)."""
    w = state.incident.workload
    language = call_language(settings.call_language)
    template = template_speech(state, language)
    user = prompt(
        "speech.user",
        kind=w.kind,
        namespace=w.namespace,
        workload=w.name,
        failure=CLASS_PHRASES[state.incident.failure_class],
        # The diagnosis as it may be shown: the recorded one if the facts bear it out.
        diagnosis=_clip(grounding.shown(state)[0].summary if state.diagnosis else "none", 300),
        tried=template,
        language=LANGUAGE_NAMES[language],
    )
    try:
        text, _ = model.chat_text(prompt("speech.system"), user, max_tokens=160)
    except AdapterError as exc:
        log.warning("[%s] model speech unusable, using the template: %s", w.key, exc)
        return template
    checked = clean_speech(text, state, language)
    if checked is None:
        log.warning(
            "[%s] model speech failed validation (%s), using the template: %s",
            w.key,
            "; ".join(speech_problems(_plain(text), state, language)) or "asks a question",
            _clip(redact(text), 200),
        )
        return template
    return checked


def clean_speech(text: str, state: IncidentState, language: str = "en") -> str | None:
    """`text` stripped of markup and of any question, if it is fit to be read aloud; else None.

    Fit: `speech_problems` finds nothing.
    """
    text = _plain(text)
    return text if text and not speech_problems(text, state, language) else None


def _plain(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    text = _BULLET.sub("", text)
    text = _MARKUP.sub("", text)
    text = " ".join(text.split()).strip(" \"'")
    # The phone adapter asks the question itself; a model that asks too is cut there.
    return " ".join(s for s in _SENTENCE.split(text) if not s.rstrip().endswith("?"))


def speech_problems(text: str, state: IncidentState, language: str = "en") -> list[str]:
    """Why `text` may not be read out on the call about `state`; empty when it may.

    The rules a speech is held to, whoever wrote it: between MIN_SPEECH_WORDS and
    MAX_SPEECH_WORDS words; no ellipsis, quotation, field path, raw status text or
    Kubernetes state name; no link, long number, markup, question, secret, or anything
    `untrusted.findings` names (instructions, refused advice, numbers and links relayed
    from logs); the workload named; written in `language`.
    """
    language = call_language(language)
    w = state.incident.workload
    problems = []
    words = text.split()
    if len(words) < MIN_SPEECH_WORDS:
        problems.append(f"too short ({len(words)} words)")
    if len(words) > MAX_SPEECH_WORDS:
        problems.append(f"too long ({len(words)} words, at most {MAX_SPEECH_WORDS})")
    if _ELLIPSIS.search(text):
        problems.append("an ellipsis")
    if _QUOTE.search(text):
        problems.append("a quotation")
    if _PATH.search(text):
        problems.append("a field path")
    jargon = _JARGON.search(text.replace(w.name, " ").replace(w.namespace, " "))
    if jargon or _RAW_AMOUNT.search(text) or _STATUS_PUNCTUATION.search(text):
        problems.append("raw status text" + (f" ({jargon.group(0)})" if jargon else ""))
    if _URL.search(text) or _LONG_NUMBER.search(text) or any(c in text for c in "{}[]<>\\"):
        problems.append("a link, a long number or markup")
    non_space = [c for c in text if not c.isspace()]
    if non_space and sum(c.isdigit() for c in non_space) > 0.1 * len(non_space):
        problems.append("too many digits")
    if "?" in text:
        problems.append("a question (the call asks its own)")
    if redact(text) != text or not text.isprintable():
        problems.append("a secret or an unprintable character")
    if _spoken(w.name) not in _spoken(text):
        problems.append("the workload is not named")
    found = untrusted.findings(
        text, known_words(state.incident, state.evidence, _state_changes(state))
    )
    problems += [f"untrusted text: {f}" for f in found]
    if not _in_language(text, language):
        problems.append(f"not in {LANGUAGE_NAMES[language]}")
    return problems


def _in_language(text: str, language: str) -> bool:
    tokens = re.findall(r"[a-zà-ÿœ]+", text.lower())
    counts = {lang: sum(t in words for t in tokens) for lang, words in _LANGUAGE_WORDS.items()}
    others = max(n for lang, n in counts.items() if lang != language)
    return counts[language] >= 2 and counts[language] > others


def _spoken(text: str) -> str:
    return " ".join(re.sub(r"[-_./]", " ", text.lower()).split())


def speech_outcome(state: IncidentState) -> SpeechOutcome:
    """What became of the attempt, from the record's structured facts."""
    v = state.verification
    if v is not None and v.ok:
        if state.pull_request is not None and state.pull_request.draft:
            return "draft_pr"
        return "pr_failed" if state.pr_error else "not_confirmed"
    person = state.person_changed is not None or any(
        _PERSON_CHANGED.search(t or "") for t in (state.error, v and v.reason)
    )
    if state.proposal is None:
        return "nothing_safe"
    if v is not None and state.verify_copy is not None:
        return "copy_failed"
    if v is not None:
        if v.rolled_back:
            return "rolled_back"
        return "person_after" if person else "not_undone"
    if state.apply is not None:
        return "not_undone" if state.error else "not_confirmed"
    if person:
        return "person_before"
    return "stopped"


def template_speech(state: IncidentState, language: str = "en") -> str:
    """The message when the model's is refused: plain, bounded, always available.

    Written from the record's facts alone: the workload, its failure class, the fields
    the fix changed and their amounts, and the outcome (`speech_outcome`).
    """
    language = call_language(language)
    say = _PHRASES[language]
    w = state.incident.workload
    sentences = [
        say["opening"].format(
            name=_spoken(w.name),
            namespace=_spoken(w.namespace),
            seen=SPOKEN_CLASS[language][state.incident.failure_class],
        )
    ]
    outcome = speech_outcome(state)
    change = _change_words(state, language)
    # Every fix tried before this one (applied, not verified, undone), in order; then
    # this one, "then a second fix...".
    ordinals = say["nth"].split()
    earlier = [
        (ordinals[min(a.number, len(ordinals)) - 1], _change_words(state, language, a.proposal))
        for a in state.attempts
    ]
    nth = ordinals[min(len(earlier), len(ordinals) - 1)]
    verb = (lambda key: say[f"{key}_nth"]) if earlier else (lambda key: say[key])
    if state.verify_copy is not None and outcome in ("draft_pr", "pr_failed", "copy_failed"):
        # Verified (or not) on a temporary copy: the workload itself was never changed.
        if outcome == "copy_failed":
            sentences += [say["copy_tried"].format(change=change), say["copy_failed"]]
        else:
            sentences += [say["copy_live"].format(change=change), say[f"copy_{outcome}"]]
    elif outcome in ("draft_pr", "pr_failed"):
        sentences += [verb("live").format(change=change, nth=nth), say[outcome]]
    elif outcome in ("nothing_safe", "stopped", "person_before"):
        if outcome == "person_before":
            sentences.append(verb("prepared").format(change=change, nth=nth))
        sentences.append(verb(outcome).format(nth=nth) if outcome == "stopped" else say[outcome])
    else:
        sentences += [verb("tried").format(change=change, nth=nth), say[outcome]]

    def said(told: list[str]) -> str:
        text = " ".join([sentences[0], *told, *sentences[1:]])
        if w.kind != "Deployment":
            # The phrases name a Deployment; the other kinds by their spoken names.
            for written, spoken in _KIND_WORDS[language][w.kind]:
                text = text.replace(written, spoken)
        return text

    text = said([say["earlier"].format(nth=o, change=c) for o, c in earlier])
    if earlier and speech_problems(text, state, language):
        # Too long, most often: the earlier fixes said without their detail.
        text = said([say["earlier_short"].format(nth=o) for o, _ in earlier])
    if speech_problems(text, state, language):
        # A value from the record that does not pass (an odd image tag): said generically.
        text = text.replace(change, _CHANGES[language]["other"])
    return redact(text)


_CLUSTER_SENTENCE = {
    "en": "This is about the cluster {cluster}.",
    "fr": "Il s'agit du cluster {cluster}.",
}


def naming_cluster(text: str, state: IncidentState, language: str = "en") -> str:
    """`text` opened by the sentence naming the incident's cluster (a farm of several).

    Held to the same rules: if the two together do not pass (too long), the template
    follows the sentence instead.
    """
    language = call_language(language)
    sentence = _CLUSTER_SENTENCE[language].format(cluster=_spoken(state.incident.workload.cluster))
    combined = f"{sentence} {text}"
    if speech_problems(combined, state, language):
        combined = f"{sentence} {template_speech(state, language)}"
    return combined


def _change_words(state: IncidentState, language: str, proposal: FixProposal | None = None) -> str:
    """The fix's change in words (`proposal`, by default the record's): its first field,
    and how many others it changed."""
    proposal = proposal if proposal is not None else state.proposal
    changes = proposal.changes if proposal is not None else []
    words = _CHANGES[language]
    if not changes:
        return words["other"]
    described = _one_change(changes[0], state, language)
    known = known_words(state.incident, state.evidence, changes)
    if untrusted.findings(described, known) or _LONG_NUMBER.search(described):
        described = words["other"]
    # A limit and its request raised together read as one change.
    rest = [c for c in changes[1:] if _field_kind(c.path)[0] != _field_kind(changes[0].path)[0]]
    if len(rest) == 1:
        return _PHRASES[language]["one_more"].format(change=described)
    if rest:
        return _PHRASES[language]["more"].format(change=described, n=len(rest))
    return described


def _field_kind(path: str) -> tuple[str, str]:
    """(kind of field, its detail) for a changed path: ("memory", "limit"), ("image", "")..."""
    m = re.search(r"\.resources(?:\.(limits|requests))?(?:\.(memory|cpu))?$", path)
    if m:
        return (m.group(2) or "resources", "limit" if m.group(1) != "requests" else "request")
    if path == "spec.replicas":
        return ("replicas", "")
    for kind, fields in (
        ("image", ("image",)),
        ("command", ("command", "args")),
        ("env", ("env", "envFrom")),
        ("probe", guardrails.PROBES),
        ("ports", ("ports",)),
    ):
        if re.search(r"\.(?:" + "|".join(fields) + r")(?:[.\[]|$)", path):
            return (kind, "")
    return ("other", "")


def _one_change(change: Any, state: IncidentState, language: str) -> str:
    words = _CHANGES[language]
    kind, detail = _field_kind(change.path)
    if kind in ("memory", "cpu"):
        what = words[f"{kind}_{detail}"]
        unit = _unit(kind, change.before, change.after)
        before, after = _amount(change.before, unit), _amount(change.after, unit)
        if after is None:
            return words["changed_amount"].format(what=what)
        shown_after = f"{after[1]} {words[unit]}"
        if before is None:
            return words["set"].format(what=what, after=shown_after)
        way = "raised" if after[0] > before[0] else "lowered"
        return words[way].format(what=what, before=before[1], after=shown_after)
    if kind == "image":
        return _image_words(change, state, words)
    if kind == "replicas" and isinstance(change.before, int) and isinstance(change.after, int):
        return words["replicas"].format(before=change.before, after=change.after)
    return words.get(kind, words["other"])


_SPOKEN_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T|m)?$")
_FACTORS = {
    None: 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def _unit(kind: str, *values: Any) -> str:
    """The unit the amounts are said in: gigabytes when all are whole gigabytes."""
    if kind == "cpu":
        return "millicores"
    amounts = [_amount(v, "bytes") for v in values if v is not None]
    whole = all(a is not None and a[0] >= 2**30 and a[0] % 2**30 == 0 for a in amounts)
    return "gigabytes" if amounts and whole else "megabytes"


def _amount(value: Any, unit: str) -> tuple[float, str] | None:
    """(base amount, the number said in `unit`) of a Kubernetes quantity, or None."""
    m = _SPOKEN_QUANTITY.match(str(value)) if value is not None else None
    if m is None:
        return None
    base = float(m.group(1)) * _FACTORS[m.group(2)]
    divisor = {"millicores": 1e-3, "gigabytes": 2**30, "megabytes": 2**20}.get(unit, 1)
    return base, _number(base / divisor)


def _number(value: float) -> str:
    return str(int(round(value))) if abs(value - round(value)) < 0.05 else f"{value:.1f}"


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,24}$")


def _image_words(change: Any, state: IncidentState, words: dict[str, str]) -> str:
    after = change.after if isinstance(change.after, str) else ""
    earlier = state.evidence is not None and any(
        after in rev.images for rev in state.evidence.revisions if not rev.current
    )
    tag = after.rsplit(":", 1)[1] if ":" in after.rsplit("/", 1)[-1] and "@" not in after else ""
    if tag and _TAG.match(tag) and tag != "latest":
        return words["image_back_version" if earlier else "image_version"].format(tag=tag)
    return words["image_back" if earlier else "image"]
