"""Layout and copy logic of the GPU page stores, exercised on CPU tensors (runs everywhere)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from sglang_memserve.gpu.attention import (  # noqa: E402
    page_table,
    reference_attention,
    relative_error,
    token_slots,
)
from sglang_memserve.gpu.kernels import HAVE_TRITON  # noqa: E402
from sglang_memserve.gpu.kv_store import (  # noqa: E402
    CudaPagedKVStore,
    KVShape,
    PinnedHostKVStore,
    make_cuda_tiers,
)
from sglang_memserve.gpu.swap import SwapEngine, _runs  # noqa: E402
from sglang_memserve.mempool.tensor_tier import LayerFirstTensorStore  # noqa: E402
from sglang_memserve.mempool.tier import PageStore  # noqa: E402

SHAPE = KVShape(num_layers=3, num_kv_heads=2, head_dim=8, page_size=4, dtype=torch.bfloat16)


def _filled_device(num_pages: int = 12) -> CudaPagedKVStore:
    d = CudaPagedKVStore(num_pages, SHAPE, device="cpu")
    d.buffer.copy_(torch.randn(d.buffer.shape))
    return d


def test_device_layout_is_flashinfer_nhd_and_sglang_token_major() -> None:
    d = _filled_device()
    assert isinstance(d, PageStore)
    k, v = d.kv_cache(1)
    assert k.shape == (12, 4, 2, 8) and k.is_contiguous() and v.is_contiguous()
    # Token slot p * page + i of the SGLang view is token i of page p of the paged view.
    assert torch.equal(d.k_buffer(1)[5 * 4 + 3], k[5, 3])
    assert d.k_buffer(2).data_ptr() == d.k_cache(2).data_ptr()
    # The layout's segments are exactly the per-layer K/V page slices (no copy anywhere).
    segs = d.page_segments(7)
    assert len(segs) == 6
    assert segs[2] == (d.k_cache(1)[7].data_ptr(), SHAPE.seg_nbytes)
    assert segs[3] == (d.v_cache(1)[7].data_ptr(), SHAPE.seg_nbytes)


def test_signatures_match_mempool_layer_first_store() -> None:
    d = _filled_device()
    h = PinnedHostKVStore(5, SHAPE, pin=False)
    lf = LayerFirstTensorStore(6, 4, num_layers=3, heads=2, head_dim=8, dtype=torch.bfloat16)
    assert d.layout.signature == h.layout.signature == lf.layout.signature
    # Host pages are contiguous: segment i+1 follows segment i.
    segs = h.page_segments(3)
    assert all(a[0] + a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))
    assert len(h.regions()) == 1 and h.regions()[0].nbytes == 5 * SHAPE.page_nbytes


def test_page_images_round_trip_through_every_store() -> None:
    d = _filled_device()
    h = PinnedHostKVStore(5, SHAPE, pin=False)
    lf = LayerFirstTensorStore(6, 4, num_layers=3, heads=2, head_dim=8, dtype=torch.bfloat16)
    img = d.read_pages([3, 9])
    assert img.shape == (2, SHAPE.page_nbytes) and img.dtype == torch.uint8
    d.copy_pages([3, 9], h, [4, 0])
    assert torch.equal(h.read_pages([4, 0]), img)
    # Our page image equals the mempool layer-first store's (generic copy path).
    h.copy_pages([4, 0], lf, [1, 5])
    assert torch.equal(lf.read_pages([1, 5]), img)
    d2 = CudaPagedKVStore(12, SHAPE, device="cpu")
    lf.copy_pages([5], d2, [11])
    assert torch.equal(d2.buffer[:, :, 11], d.buffer[:, :, 9])
    d2.write_pages([0], img[:1])
    assert torch.equal(d2.buffer[:, :, 0], d.buffer[:, :, 3])
    with pytest.raises(IndexError):
        d.read_pages([12])
    with pytest.raises(ValueError):
        d2.write_pages([0, 1], img[:1])


def test_swap_engine_cpu_round_trip() -> None:
    d = _filled_device()
    before = d.buffer.clone()
    h = PinnedHostKVStore(8, SHAPE, pin=False)
    eng = SwapEngine(d, h)
    hd = eng.swap_out([2, 7, 11, 0], [5, 6, 7, 1])
    assert hd.done() and hd.nbytes == 4 * SHAPE.page_nbytes
    d.buffer.zero_()
    eng.swap_in([5, 6, 7, 1], [2, 7, 11, 0]).synchronize()
    for p in (2, 7, 11, 0):
        assert torch.equal(d.buffer[:, :, p], before[:, :, p])
    assert eng.swap_out([], []).num_pages == 0
    with pytest.raises(ValueError):
        eng.swap_out([1], [])


def test_runs() -> None:
    assert _runs([4, 5, 6, 9, 10, 2]) == [(0, 4, 3), (3, 9, 2), (5, 2, 1)]
    assert _runs([]) == []


def test_page_table_and_slots() -> None:
    t = page_table([[3, 1], [7]], [6, 4], [2, 1], page_size=4)
    assert t.indptr.tolist() == [0, 2, 3]
    assert t.indices.tolist() == [3, 1, 7]
    assert t.last_page_len.tolist() == [2, 4]
    assert t.qo_indptr.tolist() == [0, 2, 3]
    assert token_slots([[3, 1]], [3], [6], 4).tolist() == [15, 4, 5]
    with pytest.raises(ValueError):
        page_table([[3]], [6], [1], page_size=4)


def test_reference_attention_matches_dense_sdpa() -> None:
    d = _filled_device()
    pages, kv_len, qo_len = [4, 10, 1], 11, 3
    q = torch.randn(qo_len, 4, 8)
    out = reference_attention(q, d, 2, [pages], [kv_len], [qo_len])
    slots = token_slots([pages], [0], [kv_len], 4)
    k = d.k_buffer(2)[slots].float().repeat_interleave(2, 1).transpose(0, 1)
    v = d.v_buffer(2)[slots].float().repeat_interleave(2, 1).transpose(0, 1)
    mask = torch.arange(kv_len)[None, :] <= torch.arange(kv_len - qo_len, kv_len)[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=mask).transpose(0, 1)
    assert relative_error(out, ref) < 1e-5


@pytest.mark.skipif(not HAVE_TRITON, reason="Triton not installed")
def test_triton_copy_kernel_in_interpreter() -> None:
    """The Triton copy kernel, run by Triton's CPU interpreter in a subprocess."""
    code = (
        "import torch\n"
        "from sglang_memserve.gpu.kv_store import CudaPagedKVStore, PinnedHostKVStore, KVShape\n"
        "from sglang_memserve.gpu.kernels import copy_pages\n"
        "s = KVShape(2, 2, 8, 4, torch.bfloat16)\n"
        "d = CudaPagedKVStore(9, s, device='cpu'); d.buffer.copy_(torch.randn(d.buffer.shape))\n"
        "h = PinnedHostKVStore(5, s, pin=False)\n"
        "copy_pages(d.page_view(), h.page_view(), torch.tensor([8, 2]), torch.tensor([0, 4]),\n"
        "           use_triton=True)\n"
        "assert torch.equal(h.read_pages([0, 4]), d.read_pages([8, 2]))\n"
        "d2 = CudaPagedKVStore(9, s, device='cpu')\n"
        "copy_pages(h.page_view(), d2.page_view(), torch.tensor([4]), torch.tensor([5]),\n"
        "           use_triton=True)\n"
        "assert torch.equal(d2.buffer[:, :, 5], d.buffer[:, :, 2])\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_make_cuda_tiers() -> None:
    dev, host = make_cuda_tiers(SHAPE, 10, 6, device="cpu", pin=False, base=1)
    assert (dev.name, host.name) == ("device", "host")
    assert dev.allocator.page_ids == range(1, 10) and host.allocator.page_ids == range(1, 6)
    pages = dev.allocator.alloc(3)
    assert 0 not in pages
    dev.store.copy_pages(pages, host.store, host.allocator.alloc(3))
