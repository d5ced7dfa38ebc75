"""The serving-engine parts of the instance model: prefill batches, per-iteration overhead,
PD-Caching-3's prefill hold and a decode instance without a prefix cache."""

from __future__ import annotations

import pytest

from sglang_memserve.gpu.costmodel import load_table
from sglang_memserve.sim import InstanceSpec, SimConfig, SimRequest, Simulator

from .helpers import request

TABLE = "nvidia-h100-80gb-hbm3"
U = 512


def _sim(spec: InstanceSpec, **kw) -> Simulator:
    return Simulator(SimConfig(instances=kw.pop("instances", 1), policy="round_robin",
                               instance=spec, cost_table=TABLE, unit_tokens=U, **kw))


def _spec(**kw) -> InstanceSpec:
    return InstanceSpec(hbm_tokens=1_000_000, chunk_tokens=4096, **kw)


def test_queued_prompts_that_fit_the_chunk_share_one_prefill_iteration() -> None:
    t = load_table(TABLE)
    # Arriving together: the first starts alone, the next three queue behind it.
    reqs = [request(i, 0.0, (100 * i + 1, 100 * i + 2), 1000, out=1) for i in range(4)]
    one = _sim(_spec())
    one.run(reqs)
    batched = _sim(_spec(batch_prefill=True))
    batched.run([request(i, 0.0, (100 * i + 1, 100 * i + 2), 1000, out=1) for i in range(4)])
    e = t.exec_time(1000, 0)
    # One prompt per iteration: first tokens at e, 2e, 3e, 4e.
    assert [j.t_first for j in one.jobs] == pytest.approx([e, 2 * e, 3 * e, 4 * e])
    # Batched: the first arrival starts alone; the three queued behind it fit 4,096 tokens
    # together, so they end together, one iteration later.
    assert [j.t_first for j in batched.jobs] == pytest.approx([e, 4 * e, 4 * e, 4 * e])
    assert batched.instances["c0"].stats.chunks < one.instances["c0"].stats.chunks


def test_a_prompt_that_does_not_fit_the_rest_of_the_chunk_waits() -> None:
    sim = _sim(_spec(batch_prefill=True))
    sim.run([request(0, 0.0, (1,), 3000, out=1), request(1, 0.0, (2,), 3000, out=1)])
    a, b = sim.jobs
    assert b.t_first > a.t_first  # 6,000 tokens exceed the 4,096 budget
    assert sim.instances["c0"].stats.chunks == 2


def test_iteration_overhead_adds_to_every_chunk_and_decode_step() -> None:
    t = load_table(TABLE)
    o = 0.004
    sim = _sim(_spec(iteration_overhead_s=o))
    sim.run([request(0, 0.0, tuple(range(10)), 5000, out=3)])
    j = sim.jobs[0]
    ttft = t.exec_time(4096, 0) + t.exec_time(5000, 4096) + 2 * o
    assert j.t_first == pytest.approx(ttft, rel=1e-12)
    assert j.t_end - j.t_first == pytest.approx(2 * (t.decode_time(1, 5002) + o), rel=1e-12)
    with pytest.raises(ValueError):
        InstanceSpec(iteration_overhead_s=-1.0)


def _turns(think_s: float) -> SimRequest:
    """A two-turn chat whose second prompt carries the first's prompt and answer."""
    first = request(0, 0.0, (1, 2, 3), 3 * U, out=2 * U, session="c")
    second = request(1, -1.0, (1, 2, 3) + first.output_blocks + (9,), 6 * U, out=1, session="c")
    first.follow = (second, think_s)
    return first


def test_pd_caching3_holds_a_next_turn_until_the_return_lands() -> None:
    # No think time: the next turn reaches prefill while decode's return is on the wire.
    sim = _sim(_spec(), instances=2, pd=True, link_gbps=0.01)
    sim.run([_turns(0.0)])
    nxt = sim.jobs[1]
    assert sim.held == 1
    assert nxt.hit_tokens == 5 * U  # the prompt and the answer, returned
    # Without the return (stock PD) the same turn hits the first prompt only.
    stock = _sim(_spec(), instances=2, pd=True, link_gbps=0.01, kv_return=False)
    stock.run([_turns(0.0)])
    assert stock.held == 0 and stock.jobs[1].hit_tokens == 3 * U


def test_a_decode_instance_without_a_cache_receives_the_whole_prompt() -> None:
    t = load_table(TABLE)
    per_block = (U // t.page_size) * t.page_nbytes / 10e9
    shared = (1, 2, 3, 4)
    reqs = [request(0, 0.0, shared, 4 * U, out=1), request(1, 10.0, shared + (5,), 5 * U, out=2)]
    cached = _sim(_spec(), instances=2, pd=True, link_gbps=10.0, kv_return=False)
    cached.run(reqs)
    bare = _sim(_spec(), instances=2, pd=True, link_gbps=10.0, kv_return=False,
                decode_instance=_spec(prefix_cache=False))
    bare.run([request(0, 0.0, shared, 4 * U, out=1),
              request(1, 10.0, shared + (5,), 5 * U, out=2)])
    prefill = t.exec_time(5 * U, 4 * U)
    # The decode cache holds the first prompt's 4 blocks: only the 5th crosses the link.
    assert cached.jobs[1].t_first - 10.0 == pytest.approx(prefill + per_block, rel=1e-9)
    assert bare.jobs[1].t_first - 10.0 == pytest.approx(prefill + 5 * per_block, rel=1e-9)
    assert bare.jobs[1].hit_tokens == 4 * U  # prefill still hits
