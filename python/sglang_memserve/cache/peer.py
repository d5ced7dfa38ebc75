"""Moving KV between SGLang instances through MemPool: decode -> prefill return (PD-Caching-3) and
peer-to-peer prefix migration.

Both are MemPool's ``transfer_with_insert`` (:mod:`sglang_memserve.mempool.protocol`, the one
implementation of prepare / write / commit / abort) over the memory SGLang owns;
:class:`SGLangDestination` is the protocol's engine half:

1. Source, scheduler thread: match the tokens in its tree, lock the matched path.
2. Source, worker thread: ``kv_prepare`` to the destination's control channel. The destination
   (on its scheduler thread) matches what it already has, locks it, takes pages for the rest
   with its MemPool's ``alloc_mem`` (SGLang's allocator; SGLang's tree evicts if needed) under a
   lease that grows with the bytes to receive, and answers with its page ids and KV layout.
3. Source: writes only the missing pages with Mooncake (SGLang's own engine in PD processes,
   else a MemPool :class:`~sglang_memserve.mempool.TransferAgent`): scattered source pages are
   gathered into a registered staging buffer so that each run of consecutive destination pages
   is one Mooncake block per K/V stream (:mod:`.staging`).
4. Source: ``kv_commit``; the destination inserts the whole path into its tree (duplicates that
   raced in meanwhile are freed by the tree), hands the pages over from MemPool's in-use set
   and unlocks. On any failure the source sends ``kv_abort``, or the lease expires (reaped on
   the scheduler's every iteration, idle ones included: :meth:`PeerService.tick`), and the
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
  (at most ``hold_s``), so the turn hits on the answer instead of recomputing it;
* the source *announces* each return when it is released, before the worker prepares it
  (:mod:`.announce`): the hold waits for an announced return as for a prepared one, so a
  return queued behind the worker's previous batch does not lose the race either.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sglang_memserve.cache.announce import Announcements, Announcer
from sglang_memserve.cache.bridge import SchedulerBridge
from sglang_memserve.cache.staging import STAGING_BYTES, StagedWriter, WriteStats
from sglang_memserve.config import control_endpoint
from sglang_memserve.mempool import EngineMemPool
from sglang_memserve.mempool.errors import (
    InvalidRequest,
    MemPoolError,
    TransferError,
    UnknownPeer,
    UnknownTier,
)
from sglang_memserve.mempool.protocol import (
    DestinationAdapter,
    Peer,
    Reservation,
    SendItem,
    Sent,
    TxnTable,
    send,
    send_batch,
)
from sglang_memserve.mempool.protocol import handlers as protocol_handlers

logger = logging.getLogger(__name__)

# Longest a destination holds a request for a prepared return (see the module docstring): about
# one busy prefill iteration plus the write on the CPU host; past it, recomputing is cheaper.
RETURN_HOLD_S = 0.5
# Bound on one peers_set's list (a cluster's instances; a bigger list is a bad message).
MAX_JOINED_PEERS = 4096


@dataclass(frozen=True)
class _Return:
    """A decode -> prefill return waiting for the worker (the source path is locked)."""

    tokens: list[int]
    src_pages: list[int]
    dst: str
    lock: Any
    ann: str


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
    holds_skipped_busy: int = 0  # not held (or let go): other prompts were about to run
    reaped: int = 0
    last_error: str | None = None
    # Where a return's time goes (summed): match + lock on the scheduler thread at release,
    # and the worker's batch (prepare, write, queued commit) in wall and in its thread's CPU.
    match_s: float = 0.0
    batch_wall_s: float = 0.0
    batch_cpu_s: float = 0.0
    write: WriteStats = field(default_factory=WriteStats)
    recent: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("recent", "write")} | {
            "write": self.write.as_dict(), "recent": self.recent[-16:]}


def match_device(cache: Any, tokens: list[int]) -> tuple[int, Any, torch.Tensor]:
    """The device-resident prefix of ``tokens`` in SGLang's tree (scheduler thread).

    Returns:
        ``(tokens matched, last device node, their token slots)``. May split a tree node at
        the match's end (SGLang's ``match_prefix`` does); indexes nothing.
    """
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    m = cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens))))
    n = int(m.device_prefix_len)
    indices = cache.path_device_indices(m.last_device_node)[:n] if n else \
        torch.empty(0, dtype=torch.int64)
    return n, m.last_device_node, indices.to(torch.int64)


class SGLangDestination(DestinationAdapter):
    """The protocol's destination half over SGLang's tree and allocator (scheduler thread).

    Args:
        cache: the MemServe tree cache. pool: its MemPool (``alloc_mem`` over SGLang's
            allocator). transport: where peers write (``bind``, ``segment``).
        stats: counters it adds received / skipped pages to.
    """

    def __init__(self, cache: Any, pool: EngineMemPool, transport: Any, stats: PeerStats
                 ) -> None:
        self.cache = cache
        self.pool = pool
        self.transport = transport
        self.stats = stats
        self.page_size = cache.page_size
        device = pool.tiers["device"]
        self.layout = device.store.layout
        self.regions = [(r.addr, r.nbytes) for r in device.store.regions()]

    def _device(self, tier: str) -> None:
        if tier != "device":
            raise UnknownTier(f"an SGLang instance receives transfers into its device tier, "
                              f"not {tier!r}")

    def reserve(self, tokens: list[int], tier: str) -> Reservation:
        """Locks the device prefix SGLang's tree holds; ``alloc_mem`` the rest (SGLang's tree
        may evict unlocked pages)."""
        self._device(tier)
        skip, node, prefix = match_device(self.cache, tokens)
        lock = self.cache.lock(node) if skip else None
        try:
            pages = self.pool.alloc_mem((len(tokens) - skip) // self.page_size, "device")
        except BaseException:
            self.cache.unlock(lock)
            raise
        return Reservation(tokens, tier, skip, pages, (lock, prefix))

    def release(self, res: Reservation) -> None:
        """``free_mem`` the pages (back to SGLang's allocator), unlock the prefix."""
        self.pool.free_mem(res.pages, "device")
        self.cache.unlock(res.hold[0])

    def insert(self, res: Reservation) -> int:
        """SGLang's ``insert`` of the whole path (it frees pages it already had), then the pages
        leave MemPool's in-use set and the prefix is unlocked. Returns 0: SGLang does not say
        how many were duplicates."""
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        lock, prefix = res.hold
        device = self.pool.tiers["device"].allocator
        value = torch.cat([prefix, device.slots(res.pages).to(prefix.device)])
        self.cache.insert(InsertParams(key=RadixKey(array("q", res.tokens)), value=value,
                                       prev_prefix_len=res.skip))
        self.pool.hand_over(res.pages, "device")  # indexed, or freed by SGLang as duplicates
        self.cache.unlock(lock)
        self.stats.pages_received += len(res.pages)
        self.stats.pages_skipped += res.skip // self.page_size
        return 0

    def describe(self, tier: str) -> dict[str, Any]:
        self.transport.bind(self.regions)
        return {"segment": self.transport.segment, "layout": self.layout.to_json()}

    def page_nbytes(self, tier: str) -> int:
        return self.layout.page_nbytes


class PeerService:
    """The KV-movement side of one instance's MemServe cache.

    Args:
        cache: the MemServe tree cache (SGLang's unified radix cache subclass).
        pool: the instance's MemPool over SGLang's memory (allocation, layout); its config
            gives the lease (``txn_lease_s``, ``min_transfer_rate_bps``).
        bridge: runs closures on the scheduler thread.
        transport: this process's Mooncake side: ``bind(regions)``, ``segment`` (where peers
            write) and ``write(segment, [(src, dst, nbytes)]) -> bytes``.
        timeout_s: bound on every control request.
        hold_s: longest a bootstrapped request waits for a prepared return.
        peers: the control endpoints ``tcp://HOST:PORT`` pushes may go to (``--mempool-peers``);
            None: any. The router adds the members that join at run time (``peers_set``).
    """

    def __init__(self, cache: Any, pool: EngineMemPool, bridge: SchedulerBridge, transport: Any,
                 timeout_s: float = 10.0, hold_s: float = RETURN_HOLD_S,
                 peers: Sequence[str] | None = None) -> None:
        self.static_peers = None if peers is None else frozenset(peers)
        # The router's members (``peers_set``), allowed besides the static ones; replaced whole
        # (one attribute store), so the threads that read it never see half an update.
        self.joined_peers: frozenset[str] = frozenset()
        self.cache = cache
        self.pool = pool
        self.bridge = bridge
        self.timeout_s = timeout_s
        self.hold_s = hold_s
        self._held: list[tuple[Any, float, float]] = []  # (req, since, deadline)
        self.stats = PeerStats()
        self.destination = SGLangDestination(cache, pool, transport, self.stats)
        self.layout = self.destination.layout
        self.writer = StagedWriter(transport, self.destination.regions, STAGING_BYTES,
                                   self.stats.write)
        self.incoming = TxnTable(self.destination, pool.config.txn_lease_s,
                                 pool.config.min_transfer_rate_bps)
        self.announced = Announcements()
        self.announcer = Announcer(lambda dst, msg: Peer(dst, self.timeout_s).call(msg))
        self._work: list[Callable[[], None] | _Return] = []
        self._cv = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="memserve-peer", daemon=True)
        self._worker.start()

    @property
    def peers(self) -> frozenset[str] | None:
        """Where pushes may go: the static peers and those the router registered (None: any)."""
        if self.static_peers is None:
            return None
        return self.static_peers | self.joined_peers

    # ---- control-channel handlers (RPC thread) -------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        """The protocol's ops (run on the scheduler thread), ``kv_announce`` (on the control
        thread), ``kv_push`` and ``peers_set``."""
        return {**protocol_handlers(self.incoming, lambda fn: self.bridge.call(fn, self.timeout_s),
                                    self.bridge.post, self._failed),
                "kv_prepare_batch": self._on_prepare_batch, "kv_announce": self.announced.add,
                "kv_push": self._on_push, "peers_set": self._on_peers_set}

    def _on_prepare_batch(self, msg: dict) -> dict:
        """The protocol's ``kv_prepare_batch``; the announcements its items name end in the
        same scheduler visit, so the hold never sees a return as neither."""
        items = msg.get("items")
        if not isinstance(items, list):
            raise InvalidRequest("kv_prepare_batch needs a list of items")

        def run() -> list[dict]:
            try:
                return self.incoming.prepare_batch(items)
            finally:
                self.announced.end(it.get("ann") for it in items if isinstance(it, dict))

        return {"items": self.bridge.call(run, self.timeout_s)}

    def _on_peers_set(self, msg: dict) -> dict:
        """Replace the peers registered at run time with ``msg["peers"]`` (the router sends its
        members' control endpoints whenever they change); ``--mempool-peers`` stay. Changes
        only :attr:`joined_peers`.

        Raises:
            InvalidRequest: ``peers`` is not a list of at most MAX_JOINED_PEERS ``HOST:PORT``
                endpoints; nothing changed.
        """
        raw = msg.get("peers")
        if not isinstance(raw, list) or len(raw) > MAX_JOINED_PEERS:
            raise InvalidRequest(f"peers must be a list of at most {MAX_JOINED_PEERS} control "
                                 f"endpoints, got {type(raw).__name__}")
        try:
            joined = frozenset(control_endpoint(p) for p in raw)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        self.joined_peers = joined
        return {"joined": sorted(joined), "enforced": self.static_peers is not None}

    def _on_push(self, msg: dict) -> dict:
        """Push a cached prefix to ``msg["dst"]`` (migration: the router asks the owner);
        ``msg["dst_instance"]``, when given, is the instance ``dst`` must be.

        Raises:
            UnknownPeer: ``dst`` is not a registered peer; nothing was locked or sent.
        """
        self.check_destination(msg.get("dst"))
        done = threading.Event()
        result: dict[str, Any] = {}

        def finished(outcome: dict) -> None:
            result.update(outcome)
            done.set()

        self.bridge.call(lambda: self.push(list(msg["tokens"]), msg["dst"], finished,
                                           msg.get("dst_instance")), self.timeout_s)
        if not done.wait(3 * self.timeout_s):
            raise TransferError("push did not finish in time")
        if "error" in result:
            raise result.get("exc") or TransferError(result["error"])
        return result

    # ---- destination side (scheduler thread) ----------------------------------------------

    def tick(self) -> None:
        """Per scheduler iteration (idle ones too): reap transactions past their lease."""
        if self.incoming.pending():
            n = self.incoming.reap()
            if n:
                self.stats.reaped += n
                logger.warning("MemServe: %d incoming transfer(s) expired; pages freed", n)

    def gate(self, popped: list[Any], waiting: int = 0) -> list[Any]:
        """Filter the requests prefill's bootstrap queue just released (scheduler thread).

        Args:
            popped: the bootstrapped requests, about to enter the waiting queue.
            waiting: requests already in the waiting queue.

        Returns:
            The requests to enqueue now: earlier held ones whose return was indexed (or gave up
            waiting), then those of ``popped`` not waiting for one. A request whose prompt
            extends a prepared, uncommitted return or an announced one is kept back (changes
            ``self._held``) while nothing else would run: the return lands one or two
            scheduler iterations later, so beside other prompts the hold would cost a whole
            forward pass, more than recomputing the answer in this one.
        """
        if not self._held and not self.incoming.pending() and not len(self.announced):
            return popped
        now = time.monotonic()
        out, still = [], []
        for req, since, deadline in self._held:
            waits = self._waits(req)
            if waits and now < deadline:
                still.append((req, since, deadline))
                continue
            self.stats.hold_timeouts += waits
            self.stats.held_s += now - since
            out.append(req)
        fresh = []
        for req in popped:
            (fresh if self._waits(req) else out).append(req)
        if waiting or out:
            # A forward pass runs now anyway: waiting through it costs more than the answer.
            self.stats.holds_skipped_busy += len(fresh) + len(still)
            self.stats.held_s += sum(now - since for _req, since, _d in still)
            out += [req for req, _s, _d in still] + fresh
            still = []
        else:
            self.stats.held_requests += len(fresh)
            still += [(req, now, now + self.hold_s) for req in fresh]
        self._held = still
        return out

    def _waits(self, req: Any) -> bool:
        """Whether a prepared or announced return covers more of ``req``'s prompt than the
        tree has yet (may split a tree node, as SGLang's own matching does)."""
        ids = req.origin_input_ids
        ps = self.cache.page_size
        for _txn, res in self.incoming.reservations():
            m = min(len(ids), res.skip + ps)
            if m > res.skip and len(res.tokens) >= m and list(ids[:m]) == res.tokens[:m]:
                return True
        if not len(self.announced):
            return False
        have = match_device(self.cache, list(ids[: len(ids) // ps * ps]))[0]
        return self.announced.covers(ids, have, ps)

    def state(self) -> dict[str, Any]:
        """The counters ``/server_info`` reports (reads only)."""
        return self.stats.as_dict() | {
            "announced": self.announced.received, "announce_sent": self.announcer.sent,
            "announce_failed": self.announcer.failed}

    def held(self) -> int:
        return len(self._held)

    def pending(self) -> int:
        return self.incoming.pending()

    # ---- source side ----------------------------------------------------------------------

    def push(self, tokens: list[int], dst: str,
             done: Callable[[dict], None] | None = None, dst_instance: str | None = None
             ) -> None:
        """Send the cached KV of ``tokens`` to the instance whose control endpoint is ``dst``
        and index it there (scheduler thread; the transfer runs on the worker thread).

        Args:
            done: told the outcome (``{"sent_pages", "skip", ...}`` or ``{"error"}``); without
                it the push is a decode -> prefill return, batched with others to ``dst``.
            dst_instance: the instance ``dst`` must be (refused with ``UnknownPeer`` if not).
            A ``dst`` outside the registered peers is refused the same way before anything is
            matched, locked or sent.
        """
        try:
            self.check_destination(dst)
        except UnknownPeer as exc:
            outcome = self._failed(str(exc))
            if done:
                done({**outcome, "exc": exc})
            return
        t = time.perf_counter()
        ps = self.cache.page_size
        tokens = tokens[: len(tokens) // ps * ps]
        n, node, indices = match_device(self.cache, tokens)
        if n == 0:
            if done:
                done({"sent_pages": 0, "skip": 0})
            return
        lock = self.cache.lock(node)
        tokens = tokens[:n]
        src_pages = (indices[::ps] // ps).tolist()
        self.stats.match_s += time.perf_counter() - t

        def job() -> None:
            # The caller (migration) waits until the destination has indexed the prefix.
            outcome = self._send(tokens, src_pages, Peer(dst, self.timeout_s, dst_instance))
            self.bridge.post(lambda: self.cache.unlock(lock))
            done(outcome)

        if done is None:
            ann = uuid.uuid4().hex
            self.announcer.announce(dst, ann, tokens)
        with self._cv:
            self._work.append(job if done else _Return(tokens, src_pages, dst, lock, ann))
            self._cv.notify()

    def check_destination(self, dst: Any) -> None:
        """Refuse a push whose destination is not a registered peer (reads only).

        Raises:
            UnknownPeer: ``dst`` is not one of ``self.peers`` (compared as ``tcp://HOST:PORT``,
                hosts as written); never raised when no peers were registered.
        """
        if not isinstance(dst, str):
            raise UnknownPeer(f"dst must be a control endpoint tcp://HOST:PORT, not {dst!r}")
        if self.peers is None:
            return
        try:
            endpoint = control_endpoint(dst)
        except ValueError as exc:
            raise UnknownPeer(str(exc)) from None
        if endpoint not in self.peers:
            raise UnknownPeer(f"{dst} is not a registered peer of this instance "
                              f"(--mempool-peers: {_listed(self.static_peers or ())}; joined: "
                              f"{_listed(self.joined_peers)}); "
                              "nothing was sent")

    def _send(self, tokens: list[int], src_pages: list[int], peer: Peer) -> dict:
        try:
            out = send(peer, SendItem(tokens, src_pages), self.layout, self.writer)
        except MemPoolError as exc:
            return {**self._failed(str(exc)), "exc": exc}
        self.stats.pushes += 1
        self.stats.pages_sent += out.sent_pages
        self.stats.bytes_sent += out.nbytes
        outcome = {"sent_pages": out.sent_pages, "skip": out.skip, "bytes": out.nbytes,
                   "seconds": out.seconds}
        self.stats.recent.append({"tokens": len(tokens), **outcome})
        del self.stats.recent[:-64]
        return outcome

    def _return_batch(self, dst: str, items: Sequence[_Return]) -> None:
        """Prepare, write and commit (queued) every return in ``items`` to ``dst``; unlock their
        source paths (worker thread). Failures are counted per return."""
        t, c = time.perf_counter(), time.thread_time()
        try:
            sent = send_batch(Peer(dst, self.timeout_s),
                              [SendItem(it.tokens, it.src_pages, it.ann) for it in items],
                              self.layout, self.writer)
            self._count(items, sent)
        finally:
            self.stats.batch_wall_s += time.perf_counter() - t
            self.stats.batch_cpu_s += time.thread_time() - c
            locks = [it.lock for it in items]
            self.bridge.post(lambda: [self.cache.unlock(lock) for lock in locks])

    def _count(self, items: Sequence[_Return], sent: list[Sent]) -> None:
        ok = [(it, s) for it, s in zip(items, sent, strict=True) if s.error is None]
        for _, s in zip(items, sent, strict=True):
            if s.error is not None:
                self._failed(s.error)
        if not ok:
            return
        self.stats.push_batches += 1
        for it, s in ok:
            self.stats.pushes += 1
            self.stats.pages_sent += s.sent_pages
            self.stats.bytes_sent += s.nbytes
            self.stats.recent.append({"tokens": len(it.tokens), "sent_pages": s.sent_pages,
                                      "skip": s.skip, "batch": len(ok), "seconds": s.seconds})
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


def _listed(endpoints: frozenset[str] | tuple[()]) -> str:
    return ", ".join(sorted(endpoints)) or "none"
