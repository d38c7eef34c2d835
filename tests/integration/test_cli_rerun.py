"""Every `aifixer` command can be run again, and a person's mistake is one line.

Through the real console script in subprocesses: `aifixer sandbox up` twice on one
state directory (a fresh world each time, the previous one's repository reused on
request), a second `up` while the first runs (refused), and bad arguments to every
command: each an exit code, one `Error:` line on stderr saying what to do, and no
traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aifixer_sandbox.scenario import bundled_dir

SCENARIO = bundled_dir() / "oom-report-api.yaml"
SCRIPT = Path(sys.executable).parent / "aifixer"
AIFIXER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "aifixer.cli"]
READY = "Ctrl-C to stop."

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def aifixer(*args: str, cwd: Path, timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*AIFIXER, *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


class Up:
    """`aifixer sandbox up` in the background, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.out = cwd / f"up-{time.monotonic_ns()}.log"
        with self.out.open("w") as out:
            self.proc = subprocess.Popen(
                [*AIFIXER, "sandbox", "up", *args],
                cwd=cwd,
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()
            assert time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.out.read_text()


def _commits(state: Path) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(state / "git" / "acme" / "gitops.git"), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()


@pytest.mark.timeout(300)
def test_sandbox_up_again_fresh_or_reused_and_refused_while_running(tmp_path):
    state = tmp_path / "state"
    args = ("--scenario", str(SCENARIO), "--speed", "60", "--state-dir", str(state))
    started: list[Up] = []
    try:
        for n, extra in enumerate(((), (), ("--reuse",))):
            up = Up(tmp_path, *args, *extra)
            started.append(up)
            up.wait_ready()
            if n == 0:
                second = aifixer("sandbox", "up", *args, cwd=tmp_path)
                assert second.returncode == 1
                line = error_line(second)
                assert "already running" in line and "--state-dir" in line, line
                assert f"pid {up.proc.pid}" in line, line
                calls = aifixer("sandbox", "calls", "--state-dir", str(state), cwd=tmp_path)
                assert calls.returncode == 0 and "no calls" in calls.stdout, calls.stderr
            output = up.stop()
            assert up.proc.returncode == 0, output
            assert "Traceback" not in output, output
            # Fresh: the scenario's two commits; reused: two more on top of them.
            assert len(_commits(state)) == (4 if extra else 2), _commits(state)
    finally:
        for up in started:
            up.stop()

    after = aifixer("sandbox", "prs", "--state-dir", str(state), cwd=tmp_path)
    assert after.returncode == 1
    assert "no sandbox is running" in error_line(after)


@pytest.mark.timeout(180)
def test_sandbox_up_refuses_a_port_in_use_and_a_foreign_directory(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = aifixer(
            "sandbox", "up", "--state-dir", str(tmp_path / "s"), "--port",
            f"kubernetes={port}", cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    line = error_line(result)
    assert "address already in use" in line and "--port" in line, line

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = aifixer("sandbox", "up", "--state-dir", str(foreign), cwd=tmp_path)
    assert result.returncode == 1
    assert "did not create" in error_line(result)
    assert (foreign / "notes.txt").read_text() == "mine"  # nothing of it was removed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    found = {
        "bad_yaml": d / "bad.yaml",
        "invalid": d / "invalid.yaml",
        "a_file": d / "a-file",
        "foreign_calls": d / "calls.jsonl",
        "missing": d / "missing.yaml",
        "dir": d,
    }
    found["bad_yaml"].write_text("name: [oops\n")
    found["invalid"].write_text("name: x\n")
    found["a_file"].write_text("x")
    found["foreign_calls"].write_text('{"hello": "world"}\n')
    return found


REDIS_DOWN = {"AIFIXER_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}

# (arguments, environment, exit code, what the Error: line says). "{name}" is a file above.
CASES = [
    (["sandbox", "up", "--scenario", "{bad_yaml}"], {}, 1, ["not valid YAML at line 2"]),
    (["sandbox", "up", "--scenario", "{invalid}"], {}, 1, ["manifests: Field required",
                                                          "see the bundled scenarios"]),
    (["sandbox", "up", "--scenario", "{missing}"], {}, 2, ["does not exist"]),
    (["sandbox", "up", "--speed", "0"], {}, 2, ["finite number above 0"]),
    (["sandbox", "up", "--speed", "nan"], {}, 2, ["finite number above 0"]),
    (["sandbox", "up", "--port", "nope=1234"], {}, 2, ["NAME one of kubernetes"]),
    (["sandbox", "up", "--port", "kubernetes=99999"], {}, 2, ["PORT 1-65535"]),
    (["sandbox", "up", "--state-dir", "{a_file}"], {}, 1, ["is a file", "--state-dir"]),
    (["sandbox", "calls", "--state-dir", "{dir}"], {}, 1, ["no sandbox is running",
                                                          "aifixer sandbox up"]),
    (["sandbox", "prs", "--state-dir", "{dir}"], {}, 1, ["no sandbox is running"]),
    (["scenario", "check", "{bad_yaml}"], {}, 1, ["not valid YAML"]),
    (["scenario", "check", "{invalid}"], {}, 1, ["invalid scenario"]),
    (["scenario", "run", "{invalid}", "--timeout", "-1"], {}, 2, ["finite number above 0"]),
    (["scenario", "run", "{bad_yaml}", "--model", "stub"], {}, 1, ["not valid YAML"]),
    (["demo", "{invalid}", "--model", "stub"], {}, 1, ["invalid scenario"]),
    (["demo", "--all", "{invalid}"], {}, 2, ["scenario files or --all, not both"]),
    (["bench", "quality", "{bad_yaml}", "--model", "stub"], {}, 1, ["not valid YAML"]),
    (["bench", "chaos", "--timeout", "0"], {}, 2, ["finite number above 0"]),
    (["incidents"], REDIS_DOWN, 1, ["cannot reach Redis", "AIFIXER_REDIS_URL"]),
    (["scaling"], REDIS_DOWN, 1, ["cannot reach Redis", "AIFIXER_REDIS_URL"]),
    (["scaling", "--plot", "foo"], REDIS_DOWN, 2, ["NAMESPACE/NAME"]),
    (["calls"], {"AIFIXER_CALL_FILE": "{missing}"}, 1, ["no call file", "AIFIXER_CALL_FILE"]),
    (["calls"], {"AIFIXER_CALL_FILE": "{foreign_calls}"}, 1, ["not a call record",
                                                              "AIFIXER_CALL_FILE"]),
    (["calls"], {"AIFIXER_CALL_FILE": "{dir}"}, 1, ["Is a directory"]),
    (["web", "--port", "99999"], {}, 2, ["1<=x<=65535"]),
    (["web"], {"AIFIXER_WEB_PORT": "abc"}, 1, ["invalid setting: web_port",
                                               "AIFIXER_ environment"]),
    (["model", "serve", "--port", "0"], {}, 2, ["1<=x<=65535"]),
    (["nosuch"], {}, 2, ["No such command"]),
]  # fmt: skip


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    CASES,
    ids=[" ".join([*c[0], *c[1]]) for c in CASES],  # stable: the variables' names only
)
def test_a_mistake_is_one_line_saying_what_to_do(files, tmp_path, args, env, code, says):
    names = {k: str(v) for k, v in files.items()}
    result = aifixer(
        *(a.format(**names) for a in args),
        cwd=tmp_path,
        **{k: v.format(**names) for k, v in env.items()},
    )
    assert result.returncode == code, result.stderr
    line = error_line(result)
    for text in says:
        assert text in line, line
    if code == 1:  # a ClickException: the Error: line is all there is
        assert result.stderr.strip() == line, result.stderr
