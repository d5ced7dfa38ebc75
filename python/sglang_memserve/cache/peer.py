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


@dataclass
class PeerStats:
    pushes: int = 0
    push_failures: int = 0
    pages_sent: int = 0
    bytes_sent: int = 0
    pages_received: int = 0
    pages_skipped: int = 0
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
                 timeout_s: float = 10.0) -> None:
        self.cache = cache
        self.pool = pool
        self.bridge = bridge
        self.transport = transport
        self.timeout_s = timeout_s
        device = pool.tiers["device"]
        self.layout = device.store.layout
        self.regions = [(r.addr, r.nbytes) for r in device.store.regions()]
        self.stats = PeerStats()
        self._txns: dict[str, _Txn] = {}
        self._work: list[Callable[[], None]] = []
        self._cv = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="memserve-peer", daemon=True)
        self._worker.start()

    # ---- control-channel handlers (RPC thread) -------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        return {"kv_prepare": self._on_prepare, "kv_commit": self._on_commit,
                "kv_abort": self._on_abort, "kv_push": self._on_push}

    def _on_prepare(self, msg: dict) -> dict:
        return self.bridge.call(lambda: self._prepare(msg["txn"], list(msg["tokens"])),
                                self.timeout_s)

    def _on_commit(self, msg: dict) -> dict:
        return self.bridge.call(lambda: self._commit(msg["txn"]), self.timeout_s)

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
            outcome = self._send(tokens, src_pages, dst)
            self.bridge.post(lambda: self.cache.unlock(lock))
            if done:
                done(outcome)

        with self._cv:
            self._work.append(job)
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
                job = self._work.pop(0)
            try:
                job()
            except Exception:  # keep the worker alive; the job reported its own failure
                logger.exception("MemServe peer job failed")
