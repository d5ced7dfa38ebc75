"""A plain-torch Llama decoder stack with random weights, for measuring prefill cost.

The attention step is a callable, so the same layers run with FlashInfer paged attention over
MemPool pages on a GPU (``gpu_bench.py``) and with torch SDPA over a KV prefix on CPU
(``cpu_costmodel.py``). Weights are random; only the shapes matter for timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LlamaShape:
    """A Llama model's shape.

    Attributes:
        name: label written into cost tables.
        num_layers: decoder layers of the whole model.
        hidden: hidden size.
        num_heads: query heads.
        num_kv_heads: KV heads.
        intermediate: MLP intermediate size.
        vocab: vocabulary size.
        rope_theta: RoPE base.
    """

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0

    @property
    def head_dim(self) -> int:
        """Head dimension."""
        return self.hidden // self.num_heads

    def to_json(self) -> dict:
        """JSON form for cost tables.

        Returns:
            The fields plus ``head_dim``.
        """
        return dict(asdict(self), head_dim=self.head_dim)


LLAMA3_8B = LlamaShape("llama-3-8b", 32, 4096, 32, 8, 14336, 128256)
BENCH = LlamaShape("bench", 8, 512, 8, 4, 1408, 8000, rope_theta=10000.0)

# attention(layer, q [n, H, D], k [n, KVH, D], v [n, KVH, D]) -> [n, H, D]
AttnFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class LlamaStack:
    """``layers`` decoder layers of ``shape`` with random weights, plus norm and LM head.

    Args:
        shape: the model shape.
        layers: how many layers to instantiate (timings are scaled to ``shape.num_layers``).
        dtype: weight / activation type.
        device: torch device.
        seed: RNG seed.
    """

    def __init__(self, shape: LlamaShape, layers: int, *, dtype: torch.dtype,
                 device: str | torch.device, seed: int = 0) -> None:
        self.shape = shape
        self.layers = layers
        self.dtype = dtype
        self.device = torch.device(device)
        g = torch.Generator(device=self.device).manual_seed(seed)
        h, hd = shape.hidden, shape.head_dim
        qkv_out = (shape.num_heads + 2 * shape.num_kv_heads) * hd

        def w(out_f: int, in_f: int) -> torch.Tensor:
            t = torch.randn(out_f, in_f, generator=g, device=self.device, dtype=dtype)
            return t.mul_(in_f ** -0.5)

        self.w_qkv = [w(qkv_out, h) for _ in range(layers)]
        self.w_o = [w(h, shape.num_heads * hd) for _ in range(layers)]
        self.w_gate_up = [w(2 * shape.intermediate, h) for _ in range(layers)]
        self.w_down = [w(h, shape.intermediate) for _ in range(layers)]
        self.norm_w = torch.ones(h, device=self.device, dtype=dtype)
        self.embed = w(shape.vocab, h)
        self.lm_head = w(shape.vocab, h)
        inv = 1.0 / (shape.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.inv_freq = inv.to(self.device)

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * self.norm_w

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ang = pos.float()[:, None] * self.inv_freq[None, :]  # [n, D/2]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor,
                attn: AttnFn, last_token_logits: bool = True,
                layers: int | None = None) -> torch.Tensor:
        """Run the stack on new tokens.

        Args:
            token_ids: ``[n]`` token ids (the new, uncached tokens).
            positions: ``[n]`` their positions (after the cached prefix).
            attn: attention step (stores K/V and attends over prefix + new tokens).
            last_token_logits: compute the LM head on the last token, as prefill does.
            layers: run only the first ``layers`` layers (default: all instantiated).

        Returns:
            Logits of the last token ``[vocab]``, or the hidden states ``[n, hidden]``.
        """
        s = self.shape
        hd = s.head_dim
        x = self.embed[token_ids]
        for i in range(self.layers if layers is None else layers):
            hcur = self._rms(x)
            qkv = hcur @ self.w_qkv[i].t()
            q, k, v = qkv.split([s.num_heads * hd, s.num_kv_heads * hd, s.num_kv_heads * hd], -1)
            q = self._rope(q.reshape(-1, s.num_heads, hd), positions)
            k = self._rope(k.reshape(-1, s.num_kv_heads, hd), positions)
            v = v.reshape(-1, s.num_kv_heads, hd)
            o = attn(i, q, k, v)
            x = x + o.reshape(-1, s.num_heads * hd) @ self.w_o[i].t()
            hcur = self._rms(x)
            gate, up = (hcur @ self.w_gate_up[i].t()).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ self.w_down[i].t()
        if not last_token_logits:
            return x
        return self._rms(x[-1:]) @ self.lm_head.t()
