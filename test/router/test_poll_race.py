"""A load poll that raced with this router's own drains: the instance answered with requests
that have since finished here, and those must not count again (they made a sequential
conversation's holder look busy and the next turn move)."""

from __future__ import annotations

import asyncio
from typing import Any

from memserve_router.cluster import Cluster
from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.workers import Worker, WorkerInfo
from sglang_memserve.gpu.costmodel import load_table

TABLE = load_table("cpu-bench")


class _Reply:
    def __init__(self, body: dict, on_answer: Any) -> None:
        self.status, self._body, self._on_answer = 200, body, on_answer

    async def __aenter__(self) -> _Reply:
        self._on_answer()  # what happened here while the reply travelled
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def json(self, content_type: Any = None) -> dict:
        return self._body


class _Session:
    def __init__(self, body: dict, on_answer: Any) -> None:
        self.body, self.on_answer = body, on_answer

    def get(self, url: str, timeout: Any = None) -> _Reply:
        return _Reply(self.body, self.on_answer)


def _worker() -> Worker:
    return Worker("w", WorkerSpec("http://127.0.0.1:1"), WorkerInfo("w", 16, None, None, None,
                                                                      None))


def _poll(w: Worker, loads: dict, during: Any) -> None:
    cluster = Cluster(RouterConfig(), _Session({"loads": [loads]}, during),  # type: ignore[arg-type]
                      TABLE.exec_time)
    asyncio.run(cluster._poll_load(w))


def test_requests_finished_during_the_poll_are_not_counted_again() -> None:
    w = _worker()
    w.inflight = 1
    w.queue_prefill(TABLE.exec_time(400, 0), 400)

    def drain() -> None:  # our request's prefill ended and it finished while the poll flew
        w.prefilled(TABLE.exec_time(400, 0), 400)
        w.finished()

    _poll(w, {"num_running_reqs": 0, "num_waiting_reqs": 1,
              "num_waiting_uncached_tokens": 400, "token_usage": 0.1}, drain)
    assert w.polled["num_waiting_reqs"] == 0 and w.polled["num_running_reqs"] == 0
    assert w.polled_wait_s == 0.0
    assert w.load().requests == 0 and w.load().queue_wait_s == 0.0


def test_other_routers_queue_still_counts() -> None:
    w = _worker()
    _poll(w, {"num_running_reqs": 1, "num_waiting_reqs": 2,
              "num_waiting_uncached_tokens": 600, "token_usage": 0.2}, lambda: None)
    assert w.polled["num_waiting_reqs"] == 2 and w.polled["num_running_reqs"] == 1
    assert w.polled_wait_s == TABLE.exec_time(600, 0)
    # One of ours (200 tokens) drained during the next poll: only the rest counts.
    w.inflight, w.pending_tokens = 1, 200

    def drain() -> None:
        w.prefilled(0.0, 200)
        w.finished()

    _poll(w, {"num_running_reqs": 1, "num_waiting_reqs": 2,
              "num_waiting_uncached_tokens": 800, "token_usage": 0.2}, drain)
    assert w.polled["num_waiting_reqs"] == 1 and w.polled["num_running_reqs"] == 1
    assert w.polled_wait_s == TABLE.exec_time(600, 0)


def test_our_request_that_ends_after_the_poll_is_not_counted_by_it() -> None:
    """The poll counted our running request; it finishes right after the answer came: the
    instance is idle at once (it looked busy until the next poll, which made an eager router
    move a conversation off its idle holder: test_router_colocated's sticky-turns test)."""
    w = _worker()
    w.inflight = 1
    _poll(w, {"num_running_reqs": 1, "num_waiting_reqs": 0,
              "num_waiting_uncached_tokens": 0, "token_usage": 0.1}, lambda: None)
    assert w.load().requests == 1  # ours, counted once
    w.finished()
    assert w.load().requests == 0
    # Another client's request the poll saw still counts, beside ours.
    w.inflight = 1
    _poll(w, {"num_running_reqs": 2, "num_waiting_reqs": 0,
              "num_waiting_uncached_tokens": 0, "token_usage": 0.1}, lambda: None)
    w.inflight = 2  # and one more of ours routed since
    assert w.load().requests == 3
