"""The instance's MemServe index: a MemPool radix tree kept exactly in step with SGLang's tree.

SGLang's unified tree reports every placement change to its ``KVCacheEventRecorder`` (a node's
pages stored on GPU or CPU, removed from one, everything cleared). :class:`IndexRecorder` takes
that recorder's place: it still feeds SGLang's own event queue (so ``--kv-events-config`` keeps
working) and applies each change, in page-path terms, to :class:`InstanceIndex`, which owns a
MemPool :class:`~sglang_memserve.mempool.RadixTree` and publishes MemPool-format KV events
(ZMQ PUB; the instance's control channel serves snapshots) for the router's mirror.

NOTE: only whole pages are indexed (SGLang's tree caches page-aligned prefixes when page_size > 1;
with page_size 1 every token is a page).
"""

from __future__ import annotations

import threading
from typing import Any

from sglang.srt.disaggregation.kv_events import StorageMedium
from sglang.srt.mem_cache.events import KVCacheEventRecorder

from sglang_memserve.mempool import EventPublisher, RadixTree
from sglang_memserve.mempool.events import change_to_event, tree_snapshot
from sglang_memserve.mempool.radix import Change

TIER_OF_MEDIUM = {StorageMedium.GPU: "device", StorageMedium.CPU: "host"}


class InstanceIndex:
    """MemPool's view of one instance's cached pages, per tier; publishes its changes.

    Args:
        instance_id: name in events and snapshots.
        page_size: tokens per page.
        host: bind address of the event and control endpoints.
        events_port: PUB port (0: a free one); ``None`` publishes nothing.
    """

    def __init__(self, instance_id: str, page_size: int, host: str = "127.0.0.1",
                 events_port: int | None = None) -> None:
        self.instance_id = instance_id
        self.page_size = page_size
        self.tree = RadixTree(page_size, allow_empty=True)
        self._lock = threading.Lock()  # the control thread reads snapshots concurrently
        self.publisher: EventPublisher | None = None
        if events_port is not None:
            self.publisher = EventPublisher(instance_id, host, events_port)

    def _publish(self, change: Change) -> None:
        if self.publisher is not None:
            self.publisher.publish([change_to_event(change)])

    def stored(self, path: list[tuple[int, ...]], start: int, tier: str, ids: list[int]) -> None:
        """``path[start:]`` is now held in ``tier`` by page ids ``ids``."""
        if start >= len(path):
            return
        with self._lock:
            self.tree.set_loc(path, start, tier, ids)
            self._publish(Change("stored", tier, path, start, ids))

    def removed(self, path: list[tuple[int, ...]], start: int, tier: str) -> None:
        """``path[start:]`` is no longer held in ``tier``."""
        if start >= len(path):
            return
        with self._lock:
            self.tree.drop_loc(path, start, tier)
            self._publish(Change("removed", tier, path, start, []))

    def cleared(self) -> None:
        with self._lock:
            self.tree.clear()
            if self.publisher is not None:
                self.publisher.publish([{"type": "cleared"}])

    def snapshot(self) -> dict[str, Any]:
        """The whole index as ``stored`` events with the seq of the last published message."""
        with self._lock:
            return tree_snapshot(self.tree, self.publisher.seq if self.publisher else 0)

    def pages_by_tier(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for node in self.tree.nodes():
                for tier in node.locs:
                    counts[str(tier)] = counts.get(str(tier), 0) + len(node.pages)
            return counts

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


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
    """SGLang's event recorder, extended to keep :class:`InstanceIndex` exact.

    Args:
        inner: the recorder SGLang built (its settings are kept, so SGLang's own KV events are
            unchanged).
        index: the MemServe index to update.
        value_of: ``(node, tier) -> page ids`` of a node in a tier, or ``None`` if unknown.
        on_store: ``(node, tier, pages)`` callback after each store (swap accounting).
    """

    def __init__(self, inner: KVCacheEventRecorder, index: InstanceIndex,
                 value_of: Any, on_store: Any = None) -> None:
        super().__init__(enabled=inner.enabled, page_size=inner.page_size,
                         dynamo_format=inner.dynamo_format, lora_names=inner.lora_names)
        self._queue = inner._queue
        self.index = index
        self.value_of = value_of
        self.on_store = on_store  # (node, tier, pages) -> None: swap accounting

    def record_store(self, node: Any, medium: Any = None, *, session_id: str | None = None
                     ) -> None:
        super().record_store(node, medium, session_id=session_id)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        path, start = node_page_path(node, self.index.page_size)
        ids = self.value_of(node, tier) or []
        n = len(path) - start
        ids = ids[:n] if len(ids) >= n else list(range(-n, 0))  # unknown ids: placeholders
        self.index.stored(path, start, tier, ids)
        if self.on_store is not None:
            self.on_store(node, tier, n)

    def record_remove(self, node: Any, medium: Any = None) -> None:
        super().record_remove(node, medium)
        tier = TIER_OF_MEDIUM.get(medium or StorageMedium.GPU, "device")
        path, start = node_page_path(node, self.index.page_size)
        self.index.removed(path, start, tier)

    def record_all_cleared(self) -> None:
        super().record_all_cleared()
        self.index.cleared()
