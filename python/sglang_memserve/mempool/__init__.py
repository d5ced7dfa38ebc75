"""MemPool: every instance's KV memory (tiers), a radix prompt index, transfers and KV events.

Standalone: importable and testable without SGLang. See ``docs/mempool.md``.

Modules (one per concern):

* ``errors`` -- typed exceptions (``MemPoolError`` and subclasses).
* ``tier`` -- the tier interfaces: ``PageAllocator``, ``PageStore``, ``PageLayout``, ``Tier``.
* ``tensor_tier`` -- tensor-backed adapters for tests and benchmarks.
* ``radix`` -- the radix prompt tree (page keys carry token ids; locks; LRU).
* ``pool`` -- ``MemPool``: memory, index, elasticity, integrity, membership, transfers.
* ``engine`` -- ``EngineMemPool``: a MemPool whose index a serving engine (SGLang) drives.
* ``results`` -- ``InsertResult``, ``MatchResult``, ``TransferResult``.
* ``membership`` -- ``MemberInfo``, ``MemberRegistry``.
* ``transfer`` -- ``TransferAgent`` over Mooncake's TransferEngine, ``plan_segments``.
* ``rpc`` -- the small ZMQ control channel.
* ``events`` -- KV events (format v2, chained page hashes): ``EventPublisher``,
  ``EventApplier``, ``TreeMirror``.
* ``chainhash`` -- the chained page hash naming paths in events.
* ``config`` -- ``MemPoolConfig``.
"""

from .config import MemPoolConfig
from .engine import DetachedEngine, Engine, EngineMemPool, EngineOwned
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
from .events import (
    EVENT_FORMAT_VERSION,
    EventApplier,
    EventChainError,
    EventFormatError,
    EventPublisher,
    NeedResync,
    TreeMirror,
)
from .membership import MemberInfo, MemberRegistry, TierInfo
from .pool import MemPool
from .radix import RadixTree
from .results import InsertResult, MatchedNode, MatchResult, TransferResult
from .tensor_tier import (
    ContiguousTensorStore,
    FreeListAllocator,
    LayerFirstTensorStore,
    RowTensorStore,
    make_tensor_tier,
)
from .tier import PageAllocator, PageLayout, PageStore, Region, SegmentStream, Tier
from .transfer import TransferAgent

__all__ = [
    "EVENT_FORMAT_VERSION",
    "DetachedEngine",
    "Engine",
    "EngineMemPool",
    "EngineOwned",
    "EventApplier",
    "EventChainError",
    "EventFormatError",
    "EventPublisher",
    "NeedResync",
    "InsertResult",
    "MatchResult",
    "MatchedNode",
    "MemPool",
    "MemPoolConfig",
    "MemberInfo",
    "MemberRegistry",
    "RadixTree",
    "TierInfo",
    "TransferAgent",
    "TransferResult",
    "TreeMirror",
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
    "RowTensorStore",
    "SegmentStream",
    "Tier",
    "TransferError",
    "TransferTimeout",
    "UnknownPeer",
    "UnknownTier",
    "make_tensor_tier",
]
