"""The `aifixer` command.

`aifixer sandbox ...` runs and inspects the embedded stand-in world; `aifixer demo`
runs the bundled scenarios on it. The sandbox is imported lazily, inside the commands
that need it, so the product commands never load it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
import requests
from rich.console import Console
from rich.table import Table

from . import __version__

DEFAULT_STATE_DIR = Path(".aifixer/sandbox")
console = Console()


@click.group()
@click.version_option(__version__, prog_name="aifixer")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """aifixer keeps Kubernetes applications healthy while their people sleep."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.group()
def sandbox() -> None:
    """The embedded stand-ins for Kubernetes, Loki, GitHub and Twilio."""


def _load_scenario(path: Path | None):
    from .sandbox import scenario as scenario_mod

    if path is None:
        return None
    try:
        return scenario_mod.load(path)
    except scenario_mod.ScenarioError as exc:
        raise click.ClickException(str(exc)) from exc


@sandbox.command("up")
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Scenario file to load (see tests/scenarios/).",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=float,
    help="Simulated time runs this many times faster than wall time.",
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the kubeconfig, endpoints.json, git repositories and call recordings go.",
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
    help="Fixed port for a stand-in (kubernetes, loki, forge, twilio); default: a free port.",
)
def sandbox_up(
    scenario_path: Path | None,
    speed: float,
    state_dir: Path,
    no_change: bool,
    ports: tuple[str, ...],
) -> None:
    """Start the stand-in world in the foreground; Ctrl-C stops it."""
    from .sandbox.world import World, WorldError

    fixed = {}
    for item in ports:
        name, _, port = item.partition("=")
        if not port.isdigit():
            raise click.BadParameter(f"expected NAME=PORT, got {item!r}", param_hint="--port")
        fixed[name] = int(port)
    world = World(_load_scenario(scenario_path), state_dir, speed=speed, ports=fixed)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ep = await world.astart()
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
    path = state_dir / "endpoints.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(
            f"no sandbox found: {path} does not exist (run `aifixer sandbox up`)"
        ) from None


def _get_json(url: str):
    try:
        resp = requests.get(url, timeout=10)
        resp.raise_for_status()
        return resp.json()
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach the sandbox at {url}: {exc}") from exc


@sandbox.command("calls")
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
def sandbox_calls(state_dir: Path) -> None:
    """Who the phone stand-in called, what was said, what they answered."""
    ep = _endpoints(state_dir)
    calls = _get_json(ep["twilio_base"] + "/sandbox/calls")
    table = Table(title="calls")
    for col in ("sid", "to", "status", "said", "answer", "recording"):
        table.add_column(col)
    for call in calls:
        says = call.get("says") or []
        table.add_row(
            call.get("sid", ""),
            call.get("to", ""),
            call.get("status", ""),
            " / ".join(s.get("text", "") for s in says),
            str(call.get("answer") or ""),
            ", ".join(s.get("wav", "") for s in says),
        )
    console.print(table)


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


@main.group()
def scenario() -> None:
    """Scenario files."""


@scenario.command("check")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def scenario_check(paths: tuple[Path, ...]) -> None:
    """Validate scenario files (default: the bundled ones)."""
    from .sandbox import scenario as scenario_mod

    for path in paths or tuple(scenario_mod.bundled()):
        sc = _load_scenario(path)
        console.print(f"ok  {path}  ({sc.name}: expect {sc.expect.outcome})")


@main.command()
@click.option(
    "--speed", default=30.0, show_default=True, type=float, help="Simulated time speed-up."
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=float,
    help="Wall seconds to wait for each scenario's failure to show.",
)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def demo(speed: float, timeout: float, paths: tuple[Path, ...]) -> None:
    """Run the bundled scenarios on the sandbox and show what breaks in each.

    Each scenario gets its own world: the healthy manifests are applied and committed,
    the bad change is applied, and the demo shows the failure the cluster reports
    (pod reasons, Warning events, error lines in Loki).
    """
    from .sandbox import scenario as scenario_mod
    from .sandbox.world import World, WorldError

    files = list(paths) or scenario_mod.bundled()
    if not files:
        raise click.ClickException("no scenario files found")
    console.print(
        "[bold]aifixer demo[/] — the sandbox reproduces each scenario's failure. "
        "Remediation (diagnose → patch → apply → verify → PR | call) is not wired in yet."
    )
    table = Table(title="scenarios")
    for col in ("scenario", "expect", "workload", "pod reasons", "warning events", "seconds"):
        table.add_column(col)
    failed = 0
    for path in files:
        sc = _load_scenario(path)
        started = time.monotonic()
        with (
            tempfile.TemporaryDirectory(prefix="aifixer-demo-") as tmp,
            World(sc, Path(tmp), speed=speed) as world,
        ):
            try:
                world.start()
            except WorldError as exc:
                failed += 1
                table.add_row(sc.name, sc.expect.outcome, "-", f"[red]{exc}[/]", "", "")
                continue
            workloads = _changed_workloads(sc)
            seen: dict = {}
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                seen = {w: world.call(_symptoms_of(world, *w)) for w in workloads}
                if all(s["reasons"] or s["events"] for s in seen.values()):
                    break
                time.sleep(0.2)
            for (ns, name), s in seen.items():
                table.add_row(
                    sc.name,
                    sc.expect.outcome,
                    f"{ns}/{name}",
                    ", ".join(s["reasons"]) or "-",
                    ", ".join(s["events"]) or "-",
                    f"{time.monotonic() - started:.1f}",
                )
    console.print(table)
    if failed:
        sys.exit(1)


def _symptoms_of(world, namespace: str, name: str):
    async def get():
        return world.symptoms(namespace, name)

    return get


def _changed_workloads(sc) -> list[tuple[str, str]]:
    files = sc.change or sc.manifests
    out = []
    for mf in files:
        for doc in mf.documents():
            if doc.get("kind") == "Deployment":
                out.append((doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]))
    return out


if __name__ == "__main__":
    main()
