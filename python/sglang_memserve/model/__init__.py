"""The embedded models: random-weight Llamas made offline (tiny, bench) and SmolLM2-135M-Instruct
built from its PyPI wheel (smollm2), each built into the model cache on first use."""

from sglang_memserve.model.embedded import SPECS, ModelSpec
from sglang_memserve.model.registry import MODELS, cache_root, ensure_model, get_model
from sglang_memserve.model.smollm2 import ModelSourceMissing

__all__ = ["MODELS", "SPECS", "ModelSourceMissing", "ModelSpec", "cache_root", "ensure_model",
           "get_model"]
