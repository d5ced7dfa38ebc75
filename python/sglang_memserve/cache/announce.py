"""Decode -> prefill returns announced before they are prepared (PD-Caching-3).

A return is prepared on prefill's scheduler thread, so it waits for prefill's current forward
pass, and decode's worker prepares one batch at a time: a return released while the previous
batch waits is not yet prepared when the conversation's next turn is bootstrapped on prefill,
which then recomputes the answer. Decode therefore *announces* each return the moment it is
released (``kv_announce``, answered on prefill's control thread without its scheduler), and
prefill's hold (:meth:`~sglang_memserve.cache.peer.PeerService.gate`) waits for announced
returns as for prepared ones. The prepare that follows names the announcement, which ends it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sglang_memserve.mempool.errors import InvalidRequest, MemPoolError

logger = logging.getLogger(__name__)

# An announcement is forgotten after this long if no prepare names it (decode died, or its
# prepare failed): past it a hold would wait for nothing.
ANNOUNCE_TTL_S = 2.0
# Bounds on what one instance keeps (a bigger backlog is a bad or hostile peer).
MAX_ANNOUNCED = 1024
MAX_ANNOUNCE_TOKENS = 1 << 20
MAX_ANN_ID = 64


class Announcements:
    """Prefill's announced returns: added on the control thread, read and ended on the
    scheduler thread (a lock guards the table)."""

    def __init__(self, ttl_s: float = ANNOUNCE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[list[int], float]] = {}  # ann -> (tokens, deadline)
        self.received = 0

    def add(self, msg: dict) -> dict[str, int]:
        """``kv_announce``: remember each ``{"ann", "tokens"}`` of ``msg["items"]``.

        Raises:
            InvalidRequest: a malformed item or a full table; nothing was added.
        """
        items = msg.get("items")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("kv_announce needs a non-empty list of items")
        parsed = [_parse(it) for it in items]
        now = self.clock()
        with self._lock:
            self._expire(now)
            if len(self._items) + len(parsed) > MAX_ANNOUNCED:
                raise InvalidRequest(f"more than {MAX_ANNOUNCED} returns announced")
            for ann, tokens in parsed:
                self._items[ann] = (tokens, now + self.ttl_s)
            self.received += len(parsed)
        return {"announced": len(parsed)}

    def end(self, anns: Iterable[Any]) -> None:
        """Forget the announcements named (their prepare was served); unknown names are ignored."""
        with self._lock:
            for ann in anns:
                if isinstance(ann, str):
                    self._items.pop(ann, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)

    def covers(self, ids: Sequence[int], have: int, page_size: int) -> bool:
        """Whether an announced return holds the page of ``ids`` after its first ``have``
        tokens (what the tree already has): a request whose prompt it extends (reads only)."""
        m = have + page_size
        if len(ids) < m:
            return False
        with self._lock:
            live = [t for t, deadline in self._items.values() if deadline > self.clock()]
        head = list(ids[:m])
        return any(len(t) >= m and t[:m] == head for t in live)

    def _expire(self, now: float) -> None:
        for ann in [a for a, (_, d) in self._items.items() if d <= now]:
            del self._items[ann]


def _parse(item: Any) -> tuple[str, list[int]]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"an announced return is an object, got {type(item).__name__}")
    ann, tokens = item.get("ann"), item.get("tokens")
    if not isinstance(ann, str) or not 0 < len(ann) <= MAX_ANN_ID:
        raise InvalidRequest(f"ann must be a string of 1-{MAX_ANN_ID} characters")
    if (not isinstance(tokens, list) or len(tokens) > MAX_ANNOUNCE_TOKENS
            or not all(type(t) is int for t in tokens)):
        raise InvalidRequest(f"tokens must be a list of at most {MAX_ANNOUNCE_TOKENS} ints")
    return ann, tokens


class Announcer:
    """Decode's side: sends each released return's announcement on its own thread, batched per
    destination, so a worker busy with the previous batch cannot delay it. Best effort: a
    failed announcement only loses the hold it would have earned."""

    def __init__(self, call: Callable[[str, dict], dict]) -> None:
        self._call = call  # (dst endpoint, message) -> reply; raises MemPoolError
        self._queue: queue.SimpleQueue[tuple[str, str, list[int]]] = queue.SimpleQueue()
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="memserve-announce", daemon=True)
        self._thread.start()

    def announce(self, dst: str, ann: str, tokens: list[int]) -> None:
        """Queue one announcement (any thread; never blocks)."""
        self._queue.put((dst, ann, tokens))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            by_dst: dict[str, list[dict]] = {}
            for dst, ann, tokens in batch:
                by_dst.setdefault(dst, []).append({"ann": ann, "tokens": tokens})
            for dst, items in by_dst.items():
                try:
                    self._call(dst, {"op": "kv_announce", "items": items})
                    self.sent += len(items)
                except MemPoolError as exc:
                    self.failed += len(items)
                    logger.debug("MemServe: announcing %d return(s) to %s failed: %s",
                                 len(items), dst, exc)
