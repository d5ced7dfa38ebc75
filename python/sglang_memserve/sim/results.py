"""What a simulated run reports, and its one-screen text form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method (0.0 when empty)."""
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))
    return s[k]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class SimResult:
    """One run's figures.

    Attributes:
        policy, instances, pd: what ran.
        requests / finished / dropped: requests offered, completed, that could never fit.
        prompt_tokens / hit_tokens: summed over finished requests (hit: served from cache on
            the instance that ran the prefill, DRAM and migrated prefixes included).
        hit_rate / oracle_hit_rate: hit over prompt tokens; the infinite shared cache's.
        ttft_avg_s, ttft_p50_s, ttft_p99_s, jct_avg_s, jct_p99_s: per finished request.
        migrations / migrated_tokens / kv_returns: KV moved between instances.
        evicted_pages / written_back_pages: HBM and DRAM evictions, HBM -> DRAM write-backs.
        decision_p50_us / decision_p99_us: wall-clock per routing decision (candidates from the
            tree + the policy), measured while the simulator drove it.
        router_events / event_us: index events applied to the router's trees; mean wall-clock
            microseconds per event.
        sim_time_s: simulated seconds; wall_s: wall seconds of the run (workload excluded);
        events: simulator events run; peak_rss_mb: the process's peak resident memory.
        utilization: mean busy fraction of the instances over the simulated time.
        per_instance_mean / per_instance_sd / per_instance_max: requests finished per instance.
        max_decode_batch: the largest decode batch any instance ran.
    """

    policy: str
    instances: int
    pd: bool
    requests: int
    finished: int
    dropped: int
    prompt_tokens: int
    hit_tokens: int
    hit_rate: float
    oracle_hit_rate: float
    ttft_avg_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    jct_avg_s: float
    jct_p99_s: float
    migrations: int
    migrated_tokens: int
    kv_returns: int
    evicted_pages: int
    written_back_pages: int
    decision_p50_us: float
    decision_p99_us: float
    router_events: int
    event_us: float
    sim_time_s: float
    wall_s: float
    events: int
    peak_rss_mb: float
    utilization: float
    per_instance_mean: float
    per_instance_sd: float
    per_instance_max: int
    max_decode_batch: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """A few lines for the terminal."""
        mode = "PD" if self.pd else "colocated"
        ratio = self.hit_rate / self.oracle_hit_rate if self.oracle_hit_rate else 0.0
        return "\n".join([
            f"{self.policy} on {self.instances} {mode} instances: {self.finished}/{self.requests}"
            f" requests finished ({self.dropped} dropped)",
            f"  hit rate {self.hit_rate:.3f} (infinite-cache oracle {self.oracle_hit_rate:.3f},"
            f" {ratio:.2f} of it)",
            f"  TTFT avg {self.ttft_avg_s:.3f} s  p50 {self.ttft_p50_s:.3f}  p99 "
            f"{self.ttft_p99_s:.3f};  JCT avg {self.jct_avg_s:.3f} s  p99 {self.jct_p99_s:.3f}",
            f"  migrations {self.migrations} ({self.migrated_tokens} tokens), KV returns "
            f"{self.kv_returns}, evicted pages {self.evicted_pages}, written back "
            f"{self.written_back_pages}; instance utilization {self.utilization:.2f}",
            f"  router decision p50 {self.decision_p50_us:.0f} us  p99 "
            f"{self.decision_p99_us:.0f} us; {self.router_events} events applied, "
            f"{self.event_us:.1f} us each",
            f"  requests per instance {self.per_instance_mean:.1f} +- {self.per_instance_sd:.1f} "
            f"(max {self.per_instance_max}), largest decode batch {self.max_decode_batch}",
            f"  simulated {self.sim_time_s:.1f} s in {self.wall_s:.1f} s wall ({self.events} "
            f"events), peak RSS {self.peak_rss_mb:.0f} MB",
        ])
