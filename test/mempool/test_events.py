"""KV events: a mirror fed by the event stream equals the pool's tree; gaps resync."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from sglang_memserve.mempool import (
    EVENT_FORMAT_VERSION,
    DetachedEngine,
    EngineMemPool,
    EventApplier,
    EventFormatError,
    EventPublisher,
    MemPool,
    MemPoolConfig,
    NeedResync,
    RadixTree,
    TreeMirror,
    chainhash,
    make_tensor_tier,
)
from sglang_memserve.mempool.capture import CapturingPublisher
from sglang_memserve.mempool.chainhash import SEED, chain, page_hash
from sglang_memserve.mempool.churn import churn as random_churn
from sglang_memserve.mempool.events import HashCollision, HashMismatch, RadixSink, UnknownParent

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
    random_churn(pool, rng, steps, max_pages=6, resize=(16, 33))


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
        assert ev["type"] == "stored" and ev["tier"] == "device" and ev["parent"] == SEED
        assert ev["pages"] == [list(range(PS)), list(range(PS, 2 * PS))]
        assert ev["hash"] == chain(SEED, [tuple(range(PS)), tuple(range(PS, 2 * PS))])[-1]
        assert ev["ids"] == pages and "skip" not in ev
        # The next turn carries only its new page, under its parent's hash.
        r = pool.insert(list(range(3 * PS)), pool.alloc_mem(3))
        pool.free_mem(r.duplicates)
        assert m._sock.poll(2000)
        (ev2,) = orjson.loads(m._sock.recv_multipart()[1])["events"]
        assert ev2["parent"] == ev["hash"] and ev2["pages"] == [list(range(2 * PS, 3 * PS))]
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


# ---- format v2: hashes, verification, exactness (no sockets: messages captured in-process) ----


Captured = CapturingPublisher



def follow(pool: MemPool) -> tuple[EventApplier, RadixTree]:
    tree = RadixTree(PS, allow_empty=True)
    a = EventApplier(pool.instance_id, RadixSink(tree))
    a.load_snapshot(pool.snapshot())
    return a, tree


def replay(a: EventApplier, pool: MemPool) -> None:
    for msg in pool.events.messages:
        a.apply_message(msg)
    pool.events.messages.clear()


def tree_pages(tree: RadixTree) -> int:
    return sum(len(n.pages) for n in tree.nodes())


def test_v2_mirror_exact_after_random_workloads():
    pool = MemPool(MemPoolConfig(page_size=PS), "p", {
        "device": make_tensor_tier("device", 32, PS, page_nbytes=16),
        "host": make_tensor_tier("host", 64, PS, page_nbytes=16)}, events=Captured("p"))
    a, tree = follow(pool)
    rng = random.Random(7)
    for _ in range(20):
        churn(pool, rng, 40)
        replay(a, pool)
        assert tree.flatten() == expected(pool)
        assert len(a.index) == tree_pages(pool.tree)  # the hash index is the pool's tree
        tree.check()
        pool.tree.check()  # includes: every node's cached chain hashes are right
    b, tree_b = follow(pool)  # a snapshot rebuilds the same view
    assert tree_b.flatten() == tree.flatten() and len(b.index) == len(a.index)


def test_v2_engine_pool_with_location_less_ancestors():
    """EngineMemPool reports runs whose ancestors it never stored: their pages travel once
    (``skip``), so the mirror can name them later by hash."""
    pool = EngineMemPool(MemPoolConfig(page_size=PS), "e",
                         {"device": make_tensor_tier("device", 256, PS, page_nbytes=8),
                          "host": make_tensor_tier("host", 256, PS, page_nbytes=8)},
                         DetachedEngine(), events=Captured("e"))
    a, tree = follow(pool)
    rng = random.Random(3)
    held: list = []
    ids = iter(range(10**6))
    for step in range(600):
        path = [tuple(rng.randrange(2) for _ in range(PS)) for _ in range(rng.randrange(1, 7))]
        start = rng.randrange(len(path))
        tier = rng.choice(["device", "host"])
        if rng.random() < 0.6:
            pool.placed(path, start, tier, [next(ids) for _ in path[start:]])
            held.append((path, start, tier))
        elif held:
            p, s, t = held.pop(rng.randrange(len(held)))
            pool.dropped(p, rng.randrange(len(p)) if rng.random() < 0.3 else s, t)
        else:
            pool.dropped(path, start, tier)  # absent: publishes nothing
        if step % 50 == 0:
            replay(a, pool)
            assert tree.flatten() == expected(pool)
            assert len(a.index) == tree_pages(pool.tree)
    replay(a, pool)
    assert tree.flatten() == expected(pool)
    pool.tree.check()
    # The same run reported by parent hash instead of full path publishes the same event.
    path = [(5,) * PS, (6,) * PS, (7,) * PS]
    pool.placed(path[:2], 0, "device", [-1, -2])
    pool.placed_after(chain(SEED, path[:2])[-1], path[2:], "device", [-3])
    by_hash = pool.events.messages[-1]
    pool.placed(path, 2, "device", [-3])
    assert pool.events.messages[-1]["events"] == by_hash["events"]
    pool.dropped_after(SEED, path, "host")  # not held in host: changes nothing in the mirror
    replay(a, pool)
    assert tree.flatten() == expected(pool)
    with pytest.raises(KeyError):
        pool.placed_after(12345, path, "device", [1, 2, 3])


def test_hash_mismatch_and_unknown_parent_resync(pool):
    m = mirror_of(pool)
    try:
        m.resync()
        seq = pool.events.seq
        pool.insert(list(range(2 * PS)), pool.alloc_mem(2))
        good = {"v": EVENT_FORMAT_VERSION, "instance": "inst-a", "epoch": pool.events.epoch,
                "seq": seq + 1, "events": [
                    {"type": "stored", "tier": "device", "parent": SEED,
                     "pages": [list(range(PS)), list(range(PS, 2 * PS))], "hash": 12345,
                     "ids": [0, 1]}]}
        with pytest.raises(HashMismatch):
            m.applier.apply_message(good)
        assert m.apply(good) is False  # resynced instead: the snapshot covers seq + 1
        assert m.resyncs == 2 and m.tree.flatten() == expected(pool)
        orphan = {**good, "seq": seq + 2, "events": [
            {"type": "stored", "tier": "device", "parent": 999, "pages": [[7] * PS],
             "hash": page_hash(999, (7,) * PS), "ids": [5]}]}
        with pytest.raises(UnknownParent):
            m.applier.apply_message(orphan)
        pool.insert([9] * PS, pool.alloc_mem(1))  # the real seq + 2
        assert m.apply(orphan) is False
        assert m.resyncs == 3 and m.tree.flatten() == expected(pool)
        with pytest.raises(EventFormatError):  # format v1 is refused
            m.applier.apply_message({**good, "v": 1})
    finally:
        m.close()


def test_hash_collision_is_detected_never_applied(monkeypatch):
    # A 2-bit hash: different pages collide all the time.
    monkeypatch.setattr(chainhash, "_digest", lambda parent, data: (parent ^ sum(data)) & 3)
    pool = MemPool(MemPoolConfig(page_size=PS), "c", {
        "device": make_tensor_tier("device", 64, PS, page_nbytes=8)}, events=Captured("c"))
    a, tree = follow(pool)
    rng = random.Random(5)
    detected = 0
    for _ in range(30):
        toks = [rng.randrange(50) for _ in range(rng.randrange(1, 4) * PS)]
        r = pool.insert(toks, pool.alloc_mem(len(toks) // PS))
        pool.free_mem(r.duplicates)
        try:
            replay(a, pool)
        except NeedResync as e:
            detected += isinstance(e, HashCollision)
            pool.events.messages.clear()
            try:
                a.load_snapshot(pool.snapshot())  # the resync meets the collision too
            except HashCollision:
                assert tree.flatten() == {}  # an instance that cannot be mirrored holds nothing
        # Whatever was applied is exact: never a page held under other tokens.
        mine = tree.flatten()
        want = expected(pool)
        assert all(want.get(path) == locs for path, locs in mine.items())
    assert detected > 0
