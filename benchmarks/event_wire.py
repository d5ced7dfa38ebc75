"""KV event cost: bytes per stored page on the wire (format v1 vs v2), and pages per second one
router feed applies.

Wire: one conversation growing by 256-token turns to 4,096 tokens; each turn's prompt is
indexed in a MemPool (what SGLang reports after prefill), and every resulting change is encoded
as v1 (the whole page path from the root in every ``stored`` event) and as v2 (parent hash + new
pages only). Apply: a stream of v2 messages (many interleaved conversations, with evictions)
decoded and applied by an ``EventApplier`` into a ``GlobalTree`` (hash verification included;
ZMQ excluded), then the same stream through a real ``EventFeed`` (ZMQ PUB -> SUB on loopback,
sent from a thread).

    .venv/bin/python benchmarks/event_wire.py [--conversations 64]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time

import orjson
import zmq

from memserve_router.feed import EventFeed
from memserve_router.trees import GlobalTree
from sglang_memserve.mempool import (
    EVENT_FORMAT_VERSION,
    EventApplier,
    EventPublisher,
    MemPool,
    MemPoolConfig,
    make_tensor_tier,
)
from sglang_memserve.mempool.events import change_to_event
from sglang_memserve.mempool.radix import Change
from sglang_memserve.mempool.rpc import RpcServer

TOPIC = b"kv.instance-0"


def v1_event(c: Change) -> dict:
    """The format-1 wire form (the code this format replaced)."""
    return {"type": c.kind, "tier": c.loc, "path": [list(p) for p in c.path], "start": c.start,
            "ids": list(c.pages)}


def envelope(v: int, seq: int, events: list[dict]) -> bytes:
    msg = {"v": v, "instance": "instance-0", "seq": seq, "ts": time.time(), "events": events}
    if v == 2:
        msg["epoch"] = "0123456789abcdef"
    return orjson.dumps(msg)


class Meter(EventPublisher):
    """Counts both encodings of every change; keeps the v2 messages. No socket."""

    def __init__(self) -> None:
        self.instance_id, self.epoch, self.seq, self.bytes_sent = "instance-0", "e", 0, 0
        self.endpoint = ""
        self.v1_bytes = self.v2_bytes = self.stored_pages = 0
        self.messages: list[bytes] = []

    def publish_changes(self, changes) -> int:
        changes = list(changes)
        if not changes:
            return self.seq
        self.seq += 1
        self.v1_bytes += len(envelope(1, self.seq, [v1_event(c) for c in changes])) + len(TOPIC)
        raw = envelope(2, self.seq, [change_to_event(c) for c in changes])
        self.v2_bytes += len(raw) + len(TOPIC)
        self.messages.append(raw)
        self.stored_pages += sum(len(c.path) - c.start for c in changes if c.kind == "stored")
        return self.seq

    def publish(self, events) -> int:  # "cleared": not part of this measurement
        return self.seq

    def close(self) -> None:
        pass


def make_pool(page_size: int, pages: int) -> MemPool:
    return MemPool(MemPoolConfig(page_size=page_size), "instance-0",
                   {"device": make_tensor_tier("device", pages, page_size, page_nbytes=8)},
                   events=Meter())


def index(pool: MemPool, tokens: list[int]) -> None:
    n = len(tokens) // pool.config.page_size
    pool.free_mem(pool.insert(tokens, pool.alloc_mem(n)).duplicates)


def wire(page_size: int, rng: random.Random) -> tuple[int, float, float]:
    pool = make_pool(page_size, 8192)
    conv = [rng.randrange(32000) for _ in range(4096)]
    for end in range(256, 4097, 256):
        index(pool, conv[:end])
    m = pool.events
    return m.stored_pages, m.v1_bytes / m.stored_pages, m.v2_bytes / m.stored_pages


def apply_rate(conversations: int, rng: random.Random) -> tuple[int, int, float]:
    pool = make_pool(16, conversations * 96)  # room for ~3/8 of the working set: evictions
    system = [rng.randrange(32000) for _ in range(512)]
    convs = [system + [rng.randrange(32000) for _ in range(4096)] for _ in range(conversations)]
    for end in range(768, 4609, 256):
        for c in convs:
            index(pool, c[:end])
    msgs = pool.events.messages
    gt = GlobalTree(16)
    a = EventApplier("instance-0", gt)
    a.load_snapshot({"v": EVENT_FORMAT_VERSION, "epoch": "e", "seq": 0, "nodes": []})
    t = time.perf_counter()
    for raw in msgs:
        msg = orjson.loads(raw)
        msg["epoch"] = "e"
        a.apply_message(msg)
    dt = time.perf_counter() - t
    assert gt.snapshot_of("instance-0") == pool.tree.flatten()
    return len(msgs), a.pages_applied, a.pages_applied / dt, feed_rate(msgs, pool)


def feed_rate(msgs: list[bytes], pool: MemPool) -> float:
    """Pages/s through a real EventFeed: from the first message sent to the last applied."""
    empty = {"v": EVENT_FORMAT_VERSION, "epoch": "0123456789abcdef", "seq": 0, "nodes": []}
    rpc = RpcServer("instance-0", "127.0.0.1", 0, {"snapshot": lambda m: empty})
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    gt = GlobalTree(16)

    async def main() -> float:
        feed = EventFeed(rcvhwm=0)
        feed.add("instance-0", gt, f"tcp://127.0.0.1:{port}", rpc.endpoint)
        task = asyncio.create_task(feed.run())
        while not feed.is_synced("instance-0"):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the subscription reaches the publisher
        t = time.perf_counter()
        sender = threading.Thread(target=lambda: [pub.send_multipart([TOPIC, m]) for m in msgs])
        sender.start()
        while feed.last_seq("instance-0") != len(msgs):
            await asyncio.sleep(0.001)
        dt = time.perf_counter() - t
        sender.join()
        st = feed.stats()["instance-0"]
        assert st.resyncs == 1 and st.gaps == 0, st
        feed.close()
        await task
        return st.pages / dt

    try:
        rate = asyncio.run(main())
        assert gt.snapshot_of("instance-0") == pool.tree.flatten()
        return rate
    finally:
        pub.close(0)
        ctx.term()
        rpc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=64)
    args = ap.parse_args()
    rng = random.Random(0)
    print("bytes per stored page on the wire: a 4,096-token conversation, 256-token turns")
    print(f"{'page size':>9} {'pages':>6} {'v1 B/page':>10} {'v2 B/page':>10} {'ratio':>6}")
    for ps in (16, 1):
        pages, v1, v2 = wire(ps, rng)
        print(f"{ps:>9} {pages:>6} {v1:>10.1f} {v2:>10.1f} {v1 / v2:>6.1f}")
    n, pages, rate, fed = apply_rate(args.conversations, rng)
    print(f"\napply, page size 16: {n} messages, {pages} pages (stored + removed)")
    print(f"  decode + verify + GlobalTree: {rate:,.0f} pages/s")
    print(f"  through an EventFeed (ZMQ loopback, sender thread in-process): {fed:,.0f} pages/s")


if __name__ == "__main__":
    main()
