"""Headless Chromium for looking at the farm's pages: screenshots and rendered DOM.

Two calls, both one short-lived browser each:

    screenshot("http://127.0.0.1:5555/tasks", Path("tasks.png"), auth=("admin", pw))
    dump_dom("file:///tmp/report.html")

Chromium comes from Debian's `chromium` package (`./dev` installs it). It runs
headless (`--headless=new`) with a throw-away profile and everything that would talk
to the internet off (background networking, component updates, sync, extensions,
first-run, crash reports, safe browsing); every host name but the loopback page's
own resolves to nothing, so a page cannot reach past this machine even through a
subresource. Only loopback http(s) and local files are opened.

JavaScript runs: `--virtual-time-budget` lets the page's timers and XHR (DataTables
asking Flower for rows, say) finish before the capture, without sleeping in real
time. A page behind HTTP basic auth (Flower's `--basic-auth`) is reached with `auth`
(or credentials already in the URL): Chromium uses them for the page and keeps them
for that origin, so its scripts' same-origin requests are authenticated too (without
them such a page renders empty). They appear on Chromium's command line for the
second it runs: use a throw-away password.

Every failure (no Chromium, a refused URL, a crash, the time limit) is one
`BrowserError`, whose message never holds the credentials.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["BrowserError", "chromium", "dump_dom", "screenshot"]

DEBIAN_PACKAGE = "chromium"
NAMES = ("chromium", "chromium-browser")

# Debian's /usr/bin/chromium is a shell launcher: it sources /etc/chromium.d (which
# exports Google API keys and turns remote extensions on) and runs this binary.
# Running the binary itself keeps those out.
DEBIAN_BINARY = Path("/usr/lib/chromium/chromium")

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


class BrowserError(RuntimeError):
    """Chromium is missing, refused the URL, failed, or ran out of time."""


def chromium() -> str:
    """The path of the Chromium binary, or BrowserError naming the package to install."""
    for name in NAMES:
        found = shutil.which(name)
        if found is None:
            continue
        if _is_script(found) and DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK):
            return str(DEBIAN_BINARY)
        return found
    raise BrowserError(
        f"Chromium is not installed (none of {', '.join(NAMES)} on PATH): "
        f"install Debian's package with `apt-get install -y {DEBIAN_PACKAGE}` (./dev does)"
    )


def screenshot(
    url: str,
    out: Path,
    *,
    width: int = 1400,
    height: int = 900,
    wait_ms: int = 3000,
    auth: tuple[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """A PNG of the page's first `width` x `height` pixels, written to `out`; returns `out`.

    `wait_ms` is the page's virtual time before the capture (its scripts, timers and
    requests run in it); `timeout` bounds the whole run in real seconds.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run(
        url,
        [f"--window-size={width},{height}", "--hide-scrollbars", f"--screenshot={out}"],
        wait_ms=wait_ms,
        auth=auth,
        timeout=timeout,
    )
    if not out.is_file() or out.stat().st_size == 0:
        raise BrowserError(f"Chromium wrote no screenshot of {_safe(url)} to {out}")
    return out


def dump_dom(
    url: str,
    *,
    wait_ms: int = 3000,
    auth: tuple[str, str] | None = None,
    timeout: float = 60.0,
) -> str:
    """The page's DOM as HTML once its scripts have run for `wait_ms` of virtual time."""
    return _run(url, ["--dump-dom"], wait_ms=wait_ms, auth=auth, timeout=timeout)


def _run(
    url: str, action: list[str], *, wait_ms: int, auth: tuple[str, str] | None, timeout: float
) -> str:
    target, host = _checked(url, auth)
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="aifixer-chromium-") as profile:
        args = [
            exe,
            "--headless=new",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--disable-breakpad",
            "--disable-client-side-phishing-detection",
            "--disable-domain-reliability",
            "--safebrowsing-disable-auto-update",
            "--metrics-recording-only",
            "--no-pings",
            "--disable-features=MediaRouter,OptimizationHints,Translate",
            # Containers give /dev/shm a few MB; Chromium's shared memory goes to /tmp.
            "--disable-dev-shm-usage",
            "--disable-gpu",
            # Loopback only: any other host name, or address, resolves to nothing.
            "--host-resolver-rules="
            + ", ".join(["MAP * ~NOTFOUND", *(f"EXCLUDE {h}" for h in _excluded(host))]),
            f"--virtual-time-budget={int(wait_ms)}",
            *action,
            target,
        ]
        # A private HOME (crash reports, caches) and none of the caller's variables
        # beyond the few a browser needs.
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        env["HOME"] = profile
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=profile,
                start_new_session=True,  # its helper processes end with it
            )
        except OSError as exc:
            raise BrowserError(f"cannot start {exe}: {exc}") from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise BrowserError(
                f"Chromium did not finish {_safe(url)} within {timeout:g} s"
            ) from None
        finally:
            _kill(proc)  # helpers left behind, if any
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise BrowserError(
            f"Chromium exited with {proc.returncode} on {_safe(url)}: "
            + _redact(" | ".join(tail), url, auth)
        )
    return stdout.decode(errors="replace")


def _checked(url: str, auth: tuple[str, str] | None) -> tuple[str, str]:
    """The URL Chromium is given (with `auth` in it) and its host; loopback or files only."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if auth is not None:
            raise BrowserError("auth is for http(s) pages, not files")
        return url, ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BrowserError(f"only loopback http(s) and file URLs are opened, not {_safe(url)}")
    host = parts.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BrowserError(f"only loopback hosts are opened, not {host}")
    if auth is None:
        return url, host
    user, password = auth
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc)), host


def _excluded(host: str) -> list[str]:
    hosts = list(LOOPBACK_NAMES)
    if host and host not in hosts:
        hosts.append(f"[{host}]" if ":" in host else host)
    return hosts


def _safe(url: str) -> str:
    """The URL without its credentials, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _redact(text: str, url: str, auth: tuple[str, str] | None) -> str:
    secrets = [p for p in (urlsplit(url).password, auth[1] if auth else None) if p]
    for secret in secrets:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
