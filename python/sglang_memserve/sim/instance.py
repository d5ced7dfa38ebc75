"""A simulated serving instance: a prefill queue with chunking, a decode batch, its KV index.

One scheduler iteration at a time, like SGLang's scheduler loop:

* **prefill** (colocated and prefill roles): the queue's head is admitted when its pages fit
  (its cached prefix locked, DRAM-only pages loaded back, HBM pages allocated for the rest of the
  prompt and, colocated, for its output); then one iteration computes one chunk ``[a, b)`` of at
  most ``chunk_tokens`` new tokens in ``exec_time(b, a)`` seconds (plus, on the first chunk, the
  swap-in of the DRAM part: pages x ``swap_in_per_page_s``). A prompt fully cached still computes
  its last token. Waiting prefill goes first (SGLang's default), so a decode batch pauses.
* **decode** (colocated and decode roles): the batch advances in segments of equal steps, each
  step ``decode_time(batch, context)`` (context: the batch's mean, taken at the segment's middle)
  until its first request finishes; a segment is cut at the next step boundary when prefill
  work arrives or a request joins, so joins happen between steps as in SGLang.

Iterations take their table time on a device of the instance's own, or longer when instances
share cores (:class:`~.compute.CorePool`, ``SimConfig.shared_cores``).

The instance tells the simulator (its ``hooks``) when a prefill ends and when a request ends;
KV moving between instances is the simulator's business.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from sglang_memserve.gpu.costmodel import CostTable
from sglang_memserve.mempool.radix import PageKey

from .compute import CorePool
from .config import InstanceSpec, Role
from .kv import KvIndex, Lease, Sink
from .loop import EventLoop
from .workload import SimRequest


@dataclass(eq=False)
class Job:
    """One request's run through the cluster.

    Attributes:
        req: the request. path / out_path: its prompt's and its answer's blocks, as pages.
        prefill / decode: the instances chosen (the same one when colocated).
        lease / dlease: its pages on the prefill (or colocated) and on the decode instance.
        done: prompt tokens cached or computed so far on the prefill instance.
        hit_tokens / host_tokens: prompt tokens served from cache there (of which from DRAM).
        generated: output tokens so far.
        t_first / t_end: when its first token reached the client and when it ended.
        est_s / uncached: the router's queued-prefill accounting for it.
        migrated_tokens: tokens a migration moved before it ran.
    """

    req: SimRequest
    path: list[PageKey]
    out_path: list[PageKey]
    prefill: SimInstance | None = None
    decode: SimInstance | None = None
    lease: Lease | None = None
    dlease: Lease | None = None
    done: int = 0
    hit_tokens: int = 0
    host_tokens: int = 0
    generated: int = 0
    t_first: float = -1.0
    t_end: float = -1.0
    est_s: float = 0.0
    uncached: int = 0
    migrated_tokens: int = 0
    failed: str = ""


class Hooks(Protocol):
    """What an instance reports to the simulator."""

    def prefilled(self, job: Job, inst: SimInstance) -> None:
        """``job``'s prompt is computed and indexed on ``inst`` (its first token exists)."""

    def finished(self, job: Job, inst: SimInstance) -> None:
        """``job`` generated its last token on ``inst`` (its pages are released there)."""

    def dropped(self, job: Job, inst: SimInstance) -> None:
        """``job`` can never fit on ``inst`` (its prompt exceeds the HBM tier)."""

    def send_kv(self, job: Job, inst: SimInstance) -> None:
        """Decode role: ``job`` has pages on ``inst`` now; move its prompt's KV there."""


@dataclass
class _Segment:
    dt: float
    steps: int
    token: int
    members: list[Job]  # the batch when it started (requests joining later wait for the next)


@dataclass
class InstanceStats:
    """Busy seconds (table seconds: on shared cores an iteration's wall time is longer) and
    counts of one instance."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    chunks: int = 0
    segments: int = 0
    finished: int = 0
    peak_batch: int = 0


class SimInstance:
    """See the module docstring.

    Args:
        iid: instance id (the router's worker id).
        role: ``colocated``, ``prefill`` or ``decode``.
        spec: memory and batching.
        table: the cost table.
        unit_tokens: tokens per block (page of the index).
        loop: the clock.
        hooks: the simulator.
        sink: where the index's events go (the router's tree), or None.
        evict_batch: see :class:`~.config.SimConfig`.
        compute: where its iterations run (default: a device of its own; instances given one
            shared :class:`~.compute.CorePool` share its cores).
        cost_scale: multiplies every prefill chunk's and decode step's table time.
    """

    def __init__(self, iid: str, role: Role, spec: InstanceSpec, table: CostTable,
                 unit_tokens: int, loop: EventLoop, hooks: Hooks, sink: Sink | None = None,
                 evict_batch: float = 0.01, compute: CorePool | None = None,
                 cost_scale: float = 1.0) -> None:
        self.id, self.role, self.spec, self.table = iid, role, spec, table
        self.unit = unit_tokens
        self.loop, self.hooks = loop, hooks
        self.compute = compute if compute is not None else CorePool(loop)
        self.cost_scale = cost_scale
        self.kv = KvIndex(spec.hbm_tokens // unit_tokens, spec.dram_tokens // unit_tokens, sink,
                          evict_batch)
        self.pages_per_unit = max(1, unit_tokens // table.page_size)
        self.queue: deque[Job] = deque()  # prefill, FCFS
        self.admit: deque[Job] = deque()  # decode role: waiting for pages to receive KV
        self.batch: list[Job] = []
        self.incoming = 0  # decode role: admitted, KV on the wire
        self.leases = 0  # leases alive on this instance (memory that will come back)
        self.stats = InstanceStats()
        self._busy = False
        self._seg: _Segment | None = None
        self._token = 0

    # ---- load, as a poll of the instance would report it ----------------------------------

    @property
    def running(self) -> int:
        return len(self.batch) + (1 if self.queue and self.queue[0].lease is not None else 0)

    @property
    def waiting(self) -> int:
        return len(self.queue) + len(self.admit) - (1 if self.queue and
                                                    self.queue[0].lease is not None else 0)

    # ---- entry points ---------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``'s prefill here (changes the queue; may cut a decode segment)."""
        self.queue.append(job)
        self._cut()
        self._kick()

    def receive(self, job: Job) -> None:
        """Decode role: ``job``'s prefill is done elsewhere; take it when its pages fit."""
        self.admit.append(job)
        self._admit_decode()

    def joined(self, job: Job) -> None:
        """Decode role: ``job``'s KV arrived (its lease here is committed by the caller); it
        joins the batch at the next step boundary."""
        self.incoming -= 1
        job.generated = 1
        if job.generated >= job.req.output_tokens:
            self._finish(job)  # the prefill's token was the only one
            self.memory_freed()
            return
        self.batch.append(job)
        self._cut()
        self._kick()

    def memory_freed(self) -> None:
        """Pages came back (a transfer finished): retry what waits for memory."""
        if self.role == "decode":
            self._admit_decode()
        self._kick()

    # ---- scheduling -----------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._busy:
            self._step()

    def _step(self) -> None:
        if self.role != "decode" and self._prefill_next():
            return
        if self.batch:
            self._decode_segment()

    def _lease(self, job: Job) -> tuple[bool, float]:
        """Admit ``job`` (lock its hit, allocate its pages); returns (admitted, swap-in
        seconds). A job that can never fit is dropped (and taken off the queue's head)."""
        extra = len(job.out_path) if self.role == "colocated" else 0
        lease = self.kv.acquire(job.path, extra)
        if lease is None:
            if self.leases == 0 and not self.batch and self.queue and self.queue[0] is job:
                self.queue.popleft()  # nothing will ever free enough pages
                job.failed = f"prompt does not fit in {self.id}'s HBM"
                self.hooks.dropped(job, self)
            return False, 0.0
        self.leases += 1
        job.lease = lease
        x = job.req.tokens
        if not self.spec.prefix_cache:
            job.hit_tokens = job.host_tokens = job.done = 0
            return True, 0.0
        job.hit_tokens = min(lease.hit * self.unit, x)
        job.host_tokens = min(lease.host_hit * self.unit, job.hit_tokens)
        job.done = min(job.hit_tokens, x - 1)
        return True, self.table.swap_time(lease.host_hit * self.pages_per_unit, "in")

    def _prefill_next(self) -> bool:
        """Start the next prefill iteration if the head can run; returns whether one started.
        With ``spec.batch_prefill``, queued prompts that fit whole in what is left of the chunk
        budget join the head's iteration (SGLang's prefill batch), FCFS."""
        while self.queue:
            job = self.queue[0]
            swap = 0.0
            if job.lease is None:
                if len(self.batch) >= self.spec.max_batch:
                    return False
                ok, swap = self._lease(job)
                if not ok:
                    if self.queue and self.queue[0] is not job:
                        continue  # dropped: try the next head
                    return False
            a = job.done
            b = min(a + self.spec.chunk_tokens, job.req.tokens)
            dt = self.table.exec_time(b, a) * self.cost_scale + swap
            members = [(job, b)]
            budget = self.spec.chunk_tokens - (b - a)
            if self.spec.batch_prefill and b >= job.req.tokens:
                for nxt in list(self.queue)[1:]:
                    if budget <= 0 or len(self.batch) + len(members) >= self.spec.max_batch:
                        break
                    cached, _ = self.kv.match(nxt.path) if self.spec.prefix_cache else (0, 0)
                    need = nxt.req.tokens - min(cached * self.unit, nxt.req.tokens - 1)
                    if need > budget:
                        break
                    ok, sw = self._lease(nxt)
                    if not ok:
                        break
                    need = nxt.req.tokens - nxt.done
                    budget -= need
                    dt += self.table.exec_time(nxt.req.tokens, nxt.done) * self.cost_scale + sw
                    members.append((nxt, nxt.req.tokens))
            dt += self.spec.iteration_overhead_s
            self._busy = True
            self.stats.prefill_s += dt
            self.stats.chunks += 1
            self.compute.start(self, dt, self._chunk_done, members)
            return True
        return False

    def _chunk_done(self, members: list[tuple[Job, int]]) -> None:
        self._busy = False
        for job, b in members:
            job.done = b
            if b < job.req.tokens:
                continue
            self.queue.remove(job)
            assert job.lease is not None
            self.kv.commit(job.lease)
            if self.role == "colocated":
                job.t_first = self.loop.now
                job.generated = 1
                self.hooks.prefilled(job, self)
                if job.generated >= job.req.output_tokens:
                    self._finish(job)
                else:
                    self.batch.append(job)
            else:
                self.hooks.prefilled(job, self)
        self._step()

    def _decode_segment(self) -> None:
        batch = self.batch
        n = len(batch)
        self.stats.peak_batch = max(self.stats.peak_batch, n)
        steps = min(j.req.output_tokens - j.generated for j in batch)
        ctx = sum(j.req.tokens + j.generated for j in batch) / n + steps / 2
        dt = self.table.decode_time(n, int(ctx)) * self.cost_scale + self.spec.iteration_overhead_s
        self._token += 1
        self._seg = _Segment(dt, steps, self._token, list(batch))
        self._busy = True
        self.stats.segments += 1
        self.compute.start(self, steps * dt, self._segment_done, self._token)

    def _cut(self) -> None:
        """End the running decode segment at the next step boundary (a request joins or prefill
        work arrives)."""
        seg = self._seg
        if seg is None:
            return
        progress = self.compute.done_s(self)  # table seconds into the segment
        done = math.ceil(progress / seg.dt - 1e-9) if seg.dt > 0 else 0
        done = max(0, done)
        if done >= seg.steps:
            return
        seg.steps = done
        self._token += 1
        seg.token = self._token
        self.compute.retarget(self, done * seg.dt, self._segment_done, seg.token)

    def _segment_done(self, token: int) -> None:
        seg = self._seg
        if seg is None or token != seg.token:
            return  # superseded by a cut
        self._seg = None
        self._busy = False
        self.stats.decode_s += seg.steps * seg.dt
        ended = []
        for j in seg.members:
            j.generated += seg.steps
            if j.generated >= j.req.output_tokens:
                ended.append(j)
        for j in ended:
            self.batch.remove(j)
            self._finish(j)
        if ended and self.role == "decode":
            self._admit_decode()
        self._step()

    def _finish(self, job: Job) -> None:
        job.t_end = self.loop.now
        lease = job.lease if self.role == "colocated" else job.dlease
        assert lease is not None
        self.kv.commit(lease, job.path + job.out_path)
        self.kv.release(lease)
        self.leases -= 1
        self.stats.finished += 1
        self.hooks.finished(job, self)

    def _admit_decode(self) -> None:
        """Decode role: allocate pages for waiting requests (prompt + output), FCFS; each
        admitted one has its KV sent by the simulator (``hooks.prefilled`` ran already)."""
        while self.admit and len(self.batch) + self.incoming < self.spec.max_batch:
            job = self.admit[0]
            lease = self.kv.acquire(job.path, len(job.out_path))
            if lease is None:
                if self.leases == 0:
                    self.admit.popleft()
                    job.failed = f"request does not fit in {self.id}'s HBM"
                    self.hooks.dropped(job, self)
                    continue
                return
            self.admit.popleft()
            self.leases += 1
            self.incoming += 1
            job.dlease = lease
            self.hooks.send_kv(job, self)


    def release_prefill(self, job: Job) -> None:
        """Prefill role: ``job``'s KV left for its decode instance; unlock its pages here (they
        stay cached) and retry what waits for memory."""
        assert job.lease is not None
        self.kv.release(job.lease)
        self.leases -= 1
        self.memory_freed()
