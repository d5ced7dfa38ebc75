"""The serving configurations the benchmarks compare, started as real processes.

Each :class:`Setup` is one topology + cache choice (colocated or 1P1D, MemServe's cache, SGLang's
own or none). :func:`serving` starts one from scratch and yields a :class:`Served` handle whose
``mark()`` / ``delta()`` read the instances' work counters around a replay (prompt tokens the
prefill side really computed, KV bytes sent over Mooncake), so several replays against one
start can each be measured. Processes are always torn down on leaving the context.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.pd import PdCluster, PdOptions
from sglang_memserve.pd.client import memserve_state
from sglang_memserve.pd.metrics import kv_transfer_stats, scrape


@dataclass(frozen=True)
class Setup:
    """One configuration.

    Attributes:
        name / label: command-line name and the report's label.
        pd_stage: ``None`` colocated, else the PD stage (``sglang_memserve.pd.cluster.STAGES``).
        cache: colocated ``--memserve-cache``; PD: prefill's and decode's (``stock``: SGLang's
            own radix cache, behind stock sglang-router).
    """

    name: str
    label: str
    pd_stage: str | None
    cache: str

    @property
    def topology(self) -> str:
        return "colocated" if self.pd_stage is None else "pd"

    @property
    def stock(self) -> bool:
        return self.cache == "stock"


SETUPS: dict[str, Setup] = {s.name: s for s in (
    Setup("colo-nocache", "colocated, no cache", None, "off"),
    Setup("colo-cache", "colocated + cache (MemServe)", None, "memserve"),
    Setup("colo-stock", "stock SGLang radix cache", None, "stock"),
    Setup("pd-basic", "PD-Basic", "basic", "off"),
    Setup("pd-caching1", "PD-Caching-1", "caching1", "memserve"),
    Setup("pd-cache", "PD-Caching-1+2", "caching2", "memserve"),
    Setup("pd-caching3", "PD-Caching-1+2+3 (MemServe)", "caching3", "memserve"),
    # Stock SGLang PD: SGLang's own radix cache on prefill, with / without its decode cache.
    Setup("sglang-pd", "stock SGLang PD", "caching1", "stock"),
    Setup("sglang-pd-dcache", "stock SGLang PD + decode cache", "caching2", "stock"),
)}

# Prometheus series worth keeping from each instance (sum and count of these histograms).
KEEP = ("kv_transfer", "time_to_first_token", "e2e_request_latency", "queue_time",
        "inter_token_latency", "prefill_", "num_requests_total", "prompt_tokens_total",
        "generation_tokens_total", "cached_tokens_total")


def kept_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items()
            if any(s in k for s in KEEP) and not k.endswith("_bucket")}


def prompt_counters(url: str) -> tuple[int, int] | None:
    """(prompt tokens, cache-hit tokens) counted by the instance's MemServe tree cache; None
    when it runs without one."""
    c = memserve_state(url).get("counters")
    if not c:
        return None
    return int(c.get("prompt_tokens", 0)), int(sum((c.get("hit_tokens") or {}).values()))


def effective_input(url: str) -> float:
    """SGLang's ``sglang:prefill_effective_tokens_total{mode="input"}``: prompt tokens the
    instance computed (cache hits are other modes)."""
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sglang:prefill_effective_tokens_total{") and 'mode="input"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def computed(before: tuple[int, int] | None, after: tuple[int, int] | None) -> int | None:
    """Prompt tokens the instance actually computed between two counter readings."""
    if before is None or after is None:
        return None
    return (after[0] - before[0]) - (after[1] - before[1])


@dataclass
class Served:
    """A started configuration.

    Attributes:
        url: where clients send requests (the colocated server or the PD router).
        prefill_url: the instance that computes prompts (the colocated server itself).
        decode_url: PD's decode instance, else None.
        pids: the instances' launcher processes (for CPU accounting).
        startup_s: seconds from start to ready.
    """

    setup: Setup
    url: str
    prefill_url: str
    decode_url: str | None
    pids: list[int]
    startup_s: float
    cpus: tuple[str, str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def mark(self) -> dict[str, Any]:
        """The work counters now (pass to :meth:`delta` after a replay)."""
        m: dict[str, Any] = {"prompt": prompt_counters(self.prefill_url),
                             "input": effective_input(self.prefill_url)}
        if self.decode_url is not None:
            m["kv"] = kv_transfer_stats(self.prefill_url)
        return m

    def delta(self, before: dict[str, Any]) -> dict[str, Any]:
        """Work done since ``before``: ``computed_on_prefill`` (prompt tokens prefill computed;
        MemServe's counters, else SGLang's), ``kv_transfers`` / ``kv_transfer_mb`` (PD)."""
        if self.decode_url is not None:
            time.sleep(1.0)  # the last transfers' metrics land after the answers do
        now = self.mark()
        out: dict[str, Any] = {"computed_on_prefill": computed(before["prompt"], now["prompt"])}
        if out["computed_on_prefill"] is None:
            out["computed_on_prefill"] = int(now["input"] - before["input"])
        if "kv" in now:
            kv = now["kv"] - before["kv"]
            out["kv_transfers"], out["kv_transfer_mb"] = kv.transfers, kv.total_mb
        return out

    def state(self) -> dict[str, Any]:
        """Metrics and MemServe state of each instance (end-of-run facts)."""
        urls = ({"colocated": self.url} if self.decode_url is None else
                {"prefill": self.prefill_url, "decode": self.decode_url})
        return {"metrics": {k: kept_metrics(scrape(u)) for k, u in urls.items()},
                "memserve": {k: memserve_state(u) for k, u in urls.items()}}


def pd_cpus(spec: str | None) -> tuple[str, str] | None:
    """``"P/D"`` -> (prefill cores, decode cores); ``"shared"`` -> None; None -> the default."""
    if spec == "shared":
        return None
    if spec:
        p, sep, d = spec.partition("/")
        if not sep or not p or not d:
            raise ValueError(f"--cpus must be 'P/D' (e.g. '0/1') or 'shared', not {spec!r}")
        return (p, d)
    return PdOptions().cpus


@contextmanager
def serving(setup: Setup, model_args: list[str], log_dir: Path, cpus: str | None = None,
            colo_env: dict[str, str] | None = None) -> Iterator[Served]:
    """Start ``setup`` from scratch; yield its handle; stop every process on exit.

    Args:
        model_args: launch_server arguments of every instance (model, page size).
        log_dir: server logs go under it.
        cpus: PD core split (:func:`pd_cpus`).
        colo_env: extra environment of a colocated server (e.g. ``OMP_NUM_THREADS``).
    """
    t0 = time.perf_counter()
    if setup.pd_stage is None:
        server = ServerProcess([*model_args, "--memserve-cache", setup.cache, "--enable-metrics"],
                               log_dir, name=setup.name, env=colo_env)
        with server:
            yield Served(setup, server.url, server.url, None, [server.proc.pid],
                         time.perf_counter() - t0)
        return
    pin = pd_cpus(cpus)
    caches = {} if setup.cache == "memserve" else {"prefill_cache": setup.cache,
                                                    "decode_cache": setup.cache}
    # MemServe's configurations run behind memserve-router, stock SGLang's behind sglang-router.
    router = "sglang" if setup.stock else "memserve"
    opts = PdOptions(stage=setup.pd_stage, common_args=tuple(model_args), cpus=pin,
                     router=router, **caches)
    with PdCluster(opts, log_dir / setup.name) as pd:
        yield Served(setup, pd.url, pd.prefill.url, pd.decode.url,
                     [pd.prefill.proc.pid, pd.decode.proc.pid], time.perf_counter() - t0, pin)
