"""The router's event feed against bad and forged event frames: real in-process MemPools publish
real events over ZMQ, a forger publishes under their topic from its own PUB socket. Garbage is
dropped and counted, never stops the feed; with a secret, unsigned and wrongly signed messages
are dropped and counted and the feed resyncs from a (signed) snapshot; the mirror equals the
pool's tree afterwards. Without a secret the two-frame format is unchanged."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))
from test_feed import PS, caught_up, churn, exact, make_pool, run_feed, until  # noqa: E402

from memserve_router.feed import EventFeed  # noqa: E402
from memserve_router.trees import GlobalTree  # noqa: E402
from sglang_memserve.mempool import MemPool  # noqa: E402
from sglang_memserve.mempool.auth import SECRET_ENV, ControlAuth  # noqa: E402
from sglang_memserve.mempool.events import EventFrameError, open_frames, topic_of  # noqa: E402

SECRET = b"event-stream-secret-0123456789"


class Forger:
    """A PUB socket of its own that the feed follows (as the events endpoint of a decoy
    instance), publishing frames under another instance's topic."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _fake_next(pool: MemPool) -> bytes:
    """A well-formed message the pool did not send: the next seq, storing pages it lacks."""
    from sglang_memserve.mempool.events import stored_event

    ev = stored_event("device", 0, [[7] * PS], [0])
    return orjson.dumps({"v": 2, "instance": pool.instance_id, "epoch": pool.events.epoch,
                         "seq": pool.events.seq + 1, "ts": 0.0, "events": [ev]})


def _follow(feed: EventFeed, gt: GlobalTree, pool: MemPool, forger: Forger) -> None:
    info = pool.member_info()
    feed.add(pool.instance_id, gt, info.event_endpoint, info.control_endpoint)
    # The decoy makes the feed's SUB socket connect to the forger; its own snapshots fail.
    feed.add("decoy", GlobalTree(PS), forger.endpoint, "tcp://127.0.0.1:1")


def _scenario(body: Callable[[EventFeed, MemPool, Forger, GlobalTree], Awaitable[None]],
              **feed_kw) -> None:
    pool = make_pool("p")
    forger = Forger()
    gt = GlobalTree(PS)

    async def run(feed: EventFeed) -> None:
        _follow(feed, gt, pool, forger)
        await until(lambda: feed.is_synced("p"))
        await asyncio.sleep(0.3)  # ZMQ slow joiner
        await body(feed, pool, forger, gt)

    try:
        run_feed(run, **feed_kw)
    finally:
        pool.close()
        forger.close()


async def _settle(feed: EventFeed, pool: MemPool, gt: GlobalTree, rng: random.Random) -> None:
    churn(pool, rng, 30, [])
    await until(caught_up(feed, pool))
    assert exact(gt, pool)


def test_garbage_frames_are_dropped_and_counted() -> None:
    rng = random.Random(3)

    async def body(feed: EventFeed, pool: MemPool, forger: Forger, gt: GlobalTree) -> None:
        await _settle(feed, pool, gt, rng)
        topic = topic_of("p")
        seq = pool.events.seq
        garbage = [
            [topic],                                        # one frame
            [topic, b"x", b"y", b"z"],                      # four frames
            [topic, b"\xff\xfe not json"],
            [topic, b"[1, 2, 3]"],                          # JSON, not an object
            [topic, b'"text"'],
            [topic, orjson.dumps({"v": 2, "epoch": pool.events.epoch})],  # no seq
            [topic, orjson.dumps({"v": 2, "epoch": pool.events.epoch, "seq": "many",
                                  "events": []})],
            [topic, orjson.dumps({"v": 2, "epoch": pool.events.epoch, "seq": seq + 1,
                                  "events": 5})],            # events not a list
            [topic, orjson.dumps({"v": 2, "epoch": pool.events.epoch, "seq": seq + 1,
                                  "events": [{"type": "stored", "tier": "device",
                                              "parent": "root", "pages": [["a"]]}]})],
            [topic, b"\0" * (2 << 20)],                     # over max_message_bytes
        ]
        for frames in garbage:
            forger.send(frames)
        await until(lambda: feed.stats()["p"].malformed >= len(garbage) - 1)
        await _settle(feed, pool, gt, rng)  # still following, still exact
        st = feed.stats()["p"]
        assert st.resyncs >= 2 and st.forged == 0

    _scenario(body, max_message_bytes=1 << 20)


def test_signed_stream_drops_unsigned_and_forged_then_resyncs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's publisher and control server take the secret from the environment.
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    rng = random.Random(4)
    auth = ControlAuth(SECRET)
    wrong = ControlAuth(b"not-the-secret-but-long-enough")

    async def body(feed: EventFeed, pool: MemPool, forger: Forger, gt: GlobalTree) -> None:
        assert pool.events.auth is not None
        await _settle(feed, pool, gt, rng)  # signed messages are applied
        st = feed.stats()["p"]
        assert st.forged == 0 and st.events > 0
        topic = topic_of("p")
        resyncs = st.resyncs
        raw = _fake_next(pool)
        forger.send([topic, raw])                                    # unsigned
        await until(lambda: feed.stats()["p"].forged == 1)
        forger.send([topic, raw, wrong.event_mac(topic, raw)])       # another secret
        await until(lambda: feed.stats()["p"].forged == 2)
        forger.send([topic, raw + b" ", auth.event_mac(topic, raw)])  # altered payload
        forger.send([topic, raw, b"MSE1" + b"\0" * 8])               # malformed MAC
        await until(lambda: feed.stats()["p"].forged == 4)
        await until(lambda: feed.stats()["p"].resyncs > resyncs and feed.is_synced("p"))
        assert gt.match([7] * PS).get("p") is None  # the forged pages never landed
        await _settle(feed, pool, gt, rng)
        assert "bad event MAC" in feed.stats()["p"].last_error or \
            "event" in feed.stats()["p"].last_error

    _scenario(body, auth=auth)


def test_unsigned_format_unchanged_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("MEMSERVE_SECRET_FILE", raising=False)
    pool = make_pool("u")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pool.member_info().event_endpoint)
    try:
        assert pool.events.auth is None
        frames: list[bytes] = []
        for _ in range(50):  # slow joiner: publish until one arrives
            churn(pool, random.Random(5), 5, [])
            if sub.poll(100):
                frames = sub.recv_multipart()
                break
        assert len(frames) == 2 and frames[0] == topic_of("u")
        assert orjson.loads(frames[1])["v"] == 2
    finally:
        sub.close(0)
        ctx.term()
        pool.close()


def test_open_frames() -> None:
    auth = ControlAuth(SECRET)
    t, p = b"kv.a", b"{}"
    assert open_frames([t, p], None) == (t, p)
    assert open_frames([t, p, b"ignored"], None) == (t, p)
    assert open_frames([t, p, auth.event_mac(t, p)], auth) == (t, p)
    with pytest.raises(EventFrameError):
        open_frames([t], auth)
    from sglang_memserve.mempool.auth import AuthError

    with pytest.raises(AuthError, match="unsigned"):
        open_frames([t, p], auth)
    with pytest.raises(AuthError, match="bad event MAC"):
        open_frames([b"kv.b", p, auth.event_mac(t, p)], auth)  # another instance's topic
