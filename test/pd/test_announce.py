"""Decode -> prefill returns announced before they are prepared (``cache/announce.py``) and
prefill's hold waiting for them (``PeerService.gate``): units, with a real control channel for
the announcer and fakes for SGLang's tree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sglang_memserve.cache import peer as peer_mod
from sglang_memserve.cache.announce import MAX_ANNOUNCED, Announcements, Announcer
from sglang_memserve.cache.peer import PeerService, PeerStats
from sglang_memserve.mempool.errors import InvalidRequest
from sglang_memserve.mempool.protocol import Peer, Reservation
from sglang_memserve.mempool.rpc import RpcServer

PS = 4
PROMPT = list(range(100, 108))            # two pages prefill computed itself
ANSWER = list(range(200, 208))            # two pages only decode has
FOLLOW = [9, 9, 9, 9, 9]                  # the next user message


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_announced_return_covers_the_next_turn_until_it_ends() -> None:
    ann = Announcements(clock=Clock())
    assert ann.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]}) == {"announced": 1}
    turn2 = PROMPT + ANSWER + FOLLOW
    assert len(ann) == 1
    assert ann.covers(turn2, have=len(PROMPT), page_size=PS)
    # Another conversation sharing only what the tree has already is not held.
    assert not ann.covers(PROMPT + [1, 2, 3, 4, 5], have=len(PROMPT), page_size=PS)
    # Nothing beyond what the tree holds: nothing to wait for.
    assert not ann.covers(turn2, have=len(PROMPT + ANSWER), page_size=PS)
    ann.end(["a1", "unknown", 7])
    assert len(ann) == 0 and not ann.covers(turn2, have=len(PROMPT), page_size=PS)


def test_an_announcement_nobody_prepares_expires() -> None:
    clock = Clock()
    ann = Announcements(ttl_s=2.0, clock=clock)
    ann.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]})
    clock.now += 1.9
    assert ann.covers(PROMPT + ANSWER, have=len(PROMPT), page_size=PS)
    clock.now += 0.2
    assert not ann.covers(PROMPT + ANSWER, have=len(PROMPT), page_size=PS)
    assert len(ann) == 0


@pytest.mark.parametrize("msg", [
    {}, {"items": []}, {"items": "x"}, {"items": [5]},
    {"items": [{"ann": "", "tokens": [1]}]}, {"items": [{"ann": "x" * 65, "tokens": [1]}]},
    {"items": [{"ann": "a", "tokens": [1, "2"]}]}, {"items": [{"ann": "a", "tokens": [1.5]}]},
    {"items": [{"ann": "a", "tokens": [1]}, {"ann": 3, "tokens": [1]}]},
])
def test_malformed_announcements_are_refused_and_add_nothing(msg: dict) -> None:
    ann = Announcements()
    with pytest.raises(InvalidRequest):
        ann.add(msg)
    assert len(ann) == 0 and ann.received == 0


def test_the_table_is_bounded() -> None:
    ann = Announcements()
    ann.add({"items": [{"ann": f"a{i}", "tokens": [i]} for i in range(MAX_ANNOUNCED)]})
    with pytest.raises(InvalidRequest, match="announced"):
        ann.add({"items": [{"ann": "one-more", "tokens": [1]}]})
    assert len(ann) == MAX_ANNOUNCED


def _wait(pred, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_announcer_delivers_over_the_control_channel_and_counts_failures() -> None:
    table = Announcements()
    srv = RpcServer("prefill", "127.0.0.1", 0, {"kv_announce": table.add}, auth=None)
    old = RpcServer("old-prefill", "127.0.0.1", 0, {}, auth=None)  # no kv_announce op
    try:
        announcer = Announcer(lambda dst, msg: Peer(dst, 5.0).call(msg))
        announcer.announce(srv.endpoint, "a1", PROMPT + ANSWER)
        announcer.announce(srv.endpoint, "a2", PROMPT)
        _wait(lambda: announcer.sent == 2)
        assert table.received == 2
        assert table.covers(PROMPT + ANSWER, have=len(PROMPT), page_size=PS)
        announcer.announce(old.endpoint, "a3", PROMPT)
        _wait(lambda: announcer.failed == 1)
        assert announcer.sent == 2
    finally:
        srv.close()
        old.close()


# ---- the hold (PeerService.gate) over fakes of SGLang's tree and the transaction table -------


@dataclass
class Req:
    origin_input_ids: list[int]


@dataclass
class Incoming:
    res: dict[str, Reservation] = field(default_factory=dict)
    prepared: list[list[dict]] = field(default_factory=list)

    def pending(self) -> int:
        return len(self.res)

    def reservations(self) -> Any:
        return iter(self.res.items())

    def prepare_batch(self, items: list[dict]) -> list[dict]:
        self.prepared.append(items)
        return [{"pages": []} for _ in items]


@dataclass
class Tree:
    """What the destination's tree holds: the matched prefix is the longest one listed."""
    page_size: int = PS
    held: list[list[int]] = field(default_factory=list)

    def match(self, tokens: list[int]) -> int:
        return max((len(h) for h in self.held if tokens[: len(h)] == h), default=0)


class Bridge:
    def call(self, fn, _timeout_s):
        return fn()


def make_service(monkeypatch: pytest.MonkeyPatch, hold_s: float = 5.0
                 ) -> tuple[PeerService, Tree, Incoming]:
    tree, incoming = Tree(held=[PROMPT]), Incoming()
    monkeypatch.setattr(peer_mod, "match_device", lambda cache, ids: (cache.match(ids), None, None))
    svc = object.__new__(PeerService)  # only what the hold reads: no Mooncake, no threads
    svc.cache, svc.incoming, svc.announced = tree, incoming, Announcements()
    svc.bridge, svc.timeout_s, svc.hold_s = Bridge(), 5.0, hold_s
    svc.stats, svc._held = PeerStats(), []
    return svc, tree, incoming


def test_a_turn_waits_for_its_announced_return_through_prepare_and_commit(monkeypatch) -> None:
    svc, tree, incoming = make_service(monkeypatch)
    svc.announced.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]})
    turn2 = Req(PROMPT + ANSWER + FOLLOW)
    # Announced, not yet prepared: the old hold (prepared returns only) let turn 2 through.
    assert svc.gate([turn2]) == []
    assert svc.held() == 1
    # The prepare is served (the announcement ends in the same visit): still held.
    out = svc._on_prepare_batch({"items": [{"txn": "t1", "tokens": PROMPT + ANSWER,
                                            "ann": "a1"}]})
    assert out == {"items": [{"pages": []}]} and len(svc.announced) == 0
    incoming.res["t1"] = Reservation(PROMPT + ANSWER, "device", len(PROMPT), [7, 8], None)
    assert svc.gate([]) == []
    # Committed: the tree holds the answer now, the turn goes on and hits it.
    del incoming.res["t1"]
    tree.held.append(PROMPT + ANSWER)
    assert svc.gate([]) == [turn2]
    assert (svc.stats.held_requests, svc.stats.hold_timeouts) == (1, 0)


def test_a_hold_on_an_announcement_ends_at_its_bound(monkeypatch) -> None:
    svc, _tree, _incoming = make_service(monkeypatch, hold_s=0.0)
    svc.announced.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]})
    turn2 = Req(PROMPT + ANSWER + FOLLOW)
    assert svc.gate([turn2]) == []
    assert svc.gate([]) == [turn2]
    assert (svc.stats.held_requests, svc.stats.hold_timeouts) == (1, 1)


def test_a_failed_prepare_ends_its_announcement_and_the_hold(monkeypatch) -> None:
    svc, _tree, incoming = make_service(monkeypatch)

    def refuse(items: list[dict]) -> list[dict]:
        raise RuntimeError("scheduler gone")

    incoming.prepare_batch = refuse  # type: ignore[method-assign]
    svc.announced.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]})
    turn2 = Req(PROMPT + ANSWER + FOLLOW)
    assert svc.gate([turn2]) == []
    with pytest.raises(RuntimeError):
        svc._on_prepare_batch({"items": [{"txn": "t1", "tokens": PROMPT + ANSWER, "ann": "a1"}]})
    assert svc.gate([]) == [turn2]
    assert svc.stats.hold_timeouts == 0


def test_no_returns_in_flight_costs_no_tree_match(monkeypatch) -> None:
    svc, _tree, _incoming = make_service(monkeypatch)
    monkeypatch.setattr(peer_mod, "match_device", lambda *a: pytest.fail("matched"))
    reqs = [Req(PROMPT + FOLLOW)]
    assert svc.gate(reqs) is reqs


def test_no_hold_while_other_prompts_would_run(monkeypatch) -> None:
    """Beside other prompts the hold would last a whole forward pass: the turn goes now."""
    svc, _tree, _incoming = make_service(monkeypatch)
    svc.announced.add({"items": [{"ann": "a1", "tokens": PROMPT + ANSWER}]})
    turn2, other = Req(PROMPT + ANSWER + FOLLOW), Req(PROMPT + [1, 2, 3, 4, 5])
    assert svc.gate([turn2, other]) == [other, turn2]
    assert svc.gate([turn2], waiting=1) == [turn2]
    # Held while prefill idles, let go as soon as another prompt arrives.
    assert svc.gate([turn2]) == [] and svc.held() == 1
    assert svc.gate([other]) == [other, turn2] and svc.held() == 0
    assert (svc.stats.held_requests, svc.stats.holds_skipped_busy) == (1, 3)
