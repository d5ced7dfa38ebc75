"""Per-request records and their summary (JCT and TTFT avg/P50/P90/P99, TPOT, hit rates)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    """One request of a replay. Times are seconds from the replay's start."""

    conv_id: str
    turn: int
    sent_at: float
    ttft: float
    jct: float
    prompt_tokens: int
    cached_tokens: int
    cached_by_tier: dict[str, int] = field(default_factory=dict)
    output_ids: list[int] = field(default_factory=list)
    error: str | None = None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def tpot_of(r: RequestRecord) -> float | None:
    """Seconds per output token after the first (None with fewer than two tokens)."""
    n = len(r.output_ids)
    return (r.jct - r.ttft) / (n - 1) if n > 1 else None


def summarize(records: list[RequestRecord]) -> dict[str, Any]:
    """Aggregate figures of a replay (failed requests are counted, not averaged)."""
    ok = [r for r in records if r.error is None]
    jct = [r.jct for r in ok]
    ttft = [r.ttft for r in ok]
    tpot = [t for t in (tpot_of(r) for r in ok) if t is not None]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    tiers: dict[str, int] = {}
    for r in ok:
        for tier, n in r.cached_by_tier.items():
            tiers[tier] = tiers.get(tier, 0) + n
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "jct_avg": statistics.fmean(jct) if jct else float("nan"),
        "jct_p50": _pct(jct, 0.5),
        "jct_p90": _pct(jct, 0.9),
        "jct_p99": _pct(jct, 0.99),
        "ttft_avg": statistics.fmean(ttft) if ttft else float("nan"),
        "ttft_p50": _pct(ttft, 0.5),
        "ttft_p90": _pct(ttft, 0.9),
        "ttft_p99": _pct(ttft, 0.99),
        "tpot_avg": statistics.fmean(tpot) if tpot else float("nan"),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "computed_prompt_tokens": prompt - cached,
        "output_tokens": sum(len(r.output_ids) for r in ok),
        "hit_rate": cached / prompt if prompt else 0.0,
        "cached_by_tier": tiers,
    }


def to_jsonable(records: list[RequestRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
