"""Unit tests: tier layouts, segment planning, radix details, resize and ownership errors."""

from __future__ import annotations

import pytest
import torch

from sglang_memserve.mempool import (
    CapacityError,
    LayoutMismatch,
    MemPool,
    MemPoolConfig,
    OutOfPages,
    PageLocked,
    PageOwnershipError,
    RadixTree,
    UnknownTier,
    make_tensor_tier,
)
from sglang_memserve.mempool.transfer import plan_segments


def test_layer_first_layout_mirrors_sglang_pool():
    t = make_tensor_tier("device", 8, 4, num_layers=3, heads=2, head_dim=8, dtype=torch.float16)
    st = t.store
    assert len(st.layout.streams) == 6 and st.layout.page_nbytes == 6 * 4 * 2 * 8 * 2
    st.k[1][8:12] = 5.0  # tokens of page 2 in layer 1
    img = st.read_pages([2])[0]
    seg = 4 * 2 * 8 * 2
    assert torch.equal(img[2 * seg : 3 * seg].view(torch.float16), st.k[1][8:12].flatten())
    addr, n = st.page_segments(2)[2]
    assert (addr, n) == (st.k[1].data_ptr() + 2 * seg, seg)
    h = make_tensor_tier("host", 8, 4, num_layers=3, heads=2, head_dim=8)
    st.copy_pages([2], h.store, [5])
    assert torch.equal(h.store.k[1][20:24], st.k[1][8:12])
    c = make_tensor_tier("c", 8, 4, page_nbytes=st.layout.page_nbytes)
    with pytest.raises(LayoutMismatch):
        st.copy_pages([2], c.store, [1])


def test_plan_segments_merges_contiguous_runs():
    a = make_tensor_tier("a", 16, 4, num_layers=2, heads=1, head_dim=8).store.layout
    b = make_tensor_tier("b", 16, 4, num_layers=2, heads=1, head_dim=8).store.layout
    assert len(plan_segments(a, [3, 4, 5], b, [7, 8, 9])) == 4  # one block per stream
    assert len(plan_segments(a, [3, 5], b, [7, 8])) == 8
    with pytest.raises(Exception, match="outside"):
        plan_segments(a, [16], b, [0])


def test_radix_keys_carry_tokens_and_match_is_read_only():
    t = RadixTree(2)
    t.insert(t.to_pages([1, 2, 3, 4]), "d", [0, 1])
    before = t.flatten()
    clock = [n.last_access for n in t.nodes()]
    m = t.match([1, 2, 3, 5])  # second page differs in one token: no match there
    assert m.num_pages == 1
    assert t.flatten() == before and [n.last_access for n in t.nodes()] == clock
    assert len(list(t.nodes())) == 1  # match never splits


def make_pool():
    return MemPool(
        MemPoolConfig(page_size=2),
        "u",
        {
            "device": make_tensor_tier("device", 8, 2, capacity=4, page_nbytes=8),
            "host": make_tensor_tier("host", 8, 2, page_nbytes=8),
        },
    )


def test_ownership_locks_and_errors():
    p = make_pool()
    pages = p.alloc_mem(2)
    r = p.insert([1, 2, 3, 4, 5], pages)  # trailing partial page ignored
    assert r.new_pages == pages
    with pytest.raises(PageOwnershipError):
        p.free_mem(pages)  # cached now: the index owns them
    with pytest.raises(ValueError):
        p.insert([1, 2, 3, 4], pages[:1])
    m = p.match([1, 2, 3, 4])
    p.lock(m.handle)
    with pytest.raises(PageLocked):
        p.delete([1, 2])
    assert p.evict(10) == 0
    with pytest.raises(OutOfPages):
        p.alloc_mem(3)
    with pytest.raises(UnknownTier):
        p.alloc_mem(1, "ssd")
    p.unlock(m.handle)
    assert p.alloc_mem(3)  # evicts the now unlocked pages
    p.check_integrity()


def test_resize_relocates_or_refuses_never_corrupts():
    p = make_pool()
    pages = p.alloc_mem(4)
    p.tiers["device"].store.buf[pages] = torch.arange(4, dtype=torch.uint8)[:, None]
    p.free_mem(pages[:2])
    res = p.insert([1, 2, 3, 4], pages[2:])  # cached pages 2 and 3
    with pytest.raises(CapacityError):
        p.resize("device", 9)
    p.resize("device", 2)  # relocates pages 2, 3 to 0, 1
    m = p.match([1, 2, 3, 4])
    assert m.pages("device") == [0, 1]
    assert p.tiers["device"].store.buf[[0, 1], 0].tolist() == [2, 3]
    p.lock(m.handle)
    with pytest.raises(CapacityError):
        p.resize("device", 1)
    p.unlock(m.handle)
    p.resize("device", 0)  # nothing locked: room is made by eviction
    assert p.match([1, 2, 3, 4]).num_tokens == 0
    p.resize("device", 8)
    held = p.alloc_mem(8)
    with pytest.raises(CapacityError):
        p.resize("device", 4)  # in-use pages in the way
    p.free_mem(held)
    p.check_integrity()
    del res
