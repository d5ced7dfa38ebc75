"""GlobalTree: one tree for many instances; match() against a brute-force reference;
predicted and approximate entries; removal; fed from real MemPool events (no processes)."""

from __future__ import annotations

import random

from memserve_router.trees import APPROX, DEVICE, HOST, PREDICTED, GlobalTree, PrefixHit
from sglang_memserve.mempool import (
    EventApplier,
    MemPool,
    MemPoolConfig,
    make_tensor_tier,
)
from sglang_memserve.mempool.capture import CapturingPublisher
from sglang_memserve.mempool.churn import random_change

PS = 4


def brute_match(gt: GlobalTree, tokens: list[int]) -> dict[str, PrefixHit]:
    """Per instance, page by page over the split-independent view."""
    flat = gt.tree.flatten()
    path = gt.tree.to_pages(tokens)
    insts = {inst for locs in flat.values() for inst, _ in locs}
    out = {}
    for inst in insts:
        n = host = 0
        for j in range(len(path)):
            tiers = {t for (i, t) in flat.get(tuple(path[: j + 1]), {}) if i == inst}
            if not tiers:
                break
            n += 1
            host += tiers == {HOST}
        if n:
            out[inst] = PrefixHit(n * PS, host * PS)
    return out


def flat_groups(gt: GlobalTree, tokens: list[int]) -> dict[str, PrefixHit]:
    """``match_groups`` as ``match`` answers it, checking the groups' own invariants: disjoint,
    distinct lengths in increasing order, DRAM parts only of members, union = ``holders``."""
    m = gt.match_groups(tokens)
    out: dict[str, PrefixHit] = {}
    lengths = [g.tokens for g in m.groups]
    assert lengths == sorted(set(lengths)) and all(n > 0 for n in lengths)
    for g in m.groups:
        assert g.members and not (g.members & out.keys())
        assert set(g.host) <= g.members and all(0 < h <= g.tokens for h in g.host.values())
        for inst in g.members:
            out[inst] = PrefixHit(g.tokens, g.host.get(inst, 0))
    assert set(out) == m.holders
    return out


def random_prompt(rng: random.Random, base: list[int]) -> list[int]:
    keep = rng.randrange(len(base) + 1)
    return base[:keep] + [rng.randrange(3) for _ in range(rng.randrange(0, 5) * PS + rng.randrange(PS))]


def test_match_equals_brute_force_under_random_changes():
    rng = random.Random(11)
    gt = GlobalTree(PS, "colocated")
    insts = [f"i{k}" for k in range(6)]
    system = [rng.randrange(3) for _ in range(6 * PS)]
    ids = iter(range(10**6))
    held = []
    now = 0.0
    for step in range(800):
        inst = rng.choice(insts)
        toks = random_prompt(rng, system)
        path = gt.tree.to_pages(toks)
        op = rng.random()
        if op < 0.45 and path:
            start = rng.randrange(len(path))
            tier = rng.choice([DEVICE, HOST])
            gt.stored(inst, path, start, tier, [next(ids) for _ in path[start:]])
            held.append((inst, path, start, tier))
        elif op < 0.65 and held:
            i, p, s, t = held.pop(rng.randrange(len(held)))
            gt.removed(i, p, s, t)
        elif op < 0.8:
            gt.predict(inst, toks, ttl_s=rng.uniform(0.5, 3), now=now)
        elif op < 0.9:
            gt.observe(inst, toks, ttl_s=rng.uniform(0.5, 3), now=now)
        elif op < 0.92:
            gt.remove_instance(inst)
            held = [h for h in held if h[0] != inst]
        now += 0.05
        gt.expire(now)
        q = random_prompt(rng, system)
        want = brute_match(gt, q)
        assert gt.match(q) == want, step
        assert flat_groups(gt, q) == want, step
        if step % 50 == 0:
            gt.check()
    gt.check()


def test_match_is_read_only_and_one_walk_for_many_instances():
    gt = GlobalTree(PS)
    system = list(range(40 * PS))
    for k in range(300):
        path = gt.tree.to_pages(system + [k] * PS)
        gt.stored(f"i{k}", path, 0, DEVICE if k % 3 else HOST, list(range(len(path))))
    before = gt.tree.flatten()
    hits = gt.match(system + [7] * PS + [1, 2])
    groups = gt.match_groups(system + [7] * PS + [1, 2]).groups
    assert gt.tree.flatten() == before
    assert [(len(g.members), g.tokens, len(g.host)) for g in groups] == [(299, 40 * PS, 100),
                                                                          (1, 41 * PS, 0)]
    assert len(hits) == 300
    assert hits["i7"] == PrefixHit(41 * PS, 0)
    assert hits["i8"] == PrefixHit(40 * PS, 0)
    assert hits["i6"] == PrefixHit(40 * PS, 40 * PS)  # host only
    gt.check()


def test_predictions_expire_or_are_confirmed():
    gt = GlobalTree(PS)
    prompt = list(range(5 * PS)) + [99]
    path = gt.tree.to_pages(prompt)
    gt.stored("a", path[:2], 0, DEVICE, [0, 1])
    assert gt.predict("a", prompt, ttl_s=2.0, now=10.0) == 3  # beyond the 2 held pages
    assert gt.predict("b", prompt, ttl_s=2.0, now=10.0) == 5
    assert gt.match(prompt) == {"a": PrefixHit(5 * PS), "b": PrefixHit(5 * PS)}
    # An event for "a" covering pages 2..3 replaces that part of its prediction.
    gt.stored("a", path[:4], 2, DEVICE, [2, 3])
    assert gt.expire(11.9) == 0
    assert gt.expire(12.0) == 1 + 5  # a's last predicted page, all of b's
    assert gt.match(prompt) == {"a": PrefixHit(4 * PS)}
    assert gt.snapshot_of("a") == {tuple(path[: j + 1]): {DEVICE: j} for j in range(4)}
    assert gt.pages_of("a") == 4 and gt.pages_of("b", frozenset({PREDICTED})) == 0
    gt.check()


def test_approx_ttl_refreshed_by_later_hits():
    gt = GlobalTree(PS)
    sys_prompt = list(range(3 * PS))
    gt.observe("s", sys_prompt + [1] * PS, ttl_s=5.0, now=0.0)
    gt.observe("s", sys_prompt + [2] * PS, ttl_s=5.0, now=4.0)  # refreshes the shared part
    gt.expire(6.0)
    assert gt.match(sys_prompt + [1] * PS) == {"s": PrefixHit(3 * PS)}
    assert gt.match(sys_prompt + [2] * PS) == {"s": PrefixHit(4 * PS)}
    gt.expire(9.0)
    assert gt.match(sys_prompt + [2] * PS) == {}
    assert gt.tree.root.children == {}
    assert gt.pages_of("s", frozenset({APPROX})) == 0


def test_remove_instance_prunes():
    gt = GlobalTree(PS)
    p = gt.tree.to_pages(list(range(4 * PS)))
    gt.stored("a", p, 0, DEVICE, [0, 1, 2, 3])
    gt.stored("b", p[:2], 0, HOST, [5, 6])
    gt.predict("a", list(range(6 * PS)), ttl_s=9, now=0)
    assert gt.remove_instance("a") == 6
    assert gt.match(list(range(6 * PS))) == {"b": PrefixHit(2 * PS, 2 * PS)}
    assert sum(len(n.pages) for n in gt.tree.nodes()) == 2
    gt.check()


Captured = CapturingPublisher


def test_tree_fed_by_several_pools_equals_each_pool():
    """Real MemPool events from three pools sharing prefixes, into one GlobalTree."""
    rng = random.Random(4)
    gt = GlobalTree(PS)
    pools, appliers = [], []
    for name in ("a", "b", "c"):
        p = MemPool(MemPoolConfig(page_size=PS), name, {
            "device": make_tensor_tier("device", 24, PS, page_nbytes=8),
            "host": make_tensor_tier("host", 48, PS, page_nbytes=8)}, events=Captured(name))
        a = EventApplier(name, gt)
        a.load_snapshot(p.snapshot())
        pools.append(p)
        appliers.append(a)
    system = [rng.randrange(3) for _ in range(3 * PS)]
    for _ in range(400):
        p = rng.choice(pools)
        random_change(p, rng, random_prompt(rng, system))
        for pool, a in zip(pools, appliers, strict=True):
            for m in pool.events.messages:
                a.apply_message(m)
            pool.events.messages.clear()
    for pool in pools:
        assert gt.snapshot_of(pool.instance_id) == pool.tree.flatten()
        assert gt.pages_of(pool.instance_id) == sum(len(n.pages) for n in pool.tree.nodes())
    q = system + [0] * PS
    assert gt.match(q) == brute_match(gt, q)
    gt.check()
