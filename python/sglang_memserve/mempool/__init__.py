"""MemPool: every instance's KV memory (tiers), a radix prompt index, transfers and KV events.

Standalone: importable and testable without SGLang. See ``docs/mempool.md``.

Modules (one per concern):

* ``errors`` -- typed exceptions (``MemPoolError`` and subclasses).
* ``tier`` -- the tier interfaces: ``PageAllocator``, ``PageStore``, ``PageLayout``, ``Tier``.
* ``tensor_tier`` -- tensor-backed adapters for tests and benchmarks.
"""

from .errors import (
    CapacityError,
    IntegrityError,
    LayoutMismatch,
    MemPoolError,
    OutOfPages,
    PageLocked,
    PageOwnershipError,
    TransferError,
    TransferTimeout,
    UnknownPeer,
    UnknownTier,
)
from .tensor_tier import (
    ContiguousTensorStore,
    FreeListAllocator,
    LayerFirstTensorStore,
    make_tensor_tier,
)
from .tier import PageAllocator, PageLayout, PageStore, Region, SegmentStream, Tier

__all__ = [
    "CapacityError",
    "ContiguousTensorStore",
    "FreeListAllocator",
    "IntegrityError",
    "LayerFirstTensorStore",
    "LayoutMismatch",
    "MemPoolError",
    "OutOfPages",
    "PageAllocator",
    "PageLayout",
    "PageLocked",
    "PageOwnershipError",
    "PageStore",
    "Region",
    "SegmentStream",
    "Tier",
    "TransferError",
    "TransferTimeout",
    "UnknownPeer",
    "UnknownTier",
    "make_tensor_tier",
]
