"""On an idle cluster a request's times are exactly the cost table's sums."""

from __future__ import annotations

import pytest

from sglang_memserve.gpu.costmodel import load_table
from sglang_memserve.sim import InstanceSpec, SimConfig, Simulator

from .helpers import request

TABLE = "nvidia-h100-80gb-hbm3"
U = 512  # tokens per block
PPU = U // 16  # table pages per block


def _sim(**kw) -> Simulator:
    spec = kw.pop("spec", InstanceSpec(hbm_tokens=1_000_000, chunk_tokens=4096))
    return Simulator(SimConfig(instances=kw.pop("instances", 1), policy="round_robin",
                               instance=spec, cost_table=TABLE, unit_tokens=U, **kw))


def test_ttft_is_the_sum_of_chunk_costs_and_jct_adds_the_decode_steps() -> None:
    t = load_table(TABLE)
    sim = _sim()
    first = request(0, 0.0, tuple(range(10)), 5000, out=3)
    again = request(1, 100.0, tuple(range(12)), 6000, out=1)
    res = sim.run([first, again])
    j0, j1 = sim.jobs
    # Chunks of 4096 new tokens: [0, 4096) then [4096, 5000).
    ttft0 = t.exec_time(4096, 0) + t.exec_time(5000, 4096)
    assert j0.t_first - first.arrival_s == pytest.approx(ttft0, rel=1e-12)
    # Two more tokens, one decode step each at the batch's mid-segment context.
    step = t.decode_time(1, int(5001 + 1))
    assert j0.t_end - first.arrival_s == pytest.approx(ttft0 + 2 * step, rel=1e-12)
    # The second prompt hits the first's 10 blocks (5,120 tokens): one chunk for the rest.
    assert j1.hit_tokens == 10 * U
    assert j1.t_first - again.arrival_s == pytest.approx(t.exec_time(6000, 10 * U), rel=1e-12)
    assert j1.t_end == j1.t_first  # one output token: the prefill's
    assert res.finished == 2 and res.hit_tokens == 10 * U


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    t = load_table(TABLE)
    sim = _sim()
    sim.run([request(0, 0.0, tuple(range(4)), 2048, out=1),
             request(1, 10.0, tuple(range(4)), 2048, out=1)])
    j = sim.jobs[1]
    assert j.hit_tokens == 2048
    assert j.t_first - 10.0 == pytest.approx(t.exec_time(2048, 2047), rel=1e-12)


def test_a_dram_hit_pays_the_swap_in_of_its_pages() -> None:
    t = load_table(TABLE)
    # 16 blocks of HBM: the second request evicts the first's pages, which go to DRAM.
    sim = _sim(spec=InstanceSpec(hbm_tokens=16 * U, dram_tokens=64 * U, chunk_tokens=8192))
    a = request(0, 0.0, tuple(range(1, 7)), 6 * U, out=1)
    b = request(1, 10.0, tuple(range(100, 110)), 10 * U, out=1)
    again = request(2, 20.0, tuple(range(1, 7)), 6 * U, out=1)
    sim.run([a, b, again])
    j = sim.jobs[2]
    assert j.hit_tokens == 6 * U and j.host_tokens == 6 * U
    want = t.exec_time(6 * U, 6 * U - 1) + t.swap_time(6 * PPU, "in")
    assert j.t_first - 20.0 == pytest.approx(want, rel=1e-12)
    kv = sim.instances["c0"].kv
    assert kv.written_back > 0 and kv.loaded_back == 6
    kv.check()


def test_pd_ttft_adds_the_kv_transfer_over_the_link() -> None:
    t = load_table(TABLE)
    sim = _sim(instances=2, pd=True, link_gbps=10.0)
    r = request(0, 0.0, tuple(range(8)), 4000, out=2)
    sim.run([r])
    j = sim.jobs[0]
    assert j.prefill is not None and j.decode is not None and j.prefill is not j.decode
    transfer = 8 * PPU * t.page_nbytes / 10e9
    assert j.t_first == pytest.approx(t.exec_time(4000, 0) + transfer, rel=1e-12)
    assert j.t_end - j.t_first == pytest.approx(t.decode_time(1, int(4001 + 0.5)), rel=1e-12)
