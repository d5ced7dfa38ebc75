"""The ``memserve`` policy's pricing of a hit by its survival (``hit_survival``) and of each
request on an instance in the cost table's decode steps (``load_per_request_steps``): hand-made
cluster states where the old estimate chose wrong (no processes)."""

from __future__ import annotations

import pytest

from memserve_router.cli import config_from_args
from memserve_router.config import DECODE_STEP_CONTEXT, RouterConfig
from memserve_router.policies import Candidate, Load, PolicyConfig, RouteRequest, make_policy
from memserve_router.policies.memserve import MemServePolicy
from sglang_memserve.gpu.costmodel import load_table

TABLE = load_table("cpu-bench")
X, HIT, SHARED = 2048, 1920, 1024   # a turn: its history on the holder, a shared part elsewhere


def policy(**kw) -> MemServePolicy:
    p = make_policy("memserve", PolicyConfig(migrate=False, **kw))
    assert isinstance(p, MemServePolicy)
    return p


def busy_holder(kv_tokens: int, share_lost: float) -> list[Candidate]:
    """The holder of the turn's history, whose queue would rewrite ``share_lost`` of its
    ``kv_tokens``; an idle instance holding only the shared part."""
    wait = share_lost * TABLE.exec_time(kv_tokens, 0)
    return [Candidate("holder", Load(queue_wait_s=wait, kv_tokens=kv_tokens), hit_tokens=HIT),
            Candidate("other", Load(kv_tokens=kv_tokens), hit_tokens=SHARED)]


def test_a_hit_the_queue_would_evict_is_not_counted():
    """Under pressure (the queue rewrites 90% of the holder's pool) the holder's long hit is
    mostly gone by the time the request runs; the old estimate still counted it in full and
    chose the holder, the priced one goes to the idle instance's surviving shorter hit."""
    cs = busy_holder(kv_tokens=1024, share_lost=0.9)
    wait = cs[0].load.queue_wait_s
    # The hand-made state: with the hit counted in full the holder is cheaper...
    assert wait + TABLE.exec_time(X, HIT) < TABLE.exec_time(X, SHARED)
    req = RouteRequest(X)
    assert policy(hit_survival=False).select(req, cs).instance_id == "holder"
    # ...but expected over the eviction it is not.
    priced = policy(hit_survival=True)
    d = priced.select(req, cs)
    assert d.instance_id == "other"
    est = {e.instance_id: e for e in d.estimates}
    e0, eh = TABLE.exec_time(X, 0), TABLE.exec_time(X, HIT)
    assert est["holder"].exec_s == pytest.approx(eh + 0.9 * (e0 - eh))
    assert est["other"].exec_s == pytest.approx(TABLE.exec_time(X, SHARED))  # idle: in full
    # The affinity slack (survival 0.1 there) does not bring it back.
    assert policy(hit_survival=True, affinity_slack=2.0).select(req, cs).instance_id == "other"


@pytest.mark.parametrize("kv", [0, 131072])
def test_ample_or_unknown_memory_prices_the_hit_in_full(kv):
    """Same queue with a pool it barely touches (or of unknown size): the holder stays, and
    the explained estimate is (within 1%) the unpriced one."""
    wait = busy_holder(1024, 0.9)[0].load.queue_wait_s
    cs = [Candidate("holder", Load(queue_wait_s=wait, kv_tokens=kv), hit_tokens=HIT),
          Candidate("other", Load(kv_tokens=kv), hit_tokens=SHARED)]
    req = RouteRequest(X)
    plain = policy(hit_survival=False).select(req, cs)
    priced = policy(hit_survival=True).select(req, cs)
    assert plain.instance_id == priced.instance_id == "holder"
    a = {e.instance_id: e.total_s for e in plain.estimates}
    b = {e.instance_id: e.total_s for e in priced.estimates}
    assert b["holder"] >= a["holder"] and b["holder"] == pytest.approx(a["holder"], rel=0.01)
    assert b["other"] == a["other"]


def test_the_lost_share_grows_with_the_wait_and_caps_at_a_miss():
    p = policy(hit_survival=True)
    full = TABLE.exec_time(4096, 0)
    e0, eh = p.exec_s(X, 0), p.exec_s(X, HIT)
    got = [p._eviction_s(X, HIT, 4096, w) for w in (0.0, 0.25 * full, full, 4 * full)]
    assert got == pytest.approx([0.0, 0.25 * (e0 - eh), e0 - eh, e0 - eh])
    assert p._eviction_s(X, 0, 4096, full) == 0.0          # no hit, nothing to lose
    assert policy(hit_survival=False)._eviction_s(X, HIT, 4096, full) == 0.0  # off: no price


def test_a_decoding_neighbour_outweighs_a_template_hit_in_decode_steps():
    """Long documents (issue 11): the next document (800 tokens) shares only a 16-token
    template with the instance still decoding the last one. At 1 ms per request the template
    hit and the affinity slack keep it there; at 5 of the table's decode steps per request
    (about 50 ms on cpu-bench) it goes to the idle instance."""
    x = 800
    cs = [Candidate("decoding", Load(inflight=1), hit_tokens=16), Candidate("idle", Load())]
    req = RouteRequest(x)
    old = RouterConfig().policy_config
    assert make_policy("memserve", old).select(req, cs).instance_id == "decoding"
    cfg = RouterConfig(load_per_request_steps=5).policy_config
    assert cfg.load_per_request_s == pytest.approx(5 * TABLE.decode_time(1, DECODE_STEP_CONTEXT))
    assert make_policy("memserve", cfg).select(req, cs).instance_id == "idle"


def test_decode_steps_follow_the_table():
    """The same count is a different cost on the H100 table: its decode step is its own."""
    gpu = "nvidia-h100-80gb-hbm3"
    cfg = RouterConfig(cost_table=gpu, load_per_request_steps=2).policy_config
    assert cfg.load_per_request_s == pytest.approx(
        2 * load_table(gpu).decode_time(1, DECODE_STEP_CONTEXT))
    assert RouterConfig(load_per_request_steps=2).per_request_s != cfg.load_per_request_s
    assert RouterConfig(load_per_request_s=0.02).per_request_s == 0.02   # steps unset
    with pytest.raises(ValueError, match="load_per_request_steps"):
        RouterConfig(load_per_request_steps=-1)


def test_the_flags_reach_the_policy():
    cfg = config_from_args(["--worker-urls", "http://127.0.0.1:1", "--hit-survival",
                      "--load-per-request-steps", "3"])
    pc = cfg.policy_config
    assert pc.hit_survival
    assert pc.load_per_request_s == pytest.approx(3 * TABLE.decode_time(1, DECODE_STEP_CONTEXT))
    dflt = config_from_args(["--worker-urls", "http://127.0.0.1:1"]).policy_config
    assert dflt.hit_survival and dflt.load_per_request_s == PolicyConfig.load_per_request_s
    off = config_from_args(["--worker-urls", "http://127.0.0.1:1", "--no-hit-survival"])
    assert not off.policy_config.hit_survival


def test_survival_is_the_default():
    """Since stop 10 the ``memserve`` policy prices hits by survival unless told not to."""
    assert PolicyConfig().hit_survival and RouterConfig().hit_survival
    cs = busy_holder(kv_tokens=1024, share_lost=0.9)
    assert policy().select(RouteRequest(X), cs).instance_id == "other"
