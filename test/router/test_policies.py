"""Routing policies on hand-made cluster states (no processes): each policy's choice, ties,
session affinity, sglang-router's prefix thresholds, and the memserve cost model's decisions,
including the migrate-vs-recompute boundary derived from the shipped cost tables."""

from __future__ import annotations

import json
import random

import pytest

from memserve_router.policies import (
    POLICIES,
    Candidate,
    Load,
    NoCandidate,
    PolicyConfig,
    RouteRequest,
    make_policy,
    register_policy,
)
from memserve_router.policies.memserve import MemServePolicy
from sglang_memserve.gpu.costmodel import load_table

TABLES = ["cpu-bench", "nvidia-h100-80gb-hbm3"]


def cand(iid: str, requests: int = 0, hit: int = 0, host: int = 0, wait: float = 0.0,
         kv: float = 0.0, inflight: int = 0) -> Candidate:
    return Candidate(iid, Load(running=requests, kv_usage=kv, inflight=inflight,
                               queue_wait_s=wait), hit_tokens=hit, host_tokens=host)


def picks(policy, candidates, n: int, **req) -> list[str]:
    return [policy.select(RouteRequest(req.pop("num_tokens", 100), **req), candidates).instance_id
            for _ in range(n)]


# -- registry and interface ------------------------------------------------------------------

def test_registry_has_every_policy():
    assert set(POLICIES) == {"round_robin", "least_load", "session", "prefix", "memserve"}
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert make_policy(name).select(RouteRequest(10), [cand("a")]).policy == name


def test_unknown_policy_lists_the_names():
    with pytest.raises(ValueError) as e:
        make_policy("cache_aware")
    for name in POLICIES:
        assert name in str(e.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_policy("round_robin")(type(POLICIES["round_robin"]))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_candidate(name):
    with pytest.raises(NoCandidate):
        make_policy(name).select(RouteRequest(10, session_id="s"), [])


def test_bad_inputs_are_typed_errors():
    with pytest.raises(ValueError):
        RouteRequest(0)
    with pytest.raises(ValueError):
        Candidate("a", Load(), hit_tokens=4, host_tokens=5)
    with pytest.raises(ValueError):
        Load(running=-1)
    with pytest.raises(ValueError):
        PolicyConfig(cache_threshold=1.5)
    with pytest.raises(ValueError):
        PolicyConfig(transfer_per_page_s=-1.0)
    with pytest.raises(FileNotFoundError):
        make_policy("memserve", PolicyConfig(cost_table="no-such-table"))


def test_load_requests_takes_the_fresher_count():
    assert Load(running=2, queued=3).requests == 5
    assert Load(running=2, queued=3, inflight=9).requests == 14  # others' + ours


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_select_leaves_candidates_alone(name):
    cs = [cand("a", 3, hit=50), cand("b", 1), cand("c", 2, hit=90, host=40)]
    before = list(cs)
    make_policy(name).select(RouteRequest(100, session_id="s"), cs)
    assert cs == before


# -- round_robin / least_load ----------------------------------------------------------------

def test_round_robin_alternates_whatever_the_order():
    p = make_policy("round_robin")
    cs = [cand("a", 9), cand("b"), cand("c", 4)]
    got = []
    rng = random.Random(0)
    for _ in range(6):
        rng.shuffle(cs)
        got.append(p.select(RouteRequest(10), cs).instance_id)
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_survives_membership_change():
    p = make_policy("round_robin")
    assert picks(p, [cand("a"), cand("b"), cand("c")], 2) == ["a", "b"]
    assert picks(p, [cand("a"), cand("c")], 3) == ["c", "a", "c"]
    assert picks(p, [cand("a"), cand("b"), cand("d")], 2) == ["d", "a"]


def test_least_load_picks_fewest_requests():
    p = make_policy("least_load")
    cs = [cand("a", 5), cand("b", 2), cand("c", 3)]
    assert picks(p, cs, 3) == ["b"] * 3


def test_least_load_counts_router_inflight():
    p = make_policy("least_load")
    # a's poll says idle but the router has sent it 4 since: b (2 running) is less loaded.
    assert p.select(RouteRequest(10), [cand("a", 0, inflight=4), cand("b", 2)]).instance_id == "b"


def test_least_load_breaks_request_ties_by_kv_usage():
    p = make_policy("least_load")
    cs = [cand("a", 2, kv=0.9), cand("b", 2, kv=0.4), cand("c", 3, kv=0.0)]
    assert picks(p, cs, 2) == ["b", "b"]


def test_least_load_ties_alternate():
    p = make_policy("least_load")
    cs = [cand("a", 1), cand("b", 1), cand("c", 1), cand("d", 7)]
    assert picks(p, cs, 6) == ["a", "b", "c", "a", "b", "c"]


# -- session ---------------------------------------------------------------------------------

def test_session_sticks_to_its_first_instance():
    p = make_policy("session")
    first = p.select(RouteRequest(10, session_id="s1"), [cand("a", 3), cand("b", 1)])
    assert first.instance_id == "b"
    # b becomes the busiest; the session stays, a new session goes to the least loaded.
    cs = [cand("a", 1), cand("b", 8), cand("c", 4)]
    assert picks(p, cs, 3, session_id="s1") == ["b"] * 3
    assert p.select(RouteRequest(10, session_id="s2"), cs).instance_id == "a"
    assert p.session_instance("s2") == "a"


def test_session_falls_back_when_its_instance_leaves():
    p = make_policy("session")
    assert p.select(RouteRequest(10, session_id="s"), [cand("a"), cand("b", 2)]).instance_id == "a"
    moved = p.select(RouteRequest(10, session_id="s"), [cand("b", 2), cand("c", 5)])
    assert moved.instance_id == "b" and "left" in moved.reason
    # Bound to b now, even when a comes back idle.
    assert picks(p, [cand("a"), cand("b", 2), cand("c", 5)], 2, session_id="s") == ["b", "b"]


def test_session_without_id_is_least_load():
    p = make_policy("session")
    cs = [cand("a", 4), cand("b", 1), cand("c", 1)]
    assert picks(p, cs, 4) == ["b", "c", "b", "c"]
    assert len(p) == 0


def test_session_table_is_lru_bounded():
    p = make_policy("session", PolicyConfig(session_table_size=2))
    cs = [cand("a"), cand("b"), cand("c")]
    for sid in ("s1", "s2"):
        p.select(RouteRequest(10, session_id=sid), cs)
    p.select(RouteRequest(10, session_id="s1"), cs)      # s1 used last: s2 is the oldest
    p.select(RouteRequest(10, session_id="s3"), cs)
    assert len(p) == 2
    assert p.session_instance("s2") is None
    assert p.session_instance("s1") is not None and p.session_instance("s3") is not None


# -- prefix (sglang-router's cache_aware rule) -----------------------------------------------

def test_prefix_balanced_takes_longest_match():
    p = make_policy("prefix")
    cs = [cand("a", 10, hit=40), cand("b", 30, hit=80), cand("c", 0, hit=0)]
    d = p.select(RouteRequest(100), cs)
    assert d.instance_id == "b" and "longest" in d.reason


def test_prefix_longest_match_ties_go_to_least_loaded():
    p = make_policy("prefix")
    cs = [cand("a", 10, hit=80), cand("b", 3, hit=80), cand("c", 0, hit=10)]
    assert picks(p, cs, 2) == ["b", "b"]


def test_prefix_imbalance_takes_least_loaded():
    cfg = PolicyConfig()
    p = make_policy("prefix", cfg)
    lo = 10
    hi = max(lo + cfg.balance_abs_threshold + 1, int(lo * cfg.balance_rel_threshold) + 1)
    cs = [cand("a", hi, hit=100), cand("b", lo, hit=0), cand("c", lo + 5)]
    d = p.select(RouteRequest(100), cs)
    assert d.instance_id == "b" and "imbalanced" in d.reason


def test_prefix_needs_both_imbalance_conditions():
    cfg = PolicyConfig()
    p = make_policy("prefix", cfg)
    # Absolute gap exceeded, relative not (200 < 1.5 * 150): still follows the cache.
    lo = 150
    hi = lo + cfg.balance_abs_threshold + 1
    assert hi <= cfg.balance_rel_threshold * lo
    assert p.select(RouteRequest(100), [cand("a", hi, hit=100), cand("b", lo)]).instance_id == "a"
    # Relative exceeded, absolute not (3 > 1.5 * 1, gap 2 <= 64): follows the cache.
    assert p.select(RouteRequest(100), [cand("a", 3, hit=100), cand("b", 1)]).instance_id == "a"


def test_prefix_low_hit_ratio_takes_least_loaded():
    cfg = PolicyConfig()
    p = make_policy("prefix", cfg)
    below = int(cfg.cache_threshold * 1000) - 1
    d = p.select(RouteRequest(1000), [cand("a", 5, hit=below), cand("b", 1)])
    assert d.instance_id == "b" and "least loaded" in d.reason
    at = -(-int(cfg.cache_threshold * 1000 * 1000) // 1000)      # ceil: ratio >= threshold
    assert p.select(RouteRequest(1000), [cand("a", 5, hit=at), cand("b", 1)]).instance_id == "a"


# -- memserve --------------------------------------------------------------------------------

def memserve(table: str = "cpu-bench", **kw) -> MemServePolicy:
    p = make_policy("memserve", PolicyConfig(cost_table=table, **kw))
    assert isinstance(p, MemServePolicy)
    return p


def test_memserve_is_the_default():
    from memserve_router.policies import DEFAULT_POLICY
    assert DEFAULT_POLICY == "memserve"


@pytest.mark.parametrize("table", TABLES)
def test_memserve_prefers_the_hit_under_equal_load(table):
    p = memserve(table)
    cs = [cand("a", 2, hit=0), cand("b", 2, hit=1024), cand("c", 2, hit=512)]
    d = p.select(RouteRequest(2048), cs)
    assert d.instance_id == "b" and d.migrate_from is None


@pytest.mark.parametrize("table", TABLES)
def test_memserve_prefers_an_idle_miss_over_a_queued_hit(table):
    p = memserve(table, migrate=False)
    x, y = 2048, 1536
    saving = p.table.prefix_saving(x, y)
    # Queue on the holder longer than what its hit saves: the idle miss wins; shorter: the hit.
    cs = [cand("a", hit=0), cand("b", hit=y, wait=saving * 1.5)]
    assert p.select(RouteRequest(x), cs).instance_id == "a"
    cs = [cand("a", hit=0), cand("b", hit=y, wait=saving * 0.5)]
    assert p.select(RouteRequest(x), cs).instance_id == "b"


def test_memserve_charges_the_swap_in_of_dram_hits():
    p = memserve()
    t = p.table
    x, y = 1024, 512
    # Same hit, one in DRAM: the HBM one wins.
    cs = [cand("a", hit=y, host=y), cand("b", hit=y)]
    d = p.select(RouteRequest(x), cs)
    assert d.instance_id == "b"
    est = {e.instance_id: e for e in d.estimates if e.migrate_from is None}
    assert est["a"].swap_s == pytest.approx(t.swap_time(t.pages_for(y), "in"))
    assert est["b"].swap_s == 0.0
    # A DRAM hit still beats a miss when the swap costs less than the prefill it saves.
    assert t.swap_time(t.pages_for(y), "in") < t.prefix_saving(x, y)
    assert p.select(RouteRequest(x), [cand("a", hit=y, host=y), cand("c")]).instance_id == "a"


def test_memserve_whole_prompt_hit_still_computes_a_token():
    p = memserve()
    x = 512
    d = p.select(RouteRequest(x), [cand("a", hit=x), cand("b", hit=x + 100)])
    for e in d.estimates:
        assert e.exec_s == pytest.approx(p.table.exec_time(x, x - 1)) and e.exec_s > 0
        assert e.hit_tokens == x      # hits longer than the prompt are clamped to it


def test_memserve_idle_cluster_spreads():
    p = memserve()
    cs = [cand(i) for i in "abcd"]
    assert picks(p, cs, 8, num_tokens=256) == list("abcd") * 2
    # And with the router counting what it sent, successive requests land on distinct ones.
    inflight = dict.fromkeys("abcd", 0)
    for _ in range(4):
        d = p.select(RouteRequest(256), [cand(i, inflight=n) for i, n in inflight.items()])
        inflight[d.instance_id] += 1
    assert set(inflight.values()) == {1}


def test_memserve_load_term_breaks_equal_estimates():
    p = memserve()
    cs = [cand("a", 3), cand("b", 1), cand("c", 2)]
    assert picks(p, cs, 3, num_tokens=256) == ["b"] * 3


def boundary_state(p: MemServePolicy, x: int, c_hit: int, h_hit: int) -> tuple[list, float]:
    """Target ``c`` idle with ``c_hit`` cached; holder ``h`` with ``h_hit`` cached but queued so
    long that routing to it loses. Returns the candidates and the per-page link cost at which
    migrating equals recomputing: transfer(pages) == exec(x, c_hit) - exec(x, h_hit)."""
    t = p.table
    saving = t.exec_time(x, c_hit) - t.exec_time(x, h_hit)
    pages = t.pages_for(h_hit - c_hit)
    cs = [cand("c", hit=c_hit), cand("h", hit=h_hit, wait=10 * t.exec_time(x, 0))]
    return cs, saving / pages


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize(("c_hit", "h_hit"), [(0, 2048), (512, 3072)])
def test_memserve_migrate_vs_recompute_boundary(table, c_hit, h_hit):
    x = 4096
    probe = memserve(table)
    cs, per_page = boundary_state(probe, x, c_hit, h_hit)
    assert per_page > 0
    # Fast link (below the boundary): push the missing prefix from h, then run on c.
    fast = memserve(table, transfer_per_page_s=per_page * 0.9).select(RouteRequest(x), cs)
    assert fast.instance_id == "c" and fast.migrate_from == "h"
    assert fast.migrate_tokens == h_hit and fast.migrate_cached_tokens == c_hit
    chosen = [e for e in fast.estimates if e.migrate_from == "h" and e.instance_id == "c"]
    assert chosen[0].transfer_s == pytest.approx(
        per_page * 0.9 * probe.table.pages_for(h_hit - c_hit))
    # Slow link (above it): recompute the extra prefix on c.
    slow = memserve(table, transfer_per_page_s=per_page * 1.1).select(RouteRequest(x), cs)
    assert slow.instance_id == "c" and slow.migrate_from is None and slow.migrate_tokens == 0


@pytest.mark.parametrize("table", TABLES)
def test_memserve_table_link_cost_is_used_by_default(table):
    p = memserve(table)
    x, c_hit, h_hit = 4096, 0, 2048
    cs, per_page = boundary_state(p, x, c_hit, h_hit)
    assert p.transfer_per_page_s == p.table.transfer_per_page_s
    d = p.select(RouteRequest(x), cs)
    assert (d.migrate_from == "h") == (p.table.transfer_per_page_s < per_page)


def test_memserve_min_gain_gates_migration():
    x, c_hit, h_hit = 4096, 0, 2048
    p = memserve()
    cs, _ = boundary_state(p, x, c_hit, h_hit)
    d = p.select(RouteRequest(x), cs)
    assert d.migrate_from == "h"
    est = {(e.instance_id, e.migrate_from): e.total_s for e in d.estimates}
    advantage = est[("c", None)] - est[("c", "h")]
    assert advantage > 0
    assert memserve(min_migrate_gain_s=advantage * 0.9).select(
        RouteRequest(x), cs).migrate_from == "h"
    off = memserve(min_migrate_gain_s=advantage * 1.1).select(RouteRequest(x), cs)
    assert off.migrate_from is None and off.instance_id == "c"


def test_memserve_no_migration_when_the_holder_itself_is_best():
    p = memserve(transfer_per_page_s=0.0)      # free link: still pointless
    d = p.select(RouteRequest(4096), [cand("c"), cand("h", hit=2048)])
    assert d.instance_id == "h" and d.migrate_from is None


def test_memserve_learns_what_a_migration_costs():
    """Slow migrations observed (fixed cost above the saving) stop the next ones; the fixed
    cost is a running average, so fast ones observed later bring migration back."""
    x, c_hit, h_hit = 4096, 0, 2048
    p = memserve()
    cs, _ = boundary_state(p, x, c_hit, h_hit)
    first = p.select(RouteRequest(x), cs)
    assert first.migrate_from == "h" and p.migration_overhead_s is None
    est = {(e.instance_id, e.migrate_from): e.total_s for e in first.estimates}
    advantage = est[("c", None)] - est[("c", "h")]
    link = p.transfer_s(h_hit)              # what the table alone says the push takes
    p.observe_migration(h_hit, link + 2 * advantage)
    assert p.migration_overhead_s == pytest.approx(2 * advantage)
    slow = p.select(RouteRequest(x), cs)
    assert slow.migrate_from is None and slow.instance_id == "c"
    for _ in range(40):                     # pushes got fast: the average comes down
        p.observe_migration(h_hit, link)
    assert p.migration_overhead_s < 0.01 * advantage
    assert p.select(RouteRequest(x), cs).migrate_from == "h"


def test_memserve_pinned_migration_overhead_is_not_learned():
    p = memserve(migration_overhead_s=0.25)
    assert p.migration_overhead_s == 0.25
    p.observe_migration(2048, 10.0)
    assert p.migration_overhead_s == 0.25
    with pytest.raises(ValueError, match="migration_overhead_s"):
        PolicyConfig(migration_overhead_s=-1.0)


def test_memserve_migration_overhead_is_in_the_explained_estimate():
    p = memserve()
    p.observe_migration(2048, 10.0)
    assert p.transfer_s(16) == pytest.approx(p.table.pages_for(16) * p.transfer_per_page_s
                                             + p.migration_overhead_s)
    p.observe_migration(2048, 0.0)           # faster than the table: no negative overhead
    assert p.migration_overhead_s >= 0.0


def test_memserve_affinity_keeps_the_holder_within_the_slack():
    """The holder of the longest prefix, queued, is estimated slower than an idle miss; with
    a slack above that gap it keeps the request, with a slack below it does not."""
    x = 2048
    t = load_table("cpu-bench")
    hit = 1920                              # a conversation's history: 94% of the prompt
    # holder's estimate = wait + exec(x, hit); idle miss = exec(x, 0): pick the wait so the
    # holder is 25% slower than the miss.
    wait = 1.25 * t.exec_time(x, 0) - t.exec_time(x, hit)
    cs = [cand("idle"), cand("holder", hit=hit, wait=wait)]
    greedy = memserve(migrate=False).select(RouteRequest(x), cs)
    assert greedy.instance_id == "idle"
    kept = memserve(migrate=False, affinity_slack=0.3).select(RouteRequest(x), cs)
    assert kept.instance_id == "holder" and "longest prefix" in kept.reason
    moved = memserve(migrate=False, affinity_slack=0.1).select(RouteRequest(x), cs)
    assert moved.instance_id == "idle"


def test_memserve_affinity_is_weak_for_a_shared_system_prompt():
    """A holder that caches only a small share of the prompt (a system prompt every request
    shares) gets a proportionally small slack: the same 25% queue moves the request."""
    x = 2048
    t = load_table("cpu-bench")
    hit = 128                               # 6% of the prompt
    wait = 1.25 * t.exec_time(x, 0) - t.exec_time(x, hit)
    cs = [cand("idle"), cand("holder", hit=hit, wait=wait)]
    assert memserve(migrate=False, affinity_slack=0.9).select(
        RouteRequest(x), cs).instance_id == "idle"
    # ...while the other instances hold the system prompt too, the slack counts only what
    # the holder has beyond the best option: here nothing, so the plain estimate decides.
    both = [cand("idle", hit=hit), cand("holder", hit=hit, wait=wait)]
    assert memserve(migrate=False, affinity_slack=0.9).select(
        RouteRequest(x), both).instance_id == "idle"


def test_memserve_affinity_does_not_block_a_migration():
    x, c_hit, h_hit = 4096, 0, 2048
    p = memserve(affinity_slack=0.5)
    cs, _ = boundary_state(p, x, c_hit, h_hit)   # the holder is queued 10x exec(x, 0)
    assert memserve().select(RouteRequest(x), cs).migrate_from == "h"
    d = p.select(RouteRequest(x), cs)
    assert d.instance_id == "c" and d.migrate_from == "h"
    # The slack keeps requests off instances with a shorter hit (where the cache is lost), not
    # off a migration (the cache moves along): even a slack covering the queue migrates.
    wide = memserve(affinity_slack=0.99).select(RouteRequest(x), cs)
    assert wide.instance_id == "c" and wide.migrate_from == "h"
    near = [cand("c"), cand("h", hit=h_hit, wait=0.01)]
    d2 = p.select(RouteRequest(x), near)
    assert d2.instance_id == "h" and d2.migrate_from is None


def test_memserve_affinity_without_any_hit_is_the_plain_choice():
    p = memserve(affinity_slack=0.5)
    cs = [cand("a", 3), cand("b", 0), cand("c", 1)]
    assert p.select(RouteRequest(512), cs).instance_id == "b"


def test_affinity_slack_is_validated():
    with pytest.raises(ValueError, match="affinity_slack"):
        PolicyConfig(affinity_slack=-0.1)
    with pytest.raises(ValueError, match="affinity_slack"):
        PolicyConfig(affinity_slack=float("nan"))


def test_memserve_affinity_from_one_on_keeps_a_whole_cached_conversation():
    """At slack 1 a holder caching the whole prompt beyond the best option keeps it however
    long its queue; one caching half of it keeps it up to twice the best estimate, and slack 2
    keeps that one too."""
    x = 1024
    t = load_table("cpu-bench")
    far = 50 * t.exec_time(x, 0)
    whole = [cand("idle"), cand("holder", hit=x, wait=far)]
    assert memserve(migrate=False, affinity_slack=1.0).select(
        RouteRequest(x), whole).instance_id == "holder"
    assert memserve(migrate=False, affinity_slack=0.95).select(
        RouteRequest(x), whole).instance_id == "idle"
    half = [cand("idle"), cand("holder", hit=x // 2, wait=3 * t.exec_time(x, 0))]
    assert memserve(migrate=False, affinity_slack=1.0).select(
        RouteRequest(x), half).instance_id == "idle"
    assert memserve(migrate=False, affinity_slack=2.0).select(
        RouteRequest(x), half).instance_id == "holder"


def test_memserve_migration_can_be_disabled():
    p = memserve(migrate=False)
    cs, _ = boundary_state(p, 4096, 0, 2048)
    d = p.select(RouteRequest(4096), cs)
    assert d.instance_id == "c" and d.migrate_from is None
    assert all(e.migrate_from is None for e in d.estimates)


def test_memserve_decision_is_explained():
    p = memserve()
    cs = [cand("a", 1, hit=0), cand("b", 2, hit=1024, host=256, wait=0.5), cand("c", 0, hit=512)]
    d = p.select(RouteRequest(2048), cs)
    ex = json.loads(json.dumps(d.explain()))
    assert ex["choice"] == d.instance_id and ex["policy"] == "memserve" and ex["reason"]
    rows = ex["candidates"]
    assert {r["instance_id"] for r in rows if r["migrate_from"] is None} == {"a", "b", "c"}
    assert [r["total_s"] for r in rows] == sorted(r["total_s"] for r in rows)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["instance_id"] == d.instance_id
    for r in rows:
        parts = r["wait_s"] + r["exec_s"] + r["swap_s"] + r["transfer_s"] + r["load_s"]
        assert r["total_s"] == pytest.approx(parts)
    assert chosen[0]["total_s"] == pytest.approx(min(r["total_s"] for r in rows))


def test_memserve_explain_off_keeps_the_same_choice():
    rng = random.Random(1)
    for _ in range(50):
        cs = [cand(f"i{k}", rng.randrange(4), hit=rng.choice([0, 0, 512, 1024, 2048]),
                   wait=rng.random()) for k in range(8)]
        full = memserve().select(RouteRequest(4096), cs)
        lean = memserve().select(RouteRequest(4096, explain=False), cs)
        assert (lean.instance_id, lean.migrate_from) == (full.instance_id, full.migrate_from)
        assert len(lean.estimates) == 1
        assert lean.estimates[0].total_s == pytest.approx(min(e.total_s for e in full.estimates))


def test_memserve_estimates_follow_the_table():
    p = memserve()
    t = load_table("cpu-bench")
    d = p.select(RouteRequest(1000), [cand("a", 2, hit=300, host=100, wait=0.25)])
    (e,) = d.estimates
    assert e.wait_s == 0.25
    assert e.exec_s == pytest.approx(t.exec_time(1000, 300))
    assert e.swap_s == pytest.approx(t.swap_time(t.pages_for(100), "in"))
    assert e.load_s == pytest.approx(2 * PolicyConfig().load_per_request_s)


def test_memserve_min_gain_also_applies_against_the_holder():
    """A migration must beat routing to the holder by the gain too, not only the target."""
    x, c_hit, h_hit = 4096, 0, 2048
    probe = memserve()
    t = probe.table
    mig = t.exec_time(x, h_hit) + probe.transfer_s(h_hit - c_hit)
    h_margin = 0.2 * (t.exec_time(x, c_hit) - mig)  # holder a little slower than migrating
    cs = [cand("c", hit=c_hit), cand("h", hit=h_hit, wait=mig - t.exec_time(x, h_hit) + h_margin)]
    assert probe.select(RouteRequest(x), cs).migrate_from == "h"
    # Gain above the margin over h but far below the one over c: route to the holder.
    d = memserve(min_migrate_gain_s=h_margin * 1.5).select(RouteRequest(x), cs)
    assert d.instance_id == "h" and d.migrate_from is None


@pytest.mark.parametrize("table", TABLES)
def test_memserve_load_term_outweighs_a_negligible_hit(table):
    """A one-page hit on a busy instance saves less than the load term of its queue length
    (with no queue-wait estimate): the idle miss wins; without the term, the hit does."""
    x, hit = 256, 16
    t = load_table(table)
    saving = t.prefix_saving(x, hit)
    per_req = PolicyConfig().load_per_request_s
    busy = int(saving / per_req) + 1
    cs = [cand("a", busy, hit=hit), cand("b", 0)]
    assert memserve(table).select(RouteRequest(x), cs).instance_id == "b"
    assert memserve(table, load_per_request_s=0.0).select(RouteRequest(x), cs).instance_id == "a"


def brute_force_best(p: MemServePolicy, x: int, cs: list[Candidate]) -> tuple[float, bool]:
    """The cheapest option by the module's rule, over every (target, source) pair, straight
    from the table. Returns (its estimated total, whether it is a migration)."""
    t, cfg = p.table, p.config

    def pay(c):     # wait + swap + load
        hit = min(c.hit_tokens, x)
        swap = t.swap_time(t.pages_for(min(c.host_tokens, hit)), "in")
        return c.load.queue_wait_s + swap + c.load.requests * cfg.load_per_request_s

    local = {c.instance_id: pay(c) + t.exec_time(x, min(c.hit_tokens, x - 1)) for c in cs}
    best_local = min(local.values())
    best_mig = float("inf")
    for c in cs:
        for h in cs:
            ch, hh = min(c.hit_tokens, x), min(h.hit_tokens, x)
            if hh <= ch:
                continue
            total = (pay(c) + t.pages_for(hh - ch) * p.transfer_per_page_s
                     + t.exec_time(x, min(hh, x - 1)))
            if (total + cfg.min_migrate_gain_s < local[c.instance_id]
                    and total + cfg.min_migrate_gain_s < local[h.instance_id]):
                best_mig = min(best_mig, total)
    if best_mig < best_local - 1e-9:
        return best_mig, True
    return best_local, False


@pytest.mark.parametrize("table", TABLES)
def test_memserve_matches_brute_force_on_random_clusters(table):
    rng = random.Random(7)
    t = load_table(table)
    for trial in range(150):
        x = rng.choice([64, 500, 2048, 4096, 9000])
        cs = []
        for k in range(rng.randrange(1, 9)):
            hit = rng.choice([0, 0, 16, x // 4, x // 2, x - 3, x, x + 50])
            cs.append(cand(f"i{k}", rng.randrange(5), hit=hit, host=rng.choice([0, hit // 2]),
                           wait=rng.random() * t.exec_time(x, 0)))
        cfg = dict(transfer_per_page_s=t.transfer_per_page_s * rng.choice([0.1, 1, 10, 100]),
                   min_migrate_gain_s=rng.choice([0.0, 0.0, 0.01 * t.exec_time(x, 0)]))
        p = memserve(table, **cfg)
        want_total, want_mig = brute_force_best(p, x, cs)
        d = p.select(RouteRequest(x), cs)
        chosen = [e for e in d.estimates
                  if e.instance_id == d.instance_id and e.migrate_from == d.migrate_from]
        assert len(chosen) == 1, (trial, d)
        assert chosen[0].total_s == pytest.approx(want_total, rel=1e-9), (trial, cs, cfg)
        assert (d.migrate_from is not None) == want_mig, (trial, cs, cfg)
        # The explain path's numbers equal the per-option estimator's.
        for e in d.estimates:
            c = next(c for c in cs if c.instance_id == e.instance_id)
            src = next((h for h in cs if h.instance_id == e.migrate_from), None)
            again = p._estimate(x, c, min(c.hit_tokens, x), src, e.hit_tokens if src else 0)
            assert again.total_s == pytest.approx(e.total_s, rel=1e-12)


def test_memserve_equal_estimates_keep_the_longer_hit() -> None:
    """A short prompt whose hit saves nothing measurable still stays where its prefix is."""
    policy = make_policy("memserve", PolicyConfig(migrate=False))
    x = 18
    cold = Candidate("cold", Load())
    warm = Candidate("warm", Load(), hit_tokens=13)
    assert policy.exec_s(x, 13) <= policy.exec_s(x, 0)  # never dearer (cost table guard)
    for order in ([cold, warm], [warm, cold]):
        for _ in range(3):
            assert policy.select(RouteRequest(x), order).instance_id == "warm"


@pytest.mark.parametrize("flags", [["--affinity-slack", "-1"], ["--migration-overhead-secs", "-1"],
                                   ["--min-migrate-gain-secs", "-0.5"]])
def test_bad_policy_flags_are_cli_errors(flags, capsys):
    """A bad policy setting is refused when the command line is parsed, with the cause."""
    from memserve_router.cli import config_from_args

    with pytest.raises(SystemExit) as exc:
        config_from_args(["--worker-urls", "http://127.0.0.1:9", *flags])
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err
