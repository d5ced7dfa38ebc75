"""MemServe's cache counters: kept in the scheduler, reported in ``/server_info`` and, when SGLang
runs with ``--enable-metrics``, exported as Prometheus metrics through SGLang's ``/metrics``.

Hit rate is exported as counters (hit tokens per tier, prompt tokens), so any window's rate is
``rate(hit) / rate(prompt)``; tier occupancy as gauges; swaps as page and byte counters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CacheCounters:
    prompt_tokens: int = 0
    hit_tokens: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    swap_pages: dict[str, int] = field(default_factory=lambda: {"out": 0, "in": 0})
    swap_bytes: dict[str, int] = field(default_factory=lambda: {"out": 0, "in": 0})

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "hit_tokens": dict(self.hit_tokens),
                "swap_pages": dict(self.swap_pages), "swap_bytes": dict(self.swap_bytes)}


class CacheMetrics:
    """Counters plus their Prometheus twins (created only when SGLang exports metrics)."""

    def __init__(self, instance_id: str) -> None:
        self.counters = CacheCounters()
        self.instance = instance_id
        self._prom: dict[str, Any] | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import Counter, Gauge

            labels = ["instance"]
            self._prom = {
                "prompt": Counter("memserve_prompt_tokens_total", "Prompt tokens seen", labels),
                "hit": Counter("memserve_hit_tokens_total", "Prompt tokens served from cache",
                               labels + ["tier"]),
                "pages": Gauge("memserve_tier_cached_pages", "Pages indexed per tier",
                               labels + ["tier"], multiprocess_mode="livesum"),
                "swap_pages": Counter("memserve_swap_pages_total", "Pages swapped",
                                      labels + ["direction"]),
                "swap_bytes": Counter("memserve_swap_bytes_total", "Bytes swapped",
                                      labels + ["direction"]),
            }

    def request(self, prompt_tokens: int, device_hit: int, host_hit: int) -> None:
        c = self.counters
        c.prompt_tokens += prompt_tokens
        c.hit_tokens["device"] += device_hit
        c.hit_tokens["host"] += host_hit
        if self._prom:
            self._prom["prompt"].labels(self.instance).inc(prompt_tokens)
            self._prom["hit"].labels(self.instance, "device").inc(device_hit)
            self._prom["hit"].labels(self.instance, "host").inc(host_hit)

    def swap(self, direction: str, pages: int, nbytes: int) -> None:
        self.counters.swap_pages[direction] += pages
        self.counters.swap_bytes[direction] += nbytes
        if self._prom:
            self._prom["swap_pages"].labels(self.instance, direction).inc(pages)
            self._prom["swap_bytes"].labels(self.instance, direction).inc(nbytes)

    def occupancy(self, pages_by_tier: dict[str, int]) -> None:
        if self._prom:
            for tier, n in pages_by_tier.items():
                self._prom["pages"].labels(self.instance, tier).set(n)
