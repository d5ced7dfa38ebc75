"""The router's hold for in-flight prefills (memserve_router.inflight), without processes."""

from __future__ import annotations

import asyncio

from memserve_router.inflight import InFlight, extends
from memserve_router.trees import GlobalTree

PS = 4


def test_extends_needs_a_whole_page_past_what_was_held() -> None:
    prefix = list(range(20))
    assert extends(prefix[:12] + [99], prefix, 8, PS) == 12
    assert extends(prefix[:11], prefix, 8, PS) == 0  # not a whole page past
    assert extends(prefix[:8] + [7, 9, 10, 11], prefix, 8, PS) == 0  # differs past held
    assert extends([5] + prefix[1:16], prefix, 8, PS) == 0  # differs inside held
    assert extends(prefix, prefix[:8], 8, PS) == 0  # nothing in flight past held


def test_a_request_waits_until_the_events_confirm_the_prefix() -> None:
    tree = GlobalTree(PS, "colocated")
    first = list(range(16))
    second = first + [50, 51, 52, 53]

    async def main() -> None:
        inflight = InFlight(hold_s=5.0)
        a, held = await inflight.enter("i0", first, 0, PS, lambda k: 0)
        assert held is None  # nothing in flight before it
        waiter = asyncio.create_task(inflight.enter(
            "i0", second, 16, PS, lambda k: tree.held_tokens("i0", second[:k])))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the first request's prefill has not stored its prefix
        path = tree.tree.to_pages(first)
        tree.stored("i0", path, 0, "device", range(len(path)))
        b, hold = await asyncio.wait_for(waiter, 1.0)
        assert hold is not None and hold.outcome == "stored" and hold.tokens == 16
        assert hold.seconds >= 0.04
        assert not a.done.is_set()  # confirmed before it ended: only the waiter moved on
        inflight.ended(a)
        inflight.ended(b)
        assert inflight.waiting_on("i0", second, PS) == []

    asyncio.run(main())


def test_ended_prefill_releases_and_other_instances_or_prompts_do_not_wait() -> None:
    first = list(range(16))

    async def main() -> None:
        inflight = InFlight(hold_s=5.0)
        a, _ = await inflight.enter("i0", first, 0, PS, lambda k: 0)
        # Another instance, or a prompt that shares nothing past what was held: no wait.
        _, h1 = await inflight.enter("i1", first, 0, PS, lambda k: 0)
        _, h2 = await inflight.enter("i0", [9, 9, 9, 9, 9], 0, PS, lambda k: 0)
        assert h1 is None and h2 is None
        waiter = asyncio.create_task(inflight.enter("i0", first + [1], 0, PS, lambda k: 0))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        inflight.ended(a)  # e.g. it failed: the waiter goes on (and computes the prefix)
        _, hold = await asyncio.wait_for(waiter, 1.0)
        assert hold is not None and hold.outcome == "ended" and hold.tokens == 16
        inflight.ended(a)  # idempotent

    asyncio.run(main())


def test_the_hold_is_bounded_and_zero_disables_it() -> None:
    first = list(range(16))

    async def main() -> None:
        bounded = InFlight(hold_s=0.05)
        await bounded.enter("i0", first, 0, PS, lambda k: 0)
        _, hold = await asyncio.wait_for(bounded.enter("i0", first, 0, PS, lambda k: 0), 1.0)
        assert hold is not None and hold.outcome == "timeout" and 0.04 <= hold.seconds < 0.5
        off = InFlight(hold_s=0.0)
        await off.enter("i0", first, 0, PS, lambda k: 0)
        _, none = await off.enter("i0", first, 0, PS, lambda k: 0)
        assert none is None

    asyncio.run(main())


def test_held_tokens_counts_only_what_events_confirmed() -> None:
    tree = GlobalTree(PS, "colocated")
    toks = list(range(12))
    tree.predict("i0", toks, ttl_s=60.0, now=0.0)
    assert tree.held_tokens("i0", toks) == 0  # a prediction is not a confirmation
    path = tree.tree.to_pages(toks[:8])
    tree.stored("i0", path, 0, "host", range(2))
    assert tree.held_tokens("i0", toks) == 8
    assert tree.held_tokens("i1", toks) == 0
