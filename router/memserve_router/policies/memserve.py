"""``memserve``, the default policy: lowest estimated time to first token, by the cost model.

For each candidate ``c`` (prompt of ``x`` tokens, ``c`` caching ``y`` of them)::

    local(c)      = wait(c) + exec(x, y) + swap_in(pages of c's DRAM part) + load(c)
    migrate(h->c) = wait(c) + transfer(pages of h.hit - c.hit) + exec(x, h.hit)
                    + swap_in(c's DRAM part) + load(c)          for a holder h with h.hit > c.hit

``exec``, ``swap_in`` and ``transfer`` come from a measured cost table
(``sglang_memserve.gpu.costmodel``); the link cost may be overridden by the config. ``transfer``
also carries each migration's fixed cost as observed (:meth:`MemServePolicy.observe_migration`:
the control round trips through both instances' scheduler loops, which no table knows), so a
cluster where pushes are slow (loopback TCP on busy CPUs) stops migrating by itself while one
with RDMA keeps doing it. ``load`` is
``config.load_per_request_s`` per request on ``c``: small, so that equal estimates spread over
idle instances. An exact whole-prompt hit still computes one token (``y <= x - 1``). A migration
is chosen only if it beats both ``local(c)`` and ``local(h)`` by ``min_migrate_gain_s`` and
every local option. Ties: the longest hit, then fewer requests, then rotation by instance id. The sum is
conservative: the transfer is not assumed to overlap the target's queue wait.

With ``hit_survival`` a local hit is priced by its survival inside the estimate:
``exec(x, y) + lost * (exec(x, 0) - exec(x, y))`` with ``lost = min(1, score / exec(kv, 0))``,
``score`` the candidate's queue wait + load term and ``kv`` its KV capacity: the expected
prefill when what runs ahead rewrites that share of the pool, evicting the prefix.

The holder of the longest prefix keeps the request within ``affinity_slack`` of the best
estimate (scaled by the share of the prompt it caches beyond that option), and, with
``affinity_pressure``, by its :meth:`MemServePolicy.survival`: how much of its KV the prefill
work queued ahead of the request leaves unwritten. Under memory pressure a busy holder's prefix
is evicted before the request runs, so the slack fades there and stays where memory is ample.

Cost: one pass over the candidates plus, for each distinct hit length among them, a few exec
lookups (cached) against the ``max_migrate_sources`` longest distinct hits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sglang_memserve.gpu.costmodel import CostTable, load_table

from .base import (
    Candidate,
    Decision,
    Estimate,
    Policy,
    PolicyConfig,
    RouteRequest,
    register_policy,
    require_candidates,
)

# Estimates closer than this (seconds) count as equal, so float noise cannot break a tie.
_TIE_S = 1e-9
_EXEC_CACHE_SIZE = 1 << 16
# Weight of the newest migration in the fixed-cost average (the first one sets it).
_MIGRATION_EWMA = 0.2


@register_policy("memserve")
class MemServePolicy(Policy):
    """Cost-model routing with optional prefix migration (module docstring)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self.table: CostTable = load_table(config.cost_table)
        self.transfer_per_page_s: float = (config.transfer_per_page_s
                                           if config.transfer_per_page_s is not None
                                           else self.table.transfer_per_page_s)
        self._exec_cache: dict[tuple[int, int], float] = {}
        # None until a migration is observed; a configured value is pinned (never learned).
        self.migration_overhead_s: float | None = config.migration_overhead_s

    def observe_migration(self, tokens: int, seconds: float) -> None:
        """Learn a migration's fixed cost from one that ran: its wall time less the table's
        transfer time of its ``tokens``. Changes only :attr:`migration_overhead_s`.

        Args:
            tokens: tokens of KV the migration moved (or was asked to move).
            seconds: how long the request waited for it.

        A pinned ``config.migration_overhead_s`` is kept as it is.
        """
        if self.config.migration_overhead_s is not None:
            return
        over = max(0.0, seconds - self.table.pages_for(tokens) * self.transfer_per_page_s)
        old = self.migration_overhead_s
        self.migration_overhead_s = over if old is None else (
            old + _MIGRATION_EWMA * (over - old))

    def exec_s(self, x: int, y: int) -> float:
        """Prefill time of ``x`` tokens with ``y`` cached (``y`` clamped to ``x - 1``), memoised.

        Args:
            x: prompt tokens (> 0).
            y: cached prefix tokens (>= 0).

        Returns:
            Seconds. May grow the policy's bounded memo.
        """
        key = (x, min(y, x - 1))
        t = self._exec_cache.get(key)
        if t is None:
            if len(self._exec_cache) >= _EXEC_CACHE_SIZE:
                self._exec_cache.clear()
            t = self._exec_cache[key] = self.table.exec_time(*key)
        return t

    def transfer_s(self, tokens: int) -> float:
        """Time to move ``tokens`` tokens of KV over the link in use (whole table pages), plus
        the fixed cost observed per migration."""
        return (self.table.pages_for(tokens) * self.transfer_per_page_s
                + (self.migration_overhead_s or 0.0))

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """See :meth:`Policy.select`; advances the rotation among ties and grows the exec memo.

        Returns:
            The cheapest option; ``migrate_from`` / ``migrate_tokens`` set when it is a
            migration. ``estimates`` holds every local option and each candidate's cheapest
            migration when ``request.explain``, else the chosen one only.
        """
        require_candidates(candidates)
        cfg, table = self.config, self.table
        x = request.num_tokens
        exec_by_hit = {h if h < x else x: 0.0 for h in {c.hit_tokens for c in candidates}}
        for h in exec_by_hit:
            exec_by_hit[h] = self.exec_s(x, h)
        # {hit length v: (transfer(u - v) + exec(x, u), u)} for the cheapest source length u > v
        mig = self._sources(x, exec_by_hit) if cfg.migrate and len(exec_by_hit) > 1 else {}
        sources = {u for _, u in mig.values()}
        page, swap_pp, per_req = table.page_size, table.swap_in_per_page_s, cfg.load_per_request_s
        priced = cfg.hit_survival
        local: list[float] = []
        best_local = float("inf")
        migs: list[tuple[float, int, int]] = []        # (total, target index, source length)
        holder: dict[int, tuple[float, int, int]] = {}  # u: (local, requests, index), cheapest
        for i, c in enumerate(candidates):              # the hot loop: inlined on purpose
            ld = c.load
            hit = c.hit_tokens if c.hit_tokens < x else x
            r = ld.running + ld.queued + ld.inflight
            b = ld.queue_wait_s + r * per_req          # what every option on c pays
            if c.host_tokens:
                host = c.host_tokens if c.host_tokens < hit else hit
                b += (-(-host // page)) * swap_pp
            t = b + exec_by_hit[hit]
            if priced and hit and ld.kv_tokens:
                t += self._eviction_s(x, hit, ld.kv_tokens, ld.queue_wait_s + r * per_req)
            local.append(t)
            if t < best_local:
                best_local = t
            if mig:
                m = mig.get(hit)
                if m is not None:
                    migs.append((b + m[0], i, m[1]))
                if hit in sources:
                    hb = holder.get(hit)
                    if hb is None or (t, r) < hb[:2]:
                        holder[hit] = (t, r, i)
        tied = [c for c, t in zip(candidates, local, strict=True) if t <= best_local + _TIE_S]
        # Among equal estimates the longest hit wins: it keeps a conversation where its KV is
        # (cost tables flatten out for short prompts, where a hit saves less than the noise).
        longest = max(c.hit_tokens for c in tied)
        affinity = self._affinity(x, candidates, local, best_local)
        kept = affinity[0] if affinity is not None else None
        if kept is not None:
            tied, longest = kept, kept[0].hit_tokens
        pick = self._rotate(self._fewest_requests([c for c in tied if c.hit_tokens == longest]))
        # A migration moves the cache along, so the slack does not apply to it.
        chosen_mig = self._eligible_migration(migs, local, holder, best_local)
        if chosen_mig is not None:
            ti, src_hit = chosen_mig
            target, source = candidates[ti], candidates[holder[src_hit][2]]
            have = min(target.hit_tokens, x)
            self._last = target.instance_id
            chosen = self._estimate(x, target, have, source, src_hit)
            reason = (f"migrate {src_hit - have} tokens from {source.instance_id}: "
                      f"{chosen.total_s * 1e3:.2f} ms vs best local {best_local * 1e3:.2f} ms")
            decision = Decision(target.instance_id, self.name, reason, source.instance_id,
                                src_hit, have)
        else:
            chosen = self._estimate(x, pick, min(pick.hit_tokens, x))
            why = (f"holds the longest prefix: estimate {chosen.total_s * 1e3:.2f} ms, within "
                   f"the affinity slack ({affinity[1]:.2f}) of the best {best_local * 1e3:.2f} ms"
                   if affinity is not None and chosen.total_s > best_local + _TIE_S
                   else f"lowest estimate {chosen.total_s * 1e3:.2f} ms")
            decision = Decision(pick.instance_id, self.name,
                                f"{why}, hit {chosen.hit_tokens}/{x} tokens")
        if not request.explain:
            return _with_estimates(decision, (chosen,))
        return _with_estimates(decision, self._all_estimates(x, candidates, exec_by_hit, migs,
                                                             holder))

    def _all_estimates(self, x: int, candidates: Sequence[Candidate],
                       exec_by_hit: dict[int, float], migs: list[tuple[float, int, int]],
                       holder: dict[int, tuple[float, int, int]]) -> tuple[Estimate, ...]:
        """Every local option, then each candidate's cheapest migration (the explain path:
        builds one object per option, from the values ``select`` computed)."""
        page, swap_pp = self.table.page_size, self.table.swap_in_per_page_s
        per_req = self.config.load_per_request_s
        ests = []
        parts = []
        for c in candidates:
            ld = c.load
            hit = c.hit_tokens if c.hit_tokens < x else x
            host = c.host_tokens if c.host_tokens < hit else hit
            part = (ld.queue_wait_s, (-(-host // page)) * swap_pp, ld.requests * per_req, host)
            parts.append(part)
            ests.append(Estimate(c.instance_id, hit, host, part[0],
                                 exec_by_hit[hit] + self._eviction_s(
                                     x, hit, ld.kv_tokens, ld.queue_wait_s + part[2]), part[1],
                                 0.0, None, part[2]))
        for _, i, u in migs:
            c, (wait, swap, load, host) = candidates[i], parts[i]
            have = c.hit_tokens if c.hit_tokens < x else x
            ests.append(Estimate(c.instance_id, u, host, wait, exec_by_hit[u], swap,
                                 self.transfer_s(u - have),
                                 candidates[holder[u][2]].instance_id, load))
        return tuple(ests)

    def _eligible_migration(self, migs: list[tuple[float, int, int]], local: list[float],
                            holder: dict[int, tuple[float, int, int]], best_local: float,
                            ) -> tuple[int, int] | None:
        """The cheapest migration that beats every local option, and its target's and its
        source's local options by ``min_migrate_gain_s``.

        Args:
            migs: ``(total, target index, source length)`` options.
            local: local estimate per candidate index.
            holder: per source length, its cheapest holder ``(local, requests, index)``.
            best_local: the cheapest local estimate.

        Returns:
            ``(target index, source length)``, or None to stay local.
        """
        gain = self.config.min_migrate_gain_s
        for total, i, u in sorted(m for m in migs if m[0] < best_local - _TIE_S):
            if total + gain < local[i] and total + gain < holder[u][0]:
                return i, u
        return None

    def _sources(self, x: int, exec_by_hit: dict[int, float]) -> dict[int, tuple[float, int]]:
        """For each distinct hit length ``v``, the cheapest migration source among the
        ``max_migrate_sources`` longest distinct hits ``u > v``.

        Args:
            x: prompt tokens.
            exec_by_hit: exec time per distinct (clamped) hit length among the candidates.

        Returns:
            ``{v: (transfer(u - v) + exec(x, u), u)}`` for each ``v`` below some source.
        """
        sources = [u for u in sorted(exec_by_hit, reverse=True)[:self.config.max_migrate_sources]
                   if u > 0]
        mig: dict[int, tuple[float, int]] = {}
        for v in exec_by_hit:
            best: tuple[float, int] | None = None
            for u in sources:
                if u <= v:
                    break
                cost = self.transfer_s(u - v) + exec_by_hit[u]
                if best is None or cost < best[0]:
                    best = (cost, u)
            if best is not None:
                mig[v] = best
        return mig

    def _estimate(self, x: int, target: Candidate, hit: int, source: Candidate | None = None,
                  src_hit: int = 0) -> Estimate:
        """The explained option of serving on ``target`` (after migrating ``src_hit`` tokens'
        prefix from ``source`` when given); ``hit`` is the target's own clamped hit."""
        ld, table = target.load, self.table
        host = min(target.host_tokens, hit)
        load_s = ld.requests * self.config.load_per_request_s
        common = dict(wait_s=ld.queue_wait_s, swap_s=table.swap_time(table.pages_for(host), "in"),
                      load_s=load_s)
        if source is None:
            lost = self._eviction_s(x, hit, ld.kv_tokens, ld.queue_wait_s + load_s)
            return Estimate(target.instance_id, hit, host, exec_s=self.exec_s(x, hit) + lost,
                            **common)
        return Estimate(target.instance_id, src_hit, host, exec_s=self.exec_s(x, src_hit),
                        transfer_s=self.transfer_s(src_hit - hit),
                        migrate_from=source.instance_id, **common)

    def _affinity(self, x: int, candidates: Sequence[Candidate], local: list[float],
                  best_local: float) -> tuple[list[Candidate], float] | None:
        """The holders of the longest cached prefix whose estimate is the holders' best, when
        that best is within the slack of the overall best (they keep the request), with the
        slack applied; None when no instance holds a prefix, the slack is 0, or the holders lose
        by more.

        The slack is ``affinity_slack`` scaled by the share of the prompt the holders cache
        beyond the best option: a conversation's own history (most of its prompt) binds it to
        its instance, a system prompt shared by every request (a small share) barely does, so
        common prefixes cannot pile a cluster's traffic onto their first holder. With
        ``affinity_pressure`` it is scaled too by the holder's :meth:`survival`: under memory
        pressure a busy holder evicts the prefix before the request runs, so keeping the
        request there buys little and spreading it is cheaper. Changes nothing.
        """
        slack = self.config.affinity_slack
        if slack <= 0.0:
            return None
        longest = max(c.hit_tokens for c in candidates)
        if longest <= 0:
            return None
        own, best_hit = [], 0
        for c, t in zip(candidates, local, strict=True):
            if c.hit_tokens == longest:
                own.append((t, c))
            if t <= best_local + _TIE_S and c.hit_tokens > best_hit:
                best_hit = c.hit_tokens
        best_own = min(t for t, _ in own)
        kept = [c for t, c in own if t <= best_own + _TIE_S]
        if self.config.affinity_pressure:
            slack *= max(self.survival(c) for c in kept)
        share = (min(longest, x) - min(best_hit, x)) / x
        if best_own * (1.0 - slack * share) > best_local + _TIE_S:
            return None
        return kept, slack

    def survival(self, c: Candidate) -> float:
        """The share of ``c``'s KV that the prefill work queued ahead on it leaves unwritten:
        ``1 - wait / exec(kv_tokens, 0)`` in [0, 1] (the cost table's time to compute as many
        uncached tokens as ``c`` holds; the wait is in the same table's seconds), a proxy for
        the chance that a cached prefix there is still cached when the request runs. 1 where
        ``c.load.kv_tokens`` is unknown (0). Grows only the exec memo."""
        ld = c.load
        if ld.kv_tokens <= 0 or ld.queue_wait_s <= 0.0:
            return 1.0
        return max(0.0, 1.0 - ld.queue_wait_s / self.exec_s(ld.kv_tokens, 0))

    def _eviction_s(self, x: int, hit: int, kv_tokens: int, wait_s: float) -> float:
        """With ``hit_survival``: the prefill an instance's ``hit`` (clamped) is expected to
        lose to eviction before the request runs there, ``lost * (exec(x, 0) - exec(x, hit))``
        with ``lost = min(1, wait_s / exec(kv_tokens, 0))``; else 0 (also for an unknown
        capacity, 0). ``wait_s`` is the instance's load score (queue wait + requests x
        ``load_per_request_s``, what the estimate says the request waits), so the estimate
        stays increasing in that score among instances with the same hit and capacity, which
        the router's few-candidate pass relies on (``loadindex``). Grows only the exec memo."""
        if not self.config.hit_survival or hit <= 0 or kv_tokens <= 0 or wait_s <= 0.0:
            return 0.0
        lost = min(1.0, wait_s / self.exec_s(kv_tokens, 0))
        return lost * (self.exec_s(x, 0) - self.exec_s(x, min(hit, x)))

    @staticmethod
    def _fewest_requests(tied: list[Candidate]) -> list[Candidate]:
        """Those of ``tied`` with the fewest ``load.requests``."""
        fewest = min(c.load.requests for c in tied)
        return [c for c in tied if c.load.requests == fewest]


def _with_estimates(d: Decision, estimates: tuple[Estimate, ...]) -> Decision:
    """``d`` carrying ``estimates``."""
    return Decision(d.instance_id, d.policy, d.reason, d.migrate_from, d.migrate_tokens,
                    d.migrate_cached_tokens, estimates)
