"""The event loop runs callbacks in time order, ties in scheduling order, never backwards."""

from __future__ import annotations

import pytest

from sglang_memserve.sim import EventLoop


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    loop = EventLoop()
    seen: list[tuple[float, str]] = []
    for when, name in [(3.0, "c"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"), (0.0, "z")]:
        loop.at(when, lambda n=name: seen.append((loop.now, n)))
    loop.run()
    assert seen == [(0.0, "z"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"), (3.0, "c")]
    assert loop.processed == 5 and len(loop) == 0


def test_callbacks_schedule_later_events_and_run_until_stops() -> None:
    loop = EventLoop()
    seen: list[float] = []

    def tick(k: int) -> None:
        seen.append(loop.now)
        if k:
            loop.after(0.5, tick, k - 1)

    loop.at(1.0, tick, 4)
    loop.run(until=2.0)
    assert seen == [1.0, 1.5, 2.0]
    loop.run()
    assert seen == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_an_event_in_the_past_is_refused() -> None:
    loop = EventLoop()
    loop.at(5.0, lambda: loop.at(4.0, lambda: None))
    with pytest.raises(ValueError, match="before now"):
        loop.run()
