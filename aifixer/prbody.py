"""The pull request a reviewer reads: a title that says what changed and why, and a body
that leads with the facts aifixer established (`aifixer.grounding`), then the diagnosis
(only if it holds to them), the evidence, the diff and how the fix was verified.

Pure functions of the incident's state (and the file diff, known only once the GitOps
file is edited), so they are tested without a forge. Everything that comes from the
cluster is untrusted text: excerpts are bounded, code fences cannot be broken out of,
and anything that looks like a credential is redacted before it reaches GitHub, where
a pull request may be read by many more people than the cluster.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from . import grounding
from .manifests import split_path
from .models import FieldChange, IncidentState
from .redact import REDACTED, redact

__all__ = [
    "MARKER",
    "REDACTED",
    "body",
    "draft_body",
    "hand_edit_note",
    "redact",
    "title",
    "workload_marker",
]

MAX_PODS = 5
MAX_EVENTS = 5
MAX_LOG_LINES = 10
MAX_LINE = 240  # characters of one excerpt line
MAX_DIFF_LINES = 200
MAX_BODY = 60_000  # GitHub refuses bodies over 65,536 characters

_FAILURE_WORDS = {
    "ImagePull": "image pull failures",
    "CrashLoop": "CrashLoopBackOff",
    "OOMKilled": "OOMKilled",
    "ProbeFailure": "failing probes",
    "Unschedulable": "FailedScheduling",
    "ConfigError": "CreateContainerConfigError",
    "AppError": "application errors",
    "VolumePending": "a PersistentVolumeClaim that never binds",
    "NoEndpoints": "a Service without endpoints",
}

# -- title ---------------------------------------------------------------------------


def title(state: IncidentState) -> str:
    """e.g. "fix(shop/report-api): raise memory limit to 144Mi after OOMKilled"."""
    incident = state.incident
    changes = _changes(state)
    what = (
        " and ".join(_describe(c) for c in changes[:2])
        if len(changes) <= 2
        else (f"{_describe(changes[0])} and {len(changes) - 1} more fields")
    )
    why = _FAILURE_WORDS[incident.failure_class]
    target = state.proposal.target if state.proposal is not None else None
    if target is not None and what:  # the object fixed beside the workload
        what = f"{what} in {target.kind} {target.name}"
    return redact(f"fix({incident.workload.key}): {what or 'update the manifest'} after {why}")


def _changes(state: IncidentState) -> list[FieldChange]:
    if state.apply is not None:
        return state.apply.changes
    return state.proposal.changes if state.proposal is not None else []


def _describe(change: FieldChange) -> str:
    """A change in a reviewer's words: the field's role, then the new value."""
    parts = [p for p in split_path(change.path) if isinstance(p, str)]
    field = _field_words(parts)
    if change.after is None:
        return f"remove {field}"
    if parts[-2:] in (["limits", "memory"], ["requests", "memory"]):
        kind = "limit" if parts[-2] == "limits" else "request"
        return f"{_direction(change.before, change.after)} memory {kind} to {change.after}"
    if isinstance(change.after, (str, int, float)) and len(str(change.after)) <= 60:
        return f"set {field} to {change.after}"
    added = _names(change.after) - _names(change.before)
    if added:
        return f"add {field} {', '.join(sorted(added))}"
    return f"fix {field}"


# Path segments that say where a field is, not what it is.
_STRUCTURE = {"spec", "template", "containers", "httpGet", "valueFrom", "metadata"}
# Leaf names that mean little without their parent: `readinessProbe port`.
_GENERIC = {"port", "path", "key", "name", "value"}


def _field_words(parts: list[str]) -> str:
    named = [p for p in parts if p not in _STRUCTURE] or parts[-1:]
    if len(named) > 1 and named[-1] in _GENERIC:
        return f"{named[-2]} {named[-1]}"
    return named[-1]


def _names(value: object) -> set[str]:
    """The names in a list of named items (env, ports, volumes)."""
    if not isinstance(value, list):
        return set()
    return {i["name"] for i in value if isinstance(i, dict) and isinstance(i.get("name"), str)}


_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "": 1,
}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)$")


def _direction(before: object, after: object) -> str:
    b, a = _bytes(before), _bytes(after)
    if b is None or a is None or a == b:
        return "set"
    return "raise" if a > b else "lower"


def _bytes(value: object) -> float | None:
    m = _QUANTITY.match(str(value)) if value is not None else None
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


# -- body ----------------------------------------------------------------------------


def body(state: IncidentState, file_diff: str, path: str, proof: str | None = None) -> str:
    """The pull request's Markdown body.

    Args:
        state: the incident after a verified apply.
        file_diff: the unified diff of the GitOps file this pull request makes.
        path: that file's path in the repository.
        proof: for a kustomize or Helm layout, how rendering the branch proves the
            change (Markdown, aifixer.sources.Proof.markdown).
    """
    sections = [
        workload_marker(state),
        _intro(state, path),
        _facts(state),
        _diagnosis(state),
        _evidence(state),
        _change(state, file_diff),
        f"## Rendered\n\n{proof}" if proof else "",
        _verification(state),
        _attempts(state),
        _incident(state),
    ]
    return _bounded(sections)


def draft_body(
    state: IncidentState, explanation: str, hand_edits: list[str], note_path: str
) -> str:
    """The body of the draft pull request opened when rendering could not prove a change.

    Args:
        state: the incident after a verified apply.
        explanation: why no edit of the repository could be proven (aifixer.sources).
        hand_edits: what a person must edit, one item each.
        note_path: the note file the draft adds (it changes no manifest).
    """
    w = state.incident.workload
    copy = _copy(state)
    intro = (
        f"aifixer found {w.kind} `{w.key}` on cluster `{w.cluster}` failing, "
        + (
            f"**verified a fix on a temporary copy of it** (`{copy}`, removed since)"
            if copy
            else "**applied a fix to the cluster and verified it**"
        )
        + f", but could not prove an edit of this repository that renders exactly that fix. "
        f"This draft changes **no manifest**: it only adds `{note_path}`, so nothing "
        f"unproven can be merged or synced.\n\n"
        + (
            f"> The {w.kind} itself was not changed: it stays as it is until the fix is "
            f"merged and synced. "
            if copy
            else "> The change is already live, and the next sync may undo it. "
        )
        + f"Make the edits below on this branch, check the render, delete `{note_path}`, then "
        f"mark the pull request ready for review."
        + ("" if copy else f" If you reject the fix, revert the {w.kind} in the cluster too.")
    )
    sections = [
        workload_marker(state),
        intro,
        _hand_edits(explanation, hand_edits),
        _facts(state),
        _diagnosis(state),
        _evidence(state),
        _change(state, None),
        _verification(state),
        _attempts(state),
        _incident(state),
    ]
    return _bounded(sections)


def hand_edit_note(state: IncidentState, explanation: str, hand_edits: list[str]) -> str:
    """The note file a draft pull request adds: what to edit, for whoever opens the branch."""
    i = state.incident
    lines = [
        f"# Hand edit needed: {i.workload.key} (incident {i.id})",
        "",
        "aifixer verified this change on a temporary copy of the workload,"
        if _copy(state)
        else "aifixer applied and verified this change in the cluster,",
        "but could not prove an edit of this repository that renders it. Make the edits",
        "below on this branch, check the render, and delete this file in the same commit.",
        "",
        _hand_edits(explanation, hand_edits),
        "",
        _change(state, None),
    ]
    return redact("\n".join(lines)) + "\n"


def workload_marker(state: IncidentState) -> str:
    """An HTML comment (not shown on GitHub), the body's first line, naming the workload
    a pull request is for and the fields it changes: how a newer incident's pull
    request finds the older ones it supersedes (`MARKER` reads it back)."""
    w = state.incident.workload
    fields = " ".join(sorted({c.path for c in state.apply.changes})) if state.apply else ""
    return (
        f"<!-- aifixer-workload: {w.cluster}/{w.namespace}/{w.kind}/{w.name} fields: {fields} -->"
    )


# The marker as `workload_marker` writes it: (workload, space-separated field paths).
MARKER = re.compile(r"<!-- aifixer-workload: (\S+) fields: ([^<>]*?) ?-->")


def _bounded(sections: list[str]) -> str:
    text = redact("\n\n".join(s for s in sections if s))
    if len(text) > MAX_BODY:
        text = text[:MAX_BODY] + "\n\n… (cut: the body exceeded GitHub's limit)"
    return text + "\n"


def _hand_edits(explanation: str, hand_edits: list[str]) -> str:
    out = ["## What must be edited by hand", "", _clip(explanation, 2000)]
    if hand_edits:
        out += ["", *[f"- {_clip(h, 1000)}" for h in hand_edits[:20]]]
    return "\n".join(out)


def _intro(state: IncidentState, path: str) -> str:
    w = state.incident.workload
    copy = _copy(state)
    if copy:
        return (
            f"aifixer found {w.kind} `{w.key}` on cluster `{w.cluster}` failing, and "
            f"**verified this fix on a temporary copy of it** (`{copy}`: one replica of the "
            f"fixed pod template that no Service selected, removed since), since its GitOps "
            f"controller reverts live changes and may not be paused. This pull request "
            f"brings the fix to `{path}`.\n\n"
            f"> The fix is **not live**: the {w.kind} itself was not changed, and stays as "
            f"it is until this pull request is merged and the controller syncs it."
        )
    return (
        f"aifixer found {w.kind} `{w.key}` on cluster `{w.cluster}` failing, "
        f"**applied this fix to the cluster and verified it**. This pull request brings "
        f"`{path}` in line with what now runs, so the next sync does not revert the fix.\n\n"
        f"> The change is already live. Review it as you would any change; if you reject "
        f"it, revert the {w.kind} in the cluster too."
    )


def _facts(state: IncidentState) -> str:
    """What aifixer established without the model: the section a reviewer reads first."""
    facts = grounding.of_state(state)
    return "\n".join(
        [
            "## Facts",
            "",
            "Established by aifixer from the cluster, its revision history and the verified "
            "change; the diagnosis below may state nothing else.",
            "",
            *[f"- {_md(_clip(line, 600))}" for line in facts.lines[1:]],
        ]
    )


def diagnosis_section(state: IncidentState) -> str:
    """The Diagnosis section exactly as `body` writes it (redacted), to find it there later."""
    return redact(_diagnosis(state))


def digest(section: str) -> str:
    """What a pull request records of the section it was opened with (`diagnosis_sha`)."""
    return hashlib.sha256(section.encode()).hexdigest()


def find_diagnosis(body: str) -> str | None:
    """The Diagnosis section of a body `body` wrote: from its heading to the next one."""
    start = body.find("\n\n## Diagnosis\n")
    if start < 0:
        return None
    start += 2
    end = body.find("\n\n## ", start)
    return body[start:] if end < 0 else body[start:end]


def _diagnosis(state: IncidentState) -> str:
    if state.diagnosis is None:
        return ""
    # Checked again here, against the change that verified: a diagnosis written before
    # the fix may contradict it, and then the one written from the facts is shown.
    d, refused = grounding.shown(state)
    lines = [
        "## Diagnosis",
        "",
        _clip(d.summary, 1000),
        "",
        f"**Root cause:** {_clip(d.root_cause, 2000)}",
        "",
    ]
    facts = f"Failure class: `{d.failure_class}` · diagnosed by: {d.source}"
    if refused and state.diagnosis.source == "model":
        facts += " (the model's explanation stated what the facts do not, and is not shown)"
    if d.fields:
        facts += f" · fields: {', '.join(f'`{f}`' for f in d.fields)}"
    return "\n".join([*lines, facts])


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~!])")


def _md(text: str) -> str:
    """Plain text shown as such in Markdown: no link, emphasis, HTML or code span."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _evidence(state: IncidentState) -> str:
    ev = state.evidence
    if ev is None:
        return ""
    out = [
        "## Evidence",
        "",
        "> Quoted as read from the cluster and Loki: **untrusted text**, written by whatever "
        "runs there. aifixer followed no instruction in it, and neither should you.",
    ]
    if ev.pods:
        pods = []
        for p in ev.pods[:MAX_PODS]:
            reasons = ", ".join(p.reasons) or "-"
            last = p.last_termination or {}
            term = (
                f"; last terminated: {last.get('reason')} (exit {last.get('exitCode')})"
                if last
                else ""
            )
            pods.append(
                f"{p.name}: {p.phase}, ready={p.ready}, restarts={p.restart_count}, "
                f"reasons: {reasons}{term}"
            )
        out += ["", "Pods:", _fence(pods, more=len(ev.pods) - MAX_PODS)]
    warnings = [e for e in ev.events if e.type == "Warning"]
    if warnings:
        events = [
            f"{e.reason} ({e.object}, x{e.count}): {e.message}" for e in warnings[:MAX_EVENTS]
        ]
        out += ["", "Warning events:", _fence(events, more=len(warnings) - MAX_EVENTS)]
    if ev.logs:
        logs = [f"{x.time} {x.pod}/{x.container}: {x.line}" for x in ev.logs[-MAX_LOG_LINES:]]
        out += ["", "Logs (newest last):", _fence(logs, more=len(ev.logs) - MAX_LOG_LINES)]
    return "\n".join(out) if len(out) > 3 else ""


def _change(state: IncidentState, file_diff: str | None) -> str:
    """The live change, the strategy, and (unless None) the diff of the GitOps file."""
    verified = (
        "## Change verified on a temporary copy" if _copy(state) else "## Verified live change"
    )
    out = ["## Change" if file_diff is not None else verified]
    changes = _changes(state)
    if changes:
        out.append("")
        out += [f"- `{c.path}`: {_value(c.before)} → {_value(c.after)}" for c in changes]
    if state.proposal is not None:
        out += [
            "",
            f"Strategy: {state.proposal.source} / {state.proposal.strategy}. "
            f"{_clip(state.proposal.rationale, 1000)}",
        ]
    if file_diff is not None:
        lines = file_diff.splitlines()
        out += ["", _fence(lines[:MAX_DIFF_LINES], lang="diff", more=len(lines) - MAX_DIFF_LINES)]
    return "\n".join(out)


def _verification(state: IncidentState) -> str:
    v = state.verification
    if v is None:
        return ""
    out = ["## Verification", "", f"**{'Passed' if v.ok else 'Failed'}:** {_clip(v.reason, 1000)}"]
    out.append("")
    out.append("")
    copy = _copy(state)
    out.append(
        f"Checked on the temporary copy `{copy}`: its rollout completed, its pod became "
        f"Ready and stayed so without restarts, and no new error lines from it reached Loki."
        if copy
        else "Checked: the rollout completed, the new pods became Ready and stayed so without "
        "restarts, and no new error lines for the workload reached Loki."
    )
    if v.healthy_since is not None:
        out.append(
            f"Healthy since {_iso(v.healthy_since)} "
            f"({_duration(v.checked_at - v.healthy_since)} at the last check, "
            f"{_iso(v.checked_at)})."
        )
    else:
        out.append(f"Last check: {_iso(v.checked_at)}.")
    return "\n".join(out)


def _attempts(state: IncidentState) -> str:
    """The fixes tried before this one, each applied, not verified and undone."""
    if not state.attempts:
        return ""
    n = len(state.attempts) + 1
    out = [
        "## Earlier attempts",
        "",
        f"This fix is attempt {n} of {n}. Each earlier one was applied, did not verify, and "
        f"the Deployment was restored to its original (the state before aifixer's first "
        f"write) before the next was tried:",
    ]
    for a in state.attempts:
        changes = ", ".join(
            f"`{c.path}` {_value(c.before)} → {_value(c.after)}" for c in a.proposal.changes[:5]
        )
        more = f" and {len(a.proposal.changes) - 5} more" if len(a.proposal.changes) > 5 else ""
        undone = "rolled back" if a.verification.rolled_back else "not rolled back"
        out += [
            "",
            f"{a.number}. {a.proposal.source} / {a.proposal.strategy}, applied "
            f"{_iso(a.applied_at)}: {changes}{more}. **Not verified:** "
            f"{_clip(a.verification.reason, 500)} ({undone}).",
        ]
    return "\n".join(out)


def _incident(state: IncidentState) -> str:
    i = state.incident
    out = [
        "## Incident",
        "",
        f"- Incident: `{i.id}` (fingerprint `{i.fingerprint}`)",
        f"- Opened: {_iso(i.opened_at)}",
        f"- Workload: `{i.workload.key}` ({i.workload.kind})",
    ]
    if state.model_used:
        out.append(f"- Model: {state.model_used}")
    return "\n".join(out)


# -- helpers -------------------------------------------------------------------------


def _copy(state: IncidentState) -> str | None:
    """The temporary copy the fix was verified on (its name), or None: verified live."""
    return state.verify_copy.name if state.verify_copy is not None else None


def _clip(text: str, limit: int = MAX_LINE) -> str:
    text = text.replace("\r", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(v: object) -> str:
    return "(absent)" if v is None else f"`{_clip(str(v), 120).replace('`', chr(39))}`"


def _fence(lines: list[str], *, lang: str = "", more: int = 0) -> str:
    """A code block that no backtick run inside it can close early."""
    body = [_clip(ln) for ln in lines]
    if more > 0:
        body.append(f"… ({more} more)")
    longest = max((len(run) for ln in body for run in re.findall(r"`+", ln)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence + lang, *body, fence])


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
