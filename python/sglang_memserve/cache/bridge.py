"""Running work on an SGLang scheduler's own thread.

SGLang's scheduler is single-threaded: its tree and allocator may only be touched from its loop.
MemServe's control channel answers peers on another thread, so it posts closures here and waits;
the scheduler runs them after each ``ingest_requests`` (a plugin hook). A pipe registered with
the scheduler's idle sleeper wakes an idle scheduler at once instead of after its 1 s poll.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from sglang_memserve.mempool.errors import MemPoolError, TransferTimeout

logger = logging.getLogger(__name__)


class SchedulerBridge:
    """Closures from other threads, run on the scheduler thread by :meth:`drain`.

    A job that raises never reaches SGLang's loop: a :meth:`call`'s error goes to its caller
    (typed: anything not a ``MemPoolError`` is wrapped in one), a :meth:`post`'s is logged and
    counted in :attr:`failed_posts` / :attr:`last_error`.
    """

    def __init__(self) -> None:
        self.failed_posts = 0
        self.last_error: str | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Slot | None]] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._registered = False

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the scheduler thread soon; do not wait (any thread)."""
        self._jobs.put((fn, None))
        os.write(self._wfd, b"x")

    def call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Run ``fn`` on the scheduler thread and return its result (any other thread).

        Raises:
            TransferTimeout: the scheduler did not get to it within ``timeout_s``.
            Whatever ``fn`` raised.
        """
        slot = _Slot()
        self._jobs.put((fn, slot))
        os.write(self._wfd, b"x")
        if not slot.done.wait(timeout_s):
            # NOTE: the job may still run later; whatever it reserves must carry a lease.
            raise TransferTimeout(f"scheduler busy: no answer within {timeout_s:.1f}s")
        if slot.error is not None:
            raise slot.error
        return slot.result

    def drain(self, scheduler: Any) -> None:
        """Run every posted job (scheduler thread only)."""
        if not self._registered:
            sleeper = getattr(scheduler, "idle_sleeper", None)
            if sleeper is not None and hasattr(sleeper, "poller"):
                import zmq

                sleeper.poller.register(self._rfd, zmq.POLLIN)
            self._registered = True
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                fn, slot = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                result = fn()
                if slot is not None:
                    slot.result = result
            except Exception as exc:  # noqa: BLE001 -- the scheduler keeps running
                if slot is None:
                    self.failed_posts += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("MemServe: a posted scheduler job failed")
                else:
                    slot.error = exc if isinstance(exc, MemPoolError) else MemPoolError(
                        f"{type(exc).__name__}: {exc}")
            finally:
                if slot is not None:
                    slot.done.set()


class _Slot:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
