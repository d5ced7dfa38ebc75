"""A MemPool whose index a serving engine drives: MemServe's pool inside an SGLang instance.

Inside SGLang the scheduler's tree cache decides what is cached and when it is evicted, and
SGLang's allocators own the pages. :class:`EngineMemPool` is MemPool over that memory:

* its tiers are adapters over the engine's allocators and KV buffers (``cache.tiers``), so
  ``alloc_mem``/``free_mem``/``swap_out``/``swap_in`` take and give back the engine's own pages
  (never a second allocator over the same memory);
* its index is the engine's tree, page for page: the engine reports every placement change
  (:meth:`placed`, :meth:`dropped`, :meth:`engine_cleared`) and the pool publishes them as KV
  events for the router;
* eviction is the engine's (:class:`Engine`): ``alloc_mem`` that finds a tier full asks the
  engine to evict, and the engine's removals come back through :meth:`dropped`.

NOTE: pages a running request holds belong to the engine, not to the pool, so per tier
free + cached + in use + *engine-held* == capacity; :meth:`check_integrity` verifies that the
four are disjoint, that the index equals the engine's tree exactly, and reports engine-held
pages (zero when the engine is idle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .config import MemPoolConfig
from .errors import IntegrityError, MemPoolError
from .events import EventPublisher
from .pool import MemPool
from .radix import PageKey, RadixTree
from .results import InsertResult
from .tier import Tier


class Engine(Protocol):
    """What an :class:`EngineMemPool` needs from the engine that owns its tree."""

    def evictable_pages(self, tier: str) -> int:
        """Cached pages of ``tier`` the engine could evict now. Changes nothing."""

    def evict(self, tier: str, num_pages: int) -> int:
        """Evict at least ``num_pages`` cached pages of ``tier`` (or as many as it can),
        reporting each removal through :meth:`EngineMemPool.dropped`. Returns pages freed."""

    def cached_page_ids(self, tier: str) -> set[int]:
        """Page ids of ``tier`` the engine's tree holds. Changes nothing."""


class DetachedEngine:
    """An :class:`Engine` with no tree behind it: nothing to evict, no cached pages. For
    driving an :class:`EngineMemPool`'s index by hand (tests, benchmarks); changes nothing."""

    def evictable_pages(self, tier: str) -> int:
        return 0

    def evict(self, tier: str, num_pages: int) -> int:
        return 0

    def cached_page_ids(self, tier: str) -> set[int]:
        return set()


class EngineOwned(MemPoolError):
    """An index mutation was asked of a pool whose index only its engine changes."""


class EngineMemPool(MemPool):
    """See the module docstring.

    Args:
        config: pool settings (``page_size`` must be the engine's).
        instance_id: this member's unique name.
        tiers: adapters over the engine's memory, by tier name.
        engine: the engine that drives the index and evicts.
        events: publisher of index changes, or ``None``.
    """

    def __init__(self, config: MemPoolConfig, instance_id: str, tiers: dict[str, Tier],
                 engine: Engine, events: EventPublisher | None = None) -> None:
        super().__init__(config, instance_id, tiers, transfer=None, events=events)
        self.engine = engine
        # NOTE: a report may name a node whose ancestors were never reported in whole pages
        # (set_loc then creates them location-less), so location-less nodes are allowed.
        # Always hashed (even with no publisher): the engine names a run's parent by its chain
        # hash (placed_after), so a report costs its own pages, not the depth.
        self.tree = RadixTree(config.page_size, allow_empty=True, hashed=True)

    # ---- the engine's reports (engine thread) ---------------------------------------------

    def placed(self, path: list[PageKey], start: int, tier: str, ids: Sequence[int]) -> None:
        """``path[start:]`` is now held in ``tier`` by page ids ``ids`` (the engine indexed
        them; pages it takes from the caller's in-use set become cached)."""
        if start >= len(path):
            return
        with self._lock:
            change, _ = self.tree.set_loc(path, start, tier, ids)
            self._in_use[tier].difference_update(ids)
            self._emit([change])

    def dropped(self, path: list[PageKey], start: int, tier: str) -> None:
        """``path[start:]`` is no longer held in ``tier`` (the engine freed its pages)."""
        if start >= len(path):
            return
        with self._lock:
            change = self.tree.drop_loc(path, start, tier)
            if change is not None:  # a path the index lacks changed nothing to tell
                self._emit([change])

    def placed_after(self, parent_hash: int, pages: list[PageKey], tier: str,
                     ids: Sequence[int], skip: int = 0) -> None:
        """:meth:`placed` for an engine that names the run's parent by its chain hash
        (:mod:`.chainhash`) instead of building the full path: ``pages[skip:]`` (after the
        path hashing to ``parent_hash``) are now held in ``tier`` by ``ids``. Costs
        O(len(pages)) whatever the depth: the index is found by hash, the event names the
        parent by it.

        Raises:
            KeyError: no page of the index hashes to ``parent_hash`` (or several do): call
                :meth:`placed` with the full path instead. Nothing changed.
        """
        if skip >= len(pages):
            return
        with self._lock:
            change, _ = self.tree.set_loc_after(parent_hash, list(pages), skip, tier, ids)
            self._in_use[tier].difference_update(ids)
            self._emit([change])

    def dropped_after(self, parent_hash: int, pages: list[PageKey], tier: str) -> None:
        """:meth:`dropped` with the parent named by its chain hash (see :meth:`placed_after`):
        ``pages`` after the path hashing to ``parent_hash`` are no longer held in ``tier``.

        Raises:
            KeyError: as :meth:`placed_after`.
        """
        with self._lock:
            change = self.tree.drop_loc_after(parent_hash, list(pages), tier)
            if change is not None:
                self._emit([change])

    def engine_cleared(self) -> None:
        """The engine dropped its whole tree."""
        with self._lock:
            self.tree = RadixTree(self.config.page_size, allow_empty=True, hashed=True)
            if self.events is not None:
                self.events.publish([{"type": "cleared"}])

    def hand_over(self, pages: Sequence[int], tier: str = "device") -> None:
        """In-use pages the caller gave to the engine (its tree indexed them, or freed them
        as duplicates): they are no longer the caller's."""
        with self._lock:
            self._in_use[tier].difference_update(pages)

    # ---- memory API over the engine's eviction --------------------------------------------

    def _evictable_pages(self, tier: str) -> int:
        return self.engine.evictable_pages(tier)

    def evict(self, num_pages: int, tier: str = "device") -> int:
        """Ask the engine to free at least ``num_pages`` cached pages of ``tier``."""
        self._tier(tier)
        return self.engine.evict(tier, num_pages)

    def in_use_pages(self, tier: str = "device") -> int:
        """Pages allocated through :meth:`alloc_mem` and not handed over or freed."""
        with self._lock:
            return len(self._in_use[tier])

    def pages_by_tier(self) -> dict[str, int]:
        """Indexed pages per tier. Changes nothing."""
        with self._lock:
            return {t: len(ids) for t, ids in self.tree.pages_by_loc().items()}

    # ---- index mutations belong to the engine ---------------------------------------------

    def _refuse(self, what: str) -> EngineOwned:
        return EngineOwned(f"{what}: the index of {self.instance_id!r} is its engine's tree; "
                           "change it through the engine")

    def insert(self, tokens: Sequence[int], pages: Sequence[int],
               tier: str = "device") -> InsertResult:
        raise self._refuse("insert")

    def delete(self, tokens: Sequence[int]) -> int:
        raise self._refuse("delete")

    def clear(self) -> int:
        raise self._refuse("clear")

    def replicate(self, tokens: Sequence[int], src: str = "device", dst: str = "host") -> int:
        raise self._refuse("replicate")

    def resize(self, tier: str, new_capacity: int) -> None:
        raise self._refuse("resize")

    # ---- integrity ------------------------------------------------------------------------

    def _check_total(self, tier: str, counts: dict[str, int]) -> None:
        held = counts["capacity"] - counts["free"] - counts["cached"] - counts["in_use"]
        if held < 0:
            raise IntegrityError(f"{tier}: free + cached + in use exceed capacity: {counts}")
        counts["engine"] = held
        index = set(self.tree.pages_by_loc().get(tier, ()))
        engine = self.engine.cached_page_ids(tier)
        if index != engine:
            raise IntegrityError(
                f"{tier}: index differs from the engine's tree: only indexed "
                f"{sorted(index - engine)[:8]}, only in the engine {sorted(engine - index)[:8]}")
