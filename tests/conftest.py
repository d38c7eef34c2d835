"""Shared fixtures: a private Redis, sandbox worlds, and kubectl with a private cache.

Every server a test starts binds 127.0.0.1 on a free port and is stopped by the
fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aifixer.sandbox import scenario as scenario_mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """AIFIXER_TEST_REDIS_URL if given, else a private redis-server on a free port."""
    given = os.environ.get("AIFIXER_TEST_REDIS_URL")
    if given:
        yield given
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (./dev test installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def make_world(tmp_path) -> Iterator[Callable]:
    """make_world(scenario=None, speed=30, load=True, apply_change=True) -> started World."""
    from aifixer.sandbox.world import World

    worlds = []

    def make(scenario=None, *, speed: float = 30.0, load: bool = True, apply_change: bool = True):
        if isinstance(scenario, (str, Path)):
            scenario = scenario_mod.load(scenario)
        w = World(scenario, tmp_path / f"world{len(worlds)}", speed=speed)
        worlds.append(w)
        w.start(load=load, apply_change=apply_change)
        return w

    yield make
    for w in worlds:
        w.stop()


@pytest.fixture
def kubectl(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """kubectl(kubeconfig, *args) with a private HOME so the discovery cache never leaks."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is not installed (./dev test installs it)")
    home = tmp_path / "kubectl-home"
    home.mkdir(exist_ok=True)

    def run(kubeconfig: str | Path, *args: str, timeout: float = 60, check: bool = False):
        env = {
            **os.environ,
            "HOME": str(home),
            "KUBECACHEDIR": str(home / "cache"),
            "KUBECONFIG": str(kubeconfig),
        }
        proc = subprocess.run(
            [exe, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    return run
