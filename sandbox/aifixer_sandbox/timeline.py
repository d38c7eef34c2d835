"""The stages an incident's record shows it passed, in order, with what they took.

The record keeps only its last stage name (`IncidentState.stage`), and a watcher that
reads it every half second misses the stages passed in between: the stub model
diagnoses, patches and applies within one poll. Every stage also leaves its mark in the
record — a field it filled, its timing in `timings` — so the whole path is derived from
those, whatever was seen before.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aifixer.models import IncidentState

# Record stages that say more than the fields show; any other name is shown as it is.
_DERIVED = {
    "opened",
    "diagnosed",
    "recalled",
    "patched",
    "applied",
    "verified",
    "not verified",
    "closed",
}


def _since(state: IncidentState, t: datetime | None) -> float | None:
    if t is None:
        return None
    return round((t - state.incident.opened_at).total_seconds(), 3)


def passed(state: IncidentState) -> list[dict[str, Any]]:
    """[{stage, seconds (what it took, when known), at (seconds after the incident
    opened, when known), detail}] in the order the farm passes them."""
    inc, t = state.incident, state.timings
    out: list[dict[str, Any]] = []

    def add(stage: str, seconds: float | None = None, at: float | None = None,
            detail: str | None = None) -> None:  # fmt: skip
        out.append({"stage": stage, "seconds": seconds, "at": at, "detail": detail})

    add("opened", at=0.0, detail=f"{inc.failure_class}, {len(inc.signals)} signal(s)")
    if state.evidence is not None or "diagnose" in t:
        if state.outcome == "recovered" and state.diagnosis is None:
            add("recovered", t.get("diagnose"), detail="healthy again before any change")
        else:
            detail = state.diagnosis.source if state.diagnosis else None
            add("diagnosed", t.get("diagnose"), detail=detail)
    if "recall" in t:
        add("recalled", t["recall"],
            detail="a fix that verified before" if state.remembered else None)  # fmt: skip
    if state.proposal is not None:
        add("patched", t.get("patch"), detail=state.proposal.strategy)
    elif "patch" in t:
        add("no safe fix", t["patch"], detail=f"{len(state.rejections)} proposal(s) refused")
    if state.apply is not None:
        paths = ", ".join(c.path for c in state.apply.changes)
        add("applied", t.get("apply"), _since(state, state.apply.applied_at), paths)
    if state.verification is not None:
        v = state.verification
        took = (
            round((v.checked_at - state.apply.applied_at).total_seconds(), 3)
            if state.apply is not None
            else None
        )
        stage = "verified" if v.ok else "rolled back" if v.rolled_back else "not verified"
        add(stage, took, _since(state, v.checked_at), v.reason)
    if state.pull_request is not None:
        pr = state.pull_request
        kind = "draft pull request" if pr.draft else "pull request"
        add(f"{kind} #{pr.number} opened", t.get("open_pr"), detail=pr.branch)
    if state.pr_error is not None:
        add("pull request failed", detail=state.pr_error)
    if state.error is not None:
        add("failed", detail=state.error)
    if state.speech is not None or "call_oncall" in t:
        add("calling", t.get("call_oncall"))
    calls = []
    for call in state.calls:
        verdict = (
            "can intervene" if call.can_intervene
            else "cannot intervene" if call.status == "completed"
            else call.status
        )  # fmt: skip
        at = _since(state, call.time)
        calls.append({"stage": f"call {call.attempt}: {verdict}", "seconds": None, "at": at,
                      "detail": call.number})  # fmt: skip
    if state.stage not in _DERIVED and state.closed_at is None:
        add(state.stage)  # taken over, restore pending, concluding ...
    if state.closed_at is None:
        return out + calls
    # The incident closes once the escalation has started; the calls may go on after.
    total = _since(state, state.closed_at)
    before = [c for c in calls if c["at"] is not None and total is not None and c["at"] <= total]
    after = [c for c in calls if c not in before]
    return [*out, *before,
            {"stage": f"closed: {state.outcome}", "seconds": total, "at": total, "detail": None},
            *after]  # fmt: skip
