"""The serving configurations the benchmarks compare, started as real processes.

Each :class:`Setup` is one topology + cache choice (colocated, 1P1D, or several colocated
instances behind a router; MemServe's cache, SGLang's own or none). :func:`serving` starts one
from scratch and yields a :class:`Served` handle whose
``mark()`` / ``delta()`` read the instances' work counters around a replay (prompt tokens the
prefill side really computed, KV bytes sent over Mooncake), so several replays against one
start can each be measured. Processes are always torn down on leaving the context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.cluster.sglang_router import SglangRouter
from sglang_memserve.pd import PdCluster, PdOptions
from sglang_memserve.pd.client import memserve_state
from sglang_memserve.pd.cluster import parse_cpus
from sglang_memserve.pd.metrics import kv_transfer_stats, scrape


@dataclass(frozen=True)
class Setup:
    """One configuration.

    Attributes:
        name / label: command-line name and the report's label.
        pd_stage: ``None`` colocated, else the PD stage (``sglang_memserve.pd.cluster.STAGES``).
        cache: colocated ``--memserve-cache``; PD: prefill's and decode's (``stock``: SGLang's
            own radix cache, behind stock sglang-router).
        router: colocated only: ``None`` one server, else a key of :data:`COLO_ROUTERS` in
            front of ``instances`` colocated servers.
        instances: how many colocated servers the router spreads requests over.
    """

    name: str
    label: str
    pd_stage: str | None
    cache: str
    router: str | None = None
    instances: int = 1

    def __post_init__(self) -> None:
        if self.router is not None and (self.pd_stage is not None or self.router not in
                                        COLO_ROUTERS or self.instances < 2):
            raise ValueError(f"setup {self.name!r}: a router ({self.router!r}) takes >= 2 "
                             f"colocated instances and is one of {sorted(COLO_ROUTERS)}")

    @property
    def topology(self) -> str:
        if self.pd_stage is not None:
            return "pd"
        return "colocated" if self.router is None else "routed"

    @property
    def stock(self) -> bool:
        return self.cache == "stock"


@dataclass(frozen=True)
class ColoRouter:
    """A router in front of colocated instances: which program, with which arguments."""

    program: str  # a key of _ROUTER_PROGRAMS
    args: tuple[str, ...]


# The paper's prompt-tree vs session routing comparison: memserve-router (its global prompt
# trees) against stock sglang-router's approximate radix tree, and a session-less baseline.
COLO_ROUTERS: dict[str, ColoRouter] = {
    "memserve": ColoRouter("memserve", ("--policy", "memserve")),
    "sglang-cache-aware": ColoRouter("sglang", ("--policy", "cache_aware")),
    "sglang-rr": ColoRouter("sglang", ("--policy", "round_robin")),
    # memserve-router without its hold for a prefix still being prefilled (inflight.py).
    "memserve-nohold": ColoRouter("memserve", ("--policy", "memserve",
                                               "--prefill-hold-secs", "0")),
    # memserve-router with a request already on an instance costing 50 ms (default 1 ms): about
    # one decode step on this CPU, which a prefill placed beside a decoding request waits for.
    "memserve-lpr05": ColoRouter("memserve", ("--policy", "memserve",
                                              "--load-per-request-secs", "0.05")),
    # The same cost as 5 of the cost table's decode steps (49.7 ms on cpu-bench), so that it
    # follows the hardware of the table (memserve_router.config.load_per_request_steps).
    "memserve-steps5": ColoRouter("memserve", ("--policy", "memserve",
                                               "--load-per-request-steps", "5")),
    # Each hit priced by its survival through the instance's queue (--hit-survival, the
    # default since stop 10; named explicitly so that older commands still run).
    "memserve-survival": ColoRouter("memserve", ("--policy", "memserve", "--hit-survival")),
    # The default before stop 10: every cached prefix counted in full.
    "memserve-nosurvival": ColoRouter("memserve", ("--policy", "memserve",
                                                   "--no-hit-survival")),
}

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
    # Two colocated instances behind a router: MemServe's behind memserve-router, stock
    # SGLang's radix cache behind sglang-router.
    Setup("colo2-memserve-router", "2 x colocated + cache, memserve-router", None, "memserve",
          "memserve", 2),
    Setup("colo2-sglang-cache-aware", "2 x stock SGLang, sglang-router cache_aware", None,
          "stock", "sglang-cache-aware", 2),
    Setup("colo2-sglang-rr", "2 x stock SGLang, sglang-router round_robin", None, "stock",
          "sglang-rr", 2),
    # The routing pair crossed, so that router and instance cache are compared one at a time.
    Setup("colo2-memserve-router-stock", "2 x stock SGLang, memserve-router", None, "stock",
          "memserve", 2),
    Setup("colo2-cache-aware-memserve", "2 x colocated + cache, sglang-router cache_aware",
          None, "memserve", "sglang-cache-aware", 2),
    Setup("colo2-memserve-router-nohold", "2 x colocated + cache, memserve-router, no hold",
          None, "memserve", "memserve-nohold", 2),
    Setup("colo2-memserve-router-lpr05",
          "2 x colocated + cache, memserve-router, 50 ms per request", None, "memserve",
          "memserve-lpr05", 2),
    Setup("colo2-memserve-router-steps5",
          "2 x colocated + cache, memserve-router, 5 decode steps per request", None,
          "memserve", "memserve-steps5", 2),
    Setup("colo2-memserve-router-survival",
          "2 x colocated + cache, memserve-router, hits priced by survival", None, "memserve",
          "memserve-survival", 2),
    Setup("colo2-memserve-router-nosurvival",
          "2 x colocated + cache, memserve-router, hits counted in full (the default before)",
          None, "memserve", "memserve-nosurvival", 2),
)}

# Prometheus series worth keeping from each instance (sum and count of these histograms).
KEEP = ("kv_transfer", "time_to_first_token", "e2e_request_latency", "queue_time",
        "inter_token_latency", "prefill_", "num_requests_total", "prompt_tokens_total",
        "generation_tokens_total", "cached_tokens_total")


# memserve-router's own series worth keeping per workload (its holds, decision time,
# migrations and retries).
ROUTER_KEEP = ("memserve_router_prefill_hold", "memserve_router_decision_seconds",
               "memserve_router_migrations_total", "memserve_router_retries_total")


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
        instances: behind a colocated router, every instance (all compute prompts); else
            empty (``prefill_url`` is the one).
        router_pid: the colocated router's process (its CPU shares the instances' cores).
        router_metrics_url: a memserve-router in front of colocated instances (its own
            ``/metrics``: prefill holds, migrations, retries), else None.
    """

    setup: Setup
    url: str
    prefill_url: str
    decode_url: str | None
    pids: list[int]
    startup_s: float
    cpus: tuple[str, str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    instances: list[str] = field(default_factory=list)
    router_pid: int | None = None
    router_metrics_url: str | None = None

    @property
    def computing_urls(self) -> list[str]:
        """The instances that compute prompts (their counters are summed)."""
        return self.instances or [self.prefill_url]

    def mark(self) -> dict[str, Any]:
        """The work counters now, summed over :attr:`computing_urls` (pass to :meth:`delta`
        after a replay)."""
        prompts = [prompt_counters(u) for u in self.computing_urls]
        total = (None if any(p is None for p in prompts) else
                 (sum(p[0] for p in prompts if p), sum(p[1] for p in prompts if p)))
        m: dict[str, Any] = {"prompt": total,
                             "input": sum(effective_input(u) for u in self.computing_urls)}
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

    def router_counters(self) -> dict[str, float]:
        """memserve-router's :data:`ROUTER_KEEP` series now (summed over labels; histograms'
        sum and count); empty without one. Changes nothing."""
        if self.router_metrics_url is None:
            return {}
        return {k: v for k, v in scrape(self.router_metrics_url).items()
                if k.startswith(ROUTER_KEEP) and not k.endswith(("_bucket", "_created"))}

    def state(self) -> dict[str, Any]:
        """Metrics and MemServe state of each instance (end-of-run facts)."""
        urls = ({"prefill": self.prefill_url, "decode": self.decode_url}
                if self.decode_url is not None else
                {f"inst-{i}": u for i, u in enumerate(self.instances)} or
                {"colocated": self.url})
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


Starter = Callable[..., AbstractContextManager[Served]]


@contextmanager
def _colocated(setup: Setup, model_args: list[str], log_dir: Path, cpus: str | None,
               colo_env: dict[str, str] | None, t0: float) -> Iterator[Served]:
    server = ServerProcess([*model_args, "--memserve-cache", setup.cache, "--enable-metrics"],
                           log_dir, name=setup.name, env=colo_env)
    with server:
        yield Served(setup, server.url, server.url, None, [server.proc.pid],
                     time.perf_counter() - t0)


@contextmanager
def _memserve_router(urls: list[str], args: tuple[str, ...],
                     log_dir: Path) -> Iterator[tuple[str, int]]:
    with MemServeRouterProcess(["--worker-urls", *urls, *args, "--log-level", "warning"],
                               log_dir) as router:
        assert router.proc is not None  # started by __enter__
        yield router.url, router.proc.pid


@contextmanager
def _sglang_router(urls: list[str], args: tuple[str, ...],
                   log_dir: Path) -> Iterator[tuple[str, int]]:
    router = SglangRouter(urls, list(args), log_dir)
    try:
        url = router.start()
        assert router.proc is not None
        yield url, router.proc.pid
    finally:
        router.stop()


# Each yields the router's (URL, pid) while it runs.
_ROUTER_PROGRAMS: dict[str, Callable[[list[str], tuple[str, ...], Path],
                                     AbstractContextManager[tuple[str, int]]]] = {
    "memserve": _memserve_router, "sglang": _sglang_router,
}


@contextmanager
def _routed(setup: Setup, model_args: list[str], log_dir: Path, cpus: str | None,
            colo_env: dict[str, str] | None, t0: float) -> Iterator[Served]:
    """``setup.instances`` colocated servers started side by side (instance i pinned to the
    i-th core set of ``cpus`` when there are as many), then the router in front of them."""
    pin = pd_cpus(cpus)
    cores = list(pin) if pin is not None and len(pin) >= setup.instances else None
    servers = []
    for i in range(setup.instances):
        env = dict(colo_env or {})
        if cores:  # one OpenMP thread team per core, as a PD instance gets
            env["SGLANG_CPU_OMP_THREADS_BIND"] = cores[i]
        servers.append(ServerProcess(
            [*model_args, "--memserve-cache", setup.cache, "--enable-metrics",
             "--instance-id", f"inst-{i}"], log_dir / setup.name, name=f"inst-{i}", env=env,
            cpus=parse_cpus(cores[i]) if cores else None))
    spec = COLO_ROUTERS[str(setup.router)]
    with ExitStack() as stack:
        for s in servers:
            stack.callback(s.stop)  # registered first: also stops one whose peer failed
        with ThreadPoolExecutor(len(servers)) as pool:
            for f in [pool.submit(s.start) for s in servers]:
                f.result()
        urls = [s.url for s in servers]
        url, router_pid = stack.enter_context(
            _ROUTER_PROGRAMS[spec.program](urls, spec.args, log_dir / setup.name))
        yield Served(setup, url, urls[0], None, [s.proc.pid for s in servers if s.proc],
                     time.perf_counter() - t0, pin if cores else None, instances=urls,
                     router_pid=router_pid,
                     router_metrics_url=url if spec.program == "memserve" else None)


@contextmanager
def _pd(setup: Setup, model_args: list[str], log_dir: Path, cpus: str | None,
        colo_env: dict[str, str] | None, t0: float, pin_instances: bool = False
        ) -> Iterator[Served]:
    pin = pd_cpus(cpus)
    caches = {} if setup.cache == "memserve" else {"prefill_cache": setup.cache,
                                                    "decode_cache": setup.cache}
    # MemServe's configurations run behind memserve-router, stock SGLang's behind sglang-router.
    router = "sglang" if setup.stock else "memserve"
    opts = PdOptions(stage=setup.pd_stage, common_args=tuple(model_args), cpus=pin,
                     router=router, pin_schedulers_only=not pin_instances, **caches)
    with PdCluster(opts, log_dir / setup.name) as pd:
        yield Served(setup, pd.url, pd.prefill.url, pd.decode.url,
                     [pd.prefill.proc.pid, pd.decode.proc.pid], time.perf_counter() - t0, pin)


_STARTERS: dict[str, Starter] = {"colocated": _colocated, "routed": _routed, "pd": _pd}


def serving(setup: Setup, model_args: list[str], log_dir: Path, cpus: str | None = None,
            colo_env: dict[str, str] | None = None, pin_instances: bool = False
            ) -> AbstractContextManager[Served]:
    """Start ``setup`` from scratch; the context yields its handle and stops every process on
    exit.

    Args:
        model_args: launch_server arguments of every instance (model, page size).
        log_dir: server logs go under it.
        cpus: PD core split (:func:`pd_cpus`); behind a colocated router, instance i's cores.
        colo_env: extra environment of a colocated server (e.g. ``OMP_NUM_THREADS``).
        pin_instances: PD only: hold every process of an instance to its cores, not only its
            scheduler (``PdOptions.pin_schedulers_only``).
    """
    extra = {"pin_instances": True} if pin_instances and setup.topology == "pd" else {}
    return _STARTERS[setup.topology](setup, model_args, log_dir, cpus, colo_env,
                                     time.perf_counter(), **extra)
