"""Renders a GitOps layout with the real tools: `kubectl kustomize` and `helm template`.

The forge adapter proves a kustomize or Helm change by rendering the edited checkout
as the team's pipeline would (aifixer.sources decides what to edit and compares the
renders; this module only runs the tools). Each render is one subprocess: no shell,
a wall-clock limit (`AIFIXER_RENDER_TIMEOUT_S`), its output bounded, a private HOME
and Helm cache/config directories (nothing read from or written to the machine's),
and no cluster (`helm template` never contacts one; KUBECONFIG points nowhere).

The tools are found through the settings: `AIFIXER_KUBECTL_BIN` (default `kubectl` on
PATH; kustomize is built into it), `AIFIXER_KUSTOMIZE_BIN` (a standalone kustomize,
used instead when set) and `AIFIXER_HELM_BIN` (default `helm`). `./dev` installs the
pinned kubectl 1.32 and helm 3.17 (tools/kubetools.py); so does the image.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from aifixer.settings import Settings
from aifixer.sources import (
    Layout,
    SourceError,
    check_kustomization,
    inside,
    valid_namespace,
    valid_release,
)

from .errors import PermanentError, TransientError, bounded

MAX_OUTPUT = 32 * 1024 * 1024  # bytes of rendered YAML; more is not a Deployment's repo
FILE_MARGIN = 1024 * 1024  # past MAX_OUTPUT: the write fails, the render is refused
MAX_MEMORY = 2 * 1024 * 1024 * 1024  # address space of one render, in bytes
NO_NETWORK = "http://127.0.0.1:9"  # the discard port: nothing answers there
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


class Renderer:
    """Runs the render of a layout inside one checkout."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def render(self, root: Path, layout: Layout) -> str:
        """The YAML stream `layout` renders to in the checkout at `root`.

        Raises:
            PermanentError: the tool is missing, or refuses the layout (its own words).
            TransientError: the render outlived AIFIXER_RENDER_TIMEOUT_S.
        """
        if layout.kind not in ("kustomize", "helm"):
            raise PermanentError("render", f"{layout.path} is a plain manifest: nothing to render")
        system = layout.kind
        root = root.resolve()
        # Absolute paths checked to stay in the checkout, after "--": a name from the
        # repository or an annotation is never read as an option of the tool.
        path = str(_inside(system, root, layout.path))
        if layout.kind == "kustomize":
            try:  # nothing fetched: every resource, patch and file local to the checkout
                check_kustomization(root, layout.path)
            except SourceError as exc:
                raise PermanentError(system, bounded(str(exc), 500)) from None
            if self.settings.kustomize_bin:
                argv = [self.settings.kustomize_bin, "build", "--", path]
            else:
                argv = [self.settings.kubectl_bin, "kustomize", "--", path]
            setting = (
                "AIFIXER_KUSTOMIZE_BIN" if self.settings.kustomize_bin else "AIFIXER_KUBECTL_BIN"
            )
        else:
            setting = "AIFIXER_HELM_BIN"
            if not valid_release(layout.release):
                raise PermanentError(
                    system, f"{bounded(layout.release, 80)!r} is not a Helm release name"
                )
            if not valid_namespace(layout.namespace):
                raise PermanentError(
                    system, f"{bounded(layout.namespace, 80)!r} is not a namespace name"
                )
            _no_link_out(root, Path(path))  # helm follows a chart's symbolic links
            argv = [self.settings.helm_bin, "template", f"--namespace={layout.namespace}"]
            for values in layout.values:
                argv.append(f"--values={_inside(system, root, values)}")
            argv += ["--", layout.release, path]
        return self._run(system, setting, argv, root)

    def _run(self, system: str, setting: str, argv: list[str], cwd: Path) -> str:
        found = shutil.which(argv[0])
        # Absolute: the tool runs from the checkout, where a relative PATH entry (or a
        # relative setting) would name nothing.
        exe = os.path.abspath(found) if found else None
        if exe is None:
            raise PermanentError(
                system,
                f"{argv[0]} not found (set {setting}, or put it on PATH; "
                "./dev installs kubectl and helm)",
            )
        with tempfile.TemporaryDirectory(prefix="aifixer-render-") as home:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": home,
                "KUBECONFIG": os.devnull,
                "HELM_CACHE_HOME": f"{home}/cache",
                "HELM_CONFIG_HOME": f"{home}/config",
                "HELM_DATA_HOME": f"{home}/data",
                # Defence in depth beside check_kustomization: any HTTP(S) fetch goes to
                # a closed loopback port, and git (kustomize's remote targets) may only
                # read local files and never asks for credentials.
                **{proxy: NO_NETWORK for proxy in _PROXIES},
                "NO_PROXY": "",
                "no_proxy": "",
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_ALLOW_PROTOCOL": "file",
                "GIT_CONFIG_NOSYSTEM": "1",
            }
            with (
                tempfile.TemporaryFile(dir=home) as out,
                tempfile.TemporaryFile(dir=home) as err,
            ):
                try:
                    # Its own process group, so a timeout kills whatever it started too;
                    # and limits on what it may write and allocate (_limits).
                    proc = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                        [exe, *argv[1:]],
                        cwd=cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                        preexec_fn=_limits,  # noqa: PLW1509 - only setrlimit calls, no lock taken
                    )
                except OSError as exc:
                    raise PermanentError(system, f"cannot run {argv[0]}: {exc}") from None
                try:
                    returncode = proc.wait(timeout=self.settings.render_timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    raise TransientError(
                        system,
                        f"{_shown(argv)} did not finish within {self.settings.render_timeout_s}s",
                    ) from None
                except BaseException:
                    _kill_group(proc)
                    raise
                size = out.seek(0, os.SEEK_END)
                err.seek(0)
                stderr = err.read(4096).decode("utf-8", "replace").strip()
                if size > MAX_OUTPUT:
                    raise PermanentError(system, f"{_shown(argv)} rendered over {MAX_OUTPUT} bytes")
                if returncode != 0:
                    raise PermanentError(
                        system, bounded(f"{_shown(argv)} failed: {stderr or returncode}", 800)
                    )
                out.seek(0)
                return out.read().decode("utf-8", "replace")


def _inside(system: str, root: Path, path: str) -> Path:
    try:
        return inside(root, path)
    except SourceError as exc:
        raise PermanentError(system, bounded(str(exc), 300)) from None


def _limits() -> None:
    """In the render's process, before the tool runs: no file it writes (its output
    included) may grow past MAX_OUTPUT and a margin, and its address space is bounded
    (kubectl and helm render with far less: measured to run under 1 GiB)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT + FILE_MARGIN,) * 2)
    resource.setrlimit(resource.RLIMIT_AS, (MAX_MEMORY, MAX_MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the render's whole process group, and reap the tool."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _no_link_out(root: Path, chart: Path) -> None:
    """Refuse a chart holding a symbolic link out of the checkout: `helm template`
    follows it (`.Files.Get`, templates, values), reading any file of the machine."""
    for dirpath, dirnames, filenames in os.walk(chart):
        for name in [*dirnames, *filenames]:
            link = Path(dirpath) / name
            if link.is_symlink() and not link.resolve().is_relative_to(root):
                raise PermanentError(
                    "helm",
                    f"{link.relative_to(root)} is a symbolic link out of the repository: refused",
                )


def _shown(argv: list[str]) -> str:
    return " ".join([Path(argv[0]).name, *argv[1:]])
