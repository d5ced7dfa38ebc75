"""SchedulerBridge without SGLang: a job that raises never escapes drain (the scheduler's loop)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from sglang_memserve.cache.bridge import SchedulerBridge
from sglang_memserve.mempool.errors import MemPoolError, PageLocked


class _Scheduler:
    idle_sleeper = None


def _fail() -> None:
    raise KeyError("boom")


def test_posted_job_that_raises_is_counted_and_later_jobs_run() -> None:
    bridge, ran = SchedulerBridge(), []
    bridge.post(_fail)
    bridge.post(lambda: ran.append(1))
    bridge.drain(_Scheduler())  # must not raise
    assert ran == [1]
    assert bridge.failed_posts == 1 and bridge.last_error == "KeyError: 'boom'"


def test_called_job_error_goes_to_the_caller_typed() -> None:
    bridge = SchedulerBridge()
    errors: list[BaseException] = []

    def caller(fn: Callable[[], None]) -> None:
        try:
            bridge.call(fn, 5)
        except MemPoolError as exc:
            errors.append(exc)

    def locked() -> None:
        raise PageLocked("held")

    threads = [threading.Thread(target=caller, args=(f,)) for f in (_fail, locked)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        bridge.drain(_Scheduler())
    assert bridge.failed_posts == 0
    assert sorted(type(e).__name__ for e in errors) == ["MemPoolError", "PageLocked"]
    assert any("KeyError" in str(e) for e in errors)
    with pytest.raises(MemPoolError, match="scheduler busy"):
        bridge.call(lambda: None, 0.05)  # nobody drains
