"""A 1P1D prefill/decode cluster as real processes: prefill, decode and sglang-router's PD gateway.

::

    with pd_cluster(PdOptions(stage="caching2"), log_dir) as pd:
        requests.post(f"{pd.url}/generate", json={...})

The stages follow the MemServe paper's ladder (see ``docs/pd.md``):

* ``basic``    PD-Basic: no prefix cache anywhere (prefill ``--memserve-cache off``);
* ``caching1`` PD-Caching-1: prefill keeps its radix cache, so a later turn computes only the
  new suffix;
* ``caching3`` PD-Caching-3 (MemServe): on top of ``caching2``, decode returns the KV of each
  finished request (prompt + generated tokens) to prefill (``--kv-return``), so the next turn,
  whose prompt carries the answer, hits on prefill for the answer too;
* ``caching2`` PD-Caching-2: decode indexes the KV it received and generated
  (``--disaggregation-decode-enable-radix-cache``); it tells prefill how much prefix it already
  has, and prefill sends only the pages after it.

Defaults chosen for a small CPU-only host (see ``docs/pd.md`` for the measurements):
each instance's scheduler (its compute) runs on its own core (``cpus``), its HTTP server and
detokenizer on either instance's (``pin_schedulers_only``), the router on prefill's (decode's
core is the saturated one under load: ``router_on_prefill_cores``), SGLang's idle schedulers sleep
(``--sleep-on-idle``, set by the launcher), prefill reports transfer sizes (``--enable-metrics``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil
import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.cluster.process import (
    ServerStartError,
    file_tail,
    free_port_pairs,
    free_ports,
    pin,
)

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("basic", "caching1", "caching2", "caching3")
STAGE_LABELS: dict[str, str] = {
    "basic": "PD-Basic",
    "caching1": "PD-Caching-1",
    "caching2": "PD-Caching-2",
    "caching3": "PD-Caching-3",
}


# sglang-router flags for a 1P1D pair. With one decode, retrying a request whose decode died
# only re-sends it to the same dead decode (and parks a prefill request waiting for a bootstrap
# that never comes): fail fast instead. Health: a dead instance refuses connections, so three
# failed checks 2 s apart take it out of rotation in ~6 s; a busy instance on one core can take
# seconds to answer /health, hence the 10 s timeout and the threshold above 1 (with 1, a single
# slow answer under load made the router drop a live prefill).
ROUTER_DEFAULTS: tuple[str, ...] = (
    "--policy", "round_robin",
    "--disable-retries",
    "--health-check-interval-secs", "2",
    "--health-failure-threshold", "3",
    "--health-check-timeout-secs", "10",
    "--log-level", "warn",
)
# Environment of both instances. A prefill request whose decode never bootstraps (decode died
# between the router's two sends) holds prefill memory until this timeout (SGLang: 300 s).
INSTANCE_ENV: dict[str, str] = {
    "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "30",
}


@dataclass(frozen=True)
class PdOptions:
    """How to start a 1P1D cluster.

    Attributes:
        stage: ``basic``, ``caching1``, ``caching2`` or ``caching3`` (module docstring).
        prefill_cache: prefill's ``--memserve-cache`` (default: ``off`` for ``basic``, else
            ``memserve``).
        decode_cache: decode's ``--memserve-cache`` when its radix cache is on (``caching2``).
        common_args: launch_server arguments for both instances (e.g. ``--model-path DIR`` or
            ``--embedded-model bench``).
        prefill_args / decode_args: extra arguments for one instance.
        cpus: (prefill cores, decode cores) for ``SGLANG_CPU_OMP_THREADS_BIND`` and the process
            CPU affinity; ``None``: share every core. Default: one core each when the host has
            at least two.
        omp_threads: ``OMP_NUM_THREADS`` per instance (default: its number of cores).
        page_size: SGLang ``--page-size`` on both instances (default: SGLang's, 1 token). Larger
            pages make fewer, larger Mooncake blocks (see docs/pd.md), but prefix hits are
            rounded down to whole pages.
        metrics: ``--enable-metrics`` on both (prefill's ``/metrics`` then reports the KV bytes
            it sent: :func:`kv_transfer_stats`).
        router: ``memserve`` (memserve-router, MemServe's global scheduler) or ``sglang``
            (stock sglang-router, the baseline).
        router_args: extra arguments of that router.
        router_on_prefill_cores: with ``cpus``, the router process runs on prefill's cores
            (its CPU affinity) instead of anywhere: decode's core is busy for as long as any
            request decodes, prefill's is idle between prompts, and a router left unpinned
            took its share of decode's core (docs/pd.md, "TTFT by stage").
        pin_schedulers_only: with ``cpus``, only each instance's scheduler process (the
            model's compute, its KV transfers and MemServe's threads) is held to the instance's
            cores; its HTTP server, tokenizer and detokenizer processes may run on either
            instance's cores. Under load decode's core is saturated by its scheduler while
            prefill's idles between prompts; pinned there too, decode's detokenizer and HTTP
            server took decode's scheduler's time (docs/pd.md, "Stop 9"). False: every process
            of an instance on its own cores.
        env: extra environment for all three processes.
        start_timeout: seconds to wait for each process to become healthy.
    """

    stage: str = "caching2"
    prefill_cache: str | None = None
    decode_cache: str = "memserve"
    common_args: tuple[str, ...] = ()
    prefill_args: tuple[str, ...] = ()
    decode_args: tuple[str, ...] = ()
    cpus: tuple[str, str] | None = field(default_factory=lambda: default_cpus())
    omp_threads: int | None = None
    page_size: int | None = None
    metrics: bool = True
    router: str = "memserve"
    router_args: tuple[str, ...] = ()
    router_on_prefill_cores: bool = True
    pin_schedulers_only: bool = True
    env: tuple[tuple[str, str], ...] = ()
    start_timeout: float = 240.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {tuple(ROUTERS)}, got {self.router!r}")

    @property
    def label(self) -> str:
        return STAGE_LABELS[self.stage]

    def router_cpus(self) -> list[int] | None:
        """Cores of the router process (prefill's, see ``router_on_prefill_cores``), or None:
        anywhere."""
        if self.cpus is None or not self.router_on_prefill_cores:
            return None
        return parse_cpus(self.cpus[0])

    def process_cpus(self, index: int) -> list[int] | None:
        """CPU affinity an instance's processes start with: its own cores, or with
        ``pin_schedulers_only`` both instances' (its scheduler is pinned once it runs:
        :func:`pin_schedulers`); None: anywhere."""
        if self.cpus is None:
            return None
        if self.pin_schedulers_only:
            return sorted({c for spec in self.cpus for c in parse_cpus(spec)})
        return parse_cpus(self.cpus[index])

    def _common(self) -> list[str]:
        page = ["--page-size", str(self.page_size)] if self.page_size else []
        return [*page, *self.common_args]

    def prefill_argv(self, bootstrap_port: int) -> list[str]:
        cache = self.prefill_cache or ("off" if self.stage == "basic" else "memserve")
        argv = ["--role", "prefill", "--memserve-cache", cache,
                "--disaggregation-bootstrap-port", str(bootstrap_port),
                "--instance-id", "prefill-0"]
        if self.metrics:
            argv.append("--enable-metrics")
        return [*argv, *self._common(), *self.prefill_args]

    def decode_argv(self) -> list[str]:
        argv = ["--role", "decode", "--instance-id", "decode-0"]
        if self.stage in ("caching2", "caching3"):
            argv += ["--memserve-cache", self.decode_cache,
                     "--disaggregation-decode-enable-radix-cache"]
            if self.stage == "caching3":
                argv.append("--kv-return")
        else:
            # SGLang disables decode's radix cache itself; say so rather than name a backend.
            argv += ["--memserve-cache", "off"]
        if self.metrics:
            argv.append("--enable-metrics")
        return [*argv, *self._common(), *self.decode_args]

    def instance_env(self, index: int) -> dict[str, str]:
        """Environment of the prefill (0) or decode (1) instance."""
        env = {**INSTANCE_ENV, **dict(self.env)}
        if self.cpus is not None:
            cores = self.cpus[index]
            env["SGLANG_CPU_OMP_THREADS_BIND"] = cores
            env.setdefault("OMP_NUM_THREADS",
                           str(self.omp_threads or len(parse_cpus(cores))))
        elif self.omp_threads:
            env.setdefault("OMP_NUM_THREADS", str(self.omp_threads))
        return env


def pin_schedulers(server: ServerProcess, cpus: list[int]) -> int:
    """Hold every thread of ``server``'s SGLang scheduler process(es) (titled
    ``sglang::scheduler``) to ``cpus``; threads they start later inherit it. Returns how many
    processes were pinned; with none found, the whole instance is pinned instead (as with
    ``pin_schedulers_only=False``) and a warning logged."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    found = 0
    for proc in root.children(recursive=True):
        try:
            if "scheduler" not in " ".join(proc.cmdline()):
                continue
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, cpus)
            found += 1
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    if not found:
        logger.warning("no scheduler process found under %s: pinning the whole instance",
                       server.name)
        for proc in [root, *root.children(recursive=True)]:
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, cpus)
    return found


def parse_cpus(spec: str) -> list[int]:
    """``"0"``, ``"0-3"``, ``"0,2"`` -> the core ids."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def default_cpus() -> tuple[str, str] | None:
    """One core for prefill and one for decode (the first two this process may use), split
    halves on larger hosts; None on a single-core host."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if len(cores) < 2:
        return None
    half = len(cores) // 2
    fmt = lambda cs: ",".join(str(c) for c in cs)  # noqa: E731
    return fmt(cores[:half]), fmt(cores[half:2 * half])


class RouterProcess:
    """``python -m sglang_router.launch_router --pd-disaggregation`` on a free loopback port."""

    def __init__(self, prefill: ServerProcess, bootstrap_port: int, decode: ServerProcess,
                 log_dir: Path, extra: Sequence[str] = (), host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, cpus: Sequence[int] | None = None) -> None:
        self.host = host
        self.cpus = list(cpus) if cpus else None
        self.port, self.prometheus_port = free_ports(2, host)
        self.log_path = Path(log_dir) / "router.log"
        self.argv = [
            "--pd-disaggregation",
            "--prefill", prefill.url, str(bootstrap_port),
            "--decode", decode.url,
            "--host", host, "--port", str(self.port),
            "--prometheus-host", host, "--prometheus-port", str(self.prometheus_port),
            *ROUTER_DEFAULTS,
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> RouterProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sglang_router.launch_router", *self.argv]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        pin(self.proc.pid, self.cpus)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"router exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
            # /health answers before the workers are registered; /readiness counts them.
            try:
                r = requests.get(f"{self.url}/readiness", timeout=2)
                if r.status_code == 200 and r.json().get("healthy_workers", 0) >= 2:
                    self._wait_routable(deadline - time.monotonic())
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerStartError(f"router not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def _wait_routable(self, timeout: float) -> None:
        """Until one request has gone through router -> prefill -> decode: the router reports
        both workers ready a moment before it routes to them (requests then fail with 5xx)."""
        body = {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 1}}
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                r = requests.post(f"{self.url}/generate", json=body, timeout=60)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise ServerStartError(f"router not routable after {timeout:.0f}s: {last}")

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PdCluster:
    """Prefill + decode + router. Start with :meth:`start` (or use :func:`pd_cluster`).

    Attributes:
        prefill, decode: the two instances (``ServerProcess``; ``kill()`` simulates a crash).
        router: the PD gateway; ``url`` is its address.
        bootstrap_port: prefill's Mooncake bootstrap port.
    """

    def __init__(self, options: PdOptions, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.options = options
        self.log_dir = Path(log_dir)
        self.host = host
        # NOTE: prefill's control port defaults to bootstrap + 1: both must be free, or the
        # prefill's scheduler dies binding it ("Address already in use", seen in the suite).
        (self.bootstrap_port,) = free_port_pairs(1, host)
        pair = {self.bootstrap_port, self.bootstrap_port + 1}  # distinct ports: 2 of 4 stay
        prefill_port, decode_port = [p for p in free_ports(4, host) if p not in pair][:2]
        self.prefill = self._instance(0, options.prefill_argv(self.bootstrap_port), "prefill",
                                      prefill_port)
        self.decode = self._instance(1, options.decode_argv(), "decode", decode_port)
        self.router: RouterProcess | MemServeRouterProcess | None = None

    def _instance(self, index: int, argv: list[str], name: str, port: int | None = None
                  ) -> ServerProcess:
        return ServerProcess(argv, self.log_dir, name=name, host=self.host, port=port,
                             env=self.options.instance_env(index),
                             cpus=self.options.process_cpus(index))

    @property
    def url(self) -> str:
        if self.router is None:
            raise RuntimeError("cluster not started")
        return self.router.url

    def start(self) -> PdCluster:
        """Starts prefill and decode side by side, then the router; raises ServerStartError
        (after stopping whatever did start)."""
        try:
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(s.start, self.options.start_timeout)
                           for s in (self.prefill, self.decode)]
                for f in futures:
                    f.result()
            if self.options.cpus and self.options.pin_schedulers_only:
                for i, server in enumerate((self.prefill, self.decode)):
                    pin_schedulers(server, parse_cpus(self.options.cpus[i]))
            self.router = ROUTERS[self.options.router](self)
            self.router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def new_decode(self, name: str = "decode-b") -> ServerProcess:
        """A second decode instance with the same options (not started, not routed)."""
        return ServerProcess(self.options.decode_argv(), self.log_dir, name=name,
                             host=self.host, env=self.options.instance_env(1),
                             cpus=self.options.process_cpus(1))

    def stop(self) -> None:
        """Stops the router, then both instances side by side (each drains for a few seconds)."""
        if self.router is not None:
            self.router.stop()
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(s.stop) for s in (self.decode, self.prefill)]:
                f.result()

    def __enter__(self) -> PdCluster:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def _memserve_router(pd: PdCluster) -> MemServeRouterProcess:
    # Same fail-fast health settings as the sglang-router defaults above.
    args = ["--pd-disaggregation", "--prefill", pd.prefill.url, str(pd.bootstrap_port),
            "--decode", pd.decode.url, "--health-check-interval-secs", "2",
            "--health-failure-threshold", "3", "--health-check-timeout-secs", "10",
            "--log-level", "warning", *pd.options.router_args]
    return MemServeRouterProcess(args, pd.log_dir, host=pd.host, env=dict(pd.options.env),
                                 cpus=pd.options.router_cpus())


def _sglang_router(pd: PdCluster) -> RouterProcess:
    return RouterProcess(pd.prefill, pd.bootstrap_port, pd.decode, pd.log_dir,
                         pd.options.router_args, pd.host, dict(pd.options.env),
                         pd.options.router_cpus())


# Which router fronts the pair: MemServe's global scheduler, or stock sglang-router (baseline).
ROUTERS = {"memserve": _memserve_router, "sglang": _sglang_router}


@contextmanager
def pd_cluster(options: PdOptions | None = None, log_dir: Path | str = "pd-logs"
               ) -> Iterator[PdCluster]:
    """Start a 1P1D cluster; yields it (``.url`` is the router's); stops all three after."""
    cluster = PdCluster(options or PdOptions(), Path(log_dir))
    with cluster:
        yield cluster
