"""The simulator's clock: a heap of timed callbacks, run in time order.

Events at the same time run in the order they were scheduled (a sequence number breaks ties), so
a run is deterministic. No threads, no wall clock: :attr:`EventLoop.now` is simulated seconds.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    """A discrete-event loop.

    Attributes:
        now: the current simulated time in seconds (the time of the event being run).
        processed: events run so far.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.processed = 0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``when``.

        Args:
            when: seconds; must not be before :attr:`now`.

        Raises:
            ValueError: ``when`` is in the past (an event may never rewind the clock).
        """
        if when < self.now:
            raise ValueError(f"event at {when} is before now ({self.now})")
        heapq.heappush(self._heap, (when, next(self._seq), fn, args))

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` ``delay`` seconds from now (``delay >= 0``)."""
        self.at(self.now + delay, fn, *args)

    def run(self, until: float | None = None) -> None:
        """Run events in time order until none is left (or the next is after ``until``).

        Changes :attr:`now` and :attr:`processed`; callbacks may schedule more events.
        """
        heap = self._heap
        while heap:
            if until is not None and heap[0][0] > until:
                break
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            self.processed += 1
            fn(*args)

    def __len__(self) -> int:
        return len(self._heap)
