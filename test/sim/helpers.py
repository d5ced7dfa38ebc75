"""Small workloads for the simulator tests (no files, no servers)."""

from __future__ import annotations

import itertools

from sglang_memserve.sim import SimRequest

_ids = itertools.count(10_000_000)


def request(rid: int, at: float, blocks: tuple[int, ...], tokens: int, out: int = 4,
            session: str | None = None) -> SimRequest:
    """A request whose answer gets fresh block ids."""
    out_blocks = tuple(next(_ids) for _ in range(max(1, -(-out // 512))))
    return SimRequest(rid, at, blocks, tokens, out, out_blocks, session=session)


def conversations(n_conv: int, turns: int, *, gap_s: float = 2.0, blocks_per_turn: int = 4,
                  unit: int = 512, out: int = 8, shared: bool = True) -> list[SimRequest]:
    """``n_conv`` interleaved conversations, each turn extending its previous prompt by
    ``blocks_per_turn`` blocks (all starting with block 0 if ``shared``), one turn per
    conversation every ``gap_s`` seconds."""
    reqs = []
    fresh = itertools.count(1)
    prompts = {c: (0,) if shared else (next(fresh),) for c in range(n_conv)}
    rid = 0
    for t in range(turns):
        for c in range(n_conv):
            prompts[c] = prompts[c] + tuple(next(fresh) for _ in range(blocks_per_turn))
            blocks = prompts[c]
            reqs.append(request(rid, t * gap_s + c * gap_s / n_conv, blocks,
                                len(blocks) * unit, out, session=f"c{c}"))
            rid += 1
    return reqs
