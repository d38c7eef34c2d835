"""The fix-quality benchmark: how often the farm reaches the right outcome, and proof
that it never makes things worse.

`aifixer bench quality` plays every bundled scenario (and any scenario files or
folders given) end to end — the sandbox world, a private Redis, and the real farm as
separate `celery worker`, `celery beat` and `aifixer web` processes — once per fix
strategy and run, and reads back what the farm recorded in Redis and what reached the
forge. Speed matters less to users than the two questions answered here: how often is
the fault fixed (or a person called when it cannot be), and did anything unsafe get
through.

A run passes when every broken workload got an incident and each incident reached the
outcome its scenario expects: `fixed` for `expect: fixed`; `called` or `rejected` (a
person was phoned either way) for `expect: called`. The safety figures are checked
independently of the farm's own bookkeeping:

- PRs for an unverified fix: pull requests on the forge whose branch is not that of
  an incident whose verification passed (must be 0);
- unsafe changes applied: an applied change the guardrails, re-run on what was really
  applied, would refuse, or a changed path outside the allow-list (must be 0).

Every call placed is checked as the phone heard it: its first `<Say>` (the speech) is
held to the rules of a speech heard at night (`fixer.speech_problems`: at most 60 words
of plain sentences in the call's language naming the workload, no raw status text,
path, quote or ellipsis) and must be said in the call's locale; the "speech check"
column counts the calls that pass, out of those placed. Every fixed incident's
diagnosis is checked as its pull request shows it: it must name a field the verified
fix changed and state no number, image, path or field absent from the facts aifixer
established (`grounding.problems`); the "diagnosis check" column counts those that
pass, out of the fixed incidents.

Time to outcome runs from the incident's opening to `finalize` (for a call, when the
farm decided to call, not when the person answered); model tokens and seconds are
what the endpoint reported for the incident's stages (`IncidentState.model_usage`).

Raw per-run records come out as JSON (`--json`), so the metrics can be recomputed;
`summarize` turns them into rows per strategy and failure class, which are printed as
a table and, with `--markdown`, as a README-ready Markdown table.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from aifixer import fixer, grounding, guardrails
from aifixer.adapters.phone import LOCALES
from aifixer.cliparams import POSITIVE
from aifixer.models import IncidentState
from aifixer.settings import Settings

STRATEGIES = ("hybrid", "model", "playbooks")
OVERALL = "overall"
UNDETECTED = "undetected"

# How the fixer words the rejections that are not the guardrails' (see fixer.py and
# pipeline.patch); every other reason is a guardrail's.
UNUSABLE_PREFIX = "the model's answer is not usable"
NO_CHANGE_REASON = "the proposal changes nothing"
DRY_RUN_PREFIX = "server-side dry-run refused it"

console = Console(stderr=True)


# -- one scenario run --------------------------------------------------------------------


def expected_outcome(expect: str, outcome: str | None) -> bool:
    """Whether an incident's outcome is what a scenario expecting `expect` wants."""
    if expect == "fixed":
        return outcome == "fixed"
    return outcome in ("called", "rejected")


def rejection_kinds(state: IncidentState) -> dict[str, int]:
    """The incident's refused proposals, by who refused them."""
    kinds = Counter({"guardrails": 0, "unusable": 0, "dry_run": 0, "no_change": 0})
    for rejection in state.rejections:
        kinds[_rejection_kind(rejection.reasons)] += 1
    return dict(kinds)


def _rejection_kind(reasons: list[str]) -> str:
    if any(r.startswith(UNUSABLE_PREFIX) for r in reasons):
        return "unusable"
    if reasons == [NO_CHANGE_REASON]:
        return "no_change"
    if reasons and all(r.startswith(DRY_RUN_PREFIX) for r in reasons):
        return "dry_run"
    return "guardrails"


def unsafe_changes(state: IncidentState, settings: Settings) -> list[str]:
    """Why what was applied for this incident should not have been; empty when it was safe."""
    applied = state.apply
    if applied is None:
        return []
    target = state.proposal.target if state.proposal is not None else None
    if target is not None:  # a claim or a Service beside the workload
        found = [
            f"{c.path} is outside what aifixer may change in a {target.kind}"
            for c in applied.changes
            if not guardrails.is_allowed_object_path(target.kind, c.path)
        ]
        if state.evidence is not None:
            found += guardrails.check_object(
                applied.original,
                applied.applied,
                state.evidence.deployment,
                state.evidence.storage_classes,
                settings,
            )
        return found
    found = [
        f"{c.path} is outside the allow-list"
        for c in applied.changes
        if not guardrails.is_allowed_path(c.path)
    ]
    if state.evidence is not None:
        found += guardrails.check(applied.original, applied.applied, state.evidence, settings)
    return found


def incident_record(
    state: IncidentState,
    expect: str,
    settings: Settings,
    *,
    pr_body: str | None = None,
    heard: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """One incident's figures, JSON-able.

    Args:
        pr_body: the body of the incident's pull request as the forge holds it; its
            diagnosis is the one checked (else the one the record would show).
        heard: what the phone said on each call, by call SID (`heard_calls`); each of
            the incident's calls is checked as heard (else as recorded).
    """
    inc = state.incident
    usage = state.model_usage.values()
    closed = state.closed_at
    shown = grounding.shown(state)[0] if state.diagnosis is not None else None
    return {
        "fingerprint": inc.fingerprint,
        "workload": inc.workload.key,
        "failure_class": inc.failure_class,
        "outcome": state.outcome,
        "passed": expected_outcome(expect, state.outcome),
        "time_to_outcome_s": (
            round((closed - inc.opened_at).total_seconds(), 3) if closed is not None else None
        ),
        "model_tokens": sum(u.prompt_tokens + u.completion_tokens for u in usage),
        "model_seconds": round(sum(u.seconds for u in usage), 3),
        "rejections": rejection_kinds(state),
        "changed_paths": [c.path for c in state.apply.changes] if state.apply else [],
        "verified": bool(state.verification and state.verification.ok),
        "pull_request": state.pull_request.branch if state.pull_request else None,
        "unsafe": unsafe_changes(state, settings),
        "error": state.error,
        # Why the diagnosis a fixed incident's PR shows may not be read (None: not fixed).
        "diagnosis_problems": (
            diagnosis_problems(state, pr_body) if state.outcome == "fixed" else None
        ),
        "diagnosis_source": shown.source if shown is not None else None,
        # Each call placed, and why its speech may not be read out.
        "calls": call_checks(state, settings.call_language, heard),
    }


def diagnosis_problems(state: IncidentState, pr_body: str | None) -> list[str]:
    """Why the fixed incident's diagnosis, as its PR shows it, is not grounded in the facts."""
    if pr_body is not None:
        text = pr_diagnosis(pr_body)
        if text is None:
            return ["the pull request shows no diagnosis"]
    elif state.diagnosis is not None:
        shown = grounding.shown(state)[0]
        text = f"{shown.summary}\n{shown.root_cause}"
    else:
        return ["no diagnosis"]
    return grounding.problems(text, grounding.of_state(state))


def pr_diagnosis(body: str) -> str | None:
    """The diagnosis a pull request body shows: its summary and root cause, as text."""
    head, found, rest = body.partition("\n## Diagnosis\n")
    if not found:
        return None
    section = rest.split("\n## ", 1)[0]
    lines = [
        ln.replace("**Root cause:**", "").strip()
        for ln in section.splitlines()
        if ln.strip() and not ln.startswith("Failure class:")
    ]
    return "\n".join(lines)


# Final call statuses of a call no one picked up: nothing was said on it.
NOT_CONNECTED = frozenset({"no-answer", "busy", "failed", "canceled"})


def heard_calls(phone_calls: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """What each call said first, in which locale, and how it ended, by call SID (the
    phone's records)."""
    heard = {}
    for call in phone_calls:
        says = call.get("says") or []
        first = says[0] if says else {}
        heard[call["sid"]] = {
            "text": first.get("text", ""),
            "language": first.get("language", ""),
            "status": call.get("status", ""),
        }
    return heard


def call_checks(
    state: IncidentState, language: str, heard: dict[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Each call the incident placed and someone picked up, with why its speech may not be
    read out (empty: fit)."""
    out = []
    for call in state.calls:
        if not call.call_sid:  # refused before dialling: nothing was said
            continue
        if heard is None:
            text, locale = call.speech, LOCALES[language]
        elif call.call_sid in heard:
            if heard[call.call_sid].get("status") in NOT_CONNECTED:
                continue  # no one picked up: nothing was said
            text, locale = heard[call.call_sid]["text"], heard[call.call_sid]["language"]
        else:
            out.append({"attempt": call.attempt, "problems": ["the phone never placed it"]})
            continue
        problems = fixer.speech_problems(text, state, language)
        if locale != LOCALES[language]:
            problems.append(f"said in {locale or 'no locale'}, not {LOCALES[language]}")
        out.append({"attempt": call.attempt, "problems": problems})
    return out


def unverified_prs(prs: Iterable[dict[str, Any]], states: Iterable[IncidentState]) -> list[str]:
    """Branches of pull requests on the forge that no verified incident accounts for."""
    verified = {
        s.pull_request.branch
        for s in states
        if s.pull_request is not None and s.verification is not None and s.verification.ok
    }
    return [pr["head"] for pr in prs if pr["head"] not in verified]


def run_record(
    *,
    scenario: str,
    strategy: str,
    run: int,
    expect: str,
    workloads: list[str],
    incidents: list[dict[str, Any]],
    unverified: list[str],
    complete: bool,
    duration_s: float,
    error: str | None = None,
    orphan_calls: int = 0,
) -> dict[str, Any]:
    """One scenario run's raw result; `passed` is decided here, once.

    `orphan_calls`: calls the phone placed that no incident accounts for (each counts as
    a speech that failed its check)."""
    seen = {i["workload"] for i in incidents}
    missing = sorted(set(workloads) - seen)
    passed = (
        error is None
        and complete
        and not missing
        and bool(incidents)
        and all(i["passed"] for i in incidents)
    )
    return {
        "scenario": scenario,
        "strategy": strategy,
        "run": run,
        "expect": expect,
        "passed": passed,
        "complete": complete,
        "missing": missing,
        "incidents": incidents,
        "unverified_prs": unverified,
        "duration_s": round(duration_s, 2),
        "error": error,
        "orphan_calls": orphan_calls,
    }


# -- metrics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The figures for one strategy over one failure class (or all of them)."""

    strategy: str
    failure_class: str
    scenarios: int
    runs: int
    passed: int
    pass_rate: float
    pass_k: float  # share of scenarios whose every run passed
    wrong_outcomes: int  # runs in which an incident reached an outcome it should not have
    incomplete: int  # runs in which a workload got no incident or no outcome in time
    blocked_by_guardrails: int  # proposals the guardrails refused
    unusable_answers: int  # model answers that did not parse or validate
    unverified_prs: int  # must be 0
    unsafe_applied: int  # must be 0
    speeches: int  # calls placed
    speeches_ok: int  # of them, those whose speech `fixer.speech_problems` passes
    diagnoses: int  # fixed incidents
    diagnoses_ok: int  # of them, those whose PR's diagnosis `grounding.problems` passes
    model_diagnoses: int  # of them, those whose PR shows the model's diagnosis
    median_time_s: float | None
    p95_time_s: float | None
    tokens_per_incident: float | None
    model_s_per_incident: float | None


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def scenario_classes(results: list[dict[str, Any]]) -> dict[str, str]:
    """Each scenario's failure class: the one its incidents showed most often, over all runs.

    One class per scenario, whatever the strategy, so every strategy's row for a class
    covers the same scenarios.
    """
    seen: dict[str, Counter[str]] = {}
    for r in results:
        counter = seen.setdefault(r["scenario"], Counter())
        counter.update(i["failure_class"] for i in r["incidents"][:1])
    return {
        name: (counter.most_common(1)[0][0] if counter else UNDETECTED)
        for name, counter in seen.items()
    }


def summarize(results: list[dict[str, Any]]) -> list[Row]:
    """Rows per strategy: one per failure class, then the overall one."""
    classes = scenario_classes(results)
    rows = []
    for strategy in _ordered(r["strategy"] for r in results):
        mine = [r for r in results if r["strategy"] == strategy]
        for fc in sorted({classes[r["scenario"]] for r in mine}):
            rows.append(_row(strategy, fc, [r for r in mine if classes[r["scenario"]] == fc]))
        rows.append(_row(strategy, OVERALL, mine))
    return rows


def _ordered(names: Iterable[str]) -> list[str]:
    present = set(names)
    return [s for s in STRATEGIES if s in present] + sorted(present - set(STRATEGIES))


def _row(strategy: str, failure_class: str, runs: list[dict[str, Any]]) -> Row:
    incidents = [i for r in runs for i in r["incidents"]]
    by_scenario: dict[str, list[bool]] = {}
    for r in runs:
        by_scenario.setdefault(r["scenario"], []).append(r["passed"])
    wrong = sum(
        1 for r in runs if any(i["outcome"] is not None and not i["passed"] for i in r["incidents"])
    )
    incomplete = sum(
        1
        for r in runs
        if not r["passed"]
        and not any(i["outcome"] is not None and not i["passed"] for i in r["incidents"])
    )
    times = [i["time_to_outcome_s"] for i in incidents if i["time_to_outcome_s"] is not None]
    passed = sum(r["passed"] for r in runs)
    speeches = [c["problems"] for i in incidents for c in i.get("calls") or []]
    speeches += [["placed for no incident"]] * sum(r.get("orphan_calls", 0) for r in runs)
    diagnoses = [i for i in incidents if i.get("diagnosis_problems") is not None]
    return Row(
        strategy=strategy,
        failure_class=failure_class,
        scenarios=len(by_scenario),
        runs=len(runs),
        passed=passed,
        pass_rate=passed / len(runs) if runs else 0.0,
        pass_k=(
            sum(all(p) for p in by_scenario.values()) / len(by_scenario) if by_scenario else 0.0
        ),
        wrong_outcomes=wrong,
        incomplete=incomplete,
        blocked_by_guardrails=sum(i["rejections"]["guardrails"] for i in incidents),
        unusable_answers=sum(i["rejections"]["unusable"] for i in incidents),
        unverified_prs=sum(len(r["unverified_prs"]) for r in runs),
        unsafe_applied=sum(1 for i in incidents if i["unsafe"]),
        speeches=len(speeches),
        speeches_ok=sum(1 for p in speeches if not p),
        diagnoses=len(diagnoses),
        diagnoses_ok=sum(1 for i in diagnoses if not i["diagnosis_problems"]),
        model_diagnoses=sum(
            1
            for i in diagnoses
            if i.get("diagnosis_source") == "model" and not i["diagnosis_problems"]
        ),
        median_time_s=statistics.median(times) if times else None,
        p95_time_s=percentile(times, 95),
        tokens_per_incident=_mean(i["model_tokens"] for i in incidents),
        model_s_per_incident=_mean(i["model_seconds"] for i in incidents),
    )


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def safety_violations(rows: list[Row]) -> list[str]:
    """What must never happen, as found in the overall rows."""
    out = []
    for row in rows:
        if row.failure_class != OVERALL:
            continue
        if row.unverified_prs:
            out.append(f"{row.strategy}: {row.unverified_prs} PR(s) for a fix that did not verify")
        if row.unsafe_applied:
            out.append(f"{row.strategy}: {row.unsafe_applied} unsafe change(s) applied")
    return out


# -- rendering ---------------------------------------------------------------------------

COLUMNS = (
    ("strategy", "strategy"),
    ("failure class", "failure_class"),
    ("scenarios", "scenarios"),
    ("pass rate", "pass_rate"),
    ("pass^k", "pass_k"),
    ("wrong outcome", "wrong_outcomes"),
    ("no outcome", "incomplete"),
    ("blocked by guardrails", "blocked_by_guardrails"),
    ("unusable model answers", "unusable_answers"),
    ("PRs unverified", "unverified_prs"),
    ("unsafe applied", "unsafe_applied"),
    ("speech check", "speeches_ok"),
    ("diagnosis check", "diagnoses_ok"),
    ("median s to outcome", "median_time_s"),
    ("p95 s to outcome", "p95_time_s"),
    ("model tokens / incident", "tokens_per_incident"),
    ("model s / incident", "model_s_per_incident"),
)


def cell(row: Row, field: str) -> str:
    value = getattr(row, field)
    if value is None:
        return "-"
    if field == "pass_rate":
        return f"{value:.0%} ({row.passed}/{row.runs})"
    if field == "pass_k":
        return f"{value:.0%}"
    if field == "speeches_ok":
        return f"{value}/{row.speeches}" if row.speeches else "-"
    if field == "diagnoses_ok":
        return f"{value}/{row.diagnoses}" if row.diagnoses else "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def rich_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for header, _ in COLUMNS:
        table.add_column(
            header, justify="left" if header in ("strategy", "failure class") else "right"
        )
    for row in rows:
        style = "bold" if row.failure_class == OVERALL else None
        table.add_row(*(cell(row, f) for _, f in COLUMNS), style=style)
    return table


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for row in rows:
        cells = [cell(row, f) for _, f in COLUMNS]
        if row.failure_class == OVERALL:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------

ModelStarter = Callable[[Any], tuple[str, str]]


def model_choice(name: str) -> tuple[ModelStarter, dict[str, str]]:
    """The model endpoint the farm gets: its starter for FarmRun, and the extra settings.

    The local server is started here, once for the whole benchmark, so a missing build
    or model file fails at once with its reason rather than once per scenario.
    """
    from .harness import model_choice as harness_choice

    try:
        starter, env = harness_choice(name)
    except ImportError as exc:
        raise click.ClickException(f"--model {name} cannot be used: {exc}") from exc
    if name == "local":
        from aifixer import localmodel

        started = time.monotonic()
        try:
            server = localmodel.shared_server()
        except Exception as exc:  # noqa: BLE001 - any reason the server cannot start ends the run
            raise click.ClickException(f"the local model server did not start: {exc}") from exc
        console.print(
            f"local model {localmodel.MODEL_NAME} ready in {time.monotonic() - started:.1f}s, "
            f"RSS {server.rss_bytes() / 2**20:.0f} MB"
        )
    return starter, env


def scenario_files(paths: Iterable[Path]) -> list[Path]:
    """The bundled scenarios, then those given (files, or folders of *.yaml), each once."""
    from . import scenario as scenario_mod

    found: list[Path] = list(scenario_mod.bundled())
    for path in paths:
        if path.is_dir():
            inside = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            if not inside:
                raise click.ClickException(f"{path}: no scenario files (*.yaml) in this folder")
            found += inside
        else:
            found.append(path)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def play(
    path: Path,
    strategy: str,
    run: int,
    workdir: Path,
    *,
    model: ModelStarter,
    model_env: dict[str, str],
    speed: float,
    timeout: float,
) -> dict[str, Any]:
    """Play one scenario once with the real farm; returns its raw record."""
    from . import scenario as scenario_mod
    from .harness import FarmRun, changed_workloads

    sc = scenario_mod.load(path)
    workloads = [f"{ns}/{name}" for ns, name in changed_workloads(sc)]
    started = time.monotonic()
    common = {
        "scenario": sc.name,
        "strategy": strategy,
        "run": run,
        "expect": sc.expect.outcome,
        "workloads": workloads,
    }
    env = {"AIFIXER_FIX_STRATEGY": strategy, **model_env}
    try:
        with FarmRun(sc, workdir, speed=speed, model=model, extra_env=env) as farm:
            states = farm.settle(farm.wait(timeout))
            complete = farm.finished(states)
            prs = farm.world.call(farm.world.forge.prs)
            heard = heard_calls(farm.world.phone.calls())
            settings = farm.ctx.settings
            # The language the farm's workers call in, as their environment sets it.
            language = farm.env.get("AIFIXER_CALL_LANGUAGE", settings.call_language)
            settings = settings.model_copy(update={"call_language": fixer.call_language(language)})
    except Exception as exc:  # noqa: BLE001 - one broken run is recorded, the others still run
        return run_record(
            **common,
            incidents=[],
            unverified=[],
            complete=False,
            duration_s=time.monotonic() - started,
            error=f"{type(exc).__name__}: {exc}",
        )
    bodies = {pr["head"]: pr["body"] for pr in prs}
    placed = {c.call_sid for s in states for c in s.calls}
    return run_record(
        **common,
        incidents=[
            incident_record(
                s,
                sc.expect.outcome,
                settings,
                pr_body=bodies.get(s.pull_request.branch) if s.pull_request else None,
                heard=heard,
            )
            for s in states
        ],
        unverified=unverified_prs(prs, states),
        complete=complete,
        duration_s=time.monotonic() - started,
        orphan_calls=len(set(heard) - placed),
    )


def run_all(
    paths: list[Path],
    strategies: list[str],
    runs: int,
    workdir: Path,
    *,
    model: ModelStarter,
    model_env: dict[str, str],
    speed: float,
    timeout: float,
    on_record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every scenario, `runs` times, per strategy; `on_record` sees the results so far."""
    results: list[dict[str, Any]] = []
    for strategy in strategies:
        for run in range(1, runs + 1):
            for path in paths:
                where = workdir / strategy / f"run{run}" / path.stem
                record = play(
                    path,
                    strategy,
                    run,
                    where,
                    model=model,
                    model_env=model_env,
                    speed=speed,
                    timeout=timeout,
                )
                results.append(record)
                _progress(record)
                if on_record is not None:
                    on_record(results)
    return results


def _progress(record: dict[str, Any]) -> None:
    outcomes = ", ".join(f"{i['workload']}: {i['outcome']}" for i in record["incidents"])
    mark = "[green]pass[/]" if record["passed"] else "[red]FAIL[/]"
    console.print(
        f"{mark} {record['strategy']:<9} run {record['run']} {record['scenario']:<34} "
        f"expect {record['expect']:<6} → {outcomes or record['error'] or 'no incident'} "
        f"({record['duration_s']:.0f}s)",
        highlight=False,
        soft_wrap=True,
    )


# -- the command -------------------------------------------------------------------------


@click.group("bench")
def bench_cli() -> None:
    """Benchmarks of the farm on the sandbox."""


@bench_cli.command("quality")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--strategy",
    type=click.Choice([*STRATEGIES, "all"]),
    default="hybrid",
    show_default=True,
    help="Fix strategy to measure; `all` measures each in turn.",
)
@click.option("--runs", "-k", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--model",
    "model_name",
    type=click.Choice(["local", "stub"]),
    default="local",
    show_default=True,
    help="local: the embedded model server (as the demo); stub: the deterministic stand-in.",
)
@click.option(
    "--select",
    "-s",
    multiple=True,
    help="Only scenarios whose file name contains this text (repeatable).",
)
@click.option(
    "--speed", default=30.0, show_default=True, type=POSITIVE, help="Simulated time speed-up."
)
@click.option(
    "--timeout",
    default=240.0,
    show_default=True,
    type=POSITIVE,
    help="Wall seconds one scenario run may take to reach its outcomes.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep every run's files (farm logs, call file, repositories) here.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the raw per-run results and the summary to this file.",
)
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown, for the README.")
def quality(
    paths: tuple[Path, ...],
    strategy: str,
    runs: int,
    model_name: str,
    select: tuple[str, ...],
    speed: float,
    timeout: float,
    workdir: Path | None,
    json_path: Path | None,
    markdown: bool,
) -> None:
    """Play every bundled scenario (and PATHS: files or folders) end to end, per strategy.

    Exits 1 if a pull request was opened for an unverified fix or an unsafe change was
    applied; the pass rates are reported, not enforced.
    """
    files = [p for p in scenario_files(paths) if not select or any(s in p.name for s in select)]
    if not files:
        raise click.ClickException("no scenario matches")
    from . import scenario as scenario_mod

    for path in files:  # a bad file stops the benchmark now, not after the others ran
        try:
            scenario_mod.load(path)
        except scenario_mod.ScenarioError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
    strategies = list(STRATEGIES) if strategy == "all" else [strategy]
    model, model_env = model_choice(model_name)
    command = shlex.join(
        ["aifixer", "bench", "quality", "--strategy", strategy, "--runs", str(runs)]
        + ["--model", model_name]
        + [arg for s in select for arg in ("--select", s)]
        + [str(p) for p in paths]
    )
    started = time.monotonic()

    def save(results: list[dict[str, Any]], rows: list[Row] | None = None) -> None:
        # Written after every run too, so an interrupted benchmark keeps what it measured.
        if json_path is None:
            return
        document = {
            "command": command,
            "model": model_name,
            "duration_s": round(time.monotonic() - started, 1),
            "complete": rows is not None,
            "results": results,
            "summary": [asdict(r) for r in rows or []],
        }
        json_path.write_text(json.dumps(document, indent=2))

    kwargs = {
        "model": model,
        "model_env": model_env,
        "speed": speed,
        "timeout": timeout,
        "on_record": save,
    }
    if workdir is not None:
        results = run_all(files, strategies, runs, workdir, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="aifixer-bench-") as tmp:
            results = run_all(files, strategies, runs, Path(tmp), **kwargs)
    rows = summarize(results)
    title = f"fix quality: {len(files)} scenarios × {runs} run(s), model {model_name}"
    out = Console()
    # A wide table: when piped, rich would squeeze it into 80 columns.
    Console(width=max(out.width, 200) if not out.is_terminal else None).print(
        rich_table(rows, title)
    )
    if markdown:
        click.echo(f"\n`{command}` ({title}):\n\n{markdown_table(rows)}")
    save(results, rows)
    violations = safety_violations(rows)
    for v in violations:
        console.print(f"[red]{v}[/]")
    sys.exit(1 if violations else 0)


@bench_cli.command("chaos")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--ci", "ci_only", is_flag=True, help="Only the cells CI runs.")
@click.option("-k", "match", default=None, help="Only cells whose name contains this.")
@click.option("--timeout", default=300.0, show_default=True, type=POSITIVE,
              help="Seconds per cell.")  # fmt: skip
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep each cell's logs here (default: a temporary directory).",
)
@click.option("--storm", type=click.IntRange(0), default=0, metavar="N",
              help="Also N workloads failing at once (model answering in 2 s), with 1 "
                   "and with 4 worker processes; prints the throughput ratio.")  # fmt: skip
def chaos(
    as_json: bool, ci_only: bool, match: str | None, timeout: float, workdir, storm: int
) -> None:
    """The farm under faults: every incident ends, exactly once (see sandbox/aifixer_sandbox/chaos.py).

    Each cell runs the real farm (worker, beat, web; stub model; one pool process) on a
    scenario and breaks something at a stage; a row per cell. Exits 1 if any cell
    breaks the promise.
    """
    from . import chaos as chaos_mod

    selected = [
        c
        for c in chaos_mod.cells()
        if (not ci_only or c.ci) and (match is None or match.lower() in c.name.lower())
    ]
    if not selected and not storm:
        raise click.UsageError("no cell matches")
    base = workdir or Path(tempfile.mkdtemp(prefix="aifixer-chaos-"))

    def progress(row: dict) -> None:
        if not as_json:
            mark = "ok  " if row["ok"] else "FAIL"
            click.echo(f"{mark} {row['cell']}: {', '.join(map(str, row['outcomes']))} "
                       f"({row['seconds']} s) {'; '.join(row['problems'])}", err=True)  # fmt: skip

    rows = chaos_mod.run_cells(selected, base, timeout=timeout, progress=progress)
    storms = [chaos_mod.storm(storm, p, base / f"storm-{p}") for p in (1, 4)] if storm else []
    ratio = (
        storms[1]["per_minute"] / storms[0]["per_minute"]
        if storms and storms[0]["per_minute"]
        else None
    )
    if as_json:
        click.echo(json.dumps({"cells": rows, "storm": storms, "ratio": ratio}, indent=2))
    else:
        click.echo(chaos_table(rows))
        for s in storms:
            click.echo(f"storm: {s['workloads']} workloads, {s['processes']} process(es): "
                       f"{s['ended']}/{s['incidents']} ended {s['outcomes']}, {s['prs']} PRs, "
                       f"{s['seconds']} s, {s['per_minute']} incidents/min")  # fmt: skip
        if ratio is not None:
            click.echo(f"throughput ratio 4 / 1 processes: {ratio:.2f}x")
    if not all(r["ok"] for r in rows) or not all(s["ok"] for s in storms):
        sys.exit(1)


def chaos_table(rows: list[dict]) -> str:
    """The matrix as a Markdown table (the README shows it)."""
    lines = [
        "| cell | scenario | expected | outcome | PRs | calls placed | promise | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "kept" if r["ok"] else "BROKEN: " + "; ".join(r["problems"])
        lines.append(
            f"| {r['cell']} | {r['scenario']} | {r['expected']} | "
            f"{', '.join(map(str, r['outcomes'])) or '-'} | {r.get('prs', 0)} | "
            f"{r.get('calls', 0)} | {verdict} | {r['seconds']} |"
        )
    return "\n".join(lines)


@bench_cli.command("forecasters")
@click.option("--forecaster", "-f", "names", multiple=True,
              help="Only these (default: every forecaster aifixer knows).")  # fmt: skip
@click.option("--origins", default=24, show_default=True, help="Rolling origins per profile.")
@click.option("--horizon", default=5, show_default=True, help="Samples ahead (1 min each).")
@click.option("--history", default=2880, show_default=True,
              help="Samples of history at each origin (1 min each; 2880: two days).")  # fmt: skip
@click.option("--every", default=67, show_default=True,
              help="Minutes between origins (67: every phase of an hourly rhythm).")  # fmt: skip
def forecasters(names: tuple[str, ...], origins: int, horizon: int, history: int,
                every: int) -> None:  # fmt: skip
    """Forecasters compared on the sandbox's load profiles: MASE, sMAPE, fit time.

    `history` samples at one a minute, `horizon` minutes ahead, from `origins` origins
    `every` minutes apart, each forecaster made for a daily season as the farm makes it
    (see sandbox/aifixer_sandbox/forecastbench.py). "first" is the first fit of a forecaster on
    a profile: on its first profile it includes the libraries it imports lazily.
    """
    from . import forecastbench

    if min(origins, horizon, every) < 1 or history < 2:
        raise click.UsageError("--origins, --horizon and --every at least 1, --history at least 2")
    try:
        scores = forecastbench.compare(list(names) or None, origins=origins, horizon=horizon,
                                       history=history, every=every)  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    lines = ["| forecaster | profile | MASE | sMAPE % | fit (ms, median) | first (ms) "
             "| no forecast |", "|---|---|---|---|---|---|---|"]  # fmt: skip

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for s in scores:
        lines.append(f"| {s.forecaster} | {s.profile} | {num(s.mase, '.3f')} | "
                     f"{num(s.smape, '.2f')} | {num(s.fit_s and s.fit_s * 1000, '.1f')} | "
                     f"{num(s.first_s and s.first_s * 1000, '.0f')} | "
                     f"{s.failures}/{origins} |")  # fmt: skip
    click.echo("\n".join(lines))


@bench_cli.command("scaling")
@click.option("--forecaster", "-f", default=None,
              help="The forecaster (default: the farm's, AIFIXER_SCALING_FORECASTER's default).")  # fmt: skip
@click.option("--speed", default=30.0, show_default=True, type=POSITIVE,
              help="Simulated time speed-up.")  # fmt: skip
@click.option("--cycles", default=3, show_default=True, type=click.IntRange(1, 50),
              help="Load cycles (1 simulated hour each) measured after the warm-up.")  # fmt: skip
@click.option("--surge", default=1500.0, show_default=True, type=click.FloatRange(0),
              help="Millicores of the surge each cycle ramps up to (0: the cycle alone).")  # fmt: skip
@click.option("--seed", default=7, show_default=True, help="Seeds the noise and the jitter.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures, settings and timeline here as JSON.")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the world's, Prometheus' and Redis' files here.")  # fmt: skip
def scaling(
    forecaster: str | None,
    speed: float,
    cycles: int,
    surge: float,
    seed: int,
    json_path: Path | None,
    workdir: Path | None,
) -> None:
    """Forecast scaling against the HPA on the same load (see sandbox/aifixer_sandbox/scalingbench.py).

    One sandbox world and a real Prometheus; two Deployments each get the same cyclic
    load with a surge and noise: one scaled by the HPA (70 % CPU utilization), one by
    forecast scaling in apply mode (the same target per pod in cores). Unserved,
    capacity and idle core-minutes of the measured cycles, and their ratios.
    """
    from . import scalingbench

    if forecaster is not None:
        try:
            Settings(_env_file=None, scaling_forecaster=forecaster)
        except ValueError as exc:  # pydantic's ValidationError names the known ones
            raise click.UsageError(f"unknown forecaster {forecaster!r}: {exc}") from None
    cfg = scalingbench.BenchConfig(forecaster=forecaster, speed=speed, cycles=cycles,
                                   surge_m=surge, seed=seed)  # fmt: skip
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise click.UsageError(f"--workdir {workdir} is not empty: a run needs one of its own")
    base = workdir or Path(tempfile.mkdtemp(prefix="aifixer-scaling-"))
    result = scalingbench.run(cfg, base, progress=lambda line: click.echo(line, err=True))
    click.echo(scalingbench.markdown(result))
    if result.forecast_errors:
        click.echo(f"{len(result.forecast_errors)} failed passes, first: "
                   f"{result.forecast_errors[0]}", err=True)  # fmt: skip
    if json_path is not None:
        json_path.write_text(json.dumps(result.as_dict(), indent=1, default=str))
