"""EventFeed: real in-process MemPools publish real events over ZMQ; the router's GlobalTree
must equal each pool's own tree after random workloads, forced gaps, a publisher restart and
with several instances sharing prefixes; remove() drops an instance."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from memserve_router.feed import EventFeed
from memserve_router.trees import DEVICE, GlobalTree
from sglang_memserve.mempool import EventPublisher, MemPool, MemPoolConfig, make_tensor_tier
from sglang_memserve.mempool.churn import churn as random_churn

PS = 4


def make_pool(name: str, *, control_port: int = 0, events_port: int = 0,
              sndhwm: int = 100_000) -> MemPool:
    p = MemPool(MemPoolConfig(page_size=PS, control_port=control_port, heartbeat_s=0.2), name, {
        "device": make_tensor_tier("device", 32, PS, page_nbytes=8),
        "host": make_tensor_tier("host", 64, PS, page_nbytes=8)},
        events=EventPublisher(name, port=events_port, sndhwm=sndhwm))
    p.serve()
    return p


def churn(pool: MemPool, rng: random.Random, steps: int, system: list[int]) -> None:
    random_churn(pool, rng, steps, prefix=system)


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def caught_up(feed: EventFeed, pool: MemPool) -> Callable[[], bool]:
    return lambda: (feed.is_synced(pool.instance_id)
                    and feed.last_seq(pool.instance_id) == pool.events.seq)


def exact(gt: GlobalTree, pool: MemPool) -> bool:
    return gt.snapshot_of(pool.instance_id) == pool.tree.flatten()


def run_feed(body: Callable[[EventFeed], Awaitable[None]], **kw) -> None:
    async def main() -> None:
        feed = EventFeed(**kw)
        task = asyncio.create_task(feed.run())
        try:
            await body(feed)
        finally:
            feed.close()
            await asyncio.wait_for(task, 5)
    asyncio.run(main())


def test_feed_mirrors_several_pools_sharing_prefixes():
    pools = [make_pool(n) for n in ("a", "b", "c")]
    gt = GlobalTree(PS, "colocated")
    rng = random.Random(1)
    system = [rng.randrange(3) for _ in range(3 * PS)]

    async def body(feed: EventFeed) -> None:
        for p in pools:
            info = p.member_info()
            feed.add(p.instance_id, gt, info.event_endpoint, info.control_endpoint)
        for p in pools:
            await until(lambda p=p: feed.is_synced(p.instance_id))
        await asyncio.sleep(0.3)  # subscriptions reach the publishers (ZMQ slow joiner)
        for _ in range(10):
            for p in pools:
                churn(p, rng, 30, system)
            await asyncio.sleep(0)
        for p in pools:
            await until(caught_up(feed, p))
            assert exact(gt, p)
        gt.check()
        st = feed.stats()["a"]
        assert st.messages > 0 and st.events >= st.messages and st.pages > 0 and st.bytes > 0
        assert st.resyncs >= 1 and st.errors == 0
        shared = gt.match(system + [0] * PS)
        assert set(shared) <= {"a", "b", "c"}
        feed.remove("b")
        assert gt.snapshot_of("b") == {} and "b" not in gt.instances()
        assert exact(gt, pools[0]) and exact(gt, pools[2])
        gt.check()

    try:
        run_feed(body)
    finally:
        for p in pools:
            p.close()


def test_feed_resyncs_after_gaps():
    pool = make_pool("g", sndhwm=1)
    gt = GlobalTree(PS)
    rng = random.Random(2)

    async def body(feed: EventFeed) -> None:
        info = pool.member_info()
        feed.add("g", gt, info.event_endpoint, info.control_endpoint)
        await until(lambda: feed.is_synced("g"))
        await asyncio.sleep(0.3)
        churn(pool, rng, 40, [])
        await until(caught_up(feed, pool))
        assert exact(gt, pool)
        resyncs = feed.stats()["g"].resyncs
        # A lost message: the publisher's seq skips one.
        pool.events.seq += 1
        churn(pool, rng, 40, [])
        await until(caught_up(feed, pool))
        assert exact(gt, pool)
        st = feed.stats()["g"]
        assert st.gaps >= 1 and st.resyncs > resyncs
        # A burst while the loop does not read (tiny HWMs): whatever ZMQ drops, the feed ends
        # exact (resyncing on the holes it sees).
        for _ in range(20):
            churn(pool, rng, 100, [])
        await until(caught_up(feed, pool))
        assert exact(gt, pool)
        gt.check()

    try:
        run_feed(body, rcvhwm=1)
    finally:
        pool.close()


def test_feed_follows_a_restarted_publisher():
    pool = make_pool("r")
    info = pool.member_info()
    ctl_port = int(info.control_endpoint.rsplit(":", 1)[1])
    ev_port = int(info.event_endpoint.rsplit(":", 1)[1])
    gt = GlobalTree(PS)
    rng = random.Random(3)
    holder = {"pool": pool}

    async def body(feed: EventFeed) -> None:
        feed.add("r", gt, info.event_endpoint, info.control_endpoint)
        await until(lambda: feed.is_synced("r"))
        await asyncio.sleep(0.3)
        churn(pool, rng, 60, [])
        await until(caught_up(feed, pool))
        old_seq = pool.events.seq
        assert old_seq > 3 and gt.snapshot_of("r")
        pool.close()  # the instance restarts on the same endpoints: seq back to 1, new epoch
        fresh = make_pool("r", control_port=ctl_port, events_port=ev_port)
        holder["pool"] = fresh
        await asyncio.sleep(0.5)  # ZMQ reconnects the SUB socket
        fresh.insert(list(range(2 * PS)), fresh.alloc_mem(2))
        await until(lambda: feed.is_synced("r") and feed.stats()["r"].restarts >= 1
                    and feed.last_seq("r") == fresh.events.seq)
        assert exact(gt, fresh)
        churn(fresh, rng, 60, [])
        await until(caught_up(feed, fresh))
        assert exact(gt, fresh)
        gt.check()

    try:
        run_feed(body)
    finally:
        holder["pool"].close()


def test_predictions_confirmed_by_real_events():
    pool = make_pool("p")
    gt = GlobalTree(PS)
    prompt = list(range(3 * PS)) + [1]

    async def body(feed: EventFeed) -> None:
        info = pool.member_info()
        feed.add("p", gt, info.event_endpoint, info.control_endpoint)
        await until(lambda: feed.is_synced("p"))
        await asyncio.sleep(0.3)
        assert gt.predict("p", prompt, ttl_s=60) == 3
        assert gt.match(prompt)["p"].tokens == 3 * PS
        pool.insert(prompt[: 2 * PS], pool.alloc_mem(2))  # the instance stored 2 of the 3
        await until(caught_up(feed, pool))
        flat = gt.tree.flatten()
        path = gt.tree.to_pages(prompt)
        assert set(flat[tuple(path[:2])]) == {("p", DEVICE)}  # prediction replaced
        assert ("p", "predicted") in flat[tuple(path)]  # the third page still predicted
        assert gt.expire(time.monotonic() + 61) == 1
        assert gt.match(prompt)["p"].tokens == 2 * PS and exact(gt, pool)

    try:
        run_feed(body)
    finally:
        pool.close()


def test_unreachable_instance_retries_and_can_be_removed():
    pool = make_pool("ok")
    gt = GlobalTree(PS)
    dead = make_pool("dead")
    dead_info = dead.member_info()
    dead.close()  # its endpoints now answer nothing

    async def body(feed: EventFeed) -> None:
        info = pool.member_info()
        feed.add("ok", gt, info.event_endpoint, info.control_endpoint)
        feed.add("dead", gt, dead_info.event_endpoint, dead_info.control_endpoint)
        await until(lambda: feed.is_synced("ok"))
        await until(lambda: feed.stats()["dead"].errors >= 2, timeout_s=15)
        assert not feed.is_synced("dead") and "snapshot failed" in feed.stats()["dead"].last_error
        await asyncio.sleep(0.3)
        churn(pool, random.Random(9), 30, [])
        await until(caught_up(feed, pool))  # the healthy instance is not held up
        assert exact(gt, pool)
        feed.remove("dead")
        assert feed.instances() == ["ok"]
        churn(pool, random.Random(10), 30, [])
        await until(caught_up(feed, pool))
        assert exact(gt, pool)

    try:
        run_feed(body, snapshot_timeout_s=0.3, retry_s=0.1)
    finally:
        pool.close()
