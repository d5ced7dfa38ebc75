"""One simulated instance's KV memory: MemPool's radix index over an HBM and a DRAM tier.

The index is :class:`sglang_memserve.mempool.radix.RadixTree` with the locations ``"device"``
(HBM) and ``"host"`` (DRAM), exactly as an instance's MemPool keeps it; page ids come from one
free list per tier (:class:`PageIds`). One page of the tree is one simulated block
(``SimConfig.unit_tokens`` tokens). Eviction is the tree's own LRU :meth:`RadixTree.evict`; with
a DRAM tier, pages HBM evicts are written back to DRAM (indexed there, the way MemServe's
write-back HiCache keeps them), and DRAM evicts its own LRU pages when full. A hit on pages only
in DRAM loads them back into HBM (a copy stays in DRAM).

Every index change is reported, as the instance's KV events would report it, to a sink with the
:class:`~sglang_memserve.mempool.events.MirrorSink` methods the router's event feed calls
(``stored`` / ``removed``), so the router's ``GlobalTree`` follows the instance exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sglang_memserve.mempool.errors import OutOfPages
from sglang_memserve.mempool.radix import Change, Node, PageKey, RadixTree, TreeMatch

DEVICE, HOST = "device", "host"


class PageIds:
    """Free list of page ids ``0 .. capacity - 1`` of one tier.

    Args:
        capacity: pages in the tier (>= 0).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take ``n`` free ids (all or nothing).

        Raises:
            OutOfPages: fewer than ``n`` are free; nothing was taken.
        """
        if n > len(self._free):
            raise OutOfPages("sim", n, len(self._free))
        if n == 0:
            return []
        out = self._free[-n:]
        del self._free[-n:]
        return out

    def free(self, ids: Sequence[int]) -> None:
        """Give ``ids`` back (the caller owned them)."""
        self._free.extend(ids)


@dataclass
class Lease:
    """Pages a request holds on one instance.

    Attributes:
        path: the prompt's pages (one block id each).
        hit: leading pages that were cached at admission (any tier).
        host_hit: of ``hit``, pages that were only in DRAM (loaded back into HBM).
        node: the locked node ending the cached (later: the indexed) prefix, or None.
        owned: HBM page ids allocated to the request and not indexed yet.
    """

    path: list[PageKey]
    hit: int
    host_hit: int
    node: Node | None
    owned: list[int] = field(default_factory=list)


Sink = Callable[[Change], None]


class KvIndex:
    """See the module docstring.

    Args:
        device_pages: HBM capacity in pages (blocks).
        host_pages: DRAM capacity in pages (0: no DRAM tier).
        sink: receives every index change, in order (the instance's event stream), or None.
        evict_batch: fraction of a tier's capacity evicted at least when it runs short.
    """

    def __init__(self, device_pages: int, host_pages: int = 0, sink: Sink | None = None,
                 evict_batch: float = 0.01) -> None:
        self.tree = RadixTree(1)
        self.tiers = {DEVICE: PageIds(device_pages)}
        if host_pages:
            self.tiers[HOST] = PageIds(host_pages)
        self.sink = sink
        self.evict_batch = evict_batch
        self.evicted = {DEVICE: 0, HOST: 0}
        self.written_back = 0
        self.loaded_back = 0

    # ---- events ---------------------------------------------------------------------------

    def _emit(self, changes: Sequence[Change]) -> None:
        if self.sink is not None:
            for c in changes:
                self.sink(c)

    # ---- queries --------------------------------------------------------------------------

    def match(self, path: Sequence[PageKey]) -> tuple[int, int]:
        """``(cached pages, of which only in DRAM)`` of ``path``'s longest cached prefix.
        Changes nothing."""
        hit = host = 0
        for n, k in self.tree.match_pages(path).steps:
            hit += k
            if DEVICE not in n.locs:
                host += k
        return hit, host

    def used(self, tier: str = DEVICE) -> int:
        """Pages of ``tier`` not free (cached or held by requests)."""
        t = self.tiers[tier]
        return t.capacity - t.num_free

    # ---- memory ---------------------------------------------------------------------------

    def make_room(self, n: int, tier: str = DEVICE) -> bool:
        """Ensure ``n`` free pages in ``tier``, evicting LRU unlocked pages (at least
        ``evict_batch`` of the tier) if needed; HBM evictions are written back to DRAM.

        Returns:
            Whether ``n`` pages are free now. May evict and emit ``removed``/``stored`` events.
        """
        t = self.tiers[tier]
        if t.num_free >= n:
            return True
        want = max(n - t.num_free, int(self.evict_batch * t.capacity))
        changes = self.tree.evict(want, tier)
        for c in changes:
            t.free(c.pages)
            self.evicted[tier] += len(c.pages)
        self._emit(changes)
        if tier == DEVICE and HOST in self.tiers:
            for c in reversed(changes):  # parents first: a child's path extends its parent's
                self._write_back(c.path)
        return t.num_free >= n

    def _write_back(self, path: list[PageKey]) -> None:
        """Index ``path`` in DRAM where it is not there yet (the evicted HBM pages go there;
        their ancestors get a DRAM copy too, so HBM can later evict them as well)."""
        m = self.tree.match_pages(path)
        have: set[int] = set()
        i = 0
        for n, k in m.steps:
            if HOST in n.locs:
                have.update(range(i, i + k))
            i += k
        missing = len(path) - len(have)
        if missing <= 0:
            return
        # Locked while DRAM makes room, so DRAM's own eviction cannot take the pages counted.
        last = m.last
        if last is not None:
            self.tree.lock(last)
        room = self.make_room(missing, HOST)
        if last is not None:
            self.tree.unlock(last)
        if not room:
            return
        fill = iter(self.tiers[HOST].alloc(missing))
        page_ids = [-1 if j in have else next(fill) for j in range(len(path))]
        dups, changes, _ = self.tree.insert(path, HOST, page_ids)
        leftover = [page_ids[j] for j in dups if page_ids[j] >= 0]
        self.tiers[HOST].free(leftover)
        self.written_back += missing - len(leftover)
        self._emit(changes)

    # ---- a request's pages ----------------------------------------------------------------

    def _match_whole(self, path: list[PageKey]) -> TreeMatch:
        """The match of ``path``, its last node split where the match ends, so that locking
        it protects the cached prefix only (not the rest of a longer node, which stays
        evictable). The split re-sets the node's own page ids on its upper part through
        ``set_loc``: the index holds the same pages, so no event is due."""
        m = self.tree.match_pages(path)
        if m.steps:
            n, k = m.steps[-1]
            if k < len(n.pages):
                loc, ids = next(iter(n.locs.items()))
                end = m.num_pages
                self.tree.set_loc(list(path[:end]), end - k, loc, ids[:k])
                m = self.tree.match_pages(path)
        return m

    def acquire(self, path: list[PageKey], extra: int = 0) -> Lease | None:
        """Admit a request: lock its cached prefix, load DRAM-only pages of it back into HBM and
        allocate HBM pages for the rest of the prompt plus ``extra`` (its output).

        Returns:
            The lease, or None when HBM cannot make room (nothing held then; LRU pages may have
            been evicted). May emit events (evictions, loads back into HBM).
        """
        m = self._match_whole(path)
        hit = m.num_pages
        host_steps = []
        i = 0
        for n, k in m.steps:
            if DEVICE not in n.locs:
                host_steps.append((i, k))
            i += k
        host = sum(k for _, k in host_steps)
        node = m.last
        if node is not None:
            self.tree.lock(node)
        need = host + (len(path) - hit) + extra
        if not self.make_room(need):
            if node is not None:
                self.tree.unlock(node)
            return None
        dev = self.tiers[DEVICE]
        for start, k in host_steps:  # load back: index the pages in HBM too
            change, _ = self.tree.set_loc(list(path[:start + k]), start, DEVICE, dev.alloc(k))
            self._emit([change])
        self.loaded_back += host
        return Lease(list(path), hit, host, node, dev.alloc(len(path) - hit + extra))

    def commit(self, lease: Lease, path: list[PageKey] | None = None) -> int:
        """Index ``path`` (default: the lease's prompt) in HBM: pages past the cached prefix take
        ids the lease owns; pages someone indexed meanwhile give theirs back. The lock moves to
        the new end of the path.

        Args:
            path: must start with the lease's prompt path.

        Returns:
            Pages newly indexed. Emits their ``stored`` events.
        """
        path = lease.path if path is None else path
        m = self.tree.match_pages(path)
        have = 0
        for n, k in m.steps:  # the locked prefix is held in HBM (loaded back at admission)
            if DEVICE not in n.locs:
                break
            have += k
        new = len(path) - have
        if new > len(lease.owned):
            raise OutOfPages(DEVICE, new, len(lease.owned))
        ids = lease.owned[:new]
        del lease.owned[:new]
        page_ids = [-1] * have + ids
        dups, changes, last = self.tree.insert(path, DEVICE, page_ids)
        back = [page_ids[j] for j in dups if page_ids[j] >= 0]
        self.tiers[DEVICE].free(back)
        if last is not None:
            self.tree.lock(last)
        if lease.node is not None:
            self.tree.unlock(lease.node)
        lease.node = last
        self._emit(changes)
        return new - len(back)

    def release(self, lease: Lease) -> None:
        """The request is done here: unlock its pages (they stay cached) and free what it owns
        but did not index."""
        if lease.node is not None:
            self.tree.unlock(lease.node)
            lease.node = None
        self.tiers[DEVICE].free(lease.owned)
        lease.owned = []

    def store(self, path: list[PageKey]) -> int:
        """Index ``path`` in HBM as received from another instance (a migration, PD-Caching-3's
        return), allocating pages for what is not cached here.

        Returns:
            Pages newly indexed (0 when HBM cannot make room: the KV is dropped).
        """
        lease = self.acquire(path)
        if lease is None:
            return 0
        n = self.commit(lease)
        self.release(lease)
        return n

    def check(self) -> None:
        """The tree's invariants, and per tier free + indexed pages <= capacity."""
        self.tree.check()
        indexed = self.tree.pages_by_loc()
        for name, t in self.tiers.items():
            ids = indexed.get(name, [])
            if t.num_free + len(ids) > t.capacity or set(ids) & set(t._free):
                raise AssertionError(f"{name}: free and indexed pages overlap or exceed capacity")
