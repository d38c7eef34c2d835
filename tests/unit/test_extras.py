"""What `pip install aifixer` leaves out (the embedded model, incident memory's embedder,
Prophet) is an extra, and using it without the extra says which one to install.

Each missing library is simulated by a None entry in sys.modules, which makes both
`import` and `importlib.util.find_spec` see no such module; the real absence, in a
virtualenv holding the runtime set only, is tests/integration/test_runtime_install.py.
"""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from aifixer import localmodel
from aifixer.adapters.embed import OFFLINE_ENV, Embedder
from aifixer.adapters.errors import PermanentError
from aifixer.settings import Settings

MODEL_EXTRA = "pip install 'aifixer[model]'"
MEMORY_EXTRA = "pip install 'aifixer[memory]'"


@pytest.mark.parametrize("module", localmodel.SERVER_MODULES)
def test_the_model_server_names_its_extra_when_a_module_is_missing(module, monkeypatch):
    localmodel.require_server()  # everything is installed here
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(localmodel.ModelServerMissing) as caught:
        localmodel.require_server()
    assert f"no module {module}" in str(caught.value)
    assert MODEL_EXTRA in str(caught.value)


def test_the_server_is_checked_before_the_model_file_is_assembled(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    server = localmodel.LocalModelServer(cache=tmp_path / "cache", log_path=tmp_path / "s.log")
    with pytest.raises(localmodel.ModelServerMissing, match=r"aifixer\[model\]"):
        server.start()
    assert not (tmp_path / "cache").exists()  # nothing assembled, nothing started
    assert not server.running()


def test_model_serve_without_the_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(localmodel.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    done = CliRunner().invoke(localmodel.model_cli, ["serve", "--port", "1"])
    assert done.exit_code == 1
    assert "no module uvicorn" in done.output and MODEL_EXTRA in done.output
    assert "Traceback" not in done.output
    assert list(tmp_path.iterdir()) == []


def test_missing_weight_parts_name_the_extra():
    artifact = localmodel.Artifact(
        file_name="x.gguf", size=1, sha256="0" * 64, package="aifixer-no-such-part{n}", parts=3
    )
    with pytest.raises(localmodel.ModelFileError) as caught:
        localmodel.part_files(artifact)
    message = str(caught.value)
    assert "aifixer-no-such-part1 is not installed" in message
    assert "aifixer-no-such-part3" in message and MODEL_EXTRA in message


def _offline_env_restored(monkeypatch):
    # The embedder sets these for the Hugging Face libraries; put them back afterwards.
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)


def test_a_missing_embedding_package_names_the_memory_extra(monkeypatch):
    _offline_env_restored(monkeypatch)
    embedder = Embedder(Settings(_env_file=None, embedding_package="aifixer_no_such_embedder"))
    with pytest.raises(PermanentError) as caught:
        embedder.embed(["CrashLoopBackOff in checkout"])
    assert "aifixer_no_such_embedder" in str(caught.value)
    assert MEMORY_EXTRA in str(caught.value)


def test_missing_sentence_transformers_names_the_memory_extra(monkeypatch):
    _offline_env_restored(monkeypatch)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    # Any importable package will do as the model's: the import after it fails first.
    embedder = Embedder(Settings(_env_file=None, embedding_package="colorsys"))
    with pytest.raises(PermanentError) as caught:
        embedder.embed(["OOMKilled in report-api"])
    assert "sentence_transformers" in str(caught.value)
    assert MEMORY_EXTRA in str(caught.value)
