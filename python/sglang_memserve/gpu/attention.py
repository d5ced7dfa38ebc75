"""FlashInfer paged attention over MemPool's device pages, and an fp32 reference.

A batch is described by, per request, its page list (pool page ids, in token order), its KV
length (cached prefix + new tokens) and its number of query tokens. :func:`page_table` turns
that into FlashInfer's CSR page table; :class:`PagedAttention` plans FlashInfer's paged prefill
(append attention: new tokens attend to the cached prefix and causally to each other) and paged
decode once per batch and runs them on any layer of a
:class:`~sglang_memserve.gpu.kv_store.CudaPagedKVStore`, reading the pool's pages in place.
FlashInfer is imported lazily (only this class needs it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .kv_store import CudaPagedKVStore


@dataclass
class PageTable:
    """FlashInfer's CSR page table for a batch (int32 tensors on one device).

    Attributes:
        indptr: ``[batch + 1]`` offsets into :attr:`indices`.
        indices: concatenated page ids.
        last_page_len: ``[batch]`` tokens used in each request's last page (1..page_size).
        qo_indptr: ``[batch + 1]`` offsets of each request's query tokens.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    last_page_len: torch.Tensor
    qo_indptr: torch.Tensor


def page_table(page_lists: Sequence[Sequence[int]], kv_lens: Sequence[int],
               qo_lens: Sequence[int], page_size: int,
               device: str | torch.device = "cpu") -> PageTable:
    """Build the CSR page table of a batch.

    Args:
        page_lists: per request, its pool page ids in token order.
        kv_lens: per request, its KV tokens (cached prefix plus new tokens), ``> 0``.
        qo_lens: per request, its query tokens (new tokens; 1 for decode).
        page_size: tokens per page.
        device: where the tensors go.

    Returns:
        The page table.

    Raises:
        ValueError: a request's page list does not match its KV length.
    """
    indptr, indices, last = [0], [], []
    for pages, n in zip(page_lists, kv_lens, strict=True):
        need = -(-n // page_size)
        if n <= 0 or len(pages) != need:
            raise ValueError(f"{n} KV tokens need {need} pages, got {len(pages)}")
        indices.extend(int(p) for p in pages)
        indptr.append(len(indices))
        last.append(n - (need - 1) * page_size)
    qo = [0]
    for q in qo_lens:
        qo.append(qo[-1] + int(q))

    def t(v: list[int]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int32, device=device)

    return PageTable(t(indptr), t(indices), t(last), t(qo))


def token_slots(page_lists: Sequence[Sequence[int]], starts: Sequence[int],
                ends: Sequence[int], page_size: int,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Pool token slots (``page * page_size + offset``) of tokens ``[start, end)`` per request.

    Args:
        page_lists: per request, its page ids in token order.
        starts: first token position per request.
        ends: one past the last position per request.
        page_size: tokens per page.
        device: where the result goes.

    Returns:
        int64 ``[sum(end - start)]`` slots, request by request.
    """
    out: list[torch.Tensor] = []
    for pages, a, b in zip(page_lists, starts, ends, strict=True):
        pos = torch.arange(a, b, dtype=torch.int64)
        pg = torch.as_tensor(list(pages), dtype=torch.int64)[pos // page_size]
        out.append(pg * page_size + pos % page_size)
    if not out:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(out).to(device)


def reference_attention(q: torch.Tensor, store: CudaPagedKVStore, layer: int,
                        page_lists: Sequence[Sequence[int]], kv_lens: Sequence[int],
                        qo_lens: Sequence[int], *, causal: bool = True) -> torch.Tensor:
    """Float32 attention straight from the pool pages (the correctness reference).

    Query token ``j`` of a request with ``kv_len`` KV tokens and ``qo_len`` queries sits at
    position ``kv_len - qo_len + j`` and, if ``causal``, attends to positions ``<=`` that.

    Args:
        q: ``[sum(qo_lens), Hq, D]`` queries.
        store: the device store.
        layer: layer index.
        page_lists: per request, its page ids.
        kv_lens: per request, its KV tokens.
        qo_lens: per request, its query tokens.
        causal: apply the causal mask.

    Returns:
        ``[sum(qo_lens), Hq, D]`` float32 outputs.
    """
    s = store.shape
    hq, d = q.shape[1], q.shape[2]
    group = hq // s.num_kv_heads
    kb, vb = store.k_buffer(layer), store.v_buffer(layer)
    outs, q0 = [], 0
    for pages, n, m in zip(page_lists, kv_lens, qo_lens, strict=True):
        slots = token_slots([pages], [0], [n], s.page_size, device=kb.device)
        k = kb[slots].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = vb[slots].float().repeat_interleave(group, dim=1)
        qq = q[q0:q0 + m].float()
        scores = torch.einsum("qhd,khd->hqk", qq, k) / math.sqrt(d)
        if causal:
            qpos = torch.arange(n - m, n, device=q.device)[:, None]
            kpos = torch.arange(n, device=q.device)[None, :]
            scores = scores.masked_fill(kpos > qpos, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v))
        q0 += m
    return torch.cat(outs)


class PagedAttention:
    """FlashInfer paged prefill and decode over a :class:`CudaPagedKVStore`, planned per batch.

    Args:
        store: the device store (its ``kv_cache(layer)`` is passed to FlashInfer as is).
        num_qo_heads: query heads.
        workspace_mb: FlashInfer float workspace size.
        decode_tensor_cores: use FlashInfer's tensor-core decode kernel (faster for GQA).
    """

    def __init__(self, store: CudaPagedKVStore, num_qo_heads: int, *, workspace_mb: int = 256,
                 decode_tensor_cores: bool = False) -> None:
        import flashinfer  # lazy: only this class needs it

        self.store = store
        self.num_qo_heads = num_qo_heads
        dev = store.buffer.device
        ws = torch.zeros(workspace_mb << 20, dtype=torch.uint8, device=dev)
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        ws2 = torch.zeros(workspace_mb << 20, dtype=torch.uint8, device=dev)
        self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            ws2, "NHD", use_tensor_cores=decode_tensor_cores)

    def plan_prefill(self, table: PageTable, *, causal: bool = True) -> None:
        """Plan append attention for a batch.

        Args:
            table: the batch's page table (with ``qo_indptr``).
            causal: causal mask among the new tokens.
        """
        s = self.store.shape
        self.prefill.plan(table.qo_indptr, table.indptr, table.indices, table.last_page_len,
                          self.num_qo_heads, s.num_kv_heads, s.head_dim, s.page_size,
                          causal=causal, q_data_type=s.dtype, kv_data_type=s.dtype)

    def plan_decode(self, table: PageTable) -> None:
        """Plan decode (one query token per request) for a batch.

        Args:
            table: the batch's page table.
        """
        s = self.store.shape
        self.decode.plan(table.indptr, table.indices, table.last_page_len, self.num_qo_heads,
                         s.num_kv_heads, s.head_dim, s.page_size, q_data_type=s.dtype,
                         kv_data_type=s.dtype)

    def run_prefill(self, layer: int, q: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """Append attention of ``q`` over layer ``layer``'s pool pages.

        Args:
            layer: layer index.
            q: ``[total_qo, Hq, D]`` queries.
            out: optional output buffer.

        Returns:
            ``[total_qo, Hq, D]`` outputs.
        """
        return self.prefill.run(q, self.store.kv_cache(layer), out=out)

    def run_decode(self, layer: int, q: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode attention of ``q`` (one token per request) over layer ``layer``'s pages.

        Args:
            layer: layer index.
            q: ``[batch, Hq, D]`` queries.
            out: optional output buffer.

        Returns:
            ``[batch, Hq, D]`` outputs.
        """
        return self.decode.run(q, self.store.kv_cache(layer), out=out)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64.

    Args:
        out: computed tensor.
        ref: reference tensor.

    Returns:
        The relative error (``inf`` if ``out`` has non-finite values).
    """
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return float((o - r).norm() / r.norm())
