"""``transfer_with_insert``: MemPool's prepare / write / commit / abort protocol, one implementation.

Used by MemPool's own pools (:class:`~.pool.MemPool`) and by SGLang-backed instances (the
decode -> prefill KV return and peer migration, :mod:`sglang_memserve.cache.peer`); what differs
between them (match and lock in whose tree, where pages come from, how a commit indexes, where
peers write) sits behind :class:`DestinationAdapter`.

1. source -> destination ``kv_prepare`` (control channel; a request naming another instance is
   refused by :mod:`.rpc` before anything happens). The destination matches the tokens in the
   tier, locks the present prefix, allocates pages for the rest and records a transaction whose
   lease is ``lease_s`` plus its size at ``min_rate_bps``, so a long healthy transfer is never
   reaped (and its pages reused) while the source still writes.
2. source writes only the missing pages (contiguous runs merged, batches of the configured size).
3. source -> ``kv_commit``: the destination indexes the whole path at once. On a write error the
   source sends ``kv_abort``; a source that died is reaped when its lease passes (the owner calls
   :meth:`TxnTable.reap` on its idle tick and before each prepare). Either way nothing is
   indexed and the pages go back.

Wire messages (orjson dicts over :mod:`.rpc`):

* ``kv_prepare {"txn", "tokens", "tier"?}`` -> ``{"skip": tokens already held, "pages": page ids
  for the rest, "segment": where to write, "layout": PageLayout json}``;
* ``kv_prepare_batch {"items": [{"txn", "tokens", "tier"?}]}`` -> ``{"items": [reply or
  {"error"}]}`` (one visit of the owner's thread for all);
* ``kv_commit {"txn"}`` -> ``{"indexed", "duplicates"}``; ``{"txns": [...], "wait": false}`` ->
  ``{"queued": n}`` (indexed on the owner's next turn, answered at once);
* ``kv_abort {"txn"}`` -> ``{"aborted": bool}``.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import MemPoolError, TransferError
from .rpc import Handler, rpc_call
from .tier import PageLayout
from .transfer import plan_segments

OPS = ("kv_prepare", "kv_prepare_batch", "kv_commit", "kv_abort")


@dataclass
class Reservation:
    """What a destination holds for one uncommitted transaction.

    Attributes:
        tokens: the whole pages of tokens to index at commit.
        tier: the destination tier.
        skip: leading tokens the destination already held (locked until commit or release).
        pages: page ids allocated for ``tokens[skip:]``, one per page.
        hold: the adapter's own state (lock handle, prefix slots).
    """

    tokens: list[int]
    tier: str
    skip: int
    pages: list[int]
    hold: Any = None


class DestinationAdapter(ABC):
    """The engine-specific half of a destination. :class:`TxnTable` calls every method on the
    owner's thread (the pool's lock, SGLang's scheduler thread)."""

    page_size: int

    @abstractmethod
    def reserve(self, tokens: list[int], tier: str) -> Reservation:
        """Match ``tokens`` (whole pages) in ``tier``, lock the held prefix, allocate pages for
        the rest.

        May change: the engine's locks and allocator (allocation may evict unlocked cached
        pages). Raises (``OutOfPages``, ``UnknownTier``) with nothing left locked or allocated.
        """

    @abstractmethod
    def release(self, res: Reservation) -> None:
        """Give back ``res.pages`` and unlock its prefix (abort or expiry). Indexes nothing."""

    @abstractmethod
    def insert(self, res: Reservation) -> int:
        """Index ``res.tokens`` (held prefix + ``res.pages``) and unlock the prefix.

        May change: the index (every page of the path), the allocator (pages indexed
        meanwhile by someone else are freed as duplicates).

        Returns:
            Duplicates freed (0 when the engine does not tell).
        """

    @abstractmethod
    def describe(self, tier: str) -> dict[str, Any]:
        """``{"segment", "layout"}``: where and in which layout peers write ``tier``. May bind
        the engine's transport on first use."""

    @abstractmethod
    def page_nbytes(self, tier: str) -> int:
        """Bytes of one page of ``tier``. Changes nothing."""


@dataclass
class _Txn:
    res: Reservation
    deadline: float


class TxnTable:
    """The destination's uncommitted transactions, each under a lease.

    Not thread-safe: the owner serializes every call (see :class:`DestinationAdapter`).

    Args:
        adapter: the engine-specific half.
        lease_s: lease of an empty transaction (longer than any write a source can still have
            in flight: see :attr:`~.config.MemPoolConfig.txn_lease_s`).
        min_rate_bps: slowest rate a healthy transfer reaches; the lease grows by the bytes to
            receive at this rate.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, adapter: DestinationAdapter, lease_s: float, min_rate_bps: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if lease_s <= 0 or min_rate_bps <= 0:
            raise ValueError(f"lease_s {lease_s} and min_rate_bps {min_rate_bps} must be > 0")
        self.adapter = adapter
        self.lease_s = lease_s
        self.min_rate_bps = min_rate_bps
        self.clock = clock
        self.reaped = 0
        self._txns: dict[str, _Txn] = {}

    def lease_for(self, nbytes: int) -> float:
        """Seconds a transaction receiving ``nbytes`` is kept without a commit."""
        return self.lease_s + nbytes / self.min_rate_bps

    def prepare(self, txn: str, tokens: Sequence[int], tier: str = "device") -> dict[str, Any]:
        """Reserve pages for ``tokens`` under transaction ``txn`` (reaps expired ones first).

        Returns:
            The ``kv_prepare`` reply (see the module docstring).

        Raises:
            TransferError: ``txn`` is already pending. Whatever the adapter raises.
        """
        self.reap()
        if txn in self._txns:
            raise TransferError(f"transaction {txn} is already prepared")
        ps = self.adapter.page_size
        tokens = [int(t) for t in tokens[: len(tokens) // ps * ps]]
        res = self.adapter.reserve(tokens, tier)
        lease = self.lease_for(len(res.pages) * self.adapter.page_nbytes(tier))
        self._txns[txn] = _Txn(res, self.clock() + lease)
        try:
            where = self.adapter.describe(tier)
        except BaseException:
            self.abort(txn)
            raise
        return {"skip": res.skip, "pages": list(res.pages), **where}

    def prepare_batch(self, items: Sequence[dict]) -> list[dict[str, Any]]:
        """:meth:`prepare` each ``{"txn", "tokens", "tier"?}``; a refused one answers
        ``{"error": "Type: message"}`` and the others go on."""
        out = []
        for item in items:
            try:
                out.append(self.prepare(item["txn"], item["tokens"], item.get("tier", "device")))
            except MemPoolError as exc:
                out.append({"error": f"{type(exc).__name__}: {exc}"})
        return out

    def commit(self, txn: str) -> dict[str, int]:
        """Index transaction ``txn``'s path.

        Returns:
            ``{"indexed": pages written into the index, "duplicates": ...}``.

        Raises:
            TransferError: unknown, aborted or expired (its pages are already back).
        """
        t = self._txns.pop(txn, None)
        if t is None:
            raise TransferError(f"transaction {txn} unknown or expired")
        dups = self.adapter.insert(t.res)
        return {"indexed": len(t.res.pages) - dups, "duplicates": dups}

    def abort(self, txn: str) -> bool:
        """Release transaction ``txn``. Returns whether it was pending."""
        t = self._txns.pop(txn, None)
        if t is None:
            return False
        self.adapter.release(t.res)
        return True

    def reap(self) -> int:
        """Abort every transaction whose lease passed. Returns how many."""
        now = self.clock()
        expired = [k for k, t in self._txns.items() if t.deadline < now]
        for k in expired:
            self.abort(k)
        self.reaped += len(expired)
        return len(expired)

    def close(self) -> None:
        """Abort everything pending."""
        for k in list(self._txns):
            self.abort(k)

    def pending(self) -> int:
        return len(self._txns)

    def reservations(self) -> Iterator[tuple[str, Reservation]]:
        """Pending ``(txn, reservation)`` pairs (read-only view)."""
        return ((k, t.res) for k, t in self._txns.items())

    def __contains__(self, txn: str) -> bool:
        return txn in self._txns


def handlers(table: TxnTable, call: Callable[[Callable[[], Any]], Any],
             post: Callable[[Callable[[], None]], None],
             on_commit_error: Callable[[str], None] | None = None) -> dict[str, Handler]:
    """The control-channel handlers of the protocol's destination side.

    Args:
        table: the destination's transactions.
        call: runs a closure on the owner's thread and returns its result.
        post: queues a closure for the owner's thread (queued commits).
        on_commit_error: told of a queued commit that failed (nobody waits for it).
    """
    def commit(msg: dict) -> dict:
        if msg.get("wait", True):
            return call(lambda: table.commit(msg["txn"]))
        txns = list(msg.get("txns") or [msg["txn"]])

        def run() -> None:
            for t in txns:
                try:
                    table.commit(t)
                except MemPoolError as exc:
                    if on_commit_error is not None:
                        on_commit_error(f"queued commit: {exc}")

        post(run)
        return {"queued": len(txns)}

    return {
        "kv_prepare": lambda m: call(lambda: table.prepare(
            m["txn"], list(m["tokens"]), m.get("tier", "device"))),
        "kv_prepare_batch": lambda m: {"items": call(lambda: table.prepare_batch(m["items"]))},
        "kv_commit": commit,
        "kv_abort": lambda m: call(lambda: {"aborted": table.abort(m["txn"])}),
    }


# ---- source side ---------------------------------------------------------------------------


class PageWriter(Protocol):
    """One-sided writes into a peer's registered memory (a MemPool ``TransferAgent``, SGLang's
    Mooncake engine): ``write(segment, [(local, remote, nbytes)]) -> bytes written``; raises
    ``TransferError`` (some blocks may have landed)."""

    def write(self, segment: str, writes: Sequence[tuple[int, int, int]]) -> int: ...


@dataclass(frozen=True)
class SendItem:
    """One prefix to send: its whole pages of tokens and the source page holding each."""

    tokens: list[int]
    src_pages: list[int]
    ann: str | None = None  # the announcement its prepare ends (decode -> prefill returns)


@dataclass(frozen=True)
class Sent:
    """Outcome of sending one :class:`SendItem` (``error`` set when it failed)."""

    sent_pages: int = 0
    skip: int = 0  # tokens the destination already held
    nbytes: int = 0
    duplicates: int = 0
    dst_pages: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Peer:
    """Where a source sends: the destination's control endpoint, the instance it must be
    (``None``: not checked) and the request bound."""

    endpoint: str
    timeout_s: float
    instance: str | None = None

    def call(self, msg: dict) -> dict:
        return rpc_call(self.endpoint, msg, timeout_s=self.timeout_s,
                        expect_instance=self.instance)

    def abort(self, txn: str) -> None:
        try:
            self.call({"op": "kv_abort", "txn": txn})
        except MemPoolError:
            pass  # the destination's lease frees the pages


def _writes(src_layout: PageLayout, item: SendItem, prep: dict, ps: int
            ) -> list[tuple[int, int, int]]:
    skip = int(prep["skip"]) // ps
    return plan_segments(src_layout, item.src_pages[skip:], PageLayout.from_json(prep["layout"]),
                         [int(p) for p in prep["pages"]])


def _check(item: SendItem, ps: int) -> None:
    if len(item.tokens) % ps or len(item.src_pages) != len(item.tokens) // ps:
        raise ValueError(f"{len(item.src_pages)} source pages for {len(item.tokens)} tokens "
                         f"(whole pages of {ps} expected)")


def send(peer: Peer, item: SendItem, src_layout: PageLayout, writer: PageWriter,
         tier: str = "device") -> Sent:
    """Prepare, write and commit one prefix (the caller keeps its source pages alive).

    Raises:
        ValueError: ``item`` is not whole pages with one source page each.
        UnknownPeer: the destination is not ``peer.instance``.
        OutOfPages / LayoutMismatch / TransferError / TransferTimeout: nothing was indexed
            (the destination's pages are aborted, or reaped after their lease).
    """
    ps = src_layout.page_size
    _check(item, ps)
    t0 = time.perf_counter()
    txn = uuid.uuid4().hex
    prep = peer.call({"op": "kv_prepare", "txn": txn, "tokens": item.tokens, "tier": tier})
    try:
        writes = _writes(src_layout, item, prep, ps)
        nbytes = writer.write(prep["segment"], writes) if writes else 0
    except MemPoolError:
        peer.abort(txn)
        raise
    res = peer.call({"op": "kv_commit", "txn": txn})
    pages = [int(p) for p in prep["pages"]]
    return Sent(len(pages), int(prep["skip"]), nbytes, int(res.get("duplicates", 0)), pages,
                time.perf_counter() - t0)


def send_batch(peer: Peer, items: Sequence[SendItem], src_layout: PageLayout,
               writer: PageWriter) -> list[Sent]:
    """Send several prefixes to one destination: one ``kv_prepare_batch``, one write of all
    their pages, one queued ``kv_commit`` (indexed on the destination's next turn). Never
    raises for a transfer failure: each item's :class:`Sent` carries its own ``error``.

    Raises:
        ValueError: an item is not whole pages with one source page each.
    """
    ps = src_layout.page_size
    for it in items:
        _check(it, ps)
    t0 = time.perf_counter()
    txns = [uuid.uuid4().hex for _ in items]
    try:
        reps = peer.call({"op": "kv_prepare_batch", "items": [
            {"txn": t, "tokens": it.tokens} | ({"ann": it.ann} if it.ann else {})
            for t, it in zip(txns, items, strict=True)]})["items"]
    except MemPoolError as exc:
        reps = [{"error": f"prepare: {exc}"}] * len(items)
    out: list[Sent | None] = [None] * len(items)
    ready: list[int] = []
    writes: list[tuple[int, int, int]] = []
    try:
        for i, (it, prep) in enumerate(zip(items, reps, strict=True)):
            if "error" in prep:
                out[i] = Sent(error=str(prep["error"]))
                continue
            ready.append(i)
            writes += _writes(src_layout, it, prep, ps)
        if ready:
            nbytes = writer.write(reps[ready[0]]["segment"], writes) if writes else 0
            peer.call({"op": "kv_commit", "txns": [txns[i] for i in ready], "wait": False})
            secs = time.perf_counter() - t0
            for k, i in enumerate(ready):
                pages = [int(p) for p in reps[i]["pages"]]
                out[i] = Sent(len(pages), int(reps[i]["skip"]), nbytes if k == 0 else 0, 0,
                              pages, secs)
    except MemPoolError as exc:
        for i in ready:
            peer.abort(txns[i])
            out[i] = Sent(error=str(exc))
    return [s if s is not None else Sent(error="not sent") for s in out]
