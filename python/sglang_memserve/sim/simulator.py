"""The simulator: instances, the router and a workload on one clock.

A request arrives at the router, which picks its instance(s) with the real policy over the real
global trees (:mod:`.router`); a migration the ``memserve`` policy asks for moves the prefix
first (its missing pages over the link). Colocated: the instance prefills and decodes it. PD:
the prefill instance computes the prompt, the decode instance allocates pages for it, the KV
the decode instance lacks crosses the link (the first token reaches the client when it lands),
decode generates the rest and, with PD-Caching-3, sends prompt and answer back to the prefill
instance. Every index change of every instance reaches the router's tree of its role as an
event, at once or after ``event_delay_s``. Instances compute on devices of their own, or share
``shared_cores`` cores (:mod:`.compute`); ``request_overhead_s`` delays each request's start.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence

from memserve_router.policies import Decision
from sglang_memserve.gpu.costmodel import CostTable, load_table
from sglang_memserve.mempool.radix import Change

from .compute import CorePool
from .config import Role, SimConfig
from .instance import Job, SimInstance
from .kv import HOST
from .loop import EventLoop
from .oracle import infinite_hit_rate
from .results import SimResult, mean, percentile
from .router import SimRouter
from .workload import SimRequest


class Simulator:
    """See the module docstring.

    Args:
        cfg: the cluster.
        table: its cost table (default: ``load_table(cfg.cost_table)``).
    """

    def __init__(self, cfg: SimConfig, table: CostTable | None = None) -> None:
        self.cfg = cfg
        self.table = table if table is not None else load_table(cfg.cost_table)
        if cfg.unit_tokens % self.table.page_size:
            raise ValueError(f"unit_tokens {cfg.unit_tokens} is not a multiple of the table's "
                             f"page size {self.table.page_size}")
        self.per_page_s = (self.table.page_nbytes / (cfg.link_gbps * 1e9)
                           if cfg.link_gbps is not None else self.table.transfer_per_page_s)
        self.loop = EventLoop()
        self.router = SimRouter(cfg, self.table, self.per_page_s)
        self.instances: dict[str, SimInstance] = {}
        # One pool for all when the instances share cores; else each makes its own device.
        shared = (CorePool(self.loop, cfg.shared_cores) if cfg.shared_cores is not None
                  else None)
        for i, role in enumerate(cfg.roles()):
            iid = f"{role[0]}{i}"
            self.router.add_instance(iid, role, i)
            self.instances[iid] = SimInstance(iid, role, cfg.spec(role), self.table,
                                              cfg.unit_tokens, self.loop, self,
                                              self._sink(iid, role), cfg.evict_batch, shared,
                                              cfg.cost_scale)
        # PD-Caching-3 returns on the wire, per prefill instance: (pages, jobs held for them).
        self._returning: dict[str, list[tuple[list, list[Job]]]] = {}
        self.held = 0
        self.jobs: list[Job] = []
        self.arrived: list[SimRequest] = []
        self.migrations = self.migrated_tokens = self.kv_returns = 0

    # ---- plumbing -------------------------------------------------------------------------

    def _sink(self, iid: str, role: Role) -> Callable[[Change], None]:
        apply = self.router.event
        delay = self.cfg.event_delay_s
        if delay <= 0:
            return lambda c: apply(iid, role, c)
        return lambda c: self.loop.after(delay, apply, iid, role, c)

    def _transfer_s(self, blocks: int) -> float:
        return blocks * (self.cfg.unit_tokens // self.table.page_size) * self.per_page_s

    @staticmethod
    def _pages(blocks: Sequence[int]) -> list[tuple[int, ...]]:
        return [(b,) for b in blocks]

    # ---- requests -------------------------------------------------------------------------

    def arrive(self, req: SimRequest) -> None:
        """``req`` reaches the router now: route it and start it."""
        self.arrived.append(req)
        job = Job(req, self._pages(req.blocks), self._pages(req.output_blocks))
        self.jobs.append(job)
        r, now = self.router, self.loop.now
        first: Role = "prefill" if self.cfg.pd else "colocated"
        dec, w, hit = r.decide(first, req.blocks, req.tokens, req.session)
        job.est_s, job.uncached = r.account(first, w, hit, req.blocks, req.tokens, now)
        job.prefill = self.instances[w.id]
        if self.cfg.pd:
            _, dw, dhit = r.decide("decode", req.blocks, req.tokens, req.session)
            r.account("decode", dw, dhit, req.blocks, req.tokens, now)
            job.decode = self.instances[dw.id]
        else:
            job.decode = job.prefill
        if self.cfg.request_overhead_s > 0:
            self.loop.after(self.cfg.request_overhead_s, self._start, job, first, dec)
        else:
            self._start(job, first, dec)

    def _start(self, job: Job, role: Role, dec: Decision) -> None:
        """Carry out ``dec`` for ``job``: migrate first if it says so, then queue the prefill."""
        assert job.prefill is not None
        if dec.migrate_from:
            self._migrate(job, role, dec, self.instances[dec.migrate_from])
        elif not self._hold(job):
            job.prefill.submit(job)

    def _hold(self, job: Job) -> bool:
        """PD-Caching-3: hold ``job`` at its prefill instance while a return on the wire
        carries more of its prompt than that instance has (MemServe's prefill hold), so it
        hits the returned KV instead of recomputing it. Returns whether it is held."""
        pre = job.prefill
        assert pre is not None
        have, _ = pre.kv.match(job.path)
        for full, waiting in self._returning.get(pre.id, []):
            if have < min(len(full), len(job.path)) and full[:have + 1] == job.path[:have + 1]:
                waiting.append(job)
                self.held += 1
                return True
        return False

    def _migrate(self, job: Job, role: Role, dec: Decision, src: SimInstance) -> None:
        """Move the decision's prefix from ``src`` to ``job``'s instance, then queue ``job``
        there (the router's ``kv_push`` before forwarding): the pages the target lacks cross
        the link, plus ``migration_overhead_s``; the policy is told how long it took."""
        dst = job.prefill
        assert dst is not None
        u = self.cfg.unit_tokens
        blocks = min(len(job.path), -(-dec.migrate_tokens // u))
        held, _ = src.kv.match(job.path[:blocks])
        have, _ = dst.kv.match(job.path[:held])
        self.migrations += 1
        self.migrated_tokens += (held - have) * u
        job.migrated_tokens = (held - have) * u
        path = job.path[:held]
        seconds = self._transfer_s(held - have) + self.cfg.migration_overhead_s

        def landed() -> None:
            if path:
                dst.kv.store(path)
            self.router.migrated(role, dec, seconds)
            dst.submit(job)

        self.loop.after(seconds, landed)

    # ---- Hooks ----------------------------------------------------------------------------

    def prefilled(self, job: Job, inst: SimInstance) -> None:
        self.router.cluster.workers[inst.id].prefilled(job.est_s, job.uncached)
        if self.cfg.pd:
            assert job.decode is not None
            job.decode.receive(job)

    def send_kv(self, job: Job, inst: SimInstance) -> None:
        assert job.dlease is not None
        have = job.dlease.hit if inst.spec.prefix_cache else 0
        self.loop.after(self._transfer_s(len(job.path) - have), self._kv_landed, job)

    def _kv_landed(self, job: Job) -> None:
        assert job.prefill is not None and job.decode is not None and job.dlease is not None
        job.decode.kv.commit(job.dlease)
        job.t_first = self.loop.now
        job.prefill.release_prefill(job)
        job.decode.joined(job)

    def finished(self, job: Job, inst: SimInstance) -> None:
        workers = self.router.cluster.workers
        workers[inst.id].finished()
        if self.cfg.pd:
            assert job.prefill is not None
            workers[job.prefill.id].finished()
            if self.cfg.kv_return and job.prefill.spec.prefix_cache:
                self._kv_return(job)
        self._follow(job)

    def dropped(self, job: Job, inst: SimInstance) -> None:
        workers = self.router.cluster.workers
        if job.prefill is not None:
            if inst is job.prefill:
                workers[inst.id].prefilled(job.est_s, job.uncached)
            workers[job.prefill.id].finished()
        if self.cfg.pd and job.decode is not None:
            workers[job.decode.id].finished()
            if inst is job.decode and job.lease is not None:
                job.prefill.release_prefill(job)  # type: ignore[union-attr]
        self._follow(job)

    def _kv_return(self, job: Job) -> None:
        """PD-Caching-3: the decode instance pushes prompt + answer to the prefill instance."""
        pre = job.prefill
        assert pre is not None
        full = job.path + job.out_path
        have, _ = pre.kv.match(full)
        if have >= len(full):
            return
        self.kv_returns += 1
        entry: tuple[list, list[Job]] = (full, [])
        self._returning.setdefault(pre.id, []).append(entry)

        def landed() -> None:
            pre.kv.store(full)
            self._returning[pre.id].remove(entry)
            for held in entry[1]:
                pre.submit(held)

        self.loop.after(self._transfer_s(len(full) - have), landed)

    def _follow(self, job: Job) -> None:
        nxt = job.req.follow
        if nxt is not None:
            req, think = nxt
            req.arrival_s = self.loop.now + think
            self.loop.at(req.arrival_s, self.arrive, req)

    # ---- running --------------------------------------------------------------------------

    def run(self, requests: Sequence[SimRequest]) -> SimResult:
        """Simulate ``requests`` (their first turns, for closed-loop workloads) to the end.

        Returns:
            The run's figures (see :class:`~.results.SimResult`).
        """
        t0 = time.perf_counter()
        for req in requests:
            self.loop.at(req.arrival_s, self.arrive, req)
        self.loop.run()
        wall = time.perf_counter() - t0
        return self.result(wall)

    def result(self, wall_s: float = 0.0) -> SimResult:
        """The figures of what ran so far."""
        done = [j for j in self.jobs if j.t_end >= 0 and not j.failed]
        ttft = [j.t_first - j.req.arrival_s for j in done]
        jct = [j.t_end - j.req.arrival_s for j in done]
        prompt = sum(j.req.tokens for j in done)
        hit = sum(j.hit_tokens for j in done)
        dec = self.router.decision_s
        t_end = self.loop.now
        busy = [i.stats.prefill_s + i.stats.decode_s for i in self.instances.values()]
        kvs = [i.kv for i in self.instances.values()]
        oracle_reqs = sorted(self.arrived, key=lambda r: r.arrival_s)
        fin = [i.stats.finished for i in self.instances.values()]
        fin_mean = mean(fin)
        return SimResult(
            policy=self.cfg.policy, instances=self.cfg.instances, pd=self.cfg.pd,
            requests=len(self.jobs), finished=len(done),
            dropped=sum(1 for j in self.jobs if j.failed),
            prompt_tokens=prompt, hit_tokens=hit, hit_rate=hit / prompt if prompt else 0.0,
            oracle_hit_rate=infinite_hit_rate(oracle_reqs, self.cfg.unit_tokens),
            ttft_avg_s=mean(ttft), ttft_p50_s=percentile(ttft, 0.5),
            ttft_p99_s=percentile(ttft, 0.99), jct_avg_s=mean(jct),
            jct_p99_s=percentile(jct, 0.99), migrations=self.migrations,
            migrated_tokens=self.migrated_tokens, kv_returns=self.kv_returns,
            evicted_pages=sum(k.evicted["device"] + k.evicted[HOST] for k in kvs),
            written_back_pages=sum(k.written_back for k in kvs),
            decision_p50_us=percentile(dec, 0.5) * 1e6, decision_p99_us=percentile(dec, 0.99) * 1e6,
            router_events=self.router.events,
            event_us=self.router.event_s / self.router.events * 1e6 if self.router.events else 0.0,
            sim_time_s=t_end, wall_s=wall_s, events=self.loop.processed,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            utilization=mean([b / t_end for b in busy]) if t_end > 0 else 0.0,
            per_instance_mean=fin_mean,
            per_instance_sd=mean([(f - fin_mean) ** 2 for f in fin]) ** 0.5,
            per_instance_max=max(fin),
            max_decode_batch=max(i.stats.peak_batch for i in self.instances.values()),
        )

    def check_mirrors(self) -> list[str]:
        """Instances whose index the router's tree does not mirror exactly (empty: all do).
        O(every tree): for tests and ``--check``."""
        bad = []
        for iid, inst in self.instances.items():
            tree = self.router.cluster.trees[inst.role]
            if tree.snapshot_of(iid) != inst.kv.tree.flatten():
                bad.append(iid)
        return bad

