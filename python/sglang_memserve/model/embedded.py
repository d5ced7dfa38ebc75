"""Builds the embedded default model offline: a byte-level BPE tokenizer trained on the shipped sample
and a random-weight Llama checkpoint, both saved in the Hugging Face layout SGLang loads.

The same spec gives the same files on every machine (fixed seed, fixed corpus), so a cached copy is
keyed by a hash of the spec and reused by later starts (``registry.ensure_model``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class ModelSpec:
    """Shape of an embedded model. ``init_std`` is large on purpose: peaked logits make greedy
    decoding robust to float rounding, so cached and uncached paths pick the same tokens."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int
    vocab_target: int
    seed: int = 0
    init_std: float = 0.2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + _corpus_digest()
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    @property
    def cpu_dtype(self) -> str:
        """Random weights are built and served in float32 (cached and uncached paths then
        agree token for token)."""
        return "float32"

    def build(self, out: Path) -> None:
        """Train the tokenizer and save it with the random-weight Llama into ``out``."""
        _build(self, out)


SPECS: dict[str, ModelSpec] = {
    # Tests: starts fast, 2 layers.
    "tiny": ModelSpec("tiny", 64, 2, 4, 2, 128, max_positions=2048, vocab_target=1024),
    # Benchmarks: prefill of ~1k tokens costs ~0.5 s on 2 cores, so caching shows in JCT/TTFT.
    "bench": ModelSpec("bench", 512, 8, 8, 4, 1408, max_positions=8192, vocab_target=2048,
                       init_std=0.05),
}


def sample_texts() -> list[str]:
    """Every turn of the shipped sample conversations (the tokenizer's training corpus)."""
    data = json.loads(_sample_path().read_text())
    return [turn["value"] for conv in data for turn in conv["conversations"]]


def _sample_path() -> Path:
    return Path(str(resources.files("sglang_memserve") / "data" / "sample_conversations.json"))


def _corpus_digest() -> str:
    return hashlib.sha256(_sample_path().read_bytes()).hexdigest()[:12]


def _build(spec: ModelSpec, out: Path) -> None:
    from sglang_memserve import compat

    compat.apply_import_patches()  # transformers imports torchvision when it is installed
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=spec.max_positions,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions,
        initializer_range=spec.init_std,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "memserve_model.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
