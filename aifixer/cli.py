"""The `aifixer` command.

Its own commands run and inspect the farm (`web`, `incidents`, `calls`, `scaling`) and
the embedded model (`model`). Other installed packages add theirs through entry points
of the group `aifixer.commands` (the sandbox package adds `sandbox`, `scenario`, `demo`
and `bench`): each is imported only when it is run or its help is shown, so a product
command never loads them.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from . import __version__, redact
from .cliparams import PORT, UserError

if TYPE_CHECKING:
    from .models import PullRequestRef

# Other packages' commands: entry points of this group, each a click command or group.
COMMANDS_GROUP = "aifixer.commands"
# Piped or logged output gets room for the tables instead of the 80 columns default.
console = Console(width=None if sys.stdout.isatty() else 160)


def _known_error(exc: Exception) -> str | None:
    """One line saying what went wrong and what to do, for the errors a person can cause
    (an unreachable service, a bad file or setting); None for anything else (a bug,
    which keeps its traceback)."""
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from .adapters.errors import AdapterError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError) or (
        isinstance(exc, AdapterError) and exc.system == "redis"
    ):
        return f"cannot reach Redis: {_oneline(exc)} (start Redis, or set AIFIXER_REDIS_URL)"
    if isinstance(exc, AdapterError):
        return f"{_oneline(exc)} (check that {exc.system} is reachable and its AIFIXER_ settings)"
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        return f"invalid setting: {fields} (check the AIFIXER_ environment variables)"
    if isinstance(exc, UserError):
        return _oneline(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc} (check the path and its permissions)"
    return None


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _plugins() -> dict[str, metadata.EntryPoint]:
    """The commands installed packages add, by name (the first of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=COMMANDS_GROUP):
        found.setdefault(ep.name, ep)
    return found


class _Main(click.Group):
    """The `aifixer` group: its own commands and the installed packages' (loaded when
    named); the known errors of any command become one line, exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = _plugins().get(cmd_name)
        if ep is None:
            return None
        loaded = ep.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(
                f"the command {cmd_name!r} of {ep.value} is not a click command "
                "(reinstall the package that provides it)"
            )
        return loaded

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = _known_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="aifixer")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """aifixer keeps Kubernetes applications healthy while their people sleep."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact.install()  # `aifixer web`, `incidents`, the sandbox: no credential in a log line


@main.command()
@click.option("--host", default=None, help="Interface to bind (default: AIFIXER_WEB_HOST).")
@click.option("--port", default=None, type=PORT, help="Port (default: AIFIXER_WEB_PORT).")
def web(host: str | None, port: int | None) -> None:
    """Serve Twilio's voice callbacks, Alertmanager webhooks, /healthz and /metrics."""
    from . import pipeline, tasks
    from . import web as web_mod

    ctx = pipeline.Context()

    def on_call_finished(incident_id: str, record) -> None:
        pipeline.call_finished(
            ctx, record, place_next=lambda iid, attempt: tasks.call_next.delay(iid, attempt)
        )

    def on_signals(signals) -> None:
        tasks.ingest_signals.delay([s.model_dump(mode="json") for s in signals])

    def on_levels(pod_ids: list[str]) -> None:
        for pod_id in pod_ids:
            tasks.label_cpu_level.delay(pod_id)

    web_mod.run(
        ctx.settings, on_call_finished, on_signals, on_levels=on_levels, host=host, port=port
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full records as JSON.")
def incidents(as_json: bool) -> None:
    """The incidents the farm knows (from Redis), oldest first."""
    from . import pipeline

    states = pipeline.all_incidents(pipeline.Context())
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
        return
    table = Table(title="incidents")
    for col in ("opened", "workload", "failure class", "stage", "outcome", "fix", "pull request",
                "calls"):  # fmt: skip
        table.add_column(col)
    for s in states:
        inc = s.incident
        table.add_row(
            inc.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            inc.workload.key,
            inc.failure_class,
            s.stage,
            s.outcome or "in progress",
            s.proposal.strategy if s.proposal else "-",
            _pull_request_cell(s.pull_request),
            ", ".join(f"{c.number}={'yes' if c.can_intervene else 'no'}" for c in s.calls) or "-",
        )
    console.print(table)


def _pull_request_cell(pr: PullRequestRef | None) -> str:
    """The pull request's link and what became of it: a draft, merged (when), closed."""
    if pr is None:
        return "-"
    if pr.state == "merged" and pr.merged_at is not None:
        return f"{pr.url} (merged {pr.merged_at:%Y-%m-%d %H:%M})"
    if pr.state == "closed":
        return f"{pr.url} (closed unmerged)"
    return f"{pr.url} (draft: needs a hand edit)" if pr.draft else pr.url


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full decisions as JSON.")
@click.option(
    "--last",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Decisions shown per Deployment.",
)
@click.option(
    "--plot",
    "plot_of",
    metavar="NAMESPACE/NAME",
    help="Also draw this Deployment's load, forecast and capacity (PNG) from its records.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --plot writes (default: scaling-NAMESPACE-NAME.png here).",
)
def scaling(as_json: bool, last: int, plot_of: str | None, out: Path | None) -> None:
    """Forecast scaling's decisions (from Redis), per Deployment, oldest first."""
    from . import pipeline
    from .scaling import scaler

    if plot_of:
        namespace, _, name = plot_of.partition("/")
        if not namespace or not name:
            raise click.BadParameter(
                f"expected NAMESPACE/NAME, got {plot_of!r}", param_hint="--plot"
            )
    ctx = pipeline.Context()
    found = scaler.all_decisions(ctx.redis, last)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        console.print(scaling_table(found))
    if plot_of:
        written = write_scaling_plot(
            scaler.decisions(ctx.redis, namespace, name),
            plot_of,
            out or Path(f"scaling-{namespace}-{name}.png"),
        )
        console.print(f"plot: {written}")


def scaling_table(found: dict[str, list[dict]]) -> Table:
    from datetime import UTC, datetime

    table = Table(title="forecast scaling")
    for col in ("time", "deployment", "mode", "samples", "now (cores)", "peak (cores)",
                "replicas", "why"):  # fmt: skip
        table.add_column(col)
    for key, decisions in found.items():
        for d in decisions:
            table.add_row(
                datetime.fromtimestamp(d["at"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
                key,
                d["mode"],
                str(d["history_samples"]),
                "-" if d["current_cores"] is None else f"{d['current_cores']:.3f}",
                "-" if d["peak_cores"] is None else f"{d['peak_cores']:.3f}",
                f"{d['replicas_before']} -> {d['replicas_after']}",
                d["reason"],
            )
    return table


def write_scaling_plot(decisions: list[dict], title: str, out: Path) -> Path:
    from .scaling.plot import PlotError, plot

    try:
        return plot(decisions, out, title)
    except PlotError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def calls() -> None:
    """The call file: when, who, what was said, and the answer."""
    from .callfile import CallFile
    from .settings import get_settings

    path = get_settings().call_file
    if not path.exists():
        raise click.ClickException(
            f"no call file at {path}: no call was placed yet, or AIFIXER_CALL_FILE should "
            "name the farm's call file"
        )
    try:
        records = CallFile(path).read()
    except ValueError as exc:
        raise click.ClickException(
            f"{_oneline(exc)} (is AIFIXER_CALL_FILE the farm's call file?)"
        ) from None
    table = Table(title=str(path))
    for col in ("time", "number", "answer", "status", "speech"):
        table.add_column(col)
    for c in records:
        table.add_row(
            c.time.isoformat(timespec="seconds"),
            c.number,
            "yes" if c.can_intervene else "no",
            c.status,
            c.speech,
        )
    console.print(table)


def _register_model_group() -> None:
    """`aifixer model ...`: the embedded model (its server needs the `model` extra)."""
    from .localmodel import model_cli

    main.add_command(model_cli, "model")


_register_model_group()

if __name__ == "__main__":
    main()
