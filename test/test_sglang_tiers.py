"""MemPool's memory API over SGLang's own device KV pool and allocator (no server).

The device tier is SGLang's ``MHATokenToKVPool`` + allocator seen through ``cache.tiers``; the host
tier is a MemPool tensor tier with the same page layout. What MemPool does must show in SGLang's
allocator (one free list, not two) and in SGLang's KV tensors (the bytes move).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_memserve import compat

compat.apply_import_patches()

from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402

from sglang_memserve.cache.tiers import device_tier  # noqa: E402
from sglang_memserve.mempool import (  # noqa: E402
    EngineMemPool,
    EngineOwned,
    FreeListAllocator,
    MemPoolConfig,
    RowTensorStore,
    Tier,
)
from sglang_memserve.mempool.errors import (  # noqa: E402
    CapacityError,
    IntegrityError,
    OutOfPages,
    PageOwnershipError,
)

LAYERS, HEADS, DIM = 2, 2, 8


class FakeEngine:
    """Stands in for SGLang's tree (what this test is not about): nothing cached."""

    def __init__(self) -> None:
        self.cached: dict[str, set[int]] = {"device": set(), "host": set()}
        self.evict_calls: list[tuple[str, int]] = []

    def evictable_pages(self, tier: str) -> int:
        return 0

    def evict(self, tier: str, num_pages: int) -> int:
        self.evict_calls.append((tier, num_pages))
        return 0

    def cached_page_ids(self, tier: str) -> set[int]:
        return set(self.cached[tier])


def sglang_cache(page_size: int, tokens: int) -> SimpleNamespace:
    kv = MHATokenToKVPool(tokens, page_size, torch.float32, HEADS, DIM, LAYERS, "cpu", False)
    if page_size == 1:
        alloc = TokenToKVPoolAllocator(tokens, torch.float32, "cpu", kv, False)
    else:
        alloc = PagedTokenToKVPoolAllocator(tokens, page_size, torch.float32, "cpu", kv, False)
    return SimpleNamespace(token_to_kv_pool_allocator=alloc, page_size=page_size)


def host_tier_like(device: Tier, num_pages: int) -> Tier:
    ps = device.page_size
    rows = [torch.zeros(num_pages * ps, HEADS, DIM) for _ in range(2 * LAYERS)]
    return Tier("host", FreeListAllocator(num_pages), RowTensorStore(rows, ps))


@pytest.mark.parametrize("page_size", [1, 4])
def test_mempool_memory_api_over_sglang_pool(page_size: int) -> None:
    cache = sglang_cache(page_size, 16 * page_size)
    alloc = cache.token_to_kv_pool_allocator
    dev = device_tier(cache)
    assert dev.allocator.base == 1 and dev.allocator.capacity == 16  # page 0 is padding
    engine = FakeEngine()
    pool = EngineMemPool(MemPoolConfig(page_size=page_size), "i0",
                         {"device": dev, "host": host_tier_like(dev, 8)}, engine)
    assert pool.check_integrity()["device"] == {"free": 16, "cached": 0, "in_use": 0,
                                                "capacity": 16, "engine": 0}

    pages = pool.alloc_mem(5, "device")
    assert alloc.available_size() == 11 * page_size  # SGLang's own free list moved
    assert pool.in_use_pages("device") == 5
    # Write recognisable KV through SGLang's tensors; MemPool reads the same bytes.
    kv = alloc.get_kvcache()
    slots = dev.allocator.slots(pages)
    for layer in range(LAYERS):
        kv.k_buffer[layer][slots] = torch.arange(len(slots) * HEADS * DIM, dtype=torch.float32
                                                 ).view(-1, HEADS, DIM) + 100 * layer
        kv.v_buffer[layer][slots] = -kv.k_buffer[layer][slots]
    images = dev.store.read_pages(pages)
    orig_k = kv.k_buffer[LAYERS - 1][slots].clone()

    host_pages = pool.swap_out(pages, "device", "host")
    assert alloc.available_size() == 16 * page_size  # device pages went back to SGLang
    assert pool.check_integrity()["host"]["in_use"] == 5
    for layer in range(LAYERS):
        kv.k_buffer[layer].zero_()
    back = pool.swap_in(host_pages, "host", "device")
    assert torch.equal(dev.store.read_pages(back), images)
    assert torch.equal(kv.k_buffer[LAYERS - 1][dev.allocator.slots(back)], orig_k)

    # Pages held by SGLang itself (a running request) count as engine-held, not as lost.
    held = alloc.alloc(3 * page_size)
    assert pool.check_integrity()["device"]["engine"] == 3
    alloc.free(held)

    with pytest.raises(OutOfPages):
        pool.alloc_mem(12, "device")  # 11 free, nothing evictable
    assert engine.evict_calls == []  # refused before asking the engine: nothing to evict
    with pytest.raises(PageOwnershipError):
        pool.free_mem([back[0], back[0]], "device")
    with pytest.raises(PageOwnershipError):
        dev.allocator.free([0])  # SGLang's padding page is never ours
    with pytest.raises(CapacityError):
        dev.allocator.resize(32)
    pool.free_mem(back, "device")
    assert alloc.available_size() == 16 * page_size
    assert pool.check_integrity()["device"]["engine"] == 0


def test_index_follows_the_engine_and_mutations_are_refused() -> None:
    cache = sglang_cache(4, 64)
    dev = device_tier(cache)
    engine = FakeEngine()
    pool = EngineMemPool(MemPoolConfig(page_size=4), "i0", {"device": dev}, engine)
    pages = pool.alloc_mem(2, "device")
    path = [(1, 2, 3, 4), (5, 6, 7, 8)]
    # The engine indexes the pages: they leave the caller's in-use set and become cached.
    pool.placed(path, 0, "device", pages)
    engine.cached["device"] = set(pages)
    counts = pool.check_integrity()["device"]
    assert counts["cached"] == 2 and counts["in_use"] == 0
    assert pool.match([1, 2, 3, 4, 5, 6, 7, 8, 9]).num_tokens == 8
    # An index that drifts from the engine's tree is caught.
    engine.cached["device"] = {pages[0]}
    with pytest.raises(IntegrityError, match="differs from the engine"):
        pool.check_integrity()
    with pytest.raises(EngineOwned):
        pool.insert([1, 2, 3, 4], [pages[0]])
    with pytest.raises(EngineOwned):
        pool.delete([1, 2, 3, 4])
    pool.dropped(path, 1, "device")
    assert pool.pages_by_tier() == {"device": 1}
