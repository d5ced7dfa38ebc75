"""The offline bound on hit rate: one infinite cache shared by every instance.

Requests in arrival order; each hits the longest prefix of its blocks that any earlier request's
prompt or answer contained, and then adds its own prompt and answer. No eviction, no placement:
no router can serve more tokens from cache.
"""

from __future__ import annotations

from collections.abc import Iterable

from .workload import SimRequest


def infinite_hit_rate(requests: Iterable[SimRequest], unit_tokens: int) -> float:
    """Hit tokens over prompt tokens of the infinite shared cache.

    Args:
        requests: in arrival order.
        unit_tokens: tokens per block (a hit counts ``min(blocks x unit, prompt tokens)``).

    Returns:
        The hit rate in [0, 1] (0 for no requests).
    """
    root: dict[int, dict] = {}
    hit = total = 0
    for r in requests:
        node, n = root, 0
        for b in r.blocks:
            nxt = node.get(b)
            if nxt is None:
                break
            node, n = nxt, n + 1
        hit += min(n * unit_tokens, r.tokens)
        total += r.tokens
        node = root
        for b in r.blocks + r.output_blocks:
            node = node.setdefault(b, {})
    return hit / total if total else 0.0
