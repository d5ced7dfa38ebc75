"""The router's event feed: every instance's KV events, applied into its GlobalTree, in order.

One ``zmq.asyncio`` SUB socket connected to every instance's PUB endpoint (one topic each), read
by :meth:`EventFeed.run` on the router's event loop, the only thread that touches the trees.
Each instance's messages go through an :class:`~sglang_memserve.mempool.events.EventApplier`
(format v2: seq order, epoch, chained-hash verification). The view of an instance is replaced by
a snapshot (its control channel's ``snapshot`` op) when it is added, on a seq gap, when its
publisher restarted (another epoch), or when an event does not verify. The snapshot RPC is
blocking and runs in the loop's executor; messages that arrive meanwhile are buffered and
offered again, in order, once the snapshot is applied (those it covers, ``seq <= snapshot seq``,
are skipped; a hole after it starts another resync). A failed snapshot is retried with backoff
while the instance stays added; its view is then empty (never stale).

Bad frames never stop the feed: a message with the wrong number of frames, a payload that is
not a JSON object or an event of the wrong shape is dropped and counted (``malformed``); with a
secret (``auth``) an unsigned or forged message (:func:`~sglang_memserve.mempool.events.
open_frames`) is dropped and counted (``forged``). Either starts a resync: the view may have
missed what the dropped message said, or have applied part of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

import orjson
import zmq
import zmq.asyncio

from sglang_memserve.mempool.auth import AuthError, ControlAuth
from sglang_memserve.mempool.errors import MemPoolError
from sglang_memserve.mempool.events import (
    EventApplier,
    EventChainError,
    EventFormatError,
    EventFrameError,
    NeedResync,
    PublisherRestarted,
    SeqGap,
    open_frames,
    topic_of,
)
from sglang_memserve.mempool.rpc import rpc_call

from .trees import GlobalTree

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FeedStats:
    """Per-instance counters (monotonic, for ``/metrics``).

    Attributes:
        messages / events / pages: received messages, their events, pages applied (stored or
            removed, snapshots included). bytes: received payload + topic bytes.
        gaps: seq holes seen (lost messages). restarts: publisher epochs changed.
        chain_errors: v2 events that did not verify. resyncs: snapshots applied.
        errors: failed snapshots and refused or dropped messages (another format version,
            malformed, forged). malformed: messages of the wrong frame count or shape.
            forged: unsigned or wrongly signed messages (with a secret).
        last_error: the latest of those, for logs.
    """

    messages: int = 0
    events: int = 0
    pages: int = 0
    bytes: int = 0
    gaps: int = 0
    restarts: int = 0
    chain_errors: int = 0
    resyncs: int = 0
    errors: int = 0
    malformed: int = 0
    forged: int = 0
    last_error: str = ""


@dataclass(eq=False)
class _Source:
    instance_id: str
    tree: GlobalTree
    events_endpoint: str
    control_endpoint: str
    applier: EventApplier
    stats: FeedStats = field(default_factory=FeedStats)
    syncing: bool = False
    buffer: list[dict] = field(default_factory=list)
    seen_epochs: set[str] = field(default_factory=set)
    task: asyncio.Task | None = None


class EventFeed:
    """See the module docstring.

    Args:
        snapshot_timeout_s: bound on one snapshot RPC.
        retry_s: first backoff after a failed snapshot (doubles up to ``max_retry_s``).
        expire_interval_s: how often :meth:`run` expires the trees' predicted/approx entries.
        max_buffer: messages buffered per instance during a resync; beyond, they are dropped
            and another resync follows (the snapshot makes up for them).
        rcvhwm: the SUB socket's receive high-water mark (messages per connection).
        auth: the shared secret: snapshot requests are signed with it and event messages must
            carry its MAC (None: unsigned both).
        max_message_bytes: largest frame accepted; ZMQ drops the connection of a peer that
            sends a larger one (it reconnects).
    """

    def __init__(self, *, snapshot_timeout_s: float = 5.0, retry_s: float = 0.2,
                 max_retry_s: float = 5.0, expire_interval_s: float = 0.5,
                 max_buffer: int = 100_000, rcvhwm: int = 100_000,
                 auth: ControlAuth | None = None,
                 max_message_bytes: int = 64 << 20) -> None:
        self.snapshot_timeout_s = snapshot_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.expire_interval_s = expire_interval_s
        self.max_buffer = max_buffer
        self.auth = auth
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sources: dict[str, _Source] = {}
        self._by_topic: dict[bytes, _Source] = {}
        self._connected: set[str] = set()
        self._running = False
        self._closed = False

    # ---- membership ------------------------------------------------------------------------

    def add(self, instance_id: str, tree: GlobalTree, events_endpoint: str,
            control_endpoint: str) -> None:
        """Follow ``instance_id``'s events into ``tree`` (replacing an earlier registration of
        the same id); its view starts from a snapshot, taken as soon as :meth:`run` runs."""
        if instance_id in self._sources:
            self.remove(instance_id)
        src = _Source(instance_id, tree, events_endpoint, control_endpoint,
                      EventApplier(instance_id, tree))
        self._sources[instance_id] = src
        self._by_topic[topic_of(instance_id)] = src
        self._sock.setsockopt(zmq.SUBSCRIBE, topic_of(instance_id))
        if events_endpoint not in self._connected:
            self._sock.connect(events_endpoint)
            self._connected.add(events_endpoint)
        if self._running:
            self._start_resync(src)

    def remove(self, instance_id: str) -> None:
        """Stop following ``instance_id`` and drop it from its tree (every node, every tier).
        Unknown ids are ignored."""
        src = self._sources.pop(instance_id, None)
        if src is None:
            return
        del self._by_topic[topic_of(instance_id)]
        self._sock.setsockopt(zmq.UNSUBSCRIBE, topic_of(instance_id))
        # NOTE: the connection stays (unsubscribed, it delivers nothing): disconnecting while a
        # message of that pipe is being read aborted the process in libzmq (fq.cpp "!_more");
        # a later add() of the same endpoint reuses it.
        if src.task is not None:
            src.task.cancel()
        src.tree.remove_instance(instance_id)

    def instances(self) -> list[str]:
        return list(self._sources)

    def stats(self) -> dict[str, FeedStats]:
        """The live per-instance counters (read them, do not change them)."""
        return {k: s.stats for k, s in self._sources.items()}

    def is_synced(self, instance_id: str) -> bool:
        """Whether the instance's view is live (a snapshot applied, no resync pending)."""
        src = self._sources.get(instance_id)
        return src is not None and not src.syncing and src.applier.last_seq is not None

    def last_seq(self, instance_id: str) -> int | None:
        """Seq of the last message applied (or of the snapshot), ``None`` if not synced."""
        src = self._sources.get(instance_id)
        return None if src is None else src.applier.last_seq

    # ---- the loop --------------------------------------------------------------------------

    async def run(self, batch: int = 512) -> None:
        """Receive and apply messages until :meth:`close`. Yields to the loop after every
        ``batch`` messages so that requests keep being served during a burst."""
        self._running = True
        for src in self._sources.values():
            if src.task is None and not src.syncing:
                self._start_resync(src)
        next_expire = time.monotonic() + self.expire_interval_s
        sock = self._sock
        try:
            while not self._closed:
                timeout = max(0.0, next_expire - time.monotonic())
                if await sock.poll(int(timeout * 1000) + 1, zmq.POLLIN):
                    for _ in range(batch):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK).result()
                        except zmq.Again:
                            break
                        self._receive(frames)
                    await asyncio.sleep(0)
                if time.monotonic() >= next_expire:
                    self.expire()
                    next_expire = time.monotonic() + self.expire_interval_s
        finally:
            self._running = False
            if self._closed:
                self._close_socket()

    def expire(self, now: float | None = None) -> None:
        """Expire predicted/approximate entries of every followed tree."""
        for tree in {id(s.tree): s.tree for s in self._sources.values()}.values():
            tree.expire(now)

    def _receive(self, frames: list[bytes]) -> None:
        src = self._by_topic.get(bytes(frames[0]))
        if src is None:
            return  # unsubscribed meanwhile (or a topic nobody follows)
        src.stats.messages += 1
        src.stats.bytes += sum(len(f) for f in frames)
        try:
            msg = orjson.loads(open_frames(frames, self.auth)[1])
        except AuthError as e:
            src.stats.forged += 1
            self._drop(src, f"dropped: {e}")
            return
        except (EventFrameError, orjson.JSONDecodeError) as e:
            src.stats.malformed += 1
            self._drop(src, f"dropped undecodable message: {e}")
            return
        if not isinstance(msg, dict):
            src.stats.malformed += 1
            self._drop(src, f"dropped message: a JSON {type(msg).__name__}, not an object")
            return
        self._offer(src, msg)

    def _refuse(self, src: _Source, why: str) -> None:
        src.stats.errors += 1
        src.stats.last_error = why
        log.warning("kv events of %s: %s", src.instance_id, why)

    def _drop(self, src: _Source, why: str) -> None:
        """Count a dropped message and resync (unless one is under way: its snapshot is as
        of a later message)."""
        self._refuse(src, why)
        if not src.syncing:
            self._start_resync(src)

    def _offer(self, src: _Source, msg: dict) -> None:
        if src.syncing:
            if len(src.buffer) < self.max_buffer:
                src.buffer.append(msg)
            else:
                src.buffer.clear()  # the seq hole left makes the replay resync again
            return
        before = src.applier.pages_applied
        try:
            if src.applier.apply_message(msg):
                src.stats.events += len(msg["events"])
        except EventFormatError as e:
            self._refuse(src, str(e))
            return
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # The wrong shape (a missing seq, events not a list, a page of strings, ...): part
            # of it may be applied already, so the snapshot replaces the view.
            src.stats.malformed += 1
            self._drop(src, f"dropped malformed message: {type(e).__name__}: {e}")
            return
        except PublisherRestarted as e:
            if msg.get("epoch") in src.seen_epochs:
                return  # a late message of the publisher's previous life
            src.stats.restarts += 1
            self._resync_from(src, msg, e)
            return
        except NeedResync as e:
            if isinstance(e, SeqGap) and src.applier.last_seq is not None:
                src.stats.gaps += 1
            elif isinstance(e, EventChainError):
                src.stats.chain_errors += 1
            self._resync_from(src, msg, e)
            return
        finally:
            src.stats.pages += src.applier.pages_applied - before

    def _resync_from(self, src: _Source, msg: dict, why: Exception) -> None:
        log.info("kv events of %s: resync (%s)", src.instance_id, why)
        src.buffer.append(msg)
        self._start_resync(src)

    def _start_resync(self, src: _Source) -> None:
        src.syncing = True
        src.task = asyncio.get_running_loop().create_task(self._resync(src))

    async def _resync(self, src: _Source) -> None:
        loop = asyncio.get_running_loop()
        call = functools.partial(rpc_call, src.control_endpoint, {"op": "snapshot"},
                                 timeout_s=self.snapshot_timeout_s,
                                 expect_instance=src.instance_id, auth=self.auth)
        delay = self.retry_s
        while self._sources.get(src.instance_id) is src:
            before = src.applier.pages_applied
            try:
                snap = await loop.run_in_executor(None, call)
                if self._sources.get(src.instance_id) is not src:
                    return  # removed while asking
                src.applier.load_snapshot(snap)
            except (MemPoolError, NeedResync, EventFormatError) as e:
                self._refuse(src, f"snapshot failed: {type(e).__name__}: {e}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            finally:
                src.stats.pages += src.applier.pages_applied - before
            src.stats.resyncs += 1
            src.seen_epochs.add(src.applier.epoch or "")
            src.syncing, src.task = False, None
            pending, src.buffer = src.buffer, []
            for m in pending:
                self._offer(src, m)  # may start another resync: the rest is buffered again
            return

    def close(self) -> None:
        """Stop :meth:`run` (within ``expire_interval_s``) and close the socket; the trees keep
        their contents."""
        self._closed = True
        for src in self._sources.values():
            if src.task is not None:
                src.task.cancel()
        if not self._running:
            self._close_socket()

    def _close_socket(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)
            self._ctx.term()
