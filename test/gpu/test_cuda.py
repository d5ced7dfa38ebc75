"""CUDA checks of the device tier: swaps round-trip, stream ordering, FlashInfer reads pool pages.

Skipped with a reason on machines without CUDA (or without FlashInfer, for the attention tests).
Run on the device machine by ``benchmarks/gpu/run_device.sh``.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
]
_HAVE_FLASHINFER = importlib.util.find_spec("flashinfer") is not None
needs_flashinfer = pytest.mark.skipif(
    not (torch.cuda.is_available() and _HAVE_FLASHINFER),
    reason="CUDA not available" if not torch.cuda.is_available() else "flashinfer not installed")

from sglang_memserve.gpu.attention import (  # noqa: E402
    PagedAttention,
    page_table,
    reference_attention,
    relative_error,
)
from sglang_memserve.gpu.kv_store import (  # noqa: E402
    CudaPagedKVStore,
    KVShape,
    PinnedHostKVStore,
)
from sglang_memserve.gpu.swap import SwapEngine  # noqa: E402

SHAPE = KVShape(num_layers=4, num_kv_heads=8, head_dim=128, page_size=16, dtype=torch.bfloat16)


def _stores(dev_pages: int = 96, host_pages: int = 80):
    d = CudaPagedKVStore(dev_pages, SHAPE, zero=False)
    d.buffer.normal_()
    h = PinnedHostKVStore(host_pages, SHAPE)
    assert h.pinned
    return d, h


@pytest.mark.parametrize("async_enqueue", [True, False])
@pytest.mark.parametrize("mode", ["staged", "direct", "torch"])
def test_swap_round_trip(mode: str, async_enqueue: bool) -> None:
    d, h = _stores()
    before = d.buffer.clone()
    # Several chunks per call: exercises the staging pipeline.
    eng = SwapEngine(d, h, mode=mode, chunk_pages=8, async_enqueue=async_enqueue)
    g = torch.Generator().manual_seed(0)
    dp = torch.randperm(96, generator=g)[:37].tolist()
    scattered = [p for p in torch.randperm(80, generator=g).tolist() if not 40 <= p < 47]
    hp = scattered[:30] + list(range(40, 47))  # scattered pages, then a run of consecutive ones
    eng.swap_out(dp, hp).synchronize()
    assert torch.equal(h.read_pages(hp), d.read_pages(dp))
    d.buffer.zero_()
    dst = torch.randperm(96, generator=g)[:37].tolist()
    hd = eng.swap_in(hp, dst)
    hd.wait()  # device-side wait on the current stream
    for a, b in zip(dp, dst, strict=True):
        assert torch.equal(d.buffer[:, :, b], before[:, :, a])
    hd.synchronize()
    assert hd.done()
    with pytest.raises(IndexError):
        eng.swap_out([96], [0])
    eng.close()


def test_back_to_back_swaps_keep_order() -> None:
    """Queued swaps run in call order: out, overwrite, in, out again, all without waiting."""
    d, h = _stores()
    eng = SwapEngine(d, h, chunk_pages=4)
    first = d.read_pages([1, 2, 3])
    h1 = eng.swap_out([1, 2, 3], [0, 1, 2])
    eng.swap_in([0, 1, 2], [10, 11, 12])  # reads what the first swap wrote
    h1.wait()  # device-side: pages 1-3 may be reused after this
    d.buffer[:, :, 1:4].fill_(0)
    h3 = eng.swap_out([10, 11, 12], [20, 21, 22])
    h3.synchronize()
    assert h1.done()
    assert torch.equal(h.read_pages([20, 21, 22]), first)
    assert torch.equal(d.read_pages([10, 11, 12]), first)


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_swap_out_waits_for_prior_writes(mode: str) -> None:
    d, h = _stores()
    eng = SwapEngine(d, h, mode=mode, chunk_pages=8)
    m = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # keep the current stream busy
        m = m @ m / 64
    d.buffer[:, :, 5].fill_(3.0)  # issued after the matmuls, before the swap
    eng.swap_out([5], [7]).synchronize()
    assert bool((h.buffer[7] == 3.0).all())


def test_copy_pages_device_to_host_and_back() -> None:
    d, h = _stores()
    d.copy_pages([1, 2, 3], h, [10, 11, 12])
    d2 = CudaPagedKVStore(20, SHAPE)
    h.copy_pages([10, 11, 12], d2, [19, 0, 4])
    assert torch.equal(d2.buffer[:, :, 19], d.buffer[:, :, 1])
    assert torch.equal(d2.buffer[:, :, 4], d.buffer[:, :, 3])


@needs_flashinfer
def test_flashinfer_reads_pool_pages() -> None:
    """FlashInfer prefill (append) and decode over scattered pool pages match fp32 attention."""
    d = CudaPagedKVStore(400, SHAPE, zero=False)
    d.buffer.normal_()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(400, generator=g).tolist()
    kv_lens, qo_lens = [100, 1000, 37, 2000], [100, 77, 1, 500]
    pages, off = [], 0
    for n in kv_lens:
        k = -(-n // 16)
        pages.append(perm[off:off + k])
        off += k
    a = PagedAttention(d, 32, workspace_mb=128)
    tab = page_table(pages, kv_lens, qo_lens, 16, device="cuda")
    q = torch.randn(sum(qo_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
    for layer in (0, 3):
        a.plan_prefill(tab)
        out = a.run_prefill(layer, q)
        ref = reference_attention(q, d, layer, pages, kv_lens, qo_lens)
        assert relative_error(out, ref) < 1e-2
    qd = torch.randn(4, 32, 128, device="cuda", dtype=torch.bfloat16)
    a.plan_decode(page_table(pages, kv_lens, [1] * 4, 16, device="cuda"))
    out = a.run_decode(2, qd)
    ref = reference_attention(qd, d, 2, pages, kv_lens, [1] * 4)
    assert relative_error(out, ref) < 1e-2
    # In place: the wrapper got the pool's own tensors, not copies.
    assert d.kv_cache(2)[0].data_ptr() == d.buffer[2, 0].data_ptr()


@needs_flashinfer
def test_swapped_in_pages_feed_flashinfer() -> None:
    """Swap a request's pages out, back in elsewhere, and decode over them: same output."""
    d, h = _stores(dev_pages=200, host_pages=100)
    eng = SwapEngine(d, h)
    kv_len = 700
    pages = list(range(3, 3 + 44))
    a = PagedAttention(d, 32, workspace_mb=128)
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16)
    a.plan_decode(page_table([pages], [kv_len], [1], 16, device="cuda"))
    before = a.run_decode(1, q).clone()
    eng.swap_out(pages, list(range(50, 94))).synchronize()
    new_pages = list(range(199, 155, -1))
    eng.swap_in(list(range(50, 94)), new_pages).wait()
    a.plan_decode(page_table([new_pages], [kv_len], [1], 16, device="cuda"))
    assert torch.equal(a.run_decode(1, q), before)
