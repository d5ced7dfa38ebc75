"""Random index changes of a :class:`~.pool.MemPool`, for tests and benchmarks that check a
mirror (an event applier, the router's trees) against the pool's own tree.

One change is an insert (into a random tier), a delete, an LRU eviction, a replication to the
DRAM tier, optionally a device resize, or a clear; refusals the pool answers (out of pages,
locked pages) are part of the churn and are swallowed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .errors import MemPoolError
from .pool import MemPool

TIERS = ("device", "host")


def random_change(pool: MemPool, rng: random.Random, tokens: Sequence[int],
                  resize: tuple[int, int] | None = None) -> None:
    """Apply one random change to ``pool`` about the whole pages of ``tokens``.

    Args:
        resize: if given, ``(low, high)``: 5% of the changes (taken from replication's 12%)
            resize the device tier to a capacity in ``range(low, high)``.

    May change: the pool's index, its tiers' allocations and capacity, and what it publishes.
    """
    ps = pool.config.page_size
    toks = list(tokens[: len(tokens) // ps * ps])
    op = rng.random()
    if op < 0.55:
        tier = rng.choice(TIERS)
        try:
            pages = pool.alloc_mem(len(toks) // ps, tier)
        except MemPoolError:
            return
        pool.free_mem(pool.insert(toks, pages, tier).duplicates, tier)
    elif op < 0.7:
        pool.delete(toks)
    elif op < 0.85:
        pool.evict(rng.randrange(1, 4), rng.choice(TIERS))
    elif op < (0.92 if resize is not None else 0.97):
        try:
            pool.replicate(toks)
        except MemPoolError:
            pass
    elif op < 0.97:
        pool.resize("device", rng.randrange(*resize))  # type: ignore[misc]
    else:  # rare: a clear empties the trees the churn is meant to grow
        pool.clear()


def churn(pool: MemPool, rng: random.Random, steps: int, *, prefix: Sequence[int] = (),
          max_pages: int = 5, resize: tuple[int, int] | None = None) -> None:
    """``steps`` :func:`random_change` calls, each over a random head of ``prefix`` followed by
    up to ``max_pages - 1`` pages of tokens from ``range(3)`` (so paths share prefixes)."""
    ps = pool.config.page_size
    for _ in range(steps):
        toks = list(prefix[: rng.randrange(len(prefix) + 1)]) + [
            rng.randrange(3) for _ in range(rng.randrange(0, max_pages) * ps)]
        random_change(pool, rng, toks, resize)
