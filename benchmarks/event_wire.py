"""KV event cost: bytes per stored page on the wire (format v1 vs v2), and pages per second one
router feed applies.

Wire: one conversation growing by 256-token turns to 4,096 tokens; each turn's prompt is
indexed in a MemPool (what SGLang reports after prefill), and every resulting change is encoded
as v1 (the whole page path from the root in every ``stored`` event) and as v2 (parent hash + new
pages only). Apply: a stream of v2 messages (many interleaved conversations, with evictions)
decoded and applied by an ``EventApplier`` into a ``GlobalTree`` (hash verification included;
ZMQ excluded).

    .venv/bin/python benchmarks/event_wire.py [--conversations 64]
"""

from __future__ import annotations

import argparse
import random
import time

import orjson

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
    return len(msgs), a.pages_applied, a.pages_applied / dt


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
    n, pages, rate = apply_rate(args.conversations, rng)
    print(f"\napply (decode + verify + GlobalTree), page size 16: {n} messages, {pages} pages "
          f"(stored + removed): {rate:,.0f} pages/s")


if __name__ == "__main__":
    main()
