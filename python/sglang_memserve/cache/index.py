"""How SGLang's tree drives the instance's MemPool index.

SGLang's unified tree reports every placement change to its ``KVCacheEventRecorder`` (a node's
pages stored on GPU or CPU, removed from one, everything cleared). :class:`IndexRecorder` takes
that recorder's place: it still feeds SGLang's own event queue (so ``--kv-events-config`` keeps
working) and reports each change, in page-path terms, to the instance's
:class:`~sglang_memserve.mempool.EngineMemPool`, whose index therefore equals SGLang's tree and
which publishes MemPool-format KV events (ZMQ PUB; the control channel serves snapshots) for the
router's mirror.

NOTE: only whole pages are indexed (SGLang's tree caches page-aligned prefixes when page_size > 1;
with page_size 1 every token is a page).
"""

from __future__ import annotations

from typing import Any

from sglang.srt.disaggregation.kv_events import StorageMedium
from sglang.srt.mem_cache.events import KVCacheEventRecorder

from sglang_memserve.mempool import EngineMemPool

TIER_OF_MEDIUM = {StorageMedium.GPU: "device", StorageMedium.CPU: "host"}


# Attribute MemServe keeps on each SGLang tree node: (key, parent, tokens to the node's end,
# whole-page path to it). Valid while the node's key and parent objects are the ones it was
# built from: SGLang's split gives the child a new key and a new parent (its path to the end is
# unchanged, but it is rebuilt from the new parent's entry, which is one level up).
_PATH_ATTR = "_memserve_page_path"


def _page_path_entry(node: Any, page_size: int) -> tuple[int, list[tuple[int, ...]]]:
    """``(tokens from the root to the end of node, whole-page path over them)``, from the nodes'
    cached entries: only the nodes without a valid entry have their tokens read."""
    todo = []
    n = node
    while n is not None and n.parent is not None:
        c = getattr(n, _PATH_ATTR, None)
        if c is not None and c[0] is n.key and c[1] is n.parent:
            break
        todo.append(n)
        n = n.parent
    if n is None or n.parent is None:
        count, pages = 0, []
    else:
        _, _, count, pages = getattr(n, _PATH_ATTR)
    for m in reversed(todo):
        if count % page_size:  # a partial page above (not in SGLang's paged tree): walk it all
            tokens = _root_tokens(m)
            count, pages = len(tokens), _pages(tokens, page_size)
        else:
            tokens = [int(t) for t in m.key.token_ids]
            count, pages = count + len(tokens), pages + _pages(tokens, page_size)
        setattr(m, _PATH_ATTR, (m.key, m.parent, count, pages))
    return count, pages


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
    """The whole-page token path from the root to the end of ``node``, and where ``node`` starts.

    Cached per node (the node's parent's entry plus its own pages): an event costs the pages the
    node adds, not the path's length. May set an attribute on ``node`` and on ancestors that
    lack a valid one.

    Returns:
        ``(path, start)``: ``path[start:]`` are the pages that ``node`` itself covers (a trailing
        partial page is dropped).
    """
    count, pages = _page_path_entry(node, page_size)
    start = count - (len(node.key) if node.parent is not None else 0)
    return pages, start // page_size


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

    def record_store(self, node: Any, medium: Any = None, *, session_id: str | None = None
                     ) -> None:
        super().record_store(node, medium, session_id=session_id)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        path, start = node_page_path(node, self.pool.config.page_size)
        ids = self.value_of(node, tier) or []
        n = len(path) - start
        # Unknown ids get negative placeholders, which check_integrity reports.
        ids = ids[:n] if len(ids) >= n else list(range(-n, 0))
        self.pool.placed(path, start, tier, ids)
        if self.on_store is not None:
            self.on_store(node, tier, n)

    def record_remove(self, node: Any, medium: Any = None) -> None:
        super().record_remove(node, medium)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        path, start = node_page_path(node, self.pool.config.page_size)
        self.pool.dropped(path, start, tier)

    def record_all_cleared(self) -> None:
        super().record_all_cleared()
        self.pool.engine_cleared()
