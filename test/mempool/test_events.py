"""KV events: a mirror fed by the event stream equals the pool's tree; gaps resync."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from sglang_memserve.mempool import (
    EVENT_FORMAT_VERSION,
    EventPublisher,
    MemPool,
    MemPoolConfig,
    TreeMirror,
    make_tensor_tier,
)

PS = 4


@pytest.fixture
def pool():
    p = MemPool(
        MemPoolConfig(page_size=PS),
        "inst-a",
        {
            "device": make_tensor_tier("device", 32, PS, page_nbytes=16),
            "host": make_tensor_tier("host", 64, PS, page_nbytes=16),
        },
        events=EventPublisher("inst-a"),
    )
    p.serve()
    yield p
    p.close()


def mirror_of(pool: MemPool) -> TreeMirror:
    info = pool.member_info()
    return TreeMirror(pool.instance_id, info.event_endpoint, info.control_endpoint, PS)


def expected(pool: MemPool) -> dict:
    return {
        path: {(pool.instance_id, t): pid for t, pid in locs.items()}
        for path, locs in pool.tree.flatten().items()
    }


def drain(m: TreeMirror, pool: MemPool) -> None:
    for _ in range(50):
        m.poll(0.05)
        if m.last_seq == pool.events.seq:
            return
    raise AssertionError(f"mirror at {m.last_seq}, pool at {pool.events.seq}")


def churn(pool: MemPool, rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        op = rng.random()
        toks = [rng.randrange(3) for _ in range(rng.randrange(0, 6) * PS)]
        if op < 0.5:
            tier = rng.choice(["device", "host"])
            n = len(toks) // PS
            try:
                pages = pool.alloc_mem(n, tier)
            except Exception:
                continue
            r = pool.insert(toks, pages, tier)
            pool.free_mem(r.duplicates, tier)
        elif op < 0.65:
            pool.delete(toks)
        elif op < 0.8:
            pool.evict(rng.randrange(1, 4), rng.choice(["device", "host"]))
        elif op < 0.9:
            try:
                pool.replicate(toks)
            except Exception:
                pass
        elif op < 0.95:
            pool.resize("device", rng.randrange(16, 33))
        else:
            pool.clear()


def test_event_stream_replay_equals_pool_tree(pool):
    m = mirror_of(pool)
    try:
        m.resync()  # start from a snapshot (empty), then follow the stream
        churn(pool, random.Random(1), 300)
        drain(m, pool)
        assert m.tree.flatten() == expected(pool)
        # 1, or 2 if the first messages beat the subscription (ZMQ slow joiner): a gap.
        assert m.resyncs in (1, 2)
    finally:
        m.close()


def test_event_format(pool):
    m = mirror_of(pool)
    try:
        m.resync()
        time.sleep(0.3)  # let the subscription reach the publisher (ZMQ slow joiner)
        pages = pool.alloc_mem(2)
        pool.insert(list(range(2 * PS)), pages)
        assert m._sock.poll(2000)
        topic, raw = m._sock.recv_multipart()
        msg = orjson.loads(raw)
        assert topic == b"kv.inst-a"
        assert msg["v"] == EVENT_FORMAT_VERSION and msg["instance"] == "inst-a"
        assert msg["seq"] == 1
        (ev,) = msg["events"]
        assert ev["type"] == "stored" and ev["tier"] == "device" and ev["start"] == 0
        assert ev["path"] == [list(range(PS)), list(range(PS, 2 * PS))]
        assert ev["ids"] == pages
    finally:
        m.close()


def test_gap_triggers_snapshot_resync(pool):
    m = mirror_of(pool)
    fresh = iter(range(100, 10_000))

    def one_message():
        pool.insert([next(fresh)] * PS, pool.alloc_mem(1))

    try:
        churn(pool, random.Random(2), 50)
        time.sleep(0.3)  # let the subscription reach the publisher (ZMQ slow joiner)
        one_message()  # late joiner: first message far past seq 1 -> snapshot
        drain(m, pool)
        assert m.resyncs == 1
        assert m.tree.flatten() == expected(pool)
        one_message()
        one_message()
        while m._sock.poll(300):  # simulated loss: drop them on the floor
            m._sock.recv_multipart()
        one_message()
        drain(m, pool)
        assert m.resyncs == 2
        assert m.tree.flatten() == expected(pool)
    finally:
        m.close()


def test_two_instances_share_one_mirror_tree():
    pools = []
    try:
        for name in ("a", "b"):
            p = MemPool(
                MemPoolConfig(page_size=PS),
                name,
                {"device": make_tensor_tier("device", 16, PS, page_nbytes=8)},
                events=EventPublisher(name),
            )
            p.serve()
            pools.append(p)
        first = mirror_of(pools[0])
        info = pools[1].member_info()
        second = TreeMirror("b", info.event_endpoint, info.control_endpoint, PS, tree=first.tree)
        first.resync()
        second.resync()
        shared = list(range(2 * PS))
        for p in pools:
            p.insert(shared, p.alloc_mem(2))

        drain(first, pools[0])
        drain(second, pools[1])
        flat = first.tree.flatten()
        assert set(flat[tuple(first.tree.to_pages(shared))]) == {("a", "device"), ("b", "device")}
        second.close()
        first.close()
    finally:
        for p in pools:
            p.close()
