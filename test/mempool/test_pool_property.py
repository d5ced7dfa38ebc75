"""Property-based test: random interleavings of MemPool operations against a reference model.

The model is the exact set of cached ``(tier, page path)`` entries with the content each page must
hold (a fingerprint written into the page). Evictions (explicit, or inside alloc/resize) are the
only changes the model cannot predict; they are diffed and checked instead: only unlocked
entries of the evicted tier may vanish, nothing may appear. After every step: check_integrity(),
the index equals the model, every cached page holds its fingerprint, locked entries are present.
"""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sglang_memserve.mempool import (
    CapacityError,
    MemPool,
    MemPoolConfig,
    OutOfPages,
    PageLocked,
    make_tensor_tier,
)

PS = 2
TIERS = ("device", "host")
tokens_st = st.lists(st.integers(0, 2), min_size=0, max_size=5 * PS)
tier_st = st.sampled_from(TIERS)


def fingerprint(path: tuple) -> int:
    return hash(("fp", path)) & 0x7FFF_FFFF_FFFF


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = MemPool(
            MemPoolConfig(page_size=PS),
            "p0",
            {
                "device": make_tensor_tier("device", 12, PS, capacity=8, page_nbytes=8),
                "host": make_tensor_tier("host", 16, PS, capacity=12, page_nbytes=8),
            },
        )
        self.model: dict[str, dict[tuple, int]] = {t: {} for t in TIERS}
        self.held: list[tuple[str, list[int], list[int]]] = []  # (tier, pages, fingerprints)
        self.locks: list[tuple[object, set[tuple]]] = []  # (handle, protected paths)
        self.counter = 0

    # ---- helpers -----------------------------------------------------------------------

    def view(self, tier: str, p: int) -> int:
        return int(self.pool.tiers[tier].store.buf.view(torch.int64)[p, 0])

    def write(self, tier: str, pages: list[int], fps: list[int]) -> None:
        buf = self.pool.tiers[tier].store.buf.view(torch.int64)
        for p, f in zip(pages, fps, strict=True):
            buf[p, 0] = f

    def actual(self) -> dict[str, dict[tuple, int]]:
        out: dict[str, dict[tuple, int]] = {t: {} for t in TIERS}
        for path, locs in self.pool.tree.flatten().items():
            for t, pid in locs.items():
                out[t][path] = pid
        return out

    def absorb_evictions(self, allowed_tiers: tuple[str, ...]) -> None:
        """Entries that vanished must be unlocked and in an allowed tier; nothing may appear."""
        act = self.actual()
        locked = set().union(*(p for _, p in self.locks)) if self.locks else set()
        for t in TIERS:
            gone = set(self.model[t]) - set(act[t])
            extra = set(act[t]) - set(self.model[t])
            assert not extra, f"{t}: entries appeared from nowhere: {extra}"
            if gone:
                assert t in allowed_tiers, f"{t}: entries vanished: {gone}"
                assert not gone & locked, f"{t}: locked entries evicted"
                for g in gone:
                    del self.model[t][g]

    def paths(self, tokens: list[int]) -> list[tuple]:
        pages = self.pool.tree.to_pages(tokens)
        return [tuple(pages[: i + 1]) for i in range(len(pages))]

    # ---- rules -------------------------------------------------------------------------

    @rule(tokens=tokens_st, tier=tier_st)
    def alloc_and_insert(self, tokens, tier):
        paths = self.paths(tokens)
        try:
            pages = self.pool.alloc_mem(len(paths), tier)
        except OutOfPages:
            self.absorb_evictions((tier,))
            assert self.pool.tiers[tier].allocator.num_free < len(paths)
            return
        self.absorb_evictions((tier,))
        self.write(tier, pages, [fingerprint(p) for p in paths])
        res = self.pool.insert(tokens, pages, tier)
        for i, p in enumerate(paths):
            if p in self.model[tier]:
                assert pages[i] in res.duplicates
            else:
                assert pages[i] in res.new_pages
                self.model[tier][p] = fingerprint(p)
        if res.duplicates:
            self.pool.free_mem(res.duplicates, tier)

    @rule(n=st.integers(0, 4), tier=tier_st)
    def alloc_hold(self, n, tier):
        try:
            pages = self.pool.alloc_mem(n, tier)
        except OutOfPages:
            self.absorb_evictions((tier,))
            return
        self.absorb_evictions((tier,))
        fps = []
        for _ in pages:
            self.counter += 1
            fps.append(self.counter)
        self.write(tier, pages, fps)
        self.held.append((tier, pages, fps))

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 100))
    def free_held(self, i):
        tier, pages, _ = self.held.pop(i % len(self.held))
        self.pool.free_mem(pages, tier)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 100))
    def swap_held(self, i):
        i %= len(self.held)
        tier, pages, fps = self.held[i]
        other = "host" if tier == "device" else "device"
        try:
            new = (self.pool.swap_out if tier == "device" else self.pool.swap_in)(pages)
        except OutOfPages:
            self.absorb_evictions((other,))
            return
        self.absorb_evictions((other,))
        assert [self.view(other, p) for p in new] == fps
        self.held[i] = (other, new, fps)

    @rule(tokens=tokens_st)
    def match(self, tokens):
        m = self.pool.match(tokens)
        paths = self.paths(tokens)

        def longest(pred):
            n = 0
            while n < len(paths) and pred(paths[n]):
                n += 1
            return n * PS

        any_tier = longest(lambda p: any(p in self.model[t] for t in TIERS))
        assert m.num_tokens == any_tier
        for t in TIERS:
            assert m.tier_tokens[t] == longest(lambda p, t=t: p in self.model[t])
            assert [self.view(t, p) for p in m.pages(t)] == [
                fingerprint(p) for p in paths[: m.tier_tokens[t] // PS]
            ]

    @rule(tokens=tokens_st)
    def lock(self, tokens):
        m = self.pool.match(tokens)
        if m.handle is None:
            return
        self.pool.lock(m.handle)
        self.locks.append((m.handle, set(self.paths(tokens)[: m.num_tokens // PS])))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100))
    def unlock(self, i):
        handle, _ = self.locks.pop(i % len(self.locks))
        self.pool.unlock(handle)

    @rule(tokens=tokens_st)
    def delete(self, tokens):
        paths = self.paths(tokens)
        try:
            self.pool.delete(tokens)
        except PageLocked:
            self.absorb_evictions(())
            return
        if paths:
            p = paths[-1]
            for t in TIERS:
                for q in [q for q in self.model[t] if q[: len(p)] == p]:
                    del self.model[t][q]
        self.absorb_evictions(())

    @rule(n=st.integers(0, 6), tier=tier_st)
    def evict(self, n, tier):
        before = len(self.model[tier])
        freed = self.pool.evict(n, tier)
        self.absorb_evictions((tier,))
        assert before - len(self.model[tier]) == freed

    @rule(tokens=tokens_st, src=tier_st)
    def replicate(self, tokens, src):
        dst = "host" if src == "device" else "device"
        try:
            self.pool.replicate(tokens, src, dst)
        except OutOfPages:
            self.absorb_evictions((dst,))
            return
        for p in self.paths(tokens):
            if p not in self.model[src]:
                break
            self.model[dst][p] = fingerprint(p)
        self.absorb_evictions((dst,))

    @rule(tier=tier_st, cap=st.integers(0, 16))
    def resize(self, tier, cap):
        a = self.pool.tiers[tier].allocator
        try:
            self.pool.resize(tier, cap)
        except CapacityError:
            self.absorb_evictions((tier,))
            assert cap > a.max_capacity or cap < a.capacity
            return
        self.absorb_evictions((tier,))
        assert a.capacity == cap

    @rule()
    def clear(self):
        try:
            self.pool.clear()
        except PageLocked:
            assert self.locks
            return
        self.model = {t: {} for t in TIERS}
        self.absorb_evictions(())

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def consistent(self):
        self.pool.check_integrity()
        act = self.actual()
        for t in TIERS:
            assert set(act[t]) == set(self.model[t])
            for path, pid in act[t].items():
                assert self.view(t, pid) == self.model[t][path]
        for tier, pages, fps in self.held:
            assert [self.view(tier, p) for p in pages] == fps
        for _, paths in self.locks:
            for p in paths:
                assert any(p in self.model[t] for t in TIERS)


PoolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolProperties = PoolMachine.TestCase
