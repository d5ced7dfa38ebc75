"""How SGLang's tree drives the instance's MemPool index.

SGLang's unified tree reports every placement change to its ``KVCacheEventRecorder`` (a node's
pages stored on GPU or CPU, removed from one, everything cleared). :class:`IndexRecorder` takes
that recorder's place: it still feeds SGLang's own event queue (so ``--kv-events-config`` keeps
working) and reports each change to the instance's
:class:`~sglang_memserve.mempool.EngineMemPool`, whose index therefore equals SGLang's tree and
which publishes MemPool-format KV events (ZMQ PUB; the control channel serves snapshots) for the
router's mirror.

A report costs the pages the node covers, not the depth of the path above it: each node
caches the chain hash (:mod:`~sglang_memserve.mempool.chainhash`) at its end, a report names
the node's parent by that hash and carries only the node's own pages, and the pool finds the
parent in its index by hash (:meth:`~sglang_memserve.mempool.EngineMemPool.placed_after`).

NOTE: only whole pages are indexed (SGLang's tree caches page-aligned prefixes when page_size > 1;
with page_size 1 every token is a page).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sglang.srt.disaggregation.kv_events import StorageMedium
from sglang.srt.mem_cache.events import KVCacheEventRecorder

from sglang_memserve.mempool import EngineMemPool
from sglang_memserve.mempool.chainhash import SEED, chain

TIER_OF_MEDIUM = {StorageMedium.GPU: "device", StorageMedium.CPU: "host"}


# Attribute MemServe keeps on each SGLang tree node: (key, parent, tokens from the root to the
# node's end, chain hash of the whole pages over them). Valid while the node's key and parent
# objects are the ones it was built from: SGLang's split gives the child a new key and a new
# parent (its end is unchanged, but the entry is rebuilt from the new parent's, one level up).
_END_ATTR = "_memserve_end"


class NodeRun(NamedTuple):
    """The whole pages a node covers, named as a KV event names them.

    ``parent_hash`` is the chain hash of the path's pages before the node's (``SEED`` at the
    root); ``start`` their number; ``pages`` the node's own whole pages (the first may begin
    in the parent when the parent ends inside a page, which SGLang's paged tree never does);
    ``end_hash`` the chain hash at the node's end.
    """

    parent_hash: int
    start: int
    pages: list[tuple[int, ...]]
    end_hash: int


def _node_end(node: Any, page_size: int) -> tuple[int, int]:
    """``(tokens from the root to the end of node, chain hash of their whole pages)``, from the
    nodes' cached entries: only nodes without a valid entry have their tokens read and hashed.
    May set the entry of ``node`` and of ancestors that lack a valid one."""
    todo = []
    n = node
    while n.parent is not None:
        c = getattr(n, _END_ATTR, None)
        if c is not None and c[0] is n.key and c[1] is n.parent:
            break
        todo.append(n)
        n = n.parent
    count, h = (0, SEED) if n.parent is None else getattr(n, _END_ATTR)[2:]
    for m in reversed(todo):
        pages = _own_pages(m, count, page_size)
        if pages:
            h = chain(h, pages)[-1]
        count += len(m.key)
        setattr(m, _END_ATTR, (m.key, m.parent, count, h))
    return count, h


def _own_pages(node: Any, before: int, page_size: int) -> list[tuple[int, ...]]:
    """The whole pages ending inside ``node``, whose path holds ``before`` tokens above it."""
    if before % page_size:  # a partial page above (not in SGLang's paged tree): walk it all
        return _pages(_root_tokens(node)[before - before % page_size:], page_size)
    return _pages([int(t) for t in node.key.token_ids], page_size)


def node_run(node: Any, page_size: int) -> NodeRun:
    """The pages ``node`` covers and the chain hash naming its parent, in O(node's pages)
    once the ancestors' entries are cached (they are after their own first event). May set the
    entry of ``node`` and of ancestors that lack a valid one.
    """
    if node.parent is None:  # the root covers nothing
        return NodeRun(SEED, 0, [], SEED)
    before, parent_hash = _node_end(node.parent, page_size)
    pages = _own_pages(node, before, page_size)
    c = getattr(node, _END_ATTR, None)
    if c is not None and c[0] is node.key and c[1] is node.parent:
        end = c[3]
    else:
        end = chain(parent_hash, pages)[-1] if pages else parent_hash
        setattr(node, _END_ATTR, (node.key, node.parent, before + len(node.key), end))
    return NodeRun(parent_hash, before // page_size, pages, end)


def _root_tokens(node: Any) -> list[int]:
    chain = []
    while node is not None and node.parent is not None:
        chain.append(node)
        node = node.parent
    return [int(t) for m in reversed(chain) for t in m.key.token_ids]


def _pages(tokens: list[int], page_size: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + page_size])
            for i in range(0, len(tokens) - page_size + 1, page_size)]


def node_page_path(node: Any, page_size: int) -> tuple[list[tuple[int, ...]], int]:
    """The whole-page token path from the root to the end of ``node``, and where ``node``
    starts: a walk to the root, O(depth). Only for a report the index cannot place by hash
    (:meth:`IndexRecorder.record_store`'s fallback). Changes nothing.

    Returns:
        ``(path, start)``: ``path[start:]`` are the pages that ``node`` itself covers (a trailing
        partial page is dropped).
    """
    tokens = _root_tokens(node)
    start = len(tokens) - (len(node.key) if node.parent is not None else 0)
    return _pages(tokens, page_size), start // page_size


class IndexRecorder(KVCacheEventRecorder):
    """SGLang's event recorder, extended to keep the instance's MemPool index exact.

    Args:
        inner: the recorder SGLang built (its settings are kept, so SGLang's own KV events are
            unchanged).
        pool: the instance's MemPool (its index follows SGLang's tree).
        value_of: ``(node, tier) -> page ids`` of a node in a tier, or ``None`` if unknown.
        on_store: ``(node, tier, pages)`` callback after each store (swap accounting).
    """

    def __init__(self, inner: KVCacheEventRecorder, pool: EngineMemPool,
                 value_of: Any, on_store: Any = None) -> None:
        super().__init__(enabled=inner.enabled, page_size=inner.page_size,
                         dynamo_format=inner.dynamo_format, lora_names=inner.lora_names)
        self._queue = inner._queue
        self.pool = pool
        self.value_of = value_of
        self.on_store = on_store  # (node, tier, pages) -> None: swap accounting
        # Reports the index could not place by the parent's hash (sent with the full path).
        self.full_path_reports = 0

    def record_store(self, node: Any, medium: Any = None, *, session_id: str | None = None
                     ) -> None:
        """Also: the node's pages are held in the medium's tier (O(the node's pages))."""
        super().record_store(node, medium, session_id=session_id)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        run = node_run(node, self.pool.config.page_size)
        n = len(run.pages)
        if n:
            ids = self.value_of(node, tier) or []
            # Unknown ids get negative placeholders, which check_integrity reports.
            ids = ids[:n] if len(ids) >= n else list(range(-n, 0))
            try:
                self.pool.placed_after(run.parent_hash, run.pages, tier, ids)
            except KeyError:  # the index lacks the parent: report the full path
                self.full_path_reports += 1
                path, start = node_page_path(node, self.pool.config.page_size)
                self.pool.placed(path, start, tier, ids)
        if self.on_store is not None:
            self.on_store(node, tier, n)

    def record_remove(self, node: Any, medium: Any = None) -> None:
        """Also: the node's pages are no longer held in the medium's tier."""
        super().record_remove(node, medium)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        run = node_run(node, self.pool.config.page_size)
        if not run.pages:
            return
        try:
            self.pool.dropped_after(run.parent_hash, run.pages, tier)
        except KeyError:  # parent unknown by hash (a collision at worst): by the full path
            self.full_path_reports += 1
            path, start = node_page_path(node, self.pool.config.page_size)
            self.pool.dropped(path, start, tier)

    def record_all_cleared(self) -> None:
        super().record_all_cleared()
        self.pool.engine_cleared()
