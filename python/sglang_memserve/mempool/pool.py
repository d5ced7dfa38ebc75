"""MemPool: one instance's tiers, its radix index, membership, transfers and KV events.

Ownership model (what :meth:`MemPool.check_integrity` verifies, per tier): every page id in the
allocator's range is exactly one of *free* (in the allocator), *cached* (indexed by the tree; the
tree owns it) or *in use* (allocated through :meth:`MemPool.alloc_mem` and not indexed: the caller
owns it). ``insert`` moves pages from in-use to cached; ``evict``/``delete`` move cached pages to
free; ``free_mem`` moves in-use pages to free.

Thread safety: every public method takes one re-entrant lock; network writes happen outside it.
The control channel (:meth:`MemPool.serve`) answers peers on its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from .config import MemPoolConfig
from .errors import (
    CapacityError,
    IntegrityError,
    MemPoolError,
    OutOfPages,
    PageOwnershipError,
    UnknownTier,
)
from .events import EventPublisher, tree_snapshot
from .membership import MemberInfo, MemberRegistry, TierInfo
from .pool_adapter import PoolDestination
from .protocol import Peer, SendItem, TxnTable, send
from .protocol import handlers as protocol_handlers
from .radix import Change, Node, RadixTree
from .results import InsertResult, MatchedNode, MatchResult, TransferResult
from .rpc import RpcServer
from .tier import Tier
from .transfer import TransferAgent, plan_segments


class MemPool:
    """See the module docstring.

    Args:
        config: pool settings (page size, host, timeouts).
        instance_id: this member's unique name.
        tiers: tier name -> :class:`~.tier.Tier` (conventionally "device" and "host").
        transfer: the process's Mooncake agent, or ``None`` for a pool that never transfers.
            Every tier's regions are registered with it.
        events: publisher of this pool's index changes, or ``None``.
    """

    def __init__(
        self,
        config: MemPoolConfig,
        instance_id: str,
        tiers: dict[str, Tier],
        transfer: TransferAgent | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        for name, t in tiers.items():
            if t.page_size != config.page_size:
                raise ValueError(f"tier {name!r} page size {t.page_size} != {config.page_size}")
        self.config = config
        self.instance_id = instance_id
        self.tiers = dict(tiers)
        self.transfer_agent = transfer
        self.events = events
        # Hashed when publishing: events name runs by chain hash (computed once per new page).
        self.tree = RadixTree(config.page_size, hashed=events is not None)
        self.registry = MemberRegistry()
        self._lock = threading.RLock()
        self._in_use: dict[str, set[int]] = {name: set() for name in tiers}
        # Incoming transfer_with_insert transactions (see .protocol), under this pool's lock.
        self.incoming = TxnTable(PoolDestination(self), config.txn_lease_s,
                                 config.min_transfer_rate_bps)
        self._rpc: RpcServer | None = None
        if transfer is not None:
            for t in self.tiers.values():
                transfer.register(t.store.regions())

    # ---- plumbing ------------------------------------------------------------------------

    def _tier(self, name: str) -> Tier:
        t = self.tiers.get(name)
        if t is None:
            raise UnknownTier(f"no tier {name!r} (tiers: {sorted(self.tiers)})")
        return t

    def _emit(self, changes: Sequence[Change]) -> None:
        if self.events is not None and changes:
            self.events.publish_changes(changes)

    def _free_changes(self, changes: Sequence[Change]) -> int:
        n = 0
        for c in changes:
            if c.kind == "removed":
                self.tiers[c.loc].allocator.free(c.pages)
                n += len(c.pages)
        return n

    def _evictable_pages(self, tier: str) -> int:
        """Cached pages of ``tier`` that :meth:`evict` could free now."""
        return self.tree.evictable_pages(tier)

    def _check_total(self, tier: str, counts: dict[str, int]) -> None:
        """Raise unless free + cached + in use == capacity (see :meth:`check_integrity`)."""
        total = counts["free"] + counts["cached"] + counts["in_use"]
        if total != counts["capacity"]:
            raise IntegrityError(
                f"{tier}: free {counts['free']} + cached {counts['cached']} + in use "
                f"{counts['in_use']} != capacity {counts['capacity']}"
            )

    def _check_owned(self, pages: Sequence[int], tier: str) -> None:
        owned = self._in_use[tier]
        bad = [p for p in pages if p not in owned]
        if bad or len(set(pages)) != len(pages):
            raise PageOwnershipError(
                f"tier {tier!r}: pages {bad[:8] or list(pages)[:8]} are not (uniquely) allocated "
                "to the caller (free, cached, or repeated)"
            )

    # ---- memory API ----------------------------------------------------------------------

    def alloc_mem(self, n: int, tier: str = "device") -> list[int]:
        """Allocate ``n`` pages of ``tier`` to the caller, evicting unlocked LRU cached pages of
        that tier if needed.

        Returns:
            ``n`` page ids, now in use (owned by the caller).

        Raises:
            OutOfPages: not enough even after eviction (nothing allocated; some unlocked
                cached pages may have been evicted).
        """
        with self._lock:
            t = self._tier(tier)
            if n < 0:
                raise ValueError(f"cannot allocate {n} pages")
            short = n - t.allocator.num_free
            if short > 0:
                if short > self._evictable_pages(tier):
                    raise OutOfPages(tier, n, t.allocator.num_free + self._evictable_pages(tier))
                self.evict(short, tier)
            if n > t.allocator.num_free:
                raise OutOfPages(tier, n, t.allocator.num_free)
            pages = t.allocator.alloc(n)
            self._in_use[tier].update(pages)
            return pages

    def free_mem(self, pages: Sequence[int], tier: str = "device") -> None:
        """Give back pages obtained from :meth:`alloc_mem` (and not indexed).

        Raises:
            PageOwnershipError: a page is not in use by the caller; nothing was freed.
        """
        with self._lock:
            t = self._tier(tier)
            self._check_owned(pages, tier)
            t.allocator.free(pages)
            self._in_use[tier].difference_update(pages)

    def _move(self, pages: Sequence[int], src: str, dst: str) -> list[int]:
        with self._lock:
            s, d = self._tier(src), self._tier(dst)
            self._check_owned(pages, src)
            new = self.alloc_mem(len(pages), dst)
            try:
                s.store.copy_pages(pages, d.store, new)
            except BaseException:
                self.free_mem(new, dst)
                raise
            self.free_mem(pages, src)
            return new

    def swap_out(self, pages: Sequence[int], src: str = "device", dst: str = "host") -> list[int]:
        """Move in-use pages device -> host: copy, free the device pages.

        Returns:
            The new host page ids (in use by the caller), in the same order.

        Raises:
            PageOwnershipError: a page is not in use by the caller (cached pages move with
                :meth:`replicate` + :meth:`evict` instead).
            OutOfPages: the host tier is full.
        """
        return self._move(pages, src, dst)

    def swap_in(self, pages: Sequence[int], src: str = "host", dst: str = "device") -> list[int]:
        """Move in-use pages host -> device (see :meth:`swap_out`).

        Returns:
            The new device page ids (in use by the caller), in the same order.
        """
        return self._move(pages, src, dst)

    def resize(self, tier: str, new_capacity: int) -> None:
        """Grow or shrink a tier's capacity at run time.

        Shrinking relocates cached unlocked pages out of the retired range (evicting LRU pages
        if there is no room for them) and refuses if in-use or locked pages are in the way.

        Raises:
            CapacityError: refused; the tier's contents are intact (some unlocked cached pages
                may have been evicted while making room).
        """
        with self._lock:
            t = self._tier(tier)
            a = t.allocator
            if not 0 <= new_capacity <= a.max_capacity:
                raise CapacityError(
                    f"tier {tier!r}: capacity {new_capacity} outside [0, {a.max_capacity}]"
                )
            top = a.base + new_capacity
            if new_capacity >= a.capacity:
                a.resize(new_capacity)
                return
            retired = set(range(top, a.base + a.capacity))
            busy = retired & self._in_use[tier]
            if busy:
                raise CapacityError(
                    f"tier {tier!r}: pages {sorted(busy)[:8]} in use in the retired range"
                )
            for n in self.tree.nodes():
                if n.lock_ref > 0 and retired.intersection(n.locs.get(tier, ())):
                    raise CapacityError(f"tier {tier!r}: locked cached pages in the retired range")
            while True:
                cached = [p for p in self.tree.pages_by_loc().get(tier, []) if p in retired]
                free_low = [p for p in a.free_page_ids() if p < top]
                if len(free_low) >= len(cached):
                    break
                if not self.evict(1, tier):
                    raise CapacityError(
                        f"tier {tier!r}: {len(cached)} cached pages to relocate, room for "
                        f"{len(free_low)}, nothing left to evict"
                    )
            if cached:
                got = a.alloc(a.num_free)  # pick targets below the new top, whatever the allocator
                targets = [p for p in got if p < top][: len(cached)]
                a.free([p for p in got if p not in set(targets)])
                t.store.copy_pages(cached, t.store, targets)
                self._emit(self.tree.relabel(tier, dict(zip(cached, targets, strict=True))))
                a.free(cached)
            a.resize(new_capacity)

    # ---- index API -----------------------------------------------------------------------

    def insert(
        self, tokens: Sequence[int], pages: Sequence[int], tier: str = "device"
    ) -> InsertResult:
        """Index the whole pages of ``tokens``, held by ``pages`` (one per whole page) in ``tier``.

        Pages already indexed in ``tier`` are reported as duplicates and stay the caller's.

        Raises:
            ValueError: ``len(pages)`` differs from the number of whole pages of ``tokens``.
            PageOwnershipError: a page is not in use by the caller; nothing was indexed.
        """
        with self._lock:
            self._tier(tier)
            path = self.tree.to_pages(tokens)
            if len(pages) != len(path):
                raise ValueError(f"{len(pages)} pages for {len(path)} whole pages of tokens")
            self._check_owned(pages, tier)
            dup_idx, changes, node = self.tree.insert(path, tier, pages)
            dups = set(dup_idx)
            new = [p for i, p in enumerate(pages) if i not in dups]
            self._in_use[tier].difference_update(new)
            self._emit(changes)
            return InsertResult(len(path), new, [pages[i] for i in dup_idx], node)

    def match(self, tokens: Sequence[int]) -> MatchResult:
        """Longest cached prefix of ``tokens`` (whole pages). Changes nothing, not even LRU."""
        with self._lock:
            m = self.tree.match(tokens)
            ps = self.config.page_size
            nodes = []
            tier_pages = dict.fromkeys(self.tiers, 0)
            open_tiers = set(self.tiers)
            for node, k in m.steps:
                nodes.append(
                    MatchedNode(k, [(t, self.instance_id, ids[:k]) for t, ids in node.locs.items()])
                )
                for t in list(open_tiers):
                    if t in node.locs:
                        tier_pages[t] += k
                    else:
                        open_tiers.discard(t)
            return MatchResult(
                m.num_pages * ps,
                nodes,
                {t: n * ps for t, n in tier_pages.items()},
                m.last,
                self.instance_id,
            )

    def lock(self, handle: Node | None) -> None:
        """Protect the matched prefix ending at ``handle`` from eviction and deletion (and mark
        it used for LRU). ``None`` (a miss) is a no-op."""
        if handle is not None:
            with self._lock:
                self.tree.lock(handle)

    def unlock(self, handle: Node | None) -> None:
        """Undo one :meth:`lock`."""
        if handle is not None:
            with self._lock:
                self.tree.unlock(handle)

    def delete(self, tokens: Sequence[int]) -> int:
        """Drop the last whole page of ``tokens`` and everything cached below it (every tier).

        Returns:
            Pages freed.

        Raises:
            PageLocked: some of those pages are locked; nothing was changed.
        """
        with self._lock:
            changes = self.tree.delete(self.tree.to_pages(tokens))
            n = self._free_changes(changes)
            self._emit(changes)
            return n

    def evict(self, num_pages: int, tier: str = "device") -> int:
        """Free at least ``num_pages`` cached pages of ``tier`` (LRU, never locked ones), or as
        many as possible.

        Returns:
            Pages freed (whole nodes go, so it may exceed ``num_pages``).
        """
        with self._lock:
            self._tier(tier)
            changes = self.tree.evict(num_pages, tier)
            n = self._free_changes(changes)
            self._emit(changes)
            return n

    def clear(self) -> int:
        """Drop the whole index.

        Returns:
            Pages freed.

        Raises:
            PageLocked: something is locked; nothing was changed.
        """
        with self._lock:
            changes = self.tree.clear()
            n = self._free_changes(changes)
            if self.events is not None:
                self.events.publish([{"type": "cleared"}])
            return n

    def replicate(self, tokens: Sequence[int], src: str = "device", dst: str = "host") -> int:
        """Copy the cached prefix of ``tokens`` held in ``src`` into ``dst`` where ``dst`` lacks
        it, and index the copies (HiCache-style backup; ``evict(n, src)`` then leaves them).

        Returns:
            Pages copied.

        Raises:
            OutOfPages: ``dst`` is full (nothing copied).
        """
        with self._lock:
            s, d = self._tier(src), self._tier(dst)
            m = self.tree.match(tokens)
            path, dst_ids, need, src_need = [], [], [], []
            last = None
            for node, k in m.steps:
                if src not in node.locs:
                    break
                last = node
                for j in range(k):
                    if dst in node.locs:
                        dst_ids.append(node.locs[dst][j])
                    else:
                        need.append(len(dst_ids))
                        src_need.append(node.locs[src][j])
                        dst_ids.append(-1)
                path.extend(node.pages[:k])
            if not need:
                return 0
            self.tree.lock(last)  # keep the prefix (and its dst copies) alive while allocating
            try:
                new = self.alloc_mem(len(need), dst)
            finally:
                self.tree.unlock(last)
            try:
                s.store.copy_pages(src_need, d.store, new)
            except BaseException:
                self.free_mem(new, dst)
                raise
            for i, p in zip(need, new, strict=True):
                dst_ids[i] = p
            dup_idx, changes, _ = self.tree.insert(path, dst, dst_ids)
            if set(dup_idx) & set(need):
                raise IntegrityError("replicate: a new copy was indexed twice")
            self._in_use[dst].difference_update(new)
            self._emit(changes)
            return len(new)

    # ---- integrity -----------------------------------------------------------------------

    def check_integrity(self) -> dict[str, dict[str, int]]:
        """Verify the tree's invariants and, per tier, free + cached + in use == capacity with
        the three sets disjoint and inside the allocator's range.

        Returns:
            Per tier ``{"free", "cached", "in_use", "capacity"}`` counts.

        Raises:
            IntegrityError: on any inconsistency.
        """
        with self._lock:
            self.tree.check()
            by_loc = self.tree.pages_by_loc()
            unknown = set(by_loc) - set(self.tiers)
            if unknown:
                raise IntegrityError(f"tree holds unknown tiers {unknown}")
            out = {}
            for name, t in self.tiers.items():
                a = t.allocator
                free = a.free_page_ids()
                cached = set(by_loc.get(name, ()))
                used = self._in_use[name]
                if len(free) != a.num_free:
                    raise IntegrityError(f"{name}: allocator num_free {a.num_free} != {len(free)}")
                for x, y, what in (
                    (free, cached, "free&cached"),
                    (free, used, "free&in_use"),
                    (cached, used, "cached&in_use"),
                ):
                    both = x & y
                    if both:
                        raise IntegrityError(f"{name}: pages both {what}: {sorted(both)[:8]}")
                outside = (free | cached | used) - set(a.page_ids)
                if outside:
                    raise IntegrityError(f"{name}: pages outside capacity: {sorted(outside)[:8]}")
                counts = {
                    "free": len(free),
                    "cached": len(cached),
                    "in_use": len(used),
                    "capacity": a.capacity,
                }
                self._check_total(name, counts)
                out[name] = counts
            return out

    # ---- membership ----------------------------------------------------------------------

    def member_info(self) -> MemberInfo:
        """How peers reach this pool (call :meth:`serve` first for the control endpoint)."""
        return MemberInfo(
            instance_id=self.instance_id,
            segment_name=self.transfer_agent.segment_name if self.transfer_agent else "",
            control_endpoint=self._rpc.endpoint if self._rpc else "",
            event_endpoint=self.events.endpoint if self.events else "",
            tiers={
                n: TierInfo(t.store.layout, tuple(t.store.regions())) for n, t in self.tiers.items()
            },
        )

    def join(self, info: MemberInfo) -> None:
        """Add (or update) a peer."""
        self.registry.join(info)

    def leave(self, instance_id: str) -> None:
        """Remove a peer. Raises UnknownPeer if it is not a member."""
        self.registry.leave(instance_id)

    def members(self) -> list[str]:
        return self.registry.ids()

    # ---- control channel (destination side) ----------------------------------------------

    def serve(self) -> MemberInfo:
        """Start the control channel (transfers into this pool, snapshots) if not running.

        Returns:
            This pool's :class:`MemberInfo`.
        """
        with self._lock:
            if self._rpc is None:
                self._rpc = RpcServer(
                    self.instance_id,
                    self.config.host,
                    self.config.control_port,
                    {
                        "info": lambda m: {"member": self.member_info().to_json()},
                        "snapshot": lambda m: self.snapshot(),
                        "integrity": lambda m: {"counts": self.check_integrity()},
                        **protocol_handlers(self.incoming, self._locked, self._locked),
                    },
                    on_idle=self._on_idle,
                )
            return self.member_info()

    def close(self) -> None:
        """Stop the control channel and publisher; abort pending incoming transfers."""
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None
        with self._lock:
            self.incoming.close()
        if self.events is not None:
            self.events.close()

    def snapshot(self) -> dict:
        """The whole index as ``stored`` events, with the seq of the last published message."""
        with self._lock:
            ev = self.events
            return tree_snapshot(self.tree, ev.seq if ev else 0, ev.epoch if ev else "")

    def _locked(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under the pool's lock (the protocol's "on the owner's thread")."""
        with self._lock:
            return fn()

    def _on_idle(self) -> None:
        self.reap_expired()
        self.heartbeat()

    def heartbeat(self) -> bool:
        """Publish a heartbeat (the current seq) if no event went out for ``heartbeat_s``, so
        that mirrors notice a lost last message. Safe from any thread (takes the pool's lock).

        Returns:
            Whether one was sent.
        """
        if self.events is None:
            return False
        with self._lock:  # the publisher is not thread-safe
            return self.events.heartbeat(self.config.heartbeat_s)

    def reap_expired(self) -> int:
        """Abort incoming transfers whose source went silent past the lease.

        Returns:
            Transactions aborted.
        """
        with self._lock:
            return self.incoming.reap()

    @property
    def pending_transfers(self) -> int:
        return self.incoming.pending()

    # ---- transfer API (source side) ------------------------------------------------------

    def _agent(self) -> TransferAgent:
        if self.transfer_agent is None:
            raise MemPoolError(f"pool {self.instance_id!r} has no transfer agent")
        return self.transfer_agent

    def transfer(
        self,
        dst: str,
        src_pages: Sequence[int],
        dst_pages: Sequence[int],
        *,
        src_tier: str = "device",
        dst_tier: str = "device",
    ) -> int:
        """Write pages to a member's pages (raw: the destination indexes nothing). The caller
        keeps ``src_pages`` alive and the destination reserved ``dst_pages``.

        Returns:
            Bytes written.

        Raises:
            UnknownPeer / UnknownTier: immediately, for a member or tier that does not exist.
            LayoutMismatch / MemPoolError: incompatible layouts or out-of-range pages.
            TransferError / TransferTimeout: the write failed, within the configured bound.
        """
        info = self.registry.get(dst)
        agent = self._agent()
        dinfo = info.tiers.get(dst_tier)
        if dinfo is None:
            raise UnknownTier(f"member {dst!r} has no tier {dst_tier!r}")
        writes = plan_segments(
            self._tier(src_tier).store.layout, src_pages, dinfo.layout, dst_pages
        )
        return agent.write(info.segment_name, writes) if writes else 0

    def transfer_with_insert(
        self,
        dst: str,
        tokens: Sequence[int],
        src_pages: Sequence[int],
        *,
        src_tier: str = "device",
        dst_tier: str = "device",
    ) -> TransferResult:
        """Move the KV of ``tokens`` (one source page per whole page) to a member and index it
        there in one step. Only pages the destination lacks in ``dst_tier`` cross the wire; the
        destination indexes all of them at commit or none (on failure it frees what it
        allocated, at once on abort or after its lease if this side died).

        Raises:
            UnknownPeer / UnknownTier: immediately.
            OutOfPages: the destination has no room.
            TransferError / TransferTimeout: within the configured bound; nothing indexed.
        """
        info = self.registry.get(dst)
        agent = self._agent()
        ps = self.config.page_size
        n = len(tokens) // ps
        if len(src_pages) != n:
            raise ValueError(f"{len(src_pages)} source pages for {n} whole pages of tokens")
        peer = Peer(info.control_endpoint, self.config.transfer_timeout_s, dst)
        out = send(peer, SendItem(list(tokens[: n * ps]), list(src_pages)),
                   self._tier(src_tier).store.layout, agent, dst_tier)
        return TransferResult(out.sent_pages, out.skip // ps, out.nbytes, out.duplicates,
                              out.dst_pages)
