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


def node_page_path(node: Any, page_size: int) -> tuple[list[tuple[int, ...]], int]:
    """The whole-page token path from the root to the end of ``node``, and where ``node`` starts.

    Returns:
        ``(path, start)``: ``path[start:]`` are the pages that ``node`` itself covers (a trailing
        partial page is dropped).
    """
    chain = []
    n = node
    while n is not None and n.parent is not None:
        chain.append(n)
        n = n.parent
    tokens: list[int] = []
    node_start = 0
    for i, m in enumerate(reversed(chain)):
        if i == len(chain) - 1:
            node_start = len(tokens)
        tokens.extend(int(t) for t in m.key.token_ids)
    full = len(tokens) // page_size
    path = [tuple(tokens[i * page_size:(i + 1) * page_size]) for i in range(full)]
    return path, node_start // page_size


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
