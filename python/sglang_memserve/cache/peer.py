"""Moving KV between SGLang instances through MemPool: decode -> prefill return (PD-Caching-3) and
peer-to-peer prefix migration.

Both are one operation, *push a cached prefix to a peer and index it there*: MemPool's
``transfer_with_insert`` carried out over the memory SGLang owns.

1. Source, scheduler thread: match the tokens in its tree, lock the matched path.
2. Source, worker thread: ``kv_prepare`` to the destination's control channel. The destination
   (on its scheduler thread) matches what it already has, locks it, takes pages for the rest
   with its MemPool's ``alloc_mem`` (SGLang's allocator; SGLang's tree evicts if needed) under a
   lease, and answers with its page ids and its KV layout.
3. Source: writes only the missing pages with Mooncake (SGLang's own engine in PD processes,
   else a MemPool :class:`~sglang_memserve.mempool.TransferAgent`), in merged runs.
4. Source: ``kv_commit``; the destination inserts the whole path into its tree (duplicates that
   raced in meanwhile are freed by the tree), hands the pages over from MemPool's in-use set
   and unlocks. On any failure the source sends ``kv_abort`` (or the lease expires) and the
   destination gives its pages back with ``free_mem``: nothing is half-indexed. The source
   unlocks its path on its scheduler thread.

The decode -> prefill return races the conversation's next turn, which reaches prefill moments
after the answer's last token. Two things keep it off that turn's critical path:

* returns are *batched*: the worker takes every return waiting for it, prepares them with one
  ``kv_prepare_batch`` (one visit of the destination's scheduler for all), writes them in one
  Mooncake batch and commits them with one ``kv_commit``;
* that commit is *queued* (``"wait": false``): the destination answers at once and inserts at
  its scheduler's next iteration, so a batch costs the destination's scheduler one visit that
  anyone waits for instead of two, and the next batch's prepare shares the commit's visit;
* the destination *holds* a bootstrapped request whose prompt extends a prepared, uncommitted
  return (:meth:`PeerService.gate`, on prefill's bootstrap queue) until that return is indexed
  (at most ``hold_s``), so the turn hits on the answer instead of recomputing it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sglang_memserve.cache.bridge import SchedulerBridge
from sglang_memserve.mempool import EngineMemPool
from sglang_memserve.mempool.errors import MemPoolError, OutOfPages, TransferError
from sglang_memserve.mempool.rpc import rpc_call
from sglang_memserve.mempool.tier import PageLayout
from sglang_memserve.mempool.transfer import plan_segments

logger = logging.getLogger(__name__)


@dataclass
class _Txn:
    tokens: list[int]
    skip: int
    pages: list[int]  # MemPool in-use pages for tokens[skip:]
    prefix: torch.Tensor
    lock: Any
    deadline: float


# Longest a destination holds a request for a prepared return (see the module docstring): about
# one busy prefill iteration plus the write on the CPU host; past it, recomputing is cheaper.
RETURN_HOLD_S = 0.5


@dataclass(frozen=True)
class _Return:
    """A decode -> prefill return waiting for the worker (the source path is locked)."""

    tokens: list[int]
    src_pages: list[int]
    dst: str
    lock: Any


@dataclass
class PeerStats:
    pushes: int = 0
    push_batches: int = 0
    push_failures: int = 0
    pages_sent: int = 0
    bytes_sent: int = 0
    pages_received: int = 0
    pages_skipped: int = 0
    held_requests: int = 0
    held_s: float = 0.0
    hold_timeouts: int = 0
    last_error: str | None = None
    recent: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "recent"} | {
            "recent": self.recent[-16:]}


class PeerService:
    """The KV-movement side of one instance's MemServe cache.

    Args:
        cache: the MemServe tree cache (SGLang's unified radix cache subclass).
        pool: the instance's MemPool over SGLang's memory (allocation, layout).
        bridge: runs closures on the scheduler thread.
        transport: this process's Mooncake side: ``bind(regions)``, ``segment`` (where peers
            write) and ``write(segment, [(src, dst, nbytes)]) -> bytes``.
        timeout_s: bound on every control request and on a lease.
    """

    def __init__(self, cache: Any, pool: EngineMemPool, bridge: SchedulerBridge, transport: Any,
                 timeout_s: float = 10.0, hold_s: float = RETURN_HOLD_S) -> None:
        self.cache = cache
        self.pool = pool
        self.bridge = bridge
        self.transport = transport
        self.timeout_s = timeout_s
        self.hold_s = hold_s
        self._held: list[tuple[Any, str, float, float]] = []  # (req, txn, since, deadline)
        device = pool.tiers["device"]
        self.layout = device.store.layout
        self.regions = [(r.addr, r.nbytes) for r in device.store.regions()]
        self.stats = PeerStats()
        self._txns: dict[str, _Txn] = {}
        self._work: list[Callable[[], None] | _Return] = []
        self._cv = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="memserve-peer", daemon=True)
        self._worker.start()

    # ---- control-channel handlers (RPC thread) -------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        return {"kv_prepare": self._on_prepare, "kv_prepare_batch": self._on_prepare_batch,
                "kv_commit": self._on_commit, "kv_abort": self._on_abort,
                "kv_push": self._on_push}

    def _on_prepare(self, msg: dict) -> dict:
        return self.bridge.call(lambda: self._prepare(msg["txn"], list(msg["tokens"])),
                                self.timeout_s)

    def _on_prepare_batch(self, msg: dict) -> dict:
        """``{"items": [{"txn", "tokens"}]}`` -> ``{"items": [prepare reply or {"error"}]}``,
        all in one visit of the scheduler thread."""
        def run() -> dict:
            out = []
            for item in msg["items"]:
                try:
                    out.append(self._prepare(item["txn"], list(item["tokens"])))
                except MemPoolError as exc:
                    out.append({"error": f"{type(exc).__name__}: {exc}"})
            return {"items": out}

        return self.bridge.call(run, self.timeout_s)

    def _on_commit(self, msg: dict) -> dict:
        """``{"txn"}`` (the caller waits for the insert) or ``{"txns": [...], "wait": false}``
        (queued for the scheduler's next iteration; answered at once)."""
        if msg.get("wait", True):
            return self.bridge.call(lambda: self._commit(msg["txn"]), self.timeout_s)
        txns = list(msg.get("txns") or [msg["txn"]])
        self.bridge.post(lambda: [self._commit_queued(t) for t in txns])
        return {"queued": len(txns)}

    def _on_abort(self, msg: dict) -> dict:
        return self.bridge.call(lambda: {"aborted": self._abort(msg["txn"])}, self.timeout_s)

    def _on_push(self, msg: dict) -> dict:
        """Push a cached prefix to ``msg["dst"]`` (migration: the router asks the owner)."""
        done = threading.Event()
        result: dict[str, Any] = {}

        def finished(outcome: dict) -> None:
            result.update(outcome)
            done.set()

        self.bridge.call(lambda: self.push(list(msg["tokens"]), msg["dst"], finished),
                         self.timeout_s)
        if not done.wait(3 * self.timeout_s):
            raise TransferError("push did not finish in time")
        if "error" in result:
            raise TransferError(result["error"])
        return result

    # ---- destination side (scheduler thread) ----------------------------------------------

    def _match(self, tokens: list[int]) -> tuple[int, Any, torch.Tensor]:
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        m = self.cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens))))
        n = int(m.device_prefix_len)
        indices = self.cache.path_device_indices(m.last_device_node)[:n] if n else \
            torch.empty(0, dtype=torch.int64)
        return n, m.last_device_node, indices.to(torch.int64)

    def _prepare(self, txn: str, tokens: list[int]) -> dict:
        self._reap()
        ps = self.cache.page_size
        tokens = tokens[: len(tokens) // ps * ps]
        skip, node, prefix = self._match(tokens)
        lock = self.cache.lock(node) if skip else None
        try:
            pages = self.pool.alloc_mem((len(tokens) - skip) // ps, "device")
        except OutOfPages:
            self.cache.unlock(lock)
            raise
        self._txns[txn] = _Txn(tokens, skip, pages, prefix, lock,
                               time.monotonic() + 2 * self.timeout_s)
        self.transport.bind(self.regions)
        return {"skip": skip, "pages": pages, "segment": self.transport.segment,
                "layout": self.layout.to_json()}

    def _commit(self, txn_id: str) -> dict:
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        txn = self._txns.pop(txn_id, None)
        if txn is None:
            raise MemPoolError(f"unknown or expired transfer {txn_id}")
        device = self.pool.tiers["device"].allocator
        value = torch.cat([txn.prefix, device.slots(txn.pages).to(txn.prefix.device)])
        self.cache.insert(InsertParams(key=RadixKey(array("q", txn.tokens)), value=value,
                                       prev_prefix_len=txn.skip))
        self.pool.hand_over(txn.pages, "device")  # indexed, or freed by SGLang as duplicates
        self.cache.unlock(txn.lock)
        self.stats.pages_received += len(txn.pages)
        self.stats.pages_skipped += txn.skip // self.cache.page_size
        return {"indexed": len(txn.tokens)}

    def _commit_queued(self, txn_id: str) -> None:
        """A commit nobody waits for: a failure is logged and counted (the lease has freed the
        pages already)."""
        try:
            self._commit(txn_id)
        except MemPoolError as exc:
            self._failed(f"queued commit: {exc}")

    def gate(self, popped: list[Any]) -> list[Any]:
        """Filter the requests prefill's bootstrap queue just released (scheduler thread).

        Args:
            popped: the bootstrapped requests, about to enter the waiting queue.

        Returns:
            The requests to enqueue now: earlier held ones whose return was indexed (or gave up
            waiting), then those of ``popped`` not waiting for one. A request whose prompt
            extends a prepared, uncommitted return is kept back (changes ``self._held``).
        """
        if not self._held and not self._txns:
            return popped
        now = time.monotonic()
        out, still = [], []
        for req, txn, since, deadline in self._held:
            if txn in self._txns and now < deadline:
                still.append((req, txn, since, deadline))
                continue
            self.stats.hold_timeouts += txn in self._txns
            self.stats.held_s += now - since
            out.append(req)
        for req in popped:
            txn = self._waits_for(req)
            if txn is None:
                out.append(req)
            else:
                self.stats.held_requests += 1
                still.append((req, txn, now, now + self.hold_s))
        self._held = still
        return out

    def _waits_for(self, req: Any) -> str | None:
        """The prepared return that covers more of ``req``'s prompt than the tree has yet."""
        ids = req.origin_input_ids
        for txn_id, txn in self._txns.items():
            m = min(len(ids), txn.skip + self.cache.page_size)
            if m > txn.skip and len(txn.tokens) >= m and list(ids[:m]) == txn.tokens[:m]:
                return txn_id
        return None

    def held(self) -> int:
        return len(self._held)

    def _abort(self, txn_id: str) -> bool:
        txn = self._txns.pop(txn_id, None)
        if txn is None:
            return False
        self.pool.free_mem(txn.pages, "device")
        self.cache.unlock(txn.lock)
        return True

    def _reap(self) -> None:
        now = time.monotonic()
        for txn_id in [t for t, x in self._txns.items() if x.deadline < now]:
            logger.warning("MemServe: transfer %s expired; freeing its pages", txn_id)
            self._abort(txn_id)

    def pending(self) -> int:
        return len(self._txns)

    # ---- source side ----------------------------------------------------------------------

    def push(self, tokens: list[int], dst: str,
             done: Callable[[dict], None] | None = None) -> None:
        """Send the cached KV of ``tokens`` to the instance whose control endpoint is ``dst``
        and index it there (scheduler thread; the transfer runs on the worker thread)."""
        ps = self.cache.page_size
        tokens = tokens[: len(tokens) // ps * ps]
        n, node, indices = self._match(tokens)
        if n == 0:
            if done:
                done({"sent_pages": 0, "skip": 0})
            return
        lock = self.cache.lock(node)
        tokens = tokens[:n]
        src_pages = (indices[::ps] // ps).tolist()

        def job() -> None:
            # The caller (migration) waits until the destination has indexed the prefix.
            outcome = self._send(tokens, src_pages, dst)
            self.bridge.post(lambda: self.cache.unlock(lock))
            done(outcome)

        with self._cv:
            self._work.append(job if done else _Return(tokens, src_pages, dst, lock))
            self._cv.notify()

    def _send(self, tokens: list[int], src_pages: list[int], dst: str) -> dict:
        txn = uuid.uuid4().hex
        t0 = time.perf_counter()
        try:
            prep = rpc_call(dst, {"op": "kv_prepare", "txn": txn, "tokens": tokens},
                            timeout_s=self.timeout_s)
        except MemPoolError as exc:
            return self._failed(f"prepare: {exc}")
        skip_pages = int(prep["skip"]) // self.cache.page_size
        try:
            dst_layout = PageLayout.from_json(prep["layout"])
            writes = plan_segments(self.layout, src_pages[skip_pages:], dst_layout, prep["pages"])
            self.transport.bind(self.regions)
            nbytes = self.transport.write(prep["segment"], writes) if writes else 0
            rpc_call(dst, {"op": "kv_commit", "txn": txn}, timeout_s=self.timeout_s)
        except MemPoolError as exc:
            try:
                rpc_call(dst, {"op": "kv_abort", "txn": txn}, timeout_s=self.timeout_s)
            except MemPoolError:
                pass  # the destination's lease frees the pages
            return self._failed(str(exc))
        sent = len(prep["pages"])
        self.stats.pushes += 1
        self.stats.pages_sent += sent
        self.stats.bytes_sent += nbytes
        outcome = {"sent_pages": sent, "skip": int(prep["skip"]), "bytes": nbytes,
                   "seconds": time.perf_counter() - t0}
        self.stats.recent.append({"tokens": len(tokens), **outcome})
        return outcome

    def _return_batch(self, dst: str, items: list[_Return]) -> None:
        """Prepare, write and commit (queued) every return in ``items`` to ``dst``; unlock their
        source paths (worker thread). Failures are counted per return."""
        try:
            self._send_batch(dst, items)
        finally:
            locks = [it.lock for it in items]
            self.bridge.post(lambda: [self.cache.unlock(lock) for lock in locks])

    def _send_batch(self, dst: str, items: list[_Return]) -> None:
        t0 = time.perf_counter()
        txns = [uuid.uuid4().hex for _ in items]
        try:
            rep = rpc_call(dst, {"op": "kv_prepare_batch", "items": [
                {"txn": t, "tokens": it.tokens} for t, it in zip(txns, items, strict=True)]},
                timeout_s=self.timeout_s)["items"]
        except MemPoolError as exc:
            rep = [{"error": f"prepare: {exc}"}] * len(items)
        ready = []
        writes: list[tuple[int, int, int]] = []
        try:
            for it, txn, prep in zip(items, txns, rep, strict=True):
                if "error" in prep:
                    self._failed(str(prep["error"]))
                    continue
                ready.append((it, txn, prep))
                skip_pages = int(prep["skip"]) // self.cache.page_size
                writes += plan_segments(self.layout, it.src_pages[skip_pages:],
                                        PageLayout.from_json(prep["layout"]), prep["pages"])
            if ready:
                self.transport.bind(self.regions)
                nbytes = self.transport.write(ready[0][2]["segment"], writes) if writes else 0
                rpc_call(dst, {"op": "kv_commit", "txns": [t for _, t, _ in ready],
                               "wait": False}, timeout_s=self.timeout_s)
                self._count(ready, nbytes, time.perf_counter() - t0)
        except MemPoolError as exc:
            for _, txn, _ in ready:
                try:
                    rpc_call(dst, {"op": "kv_abort", "txn": txn}, timeout_s=self.timeout_s)
                except MemPoolError:
                    pass  # the destination's lease frees the pages
                self._failed(str(exc))

    def _count(self, ready: list[tuple[_Return, str, dict]], nbytes: int, seconds: float) -> None:
        self.stats.push_batches += 1
        for it, _, prep in ready:
            sent = len(prep["pages"])
            self.stats.pushes += 1
            self.stats.pages_sent += sent
            self.stats.recent.append({"tokens": len(it.tokens), "sent_pages": sent,
                                      "skip": int(prep["skip"]), "batch": len(ready),
                                      "seconds": seconds})
        self.stats.bytes_sent += nbytes
        del self.stats.recent[:-64]

    def _failed(self, why: str) -> dict:
        self.stats.push_failures += 1
        self.stats.last_error = why
        logger.warning("MemServe KV push failed: %s", why)
        return {"error": why}

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._work:
                    self._cv.wait()
                work, self._work = self._work, []
            returns: dict[str, list[_Return]] = {}
            for job in work:
                if isinstance(job, _Return):
                    returns.setdefault(job.dst, []).append(job)
            jobs: list[Callable[[], None]] = [j for j in work if not isinstance(j, _Return)]
            jobs += [lambda d=d, b=b: self._return_batch(d, b) for d, b in returns.items()]
            for job in jobs:
                try:
                    job()
                except Exception:  # keep the worker alive; the job reported its own failure
                    logger.exception("MemServe peer job failed")
