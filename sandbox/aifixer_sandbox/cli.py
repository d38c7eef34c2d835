"""The sandbox's commands, which `aifixer` lists beside its own (entry points of the
group `aifixer.commands`): `aifixer sandbox ...` runs and inspects the stand-in world,
`aifixer scenario ...` checks and plays scenario files, `aifixer demo` plays the bundled
scenarios with the real farm on the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

import click
import requests
from rich.table import Table

from aifixer.cli import console, scaling_table, write_scaling_plot
from aifixer.cliparams import POSITIVE

DEFAULT_STATE_DIR = Path(".aifixer/sandbox")
# The stand-ins `aifixer sandbox up --port NAME=PORT` can pin.
SANDBOX_SITES = ("kubernetes", "loki", "forge", "twilio", "metrics")


@click.group()
def sandbox() -> None:
    """The embedded stand-ins for Kubernetes, Loki, GitHub and Twilio."""


def _load_scenario(path: Path | None):
    from . import scenario as scenario_mod

    if path is None:
        return None
    try:
        return scenario_mod.load(path)
    except scenario_mod.ScenarioError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from exc


@sandbox.command("up")
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Scenario file to load (see sandbox/aifixer_sandbox/scenarios/).",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=POSITIVE,
    help="Simulated time runs this many times faster than wall time.",
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the kubeconfig, endpoints.json, git repositories and call recordings go. "
    "Emptied at every start: only a directory the sandbox created (it holds a "
    ".aifixer-sandbox marker) or an empty one is accepted.",
)
@click.option(
    "--reuse",
    is_flag=True,
    help="Keep the previous world's state directory: its GitOps repository (history and "
    "branches, the scenario's manifests committed on top where they differ) and call "
    "recordings. The cluster, pull requests and calls start afresh either way.",
)
@click.option(
    "--no-change",
    is_flag=True,
    help="Stay in the healthy state; do not apply the scenario's change.",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="NAME=PORT",
    help=f"Fixed port for a stand-in ({', '.join(SANDBOX_SITES)}); default: a free port.",
)
def sandbox_up(
    scenario_path: Path | None,
    speed: float,
    state_dir: Path,
    reuse: bool,
    no_change: bool,
    ports: tuple[str, ...],
) -> None:
    """Start the stand-in world in the foreground; Ctrl-C stops it.

    Every start is a fresh world: the state directory of the previous one is emptied
    (--reuse keeps it). A second `up` on the same state directory while the first
    runs is refused.
    """
    from .world import World, WorldError

    fixed = {}
    for item in ports:
        name, _, port = item.partition("=")
        if name not in SANDBOX_SITES or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(
                f"expected NAME=PORT with NAME one of {', '.join(SANDBOX_SITES)} and PORT "
                f"1-65535, got {item!r}",
                param_hint="--port",
            )
        fixed[name] = int(port)
    world = World(_load_scenario(scenario_path), state_dir, speed=speed, ports=fixed, reuse=reuse)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            ep = await world.astart()
        except OSError as exc:
            await world.astop()
            if exc.filename is not None:
                raise
            raise WorldError(
                f"cannot listen on 127.0.0.1: {exc.strerror or exc} (a --port already in "
                "use? choose another or leave it out)"
            ) from exc
        except BaseException:
            await world.astop()
            raise
        try:
            _print_endpoints(ep)
            if world.scenario is not None:
                await world.aload(apply_change=not no_change)
                console.print(
                    f"scenario [bold]{world.scenario.name}[/] loaded"
                    + ("" if no_change or not world.scenario.change else " (change applied)")
                )
            console.print("Ctrl-C to stop.")
            await stop.wait()
        finally:
            await world.astop()

    try:
        asyncio.run(run())
    except WorldError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_endpoints(ep) -> None:
    table = Table(title="sandbox endpoints", show_header=False)
    for key, value in (
        ("Kubernetes API", ep.kubernetes),
        ("kubeconfig", ep.kubeconfig),
        ("Loki", ep.loki),
        ("GitHub API (PyGithub base_url)", ep.github_api),
        ("GitOps clone URL", ep.gitops_clone_url),
        ("GitHub token", ep.github_token),
        ("Twilio API base", ep.twilio_base),
        ("Twilio account SID", ep.twilio_account_sid),
        ("Twilio auth token", ep.twilio_auth_token),
        ("Twilio from number", ep.twilio_from),
        ("endpoints file", str(Path(ep.state_dir) / "endpoints.json")),
    ):
        table.add_row(key, value)
    console.print(table)


def _endpoints(state_dir: Path) -> dict:
    from .world import running_pid

    if running_pid(state_dir) is None:
        raise click.ClickException(
            f"no sandbox is running in {state_dir} (start one with `aifixer sandbox up`, "
            "or give its --state-dir)"
        )
    path = state_dir / "endpoints.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(
            f"cannot read {path}: {exc} (restart the sandbox with `aifixer sandbox up`)"
        ) from None


def _get_json(url: str):
    try:
        resp = requests.get(url, timeout=10)
        resp.raise_for_status()
        return resp.json()
    except requests.RequestException as exc:
        raise click.ClickException(
            f"cannot reach the sandbox at {url}: {type(exc).__name__} (is `aifixer sandbox up` "
            "still running?)"
        ) from exc


@sandbox.command("calls")
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
def sandbox_calls(state_dir: Path) -> None:
    """Who the phone stand-in called, what was said, what they answered."""
    ep = _endpoints(state_dir)
    calls = _get_json(ep["twilio_base"] + "/sandbox/calls")
    if not calls:
        click.echo("no calls")
    for call in calls:
        says = call.get("says") or []
        click.echo(
            f"{call.get('sid', '')}  to {call.get('to', '')}  {call.get('status', '')}  "
            f"answer: {call.get('answer') or '-'}"
        )
        for say in says:
            click.echo(f"  said: {say.get('text', '')}")
            click.echo(f"        {say.get('wav', '')}")


@sandbox.command("prs")
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
@click.option("--diff/--no-diff", default=True, show_default=True)
def sandbox_prs(state_dir: Path, diff: bool) -> None:
    """The pull requests opened on the forge stand-in, with their diffs."""
    ep = _endpoints(state_dir)
    prs = _get_json(ep["git_base"] + "/sandbox/prs")
    if not prs:
        console.print("no pull requests")
    for pr in prs:
        console.rule(f"#{pr.get('number')} {pr.get('title')} [{pr.get('state')}]")
        console.print(f"{pr.get('repo', '')} {pr.get('head')} → {pr.get('base')}  {pr.get('url')}")
        if diff and pr.get("diff"):
            console.print(pr["diff"], markup=False, highlight=False)


@click.group()
def scenario() -> None:
    """Scenario files."""


@scenario.command("check")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def scenario_check(paths: tuple[Path, ...]) -> None:
    """Validate scenario files (default: the bundled ones)."""
    from . import scenario as scenario_mod

    for path in paths or scenario_mod.every_bundled():
        sc = _load_scenario(path)
        console.print(f"ok  {path}  ({sc.name}: expect {sc.expect.describe()})")


def farm_run_options(fn):
    """--speed, --timeout and --model, shared by the commands that play scenarios with the farm."""
    fn = click.option(
        "--model",
        "model",
        type=click.Choice(["local", "stub"]),
        default="local",
        show_default=True,
        help="local: the embedded qwen2.5-coder-1.5b on this CPU; stub: the "
        "stand-in endpoint (a test double, no language model).",
    )(fn)
    fn = click.option(
        "--timeout",
        default=240.0,
        show_default=True,
        type=POSITIVE,
        help="Wall seconds to wait for a scenario's incidents to reach an outcome.",
    )(fn)
    return click.option(
        "--speed", default=30.0, show_default=True, type=POSITIVE, help="Simulated time speed-up."
    )(fn)


@scenario.command("run")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@farm_run_options
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the run's files (logs, call file, repositories) here; default: a temporary dir.",
)
def scenario_run(
    path: Path, as_json: bool, speed: float, timeout: float, model: str, workdir: Path | None
) -> None:
    """Play one scenario with the real farm on the sandbox and report each incident."""
    sc = _load_scenario(path)
    report = _run_one(sc, speed, timeout, model, workdir, live=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        console.print(_report_table([report]))
        _show_monitoring(report, workdir or Path.cwd())
    sys.exit(0 if report["complete"] else 1)


def _show_monitoring(report: dict, plot_dir: Path) -> list[Path]:
    """A monitoring scenario's label changes and scaling decisions, and its scaling plot;
    returns the plots written."""
    plots = []
    for seen in report.get("levels", []):
        console.print(
            f"  {seen['namespace']}/{seen['pod']} aifixer.io/cpu-level: "
            + " → ".join(seen["values"])
        )
    for key, decisions in report.get("scaling", {}).items():
        changed = [d for d in decisions if d["replicas_after"] != d["replicas_before"]]
        console.print(scaling_table({key: changed or decisions[-5:]}))
        if decisions:
            namespace, _, name = key.partition("/")
            written = write_scaling_plot(
                decisions, key, plot_dir / f"scaling-{namespace}-{name}.png"
            )
            plots.append(written)
            console.print(f"  {len(decisions)} decisions, {len(changed)} changed the replicas; "
                          f"plot: {written}")  # fmt: skip
    for missing in report.get("missing", []):
        console.print(f"  [red]not reached:[/] {missing}")
    return plots


def _run_one(
    sc, speed: float, timeout: float, model: str, workdir: Path | None, *, live: bool, keep=None
) -> dict:
    from .harness import model_choice, run_scenario

    starter, env = model_choice(model)
    progress = _progress_printer(sc.name) if live else None
    if workdir is not None:
        return run_scenario(
            sc,
            workdir,
            speed=speed,
            timeout=timeout,
            progress=progress,
            model=starter,
            extra_env=env,
            keep=keep,
        )
    with tempfile.TemporaryDirectory(prefix=f"aifixer-{sc.name}-") as tmp:
        return run_scenario(
            sc,
            Path(tmp),
            speed=speed,
            timeout=timeout,
            progress=progress,
            model=starter,
            extra_env=env,
            keep=keep,
        )


def _stage_of(incident: dict) -> str:
    """The stage the incident's record says it reached (the store keeps it)."""
    return incident["outcome"] or incident.get("stage") or "opened"


def _step_line(step: dict) -> str:
    """One stage an incident passed, with what it took and when, as far as known."""
    stage, took, at = step["stage"], step.get("seconds"), step.get("at")
    if stage.startswith("closed") and took is not None:
        return f"{stage}, {took:.1f} s after opening"
    words = [stage]
    if took is not None:
        words.append(f"in {took:.1f} s" if took >= 0.1 else "in <0.1 s")
    if at is not None and stage != "opened":
        words.append(f"(+{at:.1f} s)")
    if step.get("detail") and stage.startswith("call "):
        words.append(f"[{step['detail']}]")
    return " ".join(words)


def _progress_printer(name: str):
    """Prints each stage an incident passes, once. The harness reads the records every
    half second, and a fast stage can start and end between two reads: the stages are
    derived from each whole record (`stages`: its fields and timings), not from the
    last stage name alone."""
    from rich.markup import escape

    shown: dict[str, set[str]] = {}

    def show(incidents: list[dict]) -> None:
        for inc in incidents:
            done = shown.setdefault(inc["id"], set())
            for step in inc.get("stages") or [{"stage": _stage_of(inc)}]:
                if step["stage"] in done:
                    continue
                done.add(step["stage"])
                console.print(
                    escape(f"  {inc['namespace']}/{inc['workload']} [{inc['failure_class']}]")
                    + " → "
                    + escape(_step_line(step))
                )

    return show


def _report_table(reports: list[dict]) -> Table:
    table = Table(title="incidents")
    for col in (
        "scenario",
        "workload",
        "failure class",
        "outcome",
        "changed",
        "pull request / call answers",
        "seconds",
    ):
        table.add_column(col)
    for rep in reports:
        if not rep["incidents"] and (rep.get("levels") or rep.get("scaling")):
            done = "[green]reached[/]" if rep["complete"] else "[red]not reached[/]"
            what = ", ".join(
                [f"levels {' → '.join(x['values'])}" for x in rep.get("levels", [])]
                + [
                    f"{k}: {sum(d['replicas_after'] != d['replicas_before'] for d in v)} "
                    "replica changes"
                    for k, v in rep.get("scaling", {}).items()
                ]  # fmt: skip
            )
            table.add_row(
                rep["scenario"], "-", "monitoring", done, what, "", f"{rep['duration_s']:.0f}"
            )
        elif not rep["incidents"]:
            table.add_row(
                rep["scenario"], "-", "-", "[red]no incident[/]", "", "", f"{rep['duration_s']:.0f}"
            )
        for inc in rep["incidents"]:
            if inc["pull_request"]:
                where = inc["pull_request"]["url"]
            else:
                where = (
                    ", ".join(
                        f"{c['number']}: {'yes' if c['can_intervene'] else 'no'}"
                        for c in inc["calls"]
                    )
                    or "-"
                )
            table.add_row(
                rep["scenario"],
                f"{inc['namespace']}/{inc['workload']}",
                inc["failure_class"],
                inc["outcome"] or "[red]unfinished[/]",
                "\n".join(inc["changed_paths"]) or "-",
                where,
                f"{rep['duration_s']:.0f}",
            )
    return table


@click.command()
@farm_run_options
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--all",
    "play_all",
    is_flag=True,
    help="Play every bundled scenario (the fixer's, the injection ones, then monitoring) "
    "instead of the short set.",
)
@click.option(
    "--out",
    "--plots",
    "out_dir",
    default=Path("aifixer-demo"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the report (report.html, with the calls' audio beside it) and the "
    "forecast-scaling plots (PNG) are written.",
)
def demo(
    speed: float, timeout: float, model: str, out_dir: Path, play_all: bool,
    paths: tuple[Path, ...],
) -> None:  # fmt: skip
    """Play bundled scenarios: the real farm against the sandbox, one world each.

    Without arguments, a short set: a fix, a call that escalates to the next number,
    a prompt injection in the logs, and the CPU-level scenario. --all plays every
    bundled scenario; PATHS play those files.

    For each scenario: a private Redis, the sandbox with the scenario's healthy
    manifests applied and committed and its bad change applied, a model endpoint, and
    the farm (celery worker, beat, aifixer web) as separate processes. Each incident
    moves through diagnose → patch → apply → verify → pull request or phone call.
    The monitoring scenarios run a real Prometheus and Alertmanager: the pods' level
    labels as they change, the scaling decisions, and a plot of load, forecast and
    capacity. Then OUT/report.html shows each incident: its stages and timings, the
    evidence, the diagnosis, the pull request and its diff, the calls with their audio.
    """
    from . import scenario as scenario_mod
    from .report import DemoReport

    if play_all and paths:
        raise click.UsageError("give scenario files or --all, not both")
    files = list(paths) or (scenario_mod.every_bundled() if play_all else scenario_mod.short_set())
    if not files:
        raise click.ClickException("no scenario files found")
    scenarios = [_load_scenario(path) for path in files]
    report = DemoReport(out_dir)
    reports = []
    for sc in scenarios:
        console.rule(f"{sc.name} (expect: {sc.expect.describe()})")
        reports.append(_run_one(sc, speed, timeout, model, None, live=True, keep=report.keep))
        report.add_plots(sc.name, _show_monitoring(reports[-1], out_dir))
        report.write()
    console.print(_report_table(reports))
    models = sorted({r["model"] for r in reports})
    console.print(f"model: {', '.join(models)}")
    if "stub" in models:
        console.print(
            "[yellow]'stub' is the stand-in model endpoint (a test double that answers "
            "from the playbook candidates), not a language model.[/]"
        )
    console.print(f"report: {report.write()}")
    if not all(r["complete"] for r in reports):
        sys.exit(1)
