"""Shared cores: instances that share C cores advance at min(1, C / k) of the table's speed."""

from __future__ import annotations

import pytest

from sglang_memserve.gpu.costmodel import load_table
from sglang_memserve.sim import InstanceSpec, SimConfig, Simulator
from sglang_memserve.sim.compute import CorePool
from sglang_memserve.sim.loop import EventLoop

from .helpers import request

TABLE = "nvidia-h100-80gb-hbm3"
U = 512


def _ends(cores: float | None, jobs: list[tuple[float, str, float]]) -> dict[str, float]:
    """Run ``(start time, key, table seconds)`` iterations on one pool; their end times."""
    loop = EventLoop()
    pool = CorePool(loop, cores)
    ends: dict[str, float] = {}
    for at, key, work in jobs:
        loop.at(at, pool.start, key, work, lambda k: ends.__setitem__(k, loop.now), key)
    loop.run()
    return ends


def test_two_busy_instances_on_one_core_take_twice_as_long() -> None:
    assert _ends(1, [(0, "a", 1.0), (0, "b", 1.0)]) == pytest.approx({"a": 2.0, "b": 2.0})
    assert _ends(2, [(0, "a", 1.0), (0, "b", 1.0)]) == pytest.approx({"a": 1.0, "b": 1.0})
    assert _ends(None, [(0, "a", 1.0), (0, "b", 1.0)]) == pytest.approx({"a": 1.0, "b": 1.0})


def test_the_others_speed_up_when_one_ends_and_slow_down_when_one_starts() -> None:
    # Both at half speed until a's 1 s is done (t=2); b then has 2 s left at full speed.
    assert _ends(1, [(0, "a", 1.0), (0, "b", 3.0)]) == pytest.approx({"a": 2.0, "b": 4.0})
    # a runs alone for 1 s, then shares with b: b's 1 s takes 2 s, a's last 1 s too.
    assert _ends(1, [(0, "a", 2.0), (1, "b", 1.0)]) == pytest.approx({"a": 3.0, "b": 3.0})
    # Four on two cores: half speed each.
    four = _ends(2, [(0, k, 1.0) for k in "abcd"])
    assert four == pytest.approx({k: 2.0 for k in "abcd"})


def test_retarget_cuts_a_running_iteration_at_its_progress() -> None:
    loop = EventLoop()
    pool = CorePool(loop, 1)
    ends: dict[str, float] = {}

    def done(k: str) -> None:
        ends[k] = loop.now

    pool.start("a", 10.0, done, "a")
    pool.start("b", 1.0, done, "b")

    def cut() -> None:  # at t=1 'a' has done 0.5 table seconds; it now needs 1.5 in all
        assert pool.done_s("a") == pytest.approx(0.5)
        pool.retarget("a", 1.5, done, "a-cut")

    loop.at(1.0, cut)
    loop.run()
    # b ends at 2 (half speed); a has 1.0 done then and runs its last 0.5 alone.
    assert ends == pytest.approx({"b": 2.0, "a-cut": 2.5})


def test_a_pool_refuses_two_iterations_of_one_instance_and_bad_cores() -> None:
    loop = EventLoop()
    pool = CorePool(loop, 2)
    pool.start("a", 1.0, lambda: None)
    with pytest.raises(ValueError, match="already runs"):
        pool.start("a", 1.0, lambda: None)
    with pytest.raises(ValueError, match="positive"):
        CorePool(loop, 0)
    with pytest.raises(ValueError, match="shared_cores must be positive"):
        SimConfig(shared_cores=0)
    with pytest.raises(ValueError, match="request_overhead_s"):
        SimConfig(request_overhead_s=-1)


def _sim(**kw) -> Simulator:
    return Simulator(SimConfig(instances=2, policy="round_robin", cost_table=TABLE, unit_tokens=U,
                               instance=InstanceSpec(hbm_tokens=1_000_000, chunk_tokens=8192),
                               **kw))


@pytest.mark.parametrize("cores, slowdown", [(None, 1.0), (2, 1.0), (1, 2.0), (0.5, 4.0)])
def test_simultaneous_prefills_on_two_instances_share_the_cores(cores: float | None,
                                                                slowdown: float) -> None:
    t = load_table(TABLE)
    sim = _sim(shared_cores=cores)
    sim.run([request(0, 0.0, tuple(range(8)), 4000, out=1),
             request(1, 0.0, tuple(range(100, 108)), 4000, out=1)])
    j0, j1 = sim.jobs
    assert j0.prefill is not j1.prefill  # round robin: one each
    for j in (j0, j1):
        assert j.t_first == pytest.approx(slowdown * t.exec_time(4000, 0), rel=1e-9)


def test_one_core_is_work_conserving_across_prefill_and_decode() -> None:
    """On one shared core that never idles, the last request ends once the sum of all
    iterations' table seconds has passed (whatever the interleaving of prefill and decode)."""
    sim = _sim(shared_cores=1)
    sim.run([request(0, 0.0, tuple(range(8)), 4000, out=40),
             request(1, 0.001, tuple(range(100, 104)), 2000, out=30)])
    work = sum(i.stats.prefill_s + i.stats.decode_s for i in sim.instances.values())
    assert max(j.t_end for j in sim.jobs) == pytest.approx(work, rel=1e-9)
    # Dedicated devices: the same work ends sooner (the two ran in parallel).
    alone = _sim()
    alone.run([request(0, 0.0, tuple(range(8)), 4000, out=40),
               request(1, 0.001, tuple(range(100, 104)), 2000, out=30)])
    assert max(j.t_end for j in alone.jobs) < 0.8 * work


def test_request_overhead_is_added_before_the_prefill() -> None:
    t = load_table(TABLE)
    sim = _sim(request_overhead_s=0.005)
    sim.run([request(0, 1.0, tuple(range(8)), 4000, out=1)])
    j = sim.jobs[0]
    assert j.t_first - 1.0 == pytest.approx(0.005 + t.exec_time(4000, 0), rel=1e-9)


def test_cost_scale_multiplies_the_instances_time_not_the_router_s_estimates() -> None:
    t = load_table(TABLE)
    sim = _sim(cost_scale=3.0)
    sim.run([request(0, 0.0, tuple(range(8)), 4000, out=1)])
    assert sim.jobs[0].t_first == pytest.approx(3.0 * t.exec_time(4000, 0), rel=1e-9)
    assert sim.jobs[0].est_s == pytest.approx(t.exec_time(4000, 0), rel=1e-12)


def test_the_router_can_estimate_with_its_own_table() -> None:
    sim = _sim(router_cost_table="cpu-bench")
    bench = load_table("cpu-bench")
    assert sim.router.config.cost_table == "cpu-bench"
    sim.run([request(0, 0.0, tuple(range(8)), 4000, out=1)])
    j = sim.jobs[0]
    assert j.est_s == pytest.approx(bench.exec_time(4000, 0), rel=1e-12)  # the router's view
    assert j.t_first == pytest.approx(load_table(TABLE).exec_time(4000, 0), rel=1e-9)
