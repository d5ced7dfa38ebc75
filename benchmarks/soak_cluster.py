"""The soak driver's cluster (``benchmarks/soak.py``): the router, its instances and a reference
instance on loopback, for one of two stacks, with the fault operations.

* ``memserve``: memserve-router in front of 1P1D (PD-Caching-3) or of ``--colocated N``
  instances, every instance with MemServe's tree cache.
* ``stock``: stock sglang-router (``sglang_router.launch_router --pd-disaggregation``, PyPI) in
  front of 1P1D with SGLang's own radix cache on both (``--memserve-cache stock`` and
  ``--disaggregation-decode-enable-radix-cache``), no KV return. The instances still start
  through MemServe's launcher, which adds the flags SGLang needs on a CPU host and the request
  guard; the router is sglang-router with its own retries on (the project's benchmark default
  ``--disable-retries`` is dropped here) and the same fast health checks as memserve-router.

Faults (each returns a one-line note; ``events`` also how long the router took to resync):
``kill`` (SIGKILL an instance, restart it on its address), ``sigstop`` (freeze one past the
health timeout), ``events`` (cut the router's KV-event connection to an instance for a stretch,
so it misses messages, sees a seq gap and resyncs from a snapshot; memserve only: stock SGLang
has no event stream), ``router`` (SIGKILL the router, restart it on its port).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.pd.cluster import PdCluster, PdOptions, RouterProcess

STACKS = ("memserve", "stock")
# Fast health checks on both routers, so a dead or frozen instance leaves the rotation within a
# few seconds (sglang-router takes the same flag names).
HEALTH = ("--health-check-interval-secs", "1", "--health-check-timeout-secs", "3",
          "--health-failure-threshold", "2")
# How often the events fault cuts the connection while it lasts: ZMQ reconnects within ~0.1 s,
# so each cut loses the messages of about that long.
CUT_EVERY_S = 0.2


class SoakSettings(Protocol):
    """What the cluster reads of the soak's options (``soak.SoakOptions``)."""

    stack: str
    colocated: int
    out: Path

    def model_args(self) -> list[str]: ...


class Cluster:
    """The router, its instances and the reference instance, with the fault operations.

    Args:
        opts: the soak's options (stack, topology, model, where logs go).
    """

    def __init__(self, opts: SoakSettings) -> None:
        if opts.stack not in STACKS:
            raise ValueError(f"stack must be one of {STACKS}, got {opts.stack!r}")
        if opts.stack == "stock" and opts.colocated:
            raise ValueError("the stock stack is 1P1D only (--colocated 0)")
        self.opts = opts
        self.stock = opts.stack == "stock"
        self.logs = opts.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        model = opts.model_args()
        self.reference = ServerProcess([*model, "--memserve-cache", "off"], self.logs,
                                       name="reference")
        self.pd: PdCluster | None = None
        self.instances: dict[str, ServerProcess] = {}
        self.router: Any = None
        if opts.colocated:
            for i in range(opts.colocated):
                wid = f"soak-{i}"
                self.instances[wid] = ServerProcess([*model, "--instance-id", wid], self.logs,
                                                    name=wid)
            self.router = MemServeRouterProcess(
                ["--worker-urls", *(s.url for s in self.instances.values()), *HEALTH,
                 "--log-level", "warning"], self.logs)
        else:
            caches: dict[str, Any] = (
                {"stage": "caching2", "prefill_cache": "stock", "decode_cache": "stock",
                 "router": "sglang"} if self.stock else {"stage": "caching3"})
            self.pd = PdCluster(PdOptions(common_args=tuple(model), router_args=HEALTH,
                                          **caches), self.logs)
            self.instances = {"prefill-0": self.pd.prefill, "decode-0": self.pd.decode}

    def start(self) -> None:
        with ThreadPoolExecutor(1 + len(self.instances)) as pool:
            ref = pool.submit(self.reference.start)
            if self.pd is not None and not self.stock:
                self.pd.start()
                assert isinstance(self.pd.router, MemServeRouterProcess)
                self.router = self.pd.router
            else:
                for f in [pool.submit(s.start) for s in self.instances.values()]:
                    f.result()
                if self.stock:
                    assert self.pd is not None
                    router = RouterProcess(self.pd.prefill, self.pd.bootstrap_port,
                                           self.pd.decode, self.logs, extra=HEALTH)
                    # sglang-router's own default is to retry; keep it (see the docstring).
                    router.argv = [a for a in router.argv if a != "--disable-retries"]
                    self.pd.router = self.router = router
                self.router.start()
            ref.result()

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
            if self.router.proc is not None:
                try:  # sglang-router's launcher may leave its Rust child behind
                    os.killpg(self.router.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for s in [*self.instances.values(), self.reference]:
            if s.proc is not None and s.proc.poll() is None:
                try:
                    os.killpg(s.proc.pid, signal.SIGCONT)  # a frozen one cannot exit
                except ProcessLookupError:
                    pass
            s.stop()

    def applies(self, fault: str) -> bool:
        """Whether the fault exists on this stack (stock SGLang has no KV event stream)."""
        return not (self.stock and fault == "events")

    def victim(self, fault: str) -> str:
        """The instance a fault hits."""
        ids = list(self.instances)
        if fault == "kill":
            return "decode-0" if self.pd is not None else ids[0]
        if fault == "events":
            return "prefill-0" if self.pd is not None else ids[0]
        return "prefill-0" if self.pd is not None else ids[-1]

    # ---- faults ----------------------------------------------------------------------------

    def kill_and_restart(self, wid: str) -> str:
        old = self.instances[wid]
        old.kill()
        new = ServerProcess(old.args, self.logs, name=f"{wid}-restarted", host=old.host,
                            env=old.env, port=old.port, cpus=old.cpus)
        new.start()
        self.instances[wid] = new
        if self.pd is not None:
            if wid == "decode-0":
                self.pd.decode = new
            else:
                self.pd.prefill = new
        return f"killed {wid} (SIGKILL), restarted on {new.url}"

    def freeze(self, wid: str, seconds: float) -> str:
        proc = self.instances[wid].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.killpg(proc.pid, signal.SIGCONT)
        return f"SIGSTOP {wid} for {seconds:g}s, then SIGCONT"

    def restart_router(self) -> str:
        proc = self.router.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if self.stock:
            self.router.start()
        else:
            self.router.start(probe=False)
        return f"killed the router (SIGKILL), restarted on {self.router.url}"

    def drop_events(self, wid: str, seconds: float, resync_timeout_s: float = 60.0
                    ) -> tuple[str, float | None, dict[str, float]]:
        """Cut the router's connection to ``wid``'s KV-event publisher every
        :data:`CUT_EVERY_S` for ``seconds`` (``ss -K``: the kernel resets the TCP connection;
        ZMQ reconnects by itself), so the router misses the messages published meanwhile.

        Returns:
            (note, seconds from the first cut to the router's first snapshot resync of ``wid``
            or None if none came within ``resync_timeout_s``, the router's feed counters'
            change plus ``settled_s``: seconds from the last cut to its last resync, once no
            resync followed for 1 s). Changes nothing but the connection.

        Raises:
            RuntimeError: ``ss -K`` found no connection to cut (it needs root and a kernel
                with socket destroy, CONFIG_INET_DIAG_DESTROY).
        """
        server = self.instances[wid]
        info = requests.get(f"{server.url}/server_info", timeout=30).json()
        events = info["internal_states"][0]["memserve"]["endpoints"]["events"]
        host, port = events.removeprefix("tcp://").rsplit(":", 1)
        before = self.feed_counters(wid)
        resyncs = before.get("resyncs", 0.0)
        cuts, first_cut, last_cut, next_cut = 0, None, 0.0, time.monotonic()
        first_resync = last_resync = None
        start = time.monotonic()
        end, stderr = start + seconds, ""
        while True:
            now = time.monotonic()
            if now < end and now >= next_cut:
                out = subprocess.run(["ss", "-K", "dst", host, "dport", "=", f":{port}"],
                                     capture_output=True, text=True, timeout=10)
                stderr = out.stderr.strip()
                n = sum(line.startswith("tcp") for line in out.stdout.splitlines())
                if n:
                    cuts, last_cut = cuts + n, time.monotonic()
                    first_cut = first_cut or last_cut
                next_cut = now + CUT_EVERY_S
            seen = self.feed_counters(wid).get("resyncs", 0.0)
            if seen > resyncs:
                resyncs, last_resync = seen, time.monotonic()
                first_resync = first_resync or last_resync
            if now >= end:
                if not cuts:
                    raise RuntimeError(f"ss -K cut no connection to {events} (needs root and "
                                       f"CONFIG_INET_DIAG_DESTROY): {stderr[:200]}")
                quiet = now - max(last_resync or 0.0, last_cut) >= 1.0
                if (first_resync is not None and quiet) or now > end + resync_timeout_s:
                    break
            time.sleep(0.05)
        delta = {k: v - before.get(k, 0.0) for k, v in self.feed_counters(wid).items()}
        resync_s = None if first_resync is None else round(first_resync - (first_cut or 0.0), 3)
        if last_resync is not None:
            delta["settled_s"] = round(max(0.0, last_resync - last_cut), 3)
        note = (f"cut the router's event connection to {wid} ({events}) {cuts} times in "
                f"{seconds:g}s; router saw {delta.get('gaps', 0):g} gap(s), "
                f"resynced {delta.get('resyncs', 0):g} time(s)")
        return note, resync_s, delta

    def feed_counters(self, wid: str) -> dict[str, float]:
        """The router's event-feed counters of ``wid`` (``/metrics``); reads only."""
        text = requests.get(f"{self.router.url}/metrics", timeout=10).text
        out = {}
        for name in ("gaps", "resyncs", "restarts", "messages"):
            m = re.search(rf'memserve_router_event_{name}(?:_total)?\{{instance="{re.escape(wid)}"'
                          rf'\}} (\S+)', text)
            if m:
                out[name] = float(m.group(1))
        return out
