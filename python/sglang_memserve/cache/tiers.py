"""MemPool tiers over SGLang's memory: its device KV pool and HiCache's host pool.

Each tier is a MemPool :class:`~sglang_memserve.mempool.PageAllocator` that *is* SGLang's
allocator seen in pages (never a second free list over the same memory) and a
:class:`~sglang_memserve.mempool.RowTensorStore` viewing SGLang's KV tensors:

* device: ``token_to_kv_pool_allocator`` (page ``p`` = token slots ``[p*ps, (p+1)*ps)``; page 0
  is SGLang's padding page and never handed out) over ``MHATokenToKVPool``'s
  ``k_buffer + v_buffer``;
* host: HiCache's ``mem_pool_host`` (layer-first layout, which ``--mempool-host-ratio``
  selects) over its ``kv_buffer[0, l]`` and ``kv_buffer[1, l]``, in the device's stream order, so
  device and host pages are interchangeable page images.

:class:`SGLangEngine` is the :class:`~sglang_memserve.mempool.Engine` of an
``EngineMemPool``: eviction and the ground truth of what is cached come from SGLang's tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sglang_memserve.mempool import PageAllocator, RowTensorStore, Tier
from sglang_memserve.mempool.errors import CapacityError, OutOfPages


class _SlotAllocator(PageAllocator):
    """A page view of an SGLang allocator of token slots (``available_size()``, ``alloc(n)``,
    ``free(slots)``, ``device``) that hands them out in whole pages; subclasses give the page
    range and the free-list census."""

    tier_name = "?"

    def __init__(self, inner: Any, base: int) -> None:
        self.inner = inner
        self.page_size = inner.page_size
        self._base = base
        self._capacity = inner.size // inner.page_size

    @property
    def max_capacity(self) -> int:
        return self._capacity

    @property
    def num_free(self) -> int:
        return int(self.inner.available_size()) // self.page_size

    def alloc(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n == 0:
            return []
        slots = self.inner.alloc(n * self.page_size)
        if slots is None:
            raise OutOfPages(self.tier_name, n, self.num_free)
        return (slots[:: self.page_size] // self.page_size).tolist()

    def free(self, pages: Iterable[int]) -> None:
        pages = list(pages)
        if not pages:
            return
        self.check_freeable(pages, self.free_page_ids())
        self.inner.free(self.slots(pages).to(self.inner.device))

    def slots(self, pages: Iterable[int]) -> torch.Tensor:
        """The token slots of ``pages``, page after page (what SGLang's APIs take)."""
        p = torch.as_tensor(list(pages), dtype=torch.int64)
        return (p[:, None] * self.page_size + torch.arange(self.page_size)).reshape(-1)

    def resize(self, new_capacity: int) -> None:
        if new_capacity != self._capacity:
            raise CapacityError(f"{self.tier_name}: SGLang sizes this pool at start-up "
                                f"({self._capacity} pages)")


class DeviceAllocator(_SlotAllocator):
    """SGLang's ``token_to_kv_pool_allocator`` in pages (ids ``1..size/ps``; page 0 is
    SGLang's padding page)."""

    tier_name = "device"

    def __init__(self, allocator: Any) -> None:
        super().__init__(allocator, base=1)

    def free_page_ids(self) -> set[int]:
        free = self.inner.get_all_free_pages()  # page ids (token ids when page_size is 1)
        return set(free.tolist()) if free is not None else set()


class HostAllocator(_SlotAllocator):
    """HiCache's host pool in pages (ids ``0..page_num-1``)."""

    tier_name = "host"

    def __init__(self, host_pool: Any) -> None:
        super().__init__(host_pool, base=0)

    def free_page_ids(self) -> set[int]:
        used = self.inner.slot_used[: self.capacity * self.page_size : self.page_size]
        return set((~used).nonzero().flatten().tolist())


def device_tier(cache: Any) -> Tier:
    """The device tier of a SGLang tree cache.

    Raises:
        ValueError: the KV pool is not an MHA pool (per-layer ``k_buffer``/``v_buffer``).
    """
    allocator = cache.token_to_kv_pool_allocator
    kv = allocator.get_kvcache()
    if not getattr(kv, "k_buffer", None) or not getattr(kv, "v_buffer", None):
        raise ValueError(f"MemServe's cache supports MHA KV pools, not {type(kv).__name__}; "
                         "run with --memserve-cache stock")
    store = RowTensorStore(list(kv.k_buffer) + list(kv.v_buffer), cache.page_size)
    return Tier("device", DeviceAllocator(allocator), store)


def host_tier(cache: Any) -> Tier | None:
    """The host tier (HiCache's host pool), or ``None`` without HiCache.

    Raises:
        ValueError: the host pool is not layer-first (MemServe's launcher selects it).
    """
    controller = getattr(cache, "cache_controller", None)
    if controller is None:
        return None
    host = controller.mem_pool_host
    anchor = getattr(host, "anchor_entry", None)
    if anchor is not None:  # a HostPoolGroup: its KV pool is the anchor (it allocates there too)
        host = anchor.host_pool
    if getattr(host, "layout", None) != "layer_first":
        raise ValueError(f"MemPool's host tier needs HiCache's layer_first layout, not "
                         f"{getattr(host, 'layout', None)!r}")
    layers = host.kv_buffer.shape[1]
    rows = [host.kv_buffer[kv, layer] for kv in (0, 1) for layer in range(layers)]
    return Tier("host", HostAllocator(host), RowTensorStore(rows, cache.page_size))


class SGLangEngine:
    """SGLang's tree cache as the :class:`~sglang_memserve.mempool.Engine` of its MemPool."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def evictable_pages(self, tier: str) -> int:
        if tier == "device":
            return int(self.cache.evictable_size()) // self.cache.page_size
        return len(self.cached_page_ids(tier))  # host: an upper bound; evict() says what went

    def evict(self, tier: str, num_pages: int) -> int:
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        ps = self.cache.page_size
        if tier == "device":
            allocator = self.cache.token_to_kv_pool_allocator
            before = allocator.available_size()
            self.cache.evict(EvictParams(num_tokens=num_pages * ps))
            return (allocator.available_size() - before) // ps
        if tier == "host" and self.cache.cache_controller is not None:
            return int(self.cache.evict_host(num_pages * ps)) // ps
        return 0

    def cached_page_ids(self, tier: str) -> set[int]:
        ps = self.cache.page_size
        out: set[int] = set()
        stack = [self.cache.tree_core.root_node]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            data = full_data(node)
            if data is None or node.parent is None:
                continue
            value = data.value if tier == "device" else data.host_value
            if value is not None and len(value):
                out.update((value[::ps] // ps).tolist())
        return out


def full_data(node: Any) -> Any:
    """The node's Full-attention component data (``component_data`` is indexed by the enum)."""
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    data = getattr(node, "component_data", None)
    return data[ComponentType.FULL] if data is not None else None
