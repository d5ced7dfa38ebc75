"""The load order and the few candidates it gives the ``memserve`` policy: over many random
cluster states (real Cluster, GlobalTree, Workers and policy; ties, DRAM parts, unhealthy and
excluded instances, predictions, loads changing between decisions) the policy fed the few
candidates decides exactly what it decides over every member, migrations and rotation included;
and through the router's own decision path (``Router._decide``)."""

from __future__ import annotations

import random

import pytest

from memserve_router.cluster import Cluster
from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.loadindex import BAND_S, SMALL_GROUP
from memserve_router.policies import PolicyConfig, RouteRequest, make_policy
from memserve_router.policies import memserve as memserve_policy
from memserve_router.prompts import Prompt
from memserve_router.server import Router
from memserve_router.trees import DEVICE, HOST
from memserve_router.workers import Worker, WorkerInfo, load_key
from sglang_memserve.gpu.costmodel import load_table

PS = 16
TABLE = load_table("cpu-bench")


_OPEN: list[Cluster] = []


@pytest.fixture(autouse=True)
def _close_feeds():
    """Each Cluster's EventFeed holds a ZMQ context (an I/O thread): close them all, or the
    interpreter hangs at exit."""
    yield
    while _OPEN:
        _OPEN.pop().feed.close()


def new_cluster(config: RouterConfig | None = None) -> Cluster:
    cluster = Cluster(config or RouterConfig(), None, TABLE.exec_time)  # type: ignore[arg-type]
    _OPEN.append(cluster)
    return cluster


def new_worker(wid: str, port: int, kv_tokens: int | None = None) -> Worker:
    return Worker(wid, WorkerSpec(f"http://127.0.0.1:{port}"),
                  WorkerInfo(wid, PS, None, None, None, None, kv_tokens))


def set_random_load(rng: random.Random, w: Worker, calm: bool = False) -> None:
    """Loads from small sets, so that equal scores (ties) are common; ``calm``: mostly idle
    instances (many-way ties, float residue 1e-17 included)."""
    if calm:
        w.polled = {"num_running_reqs": rng.choice([0, 0, 0, 1])}
        w.inflight = rng.choice([0, 0, 1])
        w.pending_s = rng.choice([0.0, 0.0, 1e-17])
        w.polled_wait_s = 0.0
        w.healthy = rng.random() > 0.05
        return
    w.polled = {"num_running_reqs": rng.choice([0, 0, 1, 2, 3]),
                "num_waiting_reqs": rng.choice([0, 0, 0, 1]), "token_usage": rng.random()}
    w.inflight = rng.choice([0, 0, 1, 2, 3, 5])
    w.pending_s = rng.choice([0.0, 0.0, 1e-17, 0.001, 0.002, 0.01, rng.uniform(0, 0.5)])
    w.polled_wait_s = rng.choice([0.0, 0.0, 0.001, rng.uniform(0, 0.2)])
    w.healthy = rng.random() > 0.08


def random_cluster(rng: random.Random) -> tuple[Cluster, list[Worker], list[list[int]]]:
    """Instances (ids not in join order) holding system prompts and conversations in HBM or
    DRAM; returns the cluster, its workers and prompts that hit them in different ways."""
    cluster = new_cluster()
    n = rng.choice([1, 3, 8, SMALL_GROUP + 2, 40, 90])
    ids = rng.sample(range(10_000), n)
    # KV capacity (one for all): unknown, or small enough that queues scale the slack down.
    kv = rng.choice([None, 512, 2048, 131072])
    workers = [cluster.admit(new_worker(f"i{k}", 20000 + k, kv)) for k in ids]
    tree = cluster.trees["colocated"]
    systems = [[rng.randrange(10, 30000) for _ in range(rng.choice([4, 16, 64]) * PS)]
               for _ in range(2)]
    host_prob = rng.choice([0.0, 0.1, 0.7])
    prompts: list[list[int]] = []
    pid = iter(range(10**9))
    calm = rng.random() < 0.3
    for w in workers:
        set_random_load(rng, w, calm)
        for system in systems:
            if rng.random() < 0.6:
                continue
            conv = system + [rng.randrange(10, 30000) for _ in range(rng.choice([0, 2, 40]) * PS)]
            path = tree.tree.to_pages(conv)
            cut = len(path) if rng.random() < 0.7 else rng.randrange(1, len(path) + 1)
            tier = HOST if rng.random() < host_prob else DEVICE
            tree.stored(w.id, path[:cut], 0, tier, [next(pid) for _ in range(cut)])
            if tier == HOST and cut > 1 and rng.random() < 0.5:  # its first part in HBM too
                tree.stored(w.id, path[:cut // 2], 0, DEVICE, [next(pid) for _ in range(cut // 2)])
            prompts.append(conv + [rng.randrange(10, 30000) for _ in range(rng.randrange(1, 200))])
    for system in systems:
        prompts.append(system + [rng.randrange(10, 30000) for _ in range(300)])
    prompts.append([rng.randrange(10, 30000) for _ in range(500)])  # nobody holds it
    return cluster, workers, prompts


def perturb(rng: random.Random, cluster: Cluster, workers: list[Worker], chosen: Worker,
            tokens: list[int]) -> None:
    """What happens between two decisions: the request is accounted (in flight, queued prefill,
    predicted pages), answers drain, polls land, an instance fails or comes back."""
    if rng.random() < 0.6:
        est = TABLE.exec_time(len(tokens), 0)
        cluster.routed(chosen, tokens, est, len(tokens))
    for _ in range(rng.randrange(4)):
        w = rng.choice(workers)
        op = rng.random()
        if op < 0.3:
            w.prefilled(rng.choice([0.001, 0.01, w.pending_s]), 100)
        elif op < 0.5:
            w.finished()
        elif op < 0.9:
            set_random_load(rng, w)
        else:
            w.healthy = not w.healthy


@pytest.mark.parametrize("seed", range(6))
def test_few_candidates_decide_as_all_members(seed):
    rng = random.Random(seed)
    migrations = ties = fewer = states = 0
    for _ in range(40):
        cluster, workers, prompts = random_cluster(rng)
        cfg = PolicyConfig(transfer_per_page_s=rng.choice([None, 0.0, 1e-5]),
                           min_migrate_gain_s=rng.choice([0.0, 0.0, 0.05]),
                           migrate=rng.random() < 0.85,
                           affinity_slack=rng.choice([0.0, 0.2, 0.5, 2.0]),
                           affinity_pressure=rng.random() < 0.8,
                           hit_survival=rng.random() < 0.5)
        full_policy, fast_policy = make_policy("memserve", cfg), make_policy("memserve", cfg)
        per = cfg.load_per_request_s
        states += 1
        for _ in range(10):
            tokens = rng.choice(prompts)
            exclude = [w.id for w in rng.sample(workers, min(len(workers), rng.randrange(3)))
                       ] if rng.random() < 0.2 else []
            full = cluster.candidates("colocated", tokens, exclude)
            few = cluster.candidates("colocated", tokens, exclude, per_request_s=per,
                                     last=fast_policy._last)
            cluster.loads["colocated"].check()
            assert [c.instance_id for c in full] == sorted(c.instance_id for c in full)
            assert {c.instance_id for c in few} <= {c.instance_id for c in full}
            if not full:
                assert not few
                continue
            req = RouteRequest(len(tokens), page_size=PS, explain=False)
            want = full_policy.select(req, full)
            got = fast_policy.select(req, few)
            assert got == want, (seed, len(full), len(few))
            assert fast_policy._last == full_policy._last
            migrations += want.migrate_from is not None
            best = min(load_key(cluster.workers[c.instance_id], per)[0] for c in full)
            ties += sum(load_key(cluster.workers[c.instance_id], per)[0] == best
                        for c in full) > 2
            fewer += len(few) < len(full) / 2
            perturb(rng, cluster, workers, cluster.workers[want.instance_id], tokens)
    # The states exercised what they are meant to: migrations, many-way ties, real reductions.
    assert migrations >= 5 and ties >= 50 and fewer >= 50, (migrations, ties, fewer)


def test_router_decide_matches_the_full_pass():
    """The router's own decision path (few candidates, ``policy._last``) against the policy over
    every member, with the router's accounting of each request between decisions."""
    rng = random.Random(7)
    router = Router(RouterConfig())
    cluster = new_cluster(router.config)
    router.cluster = cluster
    workers = [cluster.admit(new_worker(f"w{k:03d}", 21000 + k)) for k in range(200)]
    system = [rng.randrange(10, 30000) for _ in range(64 * PS)]
    tree = cluster.trees["colocated"]
    convs = []
    for w in workers:
        set_random_load(rng, w)
        conv = system + [rng.randrange(10, 30000) for _ in range(8 * PS)]
        path = tree.tree.to_pages(conv)
        tree.stored(w.id, path, 0, DEVICE, list(range(len(path))))
        convs.append(conv)
    reference = make_policy("memserve", router.policies["colocated"].config)
    for step in range(300):
        tokens = rng.choice(convs)[: rng.choice([PS, 64 * PS, 72 * PS])] + [1, 2, 3]
        full = cluster.candidates("colocated", tokens)
        want = reference.select(RouteRequest(len(tokens), page_size=PS, explain=False), full)
        got, worker, hit = router._decide("colocated", Prompt(tokens, {}, False), None)
        assert got == want, step
        assert worker.id == want.instance_id
        router._account("colocated", worker, hit, Prompt(tokens, {}, False))
        if rng.random() < 0.5:
            worker.prefilled(0.01, 10)
            worker.finished()


def test_load_order_follows_every_load_change():
    rng = random.Random(3)
    cluster = new_cluster()
    workers = [cluster.admit(new_worker(f"w{k}", 22000 + k)) for k in range(30)]
    index = cluster.loads["colocated"]
    for step in range(500):
        w = rng.choice(workers)
        op = rng.random()
        if op < 0.5:
            set_random_load(rng, w)
        elif op < 0.7:
            w.queue_prefill(rng.uniform(0, 0.1), 10)
            w.inflight += 1
        elif op < 0.9:
            w.prefilled(0.05, 10)
            w.finished()
        elif w.id in cluster.workers:
            cluster.leave(w.id)
            assert w.watcher is None
        else:
            cluster.admit(w)
        index.refresh()
        index.check()
        healthy = {x.id for x in cluster.workers.values() if x.healthy}
        assert set(index.ids()) == healthy, step


def test_membership_version_and_rekey():
    cluster = new_cluster()
    a, b = (cluster.admit(new_worker(x, 23000 + i)) for i, x in enumerate("ab"))
    index = cluster.loads["colocated"]
    index.refresh()
    v = index.version
    a.inflight = 4  # a load change: same membership
    index.refresh()
    assert index.version == v and list(index.ids()) == ["a", "b"]
    b.healthy = False
    index.refresh()
    assert index.version == v + 1 and list(index.ids()) == ["a"]
    index.rekey(0.5)
    index.check()
    assert index._keys == [(4 * 0.5, 4, "a")]


def test_band_covers_the_policy_tie_tolerance():
    """The few candidates keep every member within BAND_S of its group's lowest score; that is
    exact only while the policy counts closer estimates as equal, not wider ones."""
    assert BAND_S >= 100 * memserve_policy._TIE_S
