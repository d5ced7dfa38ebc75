"""The ``memserve`` policy's affinity slack under memory pressure: it weakens as the work queued
ahead on the holder of a prompt's prefix would rewrite that holder's KV (hand-made cluster
states, no processes)."""

from __future__ import annotations

import pytest

from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.policies import Candidate, Load, PolicyConfig, RouteRequest, make_policy
from memserve_router.policies.memserve import MemServePolicy
from memserve_router.workers import Worker, WorkerInfo
from sglang_memserve.gpu.costmodel import load_table

TABLE = load_table("cpu-bench")
X, HIT = 2048, 1920           # a conversation's turn: its history is 94% of the prompt


def policy(**kw) -> MemServePolicy:
    # The slack's pressure scaling alone: hits are not priced by survival here unless asked.
    kw.setdefault("hit_survival", False)
    p = make_policy("memserve", PolicyConfig(migrate=False, **kw))
    assert isinstance(p, MemServePolicy)
    return p


def state(kv_tokens: int, slower: float = 1.25) -> list[Candidate]:
    """An idle instance without the prefix, and the holder queued so that its estimate is
    ``slower`` times the idle miss's; both with ``kv_tokens`` of KV."""
    wait = slower * TABLE.exec_time(X, 0) - TABLE.exec_time(X, HIT)
    return [Candidate("idle", Load(kv_tokens=kv_tokens)),
            Candidate("holder", Load(queue_wait_s=wait, kv_tokens=kv_tokens), hit_tokens=HIT)]


def wait_of(cands: list[Candidate]) -> float:
    return cands[1].load.queue_wait_s


def test_ample_memory_keeps_the_conversation_with_its_kv():
    """The holder's queue is a small share of what its KV holds: the slack (2) keeps it."""
    cs = state(kv_tokens=131072)
    assert wait_of(cs) < 0.1 * TABLE.exec_time(131072, 0)
    d = policy(affinity_slack=2.0).select(RouteRequest(X), cs)
    assert d.instance_id == "holder" and "longest prefix" in d.reason


def test_pressure_spreads_when_the_queue_would_rewrite_the_holders_kv():
    """Same queue, a KV pool it would rewrite before the request runs: the idle miss wins."""
    cs = state(kv_tokens=512)
    assert wait_of(cs) >= TABLE.exec_time(512, 0)
    assert policy(affinity_slack=2.0).select(RouteRequest(X), cs).instance_id == "idle"
    # ...unless the scaling is off, or the capacity unknown (a stock server, a DRAM tier).
    flat = policy(affinity_slack=2.0, affinity_pressure=False)
    assert flat.select(RouteRequest(X), cs).instance_id == "holder"
    assert policy(affinity_slack=2.0).select(RouteRequest(X), state(0)).instance_id == "holder"


def test_partial_pressure_scales_the_slack_between_the_two():
    """The holder, 25% slower, keeps the request while slack x survival x share covers the
    gap: with the survival just above what that needs it stays, just below it moves."""
    cs = state(kv_tokens=4096)
    p = policy(affinity_slack=2.0)
    s = p.survival(cs[1])
    assert 0.0 < s < 1.0
    d = p.select(RouteRequest(X), cs)
    if d.instance_id == "holder":             # the reason gives the slack as applied
        assert f"affinity slack ({2.0 * s:.2f})" in d.reason
    share = HIT / X
    best, own = TABLE.exec_time(X, 0), TABLE.exec_time(X, 0) * 1.25
    needed = (1.0 - best / own) / share          # own * (1 - slack * share) <= best
    assert (p.select(RouteRequest(X), cs).instance_id == "holder") == (2.0 * s >= needed)
    lo = policy(affinity_slack=0.99 * needed / s).select(RouteRequest(X), cs)
    hi = policy(affinity_slack=1.01 * needed / s).select(RouteRequest(X), cs)
    assert (lo.instance_id, hi.instance_id) == ("idle", "holder")


@pytest.mark.parametrize("kv", [512, 8192, 131072])
def test_survival_falls_with_the_queue(kv):
    p = policy(affinity_slack=2.0)
    full = TABLE.exec_time(kv, 0)
    waits = [0.0, 0.1 * full, 0.5 * full, 0.9 * full, full, 3 * full]
    got = [p.survival(Candidate("h", Load(queue_wait_s=w, kv_tokens=kv))) for w in waits]
    assert got[0] == 1.0 and got[-2] == got[-1] == 0.0
    assert got == sorted(got, reverse=True)
    assert got[2] == pytest.approx(0.5)
    assert p.survival(Candidate("h", Load(queue_wait_s=full, kv_tokens=0))) == 1.0


def test_the_router_passes_each_instances_kv_capacity():
    """``/server_info``'s ``max_total_num_tokens`` reaches the policy's ``Load``; not with a
    DRAM tier, which keeps what the device evicts."""
    info = {"max_total_num_tokens": 8192,
            "internal_states": [{"memserve": {"instance_id": "a", "page_size": 16}}]}
    wi = WorkerInfo.from_server_info(info, {})
    assert wi.kv_tokens == 8192
    w = Worker("a", WorkerSpec("http://127.0.0.1:1"), wi)
    assert w.load().kv_tokens == 8192
    info["internal_states"][0]["memserve"]["dram_tier"] = True
    assert WorkerInfo.from_server_info(info, {}).kv_tokens is None
    assert WorkerInfo.from_server_info({}, {}).kv_tokens is None


def test_router_defaults_scale_a_slack_of_two():
    cfg = RouterConfig().policy_config
    assert cfg.affinity_slack == 2.0 and cfg.affinity_pressure


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError, match="negative load"):
        Load(kv_tokens=-1)
