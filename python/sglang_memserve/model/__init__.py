"""The embedded default model: a tokenizer and a random-weight Llama, made offline and deterministically."""

from sglang_memserve.model.embedded import SPECS, ModelSpec, ensure_model

__all__ = ["SPECS", "ModelSpec", "ensure_model"]
