"""Cluster behaviour: HBM pressure, exact router mirrors, the real policy objects."""

from __future__ import annotations

import pytest

from memserve_router.cluster import Cluster
from memserve_router.policies.memserve import MemServePolicy
from memserve_router.policies.prefix import PrefixPolicy
from sglang_memserve.sim import InstanceSpec, SimConfig, Simulator

from .helpers import conversations, request

U = 512


def _run(hbm_blocks: int, dram_blocks: int = 0, **kw) -> Simulator:
    spec = InstanceSpec(hbm_tokens=hbm_blocks * U, dram_tokens=dram_blocks * U)
    shared = kw.pop("shared", True)
    cfg = SimConfig(instances=kw.pop("instances", 1), instance=spec, unit_tokens=U,
                    policy=kw.pop("policy", "memserve"), **kw)
    sim = Simulator(cfg)
    sim.run(conversations(6, 5, shared=shared))
    return sim


def test_eviction_under_hbm_pressure_lowers_the_hit_rate() -> None:
    roomy = _run(10_000)
    tight = _run(40)
    r_roomy, r_tight = roomy.result(), tight.result()
    assert r_roomy.finished == r_tight.finished == 30
    assert r_roomy.evicted_pages == 0
    assert r_tight.evicted_pages > 0
    assert r_tight.hit_rate < r_roomy.hit_rate
    # Later turns extend earlier prompts: with room every later turn hits its whole history.
    assert r_roomy.hit_rate > 0.5


def test_a_dram_tier_keeps_what_hbm_evicts() -> None:
    hbm_only = _run(40).result()
    with_dram = _run(40, dram_blocks=1000).result()
    assert with_dram.written_back_pages > 0
    assert with_dram.hit_rate > hbm_only.hit_rate


@pytest.mark.parametrize("pd", [False, True])
def test_router_trees_equal_the_instances_indexes_after_a_run(pd: bool) -> None:
    # No shared first block: conversations spread over the instances (not vacuous below).
    sim = _run(40, dram_blocks=60, instances=4, pd=pd, shared=False)
    res = sim.result()
    assert res.evicted_pages > 0 and res.finished == 30
    if pd:
        assert res.kv_returns > 0
    assert sim.check_mirrors() == []
    holding = 0
    for iid, inst in sim.instances.items():
        inst.kv.check()
        tree = sim.router.cluster.trees[inst.role]
        tree.check()
        own = inst.kv.tree.flatten()
        assert tree.snapshot_of(iid) == own
        holding += bool(own)
    assert holding >= (3 if pd else 2)  # not vacuous: several instances hold pages


def test_the_router_calls_the_real_policy_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = InstanceSpec(hbm_tokens=10_000 * U)
    sim = Simulator(SimConfig(instances=4, instance=spec, unit_tokens=U, policy="memserve"))
    policy = sim.router.policies["colocated"]
    assert type(policy) is MemServePolicy
    chosen: list[str] = []
    real_select = policy.select

    def spy(request, candidates):
        d = real_select(request, candidates)
        chosen.append(d.instance_id)
        return d

    monkeypatch.setattr(policy, "select", spy)
    walks = []
    real_candidates = Cluster.candidates

    def spy_candidates(self, *a, **kw):
        walks.append(a[0])
        return real_candidates(self, *a, **kw)

    monkeypatch.setattr(Cluster, "candidates", spy_candidates)
    sim.run(conversations(6, 4))
    assert len(chosen) == len(walks) == 24
    assert [j.prefill.id for j in sim.jobs] == chosen  # each ran where the policy said
    # Conversations stay on the instance holding their history (the policy's cost model).
    by_session: dict[str, set[str]] = {}
    for j in sim.jobs:
        by_session.setdefault(j.req.session, set()).add(j.prefill.id)
    assert all(len(s) == 1 for s in by_session.values())
    assert sim.result().decision_p50_us > 0


def test_prefix_policy_is_sglang_routers_rule_class() -> None:
    sim = Simulator(SimConfig(instances=2, unit_tokens=U, policy="prefix"))
    assert type(sim.router.policies["colocated"]) is PrefixPolicy


def test_a_migration_moves_the_prefix_and_the_policy_learns_its_cost() -> None:
    overhead = 0.02
    sim = Simulator(SimConfig(instances=2, instance=InstanceSpec(hbm_tokens=10_000 * U),
                              unit_tokens=U, policy="memserve", migration_overhead_s=overhead))
    prefix = tuple(range(1, 41))  # 40 blocks, 20,480 tokens
    sim.run([request(0, 0.0, prefix, 40 * U, out=2)])
    holder = sim.jobs[0].prefill
    assert holder is not None
    other = next(i for i in sim.instances.values() if i is not holder)
    # The router believes the holder has 10 s of prefill queued: recomputing elsewhere or
    # migrating the prefix beats waiting there.
    sim.router.cluster.workers[holder.id].pending_s = 10.0
    nxt = request(1, sim.loop.now + 1.0, prefix + (41, 42), 42 * U, out=2)
    sim.loop.at(nxt.arrival_s, sim.arrive, nxt)
    sim.loop.run()
    job = sim.jobs[1]
    assert job.prefill is other and sim.migrations == 1
    assert job.migrated_tokens == 40 * U and job.hit_tokens == 40 * U
    assert other.kv.match(sim.jobs[0].path)[0] == 40  # the prefix is indexed there now
    policy = sim.router.policies["colocated"]
    assert policy.migration_overhead_s == pytest.approx(overhead)  # learned, as the router does
    assert sim.check_mirrors() == []


def test_the_routers_affinity_slack_reaches_the_policy() -> None:
    """``SimConfig.affinity_slack`` is the router flag: the policy the simulator calls has it;
    unset, the router's default applies (not the policy class's)."""
    from memserve_router.config import RouterConfig

    pinned = Simulator(SimConfig(instances=2, unit_tokens=U, affinity_slack=0.125))
    assert pinned.router.policies["colocated"].config.affinity_slack == 0.125
    default = Simulator(SimConfig(instances=2, unit_tokens=U))
    assert default.router.policies["colocated"].config.affinity_slack == \
        RouterConfig.affinity_slack != 0.125


@pytest.mark.parametrize("pd", [False, True])
def test_without_a_prefix_cache_nothing_is_reused(pd: bool) -> None:
    """``prefix_cache=False`` (SGLang without a radix cache): every prefill computes its whole
    prompt and PD sends it all, so TTFT rises against the cached run of the same requests."""
    from sglang_memserve.sim.workload import sharegpt as load

    def run(cache: bool):
        spec = InstanceSpec(hbm_tokens=2_000_000, prefix_cache=cache)
        policy = "memserve" if cache else "least_load"
        cfg = SimConfig(instances=4, pd=pd, instance=spec, unit_tokens=16, policy=policy,
                        decode_policy=policy, kv_return=cache)
        return Simulator(cfg).run(load(conversations=20, rate=4.0, think_s=1.0))

    cached, plain = run(True), run(False)
    assert plain.finished == cached.finished == plain.requests
    assert plain.hit_rate == 0.0 < cached.hit_rate
    assert plain.ttft_avg_s > cached.ttft_avg_s
    assert plain.kv_returns == 0


def test_the_routers_load_per_request_flag_reaches_the_policy() -> None:
    from memserve_router.cli import config_from_args

    assert config_from_args(["--worker-urls", "http://127.0.0.1:1", "--load-per-request-secs",
                             "0.05"]).policy_config.load_per_request_s == 0.05
    sim = Simulator(SimConfig(instances=2, unit_tokens=U, load_per_request_s=0.02))
    assert sim.router.policies["colocated"].config.load_per_request_s == 0.02
