"""Where an instance's iterations run: its own device, or cores shared by processor sharing.

An instance runs one scheduler iteration at a time (a prefill chunk or a decode segment), whose
length the cost table gives in *table seconds*: the time it takes on an idle device. A
:class:`CorePool` turns table seconds into simulated seconds:

* ``cores=None`` -- a dedicated device: an iteration of ``w`` table seconds takes ``w`` seconds.
  Each instance gets a pool of its own (the simulator's default, the GPU case).
* ``cores=C`` -- the instances given this pool share ``C`` cores by processor sharing: while
  ``k`` of them are running an iteration, each advances at ``min(1, C / k)`` table seconds per
  second. This is the CPU bench, where four instances, the router and the client share two cores
  (``--shared-cores 2``). It models fair time slicing only: no cost of the slicing itself.

Every start or end of an iteration changes ``k``, so the pool re-plans the end of every running
iteration; superseded end events are dropped by a version number. With few instances on a pool
(the CPU bench's four) that is a handful of events per change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .loop import EventLoop


@dataclass
class _Task:
    total: float  # table seconds the iteration needs
    done: float  # table seconds done so far (as of the pool's last sync)
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    version: int = 0


class CorePool:
    """Compute shared by the instances given it (module docstring).

    Args:
        loop: the simulated clock.
        cores: cores shared by processor sharing (> 0), or None for one dedicated device per
            running iteration (rate 1 always).

    Raises:
        ValueError: ``cores`` is not positive.
    """

    def __init__(self, loop: EventLoop, cores: float | None = None) -> None:
        if cores is not None and not (cores > 0 and math.isfinite(cores)):
            raise ValueError(f"cores must be a positive number, got {cores}")
        self.loop = loop
        self.cores = cores
        self._tasks: dict[Hashable, _Task] = {}
        self._last = 0.0
        self._version = 0

    @property
    def running(self) -> int:
        """Iterations running now."""
        return len(self._tasks)

    def rate(self, k: int | None = None) -> float:
        """Table seconds per simulated second of each of ``k`` (default: now) running ones."""
        k = len(self._tasks) if k is None else k
        if self.cores is None or k <= self.cores:
            return 1.0
        return self.cores / k

    def start(self, key: Hashable, work_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Start ``key``'s iteration of ``work_s`` table seconds; ``fn(*args)`` runs when it is
        done. Slows every other running iteration if the cores are now oversubscribed.

        Raises:
            ValueError: ``key`` already runs one (an instance runs one iteration at a time) or
                ``work_s`` is negative.
        """
        if key in self._tasks:
            raise ValueError(f"{key!r} already runs an iteration")
        if work_s < 0:
            raise ValueError(f"work_s must be >= 0, got {work_s}")
        self._sync()
        before = self.rate()
        self._tasks[key] = _Task(work_s, 0.0, fn, args)
        self._plan(None if self.rate() != before else key)

    def done_s(self, key: Hashable) -> float:
        """Table seconds of ``key``'s running iteration done by now (changes nothing visible)."""
        self._sync()
        return self._tasks[key].done

    def retarget(self, key: Hashable, work_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """``key``'s running iteration now needs ``work_s`` table seconds in all (a decode
        segment cut short) and ends with ``fn(*args)`` instead; at once if that much is done."""
        self._sync()
        task = self._tasks[key]
        task.total, task.fn, task.args = work_s, fn, args
        self._plan(key)

    # ---- internals -------------------------------------------------------------------------

    def _sync(self) -> None:
        """Advance every running iteration to now at the rate that held since the last sync."""
        now = self.loop.now
        dt = now - self._last
        if dt > 0 and self._tasks:
            r = self.rate()
            for task in self._tasks.values():
                task.done += dt * r
        self._last = now

    def _plan(self, only: Hashable | None = None) -> None:
        """(Re)schedule the end of every running iteration (or only ``only``'s: the rate did
        not change) at the current rate."""
        r = self.rate()
        now = self.loop.now
        for key, task in self._tasks.items():
            if only is not None and key != only:
                continue
            self._version += 1
            task.version = self._version
            self.loop.at(now + max(0.0, task.total - task.done) / r, self._end, key,
                         task.version)

    def _end(self, key: Hashable, version: int) -> None:
        task = self._tasks.get(key)
        if task is None or task.version != version:
            return  # superseded by a re-plan
        self._sync()
        del self._tasks[key]
        if self._tasks and self.rate() != self.rate(len(self._tasks) + 1):
            self._plan()  # the others speed up
        task.fn(*task.args)
