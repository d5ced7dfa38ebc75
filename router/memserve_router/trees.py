"""The router's global prompt trees: one tree per instance type, nodes know who holds them.

A :class:`GlobalTree` is one :class:`~sglang_memserve.mempool.radix.RadixTree` (keyed by page
tokens, ``allow_empty=True``) whose locations are ``(instance_id, tier)``. The tiers:

* ``"device"`` / ``"host"`` -- what the instance's KV events say it holds (exact; fed by
  :class:`~memserve_router.feed.EventFeed` through this class's :class:`MirrorSink` methods);
* ``"predicted"`` -- pages the router just sent to an instance (:meth:`GlobalTree.predict`):
  counted as device-held until a ``stored`` event for that instance covers them (the event
  replaces the prediction) or their TTL passes (:meth:`GlobalTree.expire`);
* ``"approx"`` -- for instances without events (a stock SGLang server): what was routed there
  (:meth:`GlobalTree.observe`), each observation refreshing the TTL of the whole prompt.

:meth:`GlobalTree.match` answers, in one walk over the prompt whatever the number of instances,
every instance's contiguous cached prefix (:meth:`GlobalTree.match_groups`: the same as groups of
instances sharing one prefix length, without a per-instance step). It keeps in each node's ``memo`` (reset by the tree on
any change of the node) the node's tokens as one tuple and the frozensets of its holders and of
its host-only holders; equal holder sets are shared with the parent, so a prefix that a thousand
instances share costs an identity test per node.

Not thread-safe: the router's event loop is the only user.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sglang_memserve.mempool.errors import IntegrityError
from sglang_memserve.mempool.events import drop_instance
from sglang_memserve.mempool.radix import Node, PageKey, RadixTree

DEVICE, HOST, PREDICTED, APPROX = "device", "host", "predicted", "approx"
REAL_TIERS = frozenset({DEVICE, HOST})
TIERS = frozenset({DEVICE, HOST, PREDICTED, APPROX})
# TreeMatch.holders of a prompt nobody holds: one object, so callers' caches keyed by it hit.
NO_HOLDERS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """One instance's cached prefix of a prompt.

    Attributes:
        tokens: contiguous cached prefix, in tokens (whole pages), in any tier.
        host_tokens: how many of those are held only in the DRAM tier ``"host"`` (to be swapped
            in); the rest are in HBM (or predicted/approximated there).
    """

    tokens: int
    host_tokens: int = 0


@dataclass(frozen=True, slots=True)
class HitGroup:
    """Instances that cache the same prefix length of a prompt.

    Attributes:
        members: the instances (disjoint from the other groups of the same match).
        tokens: their cached prefix, in tokens (whole pages, > 0).
        host: the members holding part of it only in the DRAM tier: instance -> those tokens
            (the other members hold all of it in HBM).
    """

    members: frozenset[str]
    tokens: int
    host: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class TreeMatch:
    """:meth:`GlobalTree.match_groups`'s answer.

    Attributes:
        groups: one per distinct cached prefix length, disjoint, shortest first.
        holders: every instance holding the prompt's first page: the union of ``groups``
            (often the same frozenset object from one call to the next while the tree's first
            node does not change, so callers may cache what they derive from it).
    """

    groups: tuple[HitGroup, ...]
    holders: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Memo:
    flat: tuple[int, ...]  # the node's tokens
    holders: frozenset[str]  # instances holding the node in any tier
    host_only: frozenset[str]  # ... of which holding it only in "host"


@dataclass(order=True)
class _Timed:
    deadline: float
    base: int  # page ids base .. base + count - 1 are this entry's
    count: int
    instance: str
    tier: str
    # NOTE: the flat token ids, not the page tuples: thousands of live entries would otherwise
    # hold millions of small tuples that every garbage collection walks (it stalled routing).
    tokens: tuple[int, ...]
    start: int


class GlobalTree:
    """See the module docstring.

    Args:
        page_size: tokens per page (the instances' page size).
        name: the instance type (``"colocated"``, ``"prefill"``, ``"decode"``), for messages.
    """

    def __init__(self, page_size: int, name: str = "") -> None:
        self.name = name
        self.page_size = page_size
        self.tree = RadixTree(page_size, allow_empty=True)
        self._timed: list[_Timed] = []
        self._next_id = 0
        self._predicted_live: dict[str, int] = {}  # instance -> predicted entries not expired

    # ---- MirrorSink (the event feed) -------------------------------------------------------

    def stored(self, instance_id: str, path: list[PageKey], start: int, tier: str,
               ids: Sequence[int]) -> None:
        """``path[start:]`` is held by ``instance_id`` in ``tier`` (an event); replaces the
        instance's predictions of those pages."""
        _, run = self.tree.set_loc(path, start, (instance_id, tier), ids)
        if self._predicted_live.get(instance_id):
            loc = (instance_id, PREDICTED)
            for n in run:
                if n.locs.pop(loc, None) is not None:
                    n.memo = None

    def removed(self, instance_id: str, path: list[PageKey], start: int, tier: str) -> None:
        """``path[start:]`` is no longer held by ``instance_id`` in ``tier`` (an event)."""
        self.tree.drop_loc(path, start, (instance_id, tier))

    def drop_instance(self, instance_id: str) -> None:
        """Forget what the events said ``instance_id`` holds (before a snapshot); its
        predictions and approximations stay."""
        drop_instance(self.tree, lambda loc: loc[0] == instance_id and loc[1] in REAL_TIERS)

    # ---- matching --------------------------------------------------------------------------

    def _memo(self, n: Node) -> _Memo:
        tiers: dict[str, set[str]] = {}
        for inst, tier in n.locs:
            tiers.setdefault(inst, set()).add(tier)
        holders = frozenset(tiers)
        parent = n.parent.memo if n.parent is not None else None
        if isinstance(parent, _Memo) and parent.holders == holders:
            holders = parent.holders  # shared: match() then skips the intersection
        host_only = frozenset(i for i, ts in tiers.items() if ts == {HOST})
        m = _Memo(tuple(itertools.chain.from_iterable(n.pages)), holders, host_only)
        n.memo = m
        return m

    def match_groups(self, tokens: Sequence[int]) -> TreeMatch:
        """Every instance's contiguous cached prefix of ``tokens`` (whole pages), in one walk,
        as groups of instances sharing one prefix length (the holder sets the walk computes
        anyway, so a group of a thousand instances costs no per-instance work).

        Returns:
            The groups, disjoint, longest prefix last. Read-only: changes no LRU, no TTL (only
            the per-node ``memo`` caches).
        """
        ps = self.page_size
        toks = tokens if isinstance(tokens, tuple) else tuple(tokens)
        total = len(toks) // ps
        ended: list[tuple[frozenset[str], int]] = []  # (group, its prefix in pages)
        host: dict[str, int] = {}
        first = NO_HOLDERS
        alive: frozenset[str] | None = None
        node, i = self.tree.root, 0
        while i < total:
            child = node.children.get(toks[i * ps : (i + 1) * ps])
            if child is None:
                break
            m = child.memo
            if m is None:
                m = self._memo(child)
            size = len(child.pages)
            if i + size <= total and toks[i * ps : (i + size) * ps] == m.flat:
                k = size
            else:
                k, pages = 1, child.pages
                while k < size and i + k < total and pages[k] == toks[(i + k) * ps : (i + k + 1) * ps]:
                    k += 1
            holders = m.holders
            if alive is None:
                alive = first = holders
            elif holders is not alive:
                keep = alive & holders
                if len(keep) != len(alive):
                    ended.append((alive - keep, i))
                    alive = keep
            if m.host_only:
                for inst in m.host_only & alive:
                    host[inst] = host.get(inst, 0) + k
            i += k
            if k < size or not alive:
                break
            node = child
        if alive:
            ended.append((alive, i))
        groups = []
        for members, pages in ended:
            mine = {inst: host[inst] * ps for inst in host.keys() & members} if host else {}
            groups.append(HitGroup(members, pages * ps, mine))
        return TreeMatch(tuple(groups), first)

    def match(self, tokens: Sequence[int]) -> dict[str, PrefixHit]:
        """Every instance's contiguous cached prefix of ``tokens`` (whole pages), in one walk.

        Returns:
            ``{instance_id: PrefixHit}`` for each instance holding at least one page of the
            prompt's prefix (instances absent hold none). Read-only, like :meth:`match_groups`.
        """
        out: dict[str, PrefixHit] = {}
        for g in self.match_groups(tokens).groups:
            out.update(dict.fromkeys(g.members, PrefixHit(g.tokens, 0)))  # one shared value
            for inst, h in g.host.items():
                out[inst] = PrefixHit(g.tokens, h)
        return out

    # ---- predicted and approximate entries -------------------------------------------------

    def _held_prefix(self, instance_id: str, path: list[PageKey]) -> int:
        dev, hst = (instance_id, DEVICE), (instance_id, HOST)
        held = 0
        for n, k in self.tree.match_pages(path).steps:
            if dev not in n.locs and hst not in n.locs:
                break
            held += k
        return held

    def held_tokens(self, instance_id: str, tokens: Sequence[int]) -> int:
        """Tokens of ``tokens``' contiguous prefix that the events say ``instance_id`` holds
        (``device`` or ``host``; predictions and approximations do not count). Reads only."""
        return self._held_prefix(instance_id, self.tree.to_pages(tokens)) * self.page_size

    def _add_timed(self, instance_id: str, tier: str, tokens: Sequence[int], ttl_s: float,
                   now: float | None, start_after_held: bool) -> int:
        now = time.monotonic() if now is None else now
        self.expire(now)
        path = self.tree.to_pages(tokens)
        start = self._held_prefix(instance_id, path) if start_after_held else 0
        count = len(path) - start
        if count <= 0:
            return 0
        base = self._next_id
        self._next_id += count
        self.tree.set_loc(path, start, (instance_id, tier), range(base, base + count))
        flat = tokens if isinstance(tokens, tuple) else tuple(tokens)
        heapq.heappush(self._timed, _Timed(now + ttl_s, base, count, instance_id, tier, flat,
                                           start))
        if tier == PREDICTED:
            self._predicted_live[instance_id] = self._predicted_live.get(instance_id, 0) + 1
        return count

    def predict(self, instance_id: str, tokens: Sequence[int], ttl_s: float,
                now: float | None = None) -> int:
        """The router just sent ``tokens`` to ``instance_id``: count its whole pages as held
        there (tier ``"predicted"``) until an event confirms them or ``ttl_s`` passes.

        Args:
            now: ``time.monotonic()`` by default (tests pass their own clock).

        Returns:
            Pages predicted (those the instance is not already known to hold).
        """
        return self._add_timed(instance_id, PREDICTED, tokens, ttl_s, now, True)

    def observe(self, instance_id: str, tokens: Sequence[int], ttl_s: float,
                now: float | None = None) -> int:
        """An instance without events was sent ``tokens``: count the prompt as held there
        (tier ``"approx"``) for ``ttl_s``, refreshing the TTL of every page it shares with
        earlier observations.

        Returns:
            Pages recorded.
        """
        return self._add_timed(instance_id, APPROX, tokens, ttl_s, now, False)

    def expire(self, now: float | None = None) -> int:
        """Drop predicted/approximate entries whose TTL passed (unless refreshed or confirmed).
        O(1) when nothing is due, so the router may call it before every decision; the
        :class:`~memserve_router.feed.EventFeed` also calls it on a timer.

        Returns:
            Pages dropped.
        """
        now = time.monotonic() if now is None else now
        dropped = 0
        while self._timed and self._timed[0].deadline <= now:
            t = heapq.heappop(self._timed)
            if t.tier == PREDICTED:
                left = self._predicted_live.get(t.instance, 0) - 1
                if left > 0:
                    self._predicted_live[t.instance] = left
                else:
                    self._predicted_live.pop(t.instance, None)
            loc, depth, emptied = (t.instance, t.tier), 0, []
            for n, k in self.tree.match(t.tokens).steps:
                ids = n.locs.get(loc) if depth >= t.start and k == len(n.pages) else None
                if ids and t.base <= ids[0] < t.base + t.count:  # not re-set since
                    del n.locs[loc]
                    n.memo = None
                    dropped += k
                    emptied.append(n)
                depth += k
            for n in reversed(emptied):
                self.tree.prune(n)
        return dropped

    # ---- membership and inspection ---------------------------------------------------------

    def remove_instance(self, instance_id: str) -> int:
        """Drop ``instance_id`` from every node (every tier) and prune empty nodes.

        Returns:
            Pages whose location was dropped.
        """
        self._predicted_live.pop(instance_id, None)
        return drop_instance(self.tree, lambda loc: loc[0] == instance_id)

    def pages_of(self, instance_id: str, tiers: frozenset[str] = REAL_TIERS) -> int:
        """Pages ``instance_id`` holds in any of ``tiers`` (a page in two tiers counts once).
        O(tree size): for metrics."""
        locs = [(instance_id, t) for t in tiers]
        return sum(len(n.pages) for n in self.tree.nodes() if any(x in n.locs for x in locs))

    def snapshot_of(self, instance_id: str) -> dict[tuple[PageKey, ...], dict[str, int]]:
        """Split-independent view of what the events say ``instance_id`` holds: full page
        path -> ``{tier: page id}`` over ``device``/``host`` (compare with the instance's own
        ``RadixTree.flatten()``)."""
        out = {}
        for path, locs in self.tree.flatten().items():
            mine = {t: pid for (inst, t), pid in locs.items()
                    if inst == instance_id and t in REAL_TIERS}
            if mine:
                out[path] = mine
        return out

    def instances(self) -> set[str]:
        """Every instance holding something (any tier). O(tree size)."""
        return {inst for n in self.tree.nodes() for inst, _ in n.locs}

    def check(self) -> None:
        """Raise :class:`IntegrityError` on a broken invariant: the radix tree's, plus every
        location is ``(instance, known tier)``, no location-less leaf, every cached memo equal
        to a fresh one."""
        self.tree.check()
        for n in self.tree.nodes():
            for loc in n.locs:
                if not (isinstance(loc, tuple) and len(loc) == 2 and loc[1] in TIERS):
                    raise IntegrityError(f"{self.name}: bad location {loc!r} in {n}")
            if not n.children and not n.locs:
                raise IntegrityError(f"{self.name}: location-less leaf {n}")
            if n.memo is not None:
                old = n.memo
                fresh = self._memo(n)
                if (old.flat, old.holders, old.host_only) != (fresh.flat, fresh.holders,
                                                              fresh.host_only):
                    raise IntegrityError(f"{self.name}: stale match memo in {n}")
