"""Repeated, alternating benchmark rounds and the spread of ratios across them.

On a shared, noisy machine one run of a configuration says little: identical runs differed by
10-70% in absolute JCT. Running every configuration in each round, in alternating order, and
comparing configurations *within* a round (a ratio per round) cancels slow drifts of the
machine's load; the spread of that ratio across rounds says how far noise moves it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def round_order(configs: Sequence[str], rnd: int) -> list[str]:
    """The order of round ``rnd``: the list forward on even rounds, reversed on odd ones (so each
    configuration's mean position over two rounds is the same)."""
    return list(configs) if rnd % 2 == 0 else list(reversed(configs))


@dataclass(frozen=True)
class Spread:
    """One figure over rounds: each round's value, their mean, min, max and stdev."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def below(self, bound: float) -> bool:
        """Whether every round's value is below ``bound`` (a claim beyond the spread)."""
        return bool(self.values) and self.hi < bound

    def fmt(self, nd: int = 2) -> str:
        """``mean (min-max, sd)``, or the single value for one round."""
        if len(self.values) == 1:
            return f"{self.mean:.{nd}f}"
        return (f"{self.mean:.{nd}f} ({self.lo:.{nd}f}-{self.hi:.{nd}f}, "
                f"sd {self.stdev:.{nd}f})")


def ratio_spread(ours: Sequence[float], ref: Sequence[float]) -> Spread:
    """Per-round ratios ``ours[r] / ref[r]`` (rounds where both exist).

    Raises:
        ValueError: no round has both figures.
    """
    pairs = [(a, b) for a, b in zip(ours, ref, strict=False) if b]
    if not pairs:
        raise ValueError("no round with both figures")
    return Spread(tuple(a / b for a, b in pairs))
