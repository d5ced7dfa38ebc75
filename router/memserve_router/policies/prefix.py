"""``prefix``: sglang-router's ``cache_aware`` rule over exact hit lengths."""

from __future__ import annotations

from collections.abc import Sequence

from .base import (
    Candidate,
    Decision,
    Policy,
    RouteRequest,
    least_loaded,
    register_policy,
    require_candidates,
)


@register_policy("prefix")
class PrefixPolicy(Policy):
    """Longest cached prefix, unless the cluster is imbalanced or the best hit is too short.

    Imbalanced (``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold * min``
    over ``load.requests``): the least loaded. Else, if the best hit ratio
    ``hit_tokens / num_tokens`` reaches ``cache_threshold``: the longest hit (ties: least
    loaded, then rotation). Else the least loaded.
    """

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """See :meth:`Policy.select`; advances the rotation among ties."""
        require_candidates(candidates)
        cfg = self.config
        lo, hi, best = -1, 0, 0
        for c in candidates:    # one pass: load range and longest hit
            r = c.load.requests
            if lo < 0 or r < lo:
                lo = r
            if r > hi:
                hi = r
            if c.hit_tokens > best:
                best = c.hit_tokens
        if hi - lo > cfg.balance_abs_threshold and hi > cfg.balance_rel_threshold * lo:
            pick = self._rotate(least_loaded(candidates))
            return Decision(pick.instance_id, self.name,
                            f"imbalanced ({lo}..{hi} requests): least loaded")
        ratio = min(best, request.num_tokens) / request.num_tokens
        if best > 0 and ratio >= cfg.cache_threshold:
            pick = self._rotate(least_loaded([c for c in candidates if c.hit_tokens == best]))
            return Decision(pick.instance_id, self.name,
                            f"longest hit {best}/{request.num_tokens} tokens ({ratio:.2f})")
        pick = self._rotate(least_loaded(candidates))
        return Decision(pick.instance_id, self.name,
                        f"best hit ratio {ratio:.2f} < {cfg.cache_threshold}: least loaded")
