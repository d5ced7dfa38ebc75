"""KV events: each pool publishes its index changes; mirrors rebuild the tree from them.

Wire format v2 (ZMQ PUB, two frames ``[topic, payload]``; topic ``b"kv." + instance id``; with
a shared secret a third frame, the HMAC of :meth:`.auth.ControlAuth.event_mac`, which mirrors
with the secret require: :func:`open_frames`), payload an orjson object::

    {"v": 2, "instance": ID, "epoch": E, "seq": N, "ts": UNIX_SECONDS, "events": [EVENT, ...]}

``seq`` grows by one per message, per publisher, starting at 1; ``epoch`` names the publisher's
life (a restarted instance has a new one). A heartbeat ``{..., "seq": N, "hb": true, "events":
[]}`` repeats the last seq when the publisher was idle (so a lost *last* message is noticed). Paths are named by chained page hashes
(:mod:`.chainhash`; ``SEED`` is the root), so a message costs O(pages it changes), not O(depth).
An EVENT is

* ``{"type": "stored", "tier": T, "parent": P, "pages": [[tok,...], ...], "skip": K, "hash": H,
  "ids": [page,...]}`` -- the path ``P + pages`` is in the instance's tree and its pages
  ``pages[K:]`` are now held in tier ``T`` by page ids ``ids`` (``skip`` is omitted when 0; the
  first ``K`` pages are location-less ancestors the instance created). ``H`` is the hash of the
  last page: the mirror recomputes it from the tokens and refuses a mismatch;
* ``{"type": "removed", "tier": T, "parent": P, "n": N, "hash": H}`` -- the run of ``N`` pages
  after ``P`` ending at ``H`` is no longer held in ``T``;
* ``{"type": "cleared"}`` -- the instance's whole index was dropped.

Every ``parent`` a publisher names is a path its mirror knows: the mirror keeps, per instance,
``hash -> (parent hash, page tokens)`` for the pages of the instance's tree (every page held in
some tier, and their ancestors), pruned as the pool prunes. Trees stay keyed by tokens, so a hash
collision can never return wrong KV; a mirror detects one (the same hash for another parent or
other tokens), as it detects an unknown parent or a hash mismatch, and resyncs by snapshot.

A snapshot is asked over the pool's control channel: ``{"op": "snapshot"}`` returns ``{"v",
"epoch", "seq", "nodes": [NODE, ...]}``, the whole tree as of message ``seq``, parents before
children, a NODE being ``{"parent": P, "pages": [...], "hash": H, "locs": {tier: [ids]}}``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import orjson
import zmq

from .auth import AuthError, ControlAuth, load_auth
from .chainhash import SEED, chain, page_hash
from .radix import Change, Node, PageKey, RadixTree
from .rpc import FROM_ENV, AuthArg, rpc_call

EVENT_FORMAT_VERSION = 2


def topic_of(instance_id: str) -> bytes:
    """ZMQ topic of an instance's events."""
    return b"kv." + instance_id.encode()


# ---- errors ----------------------------------------------------------------------------------


class EventFormatError(ValueError):
    """A message of an unknown format version or shape (refused, not resynced)."""


class EventFrameError(ValueError):
    """A ZMQ message with the wrong number of frames (not one of ours)."""


def open_frames(frames: Sequence[bytes], auth: ControlAuth | None) -> tuple[bytes, bytes]:
    """``(topic, payload)`` of a received event message; checks its MAC when ``auth`` is set
    (without a secret a third frame is ignored). Changes nothing.

    Raises:
        EventFrameError: not 2 or 3 frames.
        AuthError: ``auth`` is set and the message is unsigned or its MAC does not verify.
    """
    if len(frames) not in (2, 3):
        raise EventFrameError(f"event message of {len(frames)} frames (want 2, or 3 signed)")
    topic, payload = bytes(frames[0]), bytes(frames[1])
    if auth is not None:
        auth.verify_event(topic, payload, bytes(frames[2]) if len(frames) == 3 else None)
    return topic, payload


class NeedResync(Exception):
    """The mirror cannot apply this message in order; a snapshot must replace its view."""


class SeqGap(NeedResync):
    """Messages were lost (or the mirror has no snapshot yet)."""


class PublisherRestarted(NeedResync):
    """The message comes from another publisher epoch than the mirror's snapshot."""


class EventChainError(NeedResync):
    """A v2 event does not verify against the mirror's page hashes."""


class UnknownParent(EventChainError):
    """An event names a parent (or run) hash the mirror does not know."""


class HashMismatch(EventChainError):
    """The hash recomputed from the tokens differs from the one the publisher sent."""


class HashCollision(EventChainError):
    """Two different page paths have the same chain hash (never applied silently)."""


# ---- publisher side --------------------------------------------------------------------------


def stored_event(tier: str, parent_hash: int, pages: Sequence[Sequence[int]],
                 ids: Sequence[int], skip: int = 0, end_hash: int | None = None) -> dict:
    """Wire form of a stored run given by its parent's hash and its new pages.

    Args:
        tier: the tier now holding ``pages[skip:]``. parent_hash: hash of the path before
            ``pages`` (``SEED`` for the root); a path the mirror knows. ids: one per held page.
        end_hash: hash of the last page if known (else computed from the tokens).
    """
    if end_hash is None:
        end_hash = chain(parent_hash, pages)[-1]
    e = {"type": "stored", "tier": tier, "parent": parent_hash,
         "pages": [list(p) for p in pages], "hash": end_hash, "ids": list(ids)}
    if skip:
        e["skip"] = skip
    return e


def removed_event(tier: str, parent_hash: int, num_pages: int, end_hash: int) -> dict:
    """Wire form of a run of ``num_pages`` after ``parent_hash``, ending at ``end_hash``,
    that is no longer held in ``tier``."""
    return {"type": "removed", "tier": tier, "parent": parent_hash, "n": num_pages,
            "hash": end_hash}


def change_to_event(c: Change) -> dict:
    """Wire form of a :class:`~.radix.Change` (its location is a tier name). O(new pages) when
    the change comes from a hashed tree; otherwise the path is hashed from the root."""
    if c.parent_hash is None:
        anchor = c.start
        parent = chain(SEED, c.path[:anchor])[-1] if anchor else SEED
        end = chain(parent, c.path[anchor:])[-1]
    else:
        anchor, parent, end = c.anchor, c.parent_hash, c.end_hash
    if c.kind == "stored":
        return stored_event(c.loc, parent, c.path[anchor:], c.pages, c.start - anchor, end)
    if c.kind == "removed":
        return removed_event(c.loc, parent, len(c.path) - c.start, end)
    raise EventFormatError(f"unknown change kind {c.kind!r}")


def tree_snapshot(tree: RadixTree, seq: int, epoch: str = "") -> dict:
    """A snapshot reply: every node of ``tree``, parents first, as of message ``seq``."""
    ends: dict[int, int] = {id(tree.root): SEED}
    nodes = []
    for n in tree.nodes():
        parent = ends[id(n.parent)]
        hashes = n.hashes if n.hashes is not None else chain(parent, n.pages)
        ends[id(n)] = hashes[-1]
        nodes.append({"parent": parent, "pages": [list(p) for p in n.pages], "hash": hashes[-1],
                      "locs": {t: list(ids) for t, ids in n.locs.items()}})
    return {"v": EVENT_FORMAT_VERSION, "epoch": epoch, "seq": seq, "nodes": nodes}


def _resolve_auth(auth: AuthArg) -> ControlAuth | None:
    return auth if auth is None or isinstance(auth, ControlAuth) else load_auth()


class EventPublisher:
    """PUB socket of one instance's KV events. Not thread-safe: the pool calls it under its lock.

    Args:
        instance_id: the publishing instance.
        host: bind address (loopback by default). port: 0 picks a free port.
        sndhwm: messages queued per subscriber before ZMQ drops (mirrors then resync).
        auth: the secret every message is signed with (None: unsigned, the two-frame format;
            default: the environment's, as the control channel's, see :mod:`.auth`).
    """

    def __init__(self, instance_id: str, host: str = "127.0.0.1", port: int = 0,
                 *, sndhwm: int = 100_000, auth: AuthArg = FROM_ENV) -> None:
        self.instance_id = instance_id
        self.auth = _resolve_auth(auth)
        self.epoch = secrets.token_hex(8)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        if port:
            self._sock.bind(f"tcp://{host}:{port}")
        else:
            port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.seq = 0
        self.bytes_sent = 0
        self._topic = topic_of(instance_id)
        self._last_send = time.monotonic()

    def publish(self, events: Iterable[dict]) -> int:
        """Send one message with ``events`` (skipped if empty).

        Returns:
            The message's seq (the current seq if nothing was sent).
        """
        events = list(events)
        if not events:
            return self.seq
        self.seq += 1
        raw = orjson.dumps({"v": EVENT_FORMAT_VERSION, "instance": self.instance_id,
                            "epoch": self.epoch, "seq": self.seq, "ts": time.time(),
                            "events": events})
        self._send(raw)
        return self.seq

    def _send(self, raw: bytes) -> None:
        self.bytes_sent += len(raw) + len(self._topic)
        self._last_send = time.monotonic()
        if self.auth is None:
            self._sock.send_multipart([self._topic, raw])
        else:
            self._sock.send_multipart([self._topic, raw, self.auth.event_mac(self._topic, raw)])

    def heartbeat(self, idle_s: float = 1.0) -> bool:
        """Repeat the current seq if nothing was sent for ``idle_s`` (and something ever was).

        Returns:
            Whether a heartbeat was sent.
        """
        if self.seq == 0 or time.monotonic() - self._last_send < idle_s:
            return False
        self._send(orjson.dumps({"v": EVENT_FORMAT_VERSION, "instance": self.instance_id,
                                 "epoch": self.epoch, "seq": self.seq, "ts": time.time(),
                                 "hb": True, "events": []}))
        return True

    def publish_changes(self, changes: Iterable[Change]) -> int:
        """:meth:`publish` the wire form of tree changes."""
        return self.publish(change_to_event(c) for c in changes)

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


# ---- mirror side -----------------------------------------------------------------------------


class _Page:
    __slots__ = ("parent", "page", "tiers", "kids")

    def __init__(self, parent: int, page: PageKey) -> None:
        self.parent = parent
        self.page = page
        self.tiers: set[str] = set()
        self.kids = 0


class ChainIndex:
    """One instance's pages by chain hash (its tree's pages: held ones and their ancestors)."""

    def __init__(self) -> None:
        self.pages: dict[int, _Page] = {}

    def __len__(self) -> int:
        return len(self.pages)

    def clear(self) -> None:
        self.pages = {}

    def path_to(self, h: int) -> list[PageKey]:
        """Page path from the root to the page hashing to ``h``.

        Raises:
            UnknownParent: ``h`` (or an ancestor) is unknown.
        """
        out = []
        pages = self.pages
        while h != SEED:
            e = pages.get(h)
            if e is None:
                raise UnknownParent(f"unknown page hash {h:#x}")
            out.append(e.page)
            h = e.parent
        out.reverse()
        return out

    def verify(self, parent: int, pages: Sequence[PageKey], end_hash: int | None) -> list[int]:
        """Hashes of ``pages`` after ``parent``, checked against what is known. Changes nothing.

        Raises:
            UnknownParent / HashMismatch / HashCollision.
        """
        if parent != SEED and parent not in self.pages:
            raise UnknownParent(f"unknown parent hash {parent:#x}")
        out = []
        known = self.pages
        h = parent
        for p in pages:
            nh = page_hash(h, p)
            e = known.get(nh)
            if e is not None and (e.parent != h or e.page != p):
                raise HashCollision(f"hash {nh:#x} names two different page paths")
            out.append(nh)
            h = nh
        if end_hash is not None and h != end_hash:
            raise HashMismatch(f"recomputed hash {h:#x} != sent {end_hash:#x}")
        return out

    def add(self, parent: int, pages: Sequence[PageKey], hashes: Sequence[int],
            tier: str | None, skip: int = 0) -> None:
        """Index verified ``pages``; ``pages[skip:]`` are held in ``tier`` (if any)."""
        known = self.pages
        h = parent
        for i, (p, nh) in enumerate(zip(pages, hashes, strict=True)):
            e = known.get(nh)
            if e is None:
                e = known[nh] = _Page(h, p)
                if h != SEED:
                    known[h].kids += 1
            if tier is not None and i >= skip:
                e.tiers.add(tier)
            h = nh

    def remove(self, parent: int, num_pages: int, end_hash: int, tier: str) -> list[PageKey]:
        """``tier`` no longer holds the run; prune pages left with no tier and no child.

        Returns:
            The run's pages.

        Raises:
            UnknownParent / HashMismatch: the run is not the one the mirror knows.
        """
        known = self.pages
        run = []
        h = end_hash
        for _ in range(num_pages):
            e = known.get(h)
            if e is None:
                raise UnknownParent(f"unknown run hash {h:#x}")
            run.append((h, e))
            h = e.parent
        if h != parent:
            raise HashMismatch(f"run of {num_pages} pages ending at {end_hash:#x} does not "
                               f"start after {parent:#x}")
        for _, e in run:
            e.tiers.discard(tier)
        h = end_hash
        while h != SEED:
            e = known[h]
            if e.tiers or e.kids:
                break
            del known[h]
            h = e.parent
            if h != SEED:
                known[h].kids -= 1
        return [e.page for _, e in reversed(run)]


class MirrorSink(Protocol):
    """Where a mirror applies one instance's view (a tree with ``(instance, tier)`` locations)."""

    def stored(self, instance_id: str, path: list[PageKey], start: int, tier: str,
               ids: Sequence[int]) -> None:
        """``path[start:]`` is held by ``instance_id`` in ``tier``."""

    def removed(self, instance_id: str, path: list[PageKey], start: int, tier: str) -> None:
        """``path[start:]`` is no longer held by ``instance_id`` in ``tier``."""

    def drop_instance(self, instance_id: str) -> None:
        """Forget everything ``instance_id`` holds."""


class RadixSink:
    """A :class:`MirrorSink` over a :class:`RadixTree` (``allow_empty=True``)."""

    def __init__(self, tree: RadixTree) -> None:
        self.tree = tree

    def stored(self, instance_id: str, path: list[PageKey], start: int, tier: str,
               ids: Sequence[int]) -> None:
        self.tree.set_loc(path, start, (instance_id, tier), ids)

    def removed(self, instance_id: str, path: list[PageKey], start: int, tier: str) -> None:
        self.tree.drop_loc(path, start, (instance_id, tier))

    def drop_instance(self, instance_id: str) -> None:
        drop_instance(self.tree, lambda loc: loc[0] == instance_id)


def drop_instance(tree: RadixTree, doomed) -> int:
    """Drop every location ``doomed(loc)`` from ``tree`` and prune location-less leaves.

    Returns:
        Pages whose location was dropped.
    """
    dropped = 0
    leaves: list[Node] = []
    for n in list(tree.nodes()):
        gone = [loc for loc in n.locs if doomed(loc)]
        for loc in gone:
            del n.locs[loc]
            dropped += len(n.pages)
        if gone:
            n.memo = None
        if not n.children:
            leaves.append(n)
    for n in leaves:
        tree.prune(n)
    return dropped


class EventApplier:
    """Applies one instance's v2 messages and snapshots to a :class:`MirrorSink`, in order.

    Args:
        instance_id: the instance followed. sink: where its view lives.
    """

    def __init__(self, instance_id: str, sink: MirrorSink) -> None:
        self.instance_id = instance_id
        self.sink = sink
        self.index = ChainIndex()
        self.epoch: str | None = None
        self.last_seq: int | None = None
        self.pages_applied = 0

    def load_snapshot(self, snap: dict) -> None:
        """Replace the instance's view by ``snap`` (a ``snapshot`` reply).

        Raises:
            EventFormatError: another format version.
            EventChainError: the snapshot does not verify (e.g. a hash collision inside it);
                the view is then empty and ``last_seq`` is ``None``.
        """
        if snap.get("v") != EVENT_FORMAT_VERSION:
            raise EventFormatError(f"snapshot format {snap.get('v')} (mirror speaks "
                                   f"{EVENT_FORMAT_VERSION})")
        self.sink.drop_instance(self.instance_id)
        self.index.clear()
        self.last_seq = None
        try:
            for nd in snap["nodes"]:
                pages = [tuple(p) for p in nd["pages"]]
                parent = int(nd["parent"])
                hashes = self.index.verify(parent, pages, int(nd["hash"]))
                self.index.add(parent, pages, hashes, None)
                locs = nd["locs"]
                if not locs:
                    continue
                path = self.index.path_to(parent) + pages
                start = len(path) - len(pages)
                for tier, ids in locs.items():
                    self.index.add(parent, pages, hashes, tier)
                    self.sink.stored(self.instance_id, path, start, tier, ids)
                    self.pages_applied += len(pages)
        except NeedResync:
            self.sink.drop_instance(self.instance_id)
            self.index.clear()
            raise
        self.epoch = str(snap.get("epoch", ""))
        self.last_seq = int(snap["seq"])

    def apply_message(self, msg: dict) -> bool:
        """Apply one message if it is the next one.

        Returns:
            True if applied, False if the snapshot already covered it (or it comes from an
            older epoch than the snapshot's).

        Raises:
            EventFormatError: another format version or an unknown event type.
            SeqGap / PublisherRestarted / EventChainError: resync, then offer the message again
                (events of a failed message may be half applied: the snapshot replaces them).
        """
        if msg.get("v") != EVENT_FORMAT_VERSION:
            raise EventFormatError(f"event format {msg.get('v')} (mirror speaks "
                                   f"{EVENT_FORMAT_VERSION})")
        seq = int(msg["seq"])
        if self.last_seq is None:
            raise SeqGap(f"{self.instance_id}: no snapshot yet (message {seq})")
        if msg.get("epoch") != self.epoch:
            raise PublisherRestarted(f"{self.instance_id}: epoch {msg.get('epoch')} != "
                                     f"snapshot's {self.epoch}")
        if msg.get("hb"):  # the publisher's current seq: a higher one means we lost some
            if seq > self.last_seq:
                raise SeqGap(f"{self.instance_id}: heartbeat at {seq}, mirror at {self.last_seq}")
            return False
        if seq <= self.last_seq:
            return False
        if seq > self.last_seq + 1:
            raise SeqGap(f"{self.instance_id}: message {seq} after {self.last_seq}")
        self.apply_events(msg["events"])
        self.last_seq = seq
        return True

    def apply_events(self, events: Iterable[dict]) -> None:
        """Apply v2 events (no seq check). Raises as :meth:`apply_message`."""
        for e in events:
            kind = e.get("type")
            handler = self._handlers.get(kind)
            if handler is None:
                raise EventFormatError(f"unknown event type {kind!r}")
            handler(self, e)

    def _stored(self, e: dict) -> None:
        pages = [tuple(p) for p in e["pages"]]
        parent, skip, tier = int(e["parent"]), int(e.get("skip", 0)), e["tier"]
        if not pages or len(e["ids"]) != len(pages) - skip:
            raise EventFormatError(f"stored event with {len(pages)} pages, skip {skip}, "
                                   f"{len(e['ids'])} ids")
        hashes = self.index.verify(parent, pages, int(e["hash"]))
        prefix = self.index.path_to(parent)
        self.index.add(parent, pages, hashes, tier, skip)
        self.sink.stored(self.instance_id, prefix + pages, len(prefix) + skip, tier, e["ids"])
        self.pages_applied += len(pages) - skip

    def _removed(self, e: dict) -> None:
        n, parent = int(e["n"]), int(e["parent"])
        prefix = self.index.path_to(parent)  # before remove() may prune the parent too
        run = self.index.remove(parent, n, int(e["hash"]), e["tier"])
        self.sink.removed(self.instance_id, prefix + run, len(prefix), e["tier"])
        self.pages_applied += n

    def _cleared(self, e: dict) -> None:
        self.index.clear()
        self.sink.drop_instance(self.instance_id)

    _handlers = {"stored": _stored, "removed": _removed, "cleared": _cleared}


class TreeMirror:
    """Rebuilds one instance's index from its events into ``tree`` (locations ``(instance,
    tier)``), so several mirrors can feed one tree. Blocking (a test and tool helper; the
    router uses ``memserve_router.feed.EventFeed``).

    Args:
        instance_id: the instance to follow.
        event_endpoint / control_endpoint: its PUB and control endpoints.
        page_size: tokens per page (of a fresh tree).
        tree: a shared mirror tree (``allow_empty=True``); a fresh one if ``None``.
        timeout_s: bound on a snapshot request.
        auth: the secret events must be signed with (None: unsigned accepted; default: the
            environment's). Messages that fail :func:`open_frames` or do not parse are dropped
            and counted (``dropped``).
    """

    def __init__(
        self,
        instance_id: str,
        event_endpoint: str,
        control_endpoint: str,
        page_size: int,
        *,
        tree: RadixTree | None = None,
        timeout_s: float = 5.0,
        auth: AuthArg = FROM_ENV,
    ) -> None:
        self.instance_id = instance_id
        self.auth = _resolve_auth(auth)
        self.dropped = 0
        self.control_endpoint = control_endpoint
        self.tree = tree if tree is not None else RadixTree(page_size, allow_empty=True)
        self.timeout_s = timeout_s
        self.applier = EventApplier(instance_id, RadixSink(self.tree))
        self.resyncs = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic_of(instance_id))
        self._sock.connect(event_endpoint)

    @property
    def last_seq(self) -> int | None:
        return self.applier.last_seq

    def resync(self) -> None:
        """Replace this instance's part of the tree by a fresh snapshot."""
        snap = rpc_call(
            self.control_endpoint,
            {"op": "snapshot"},
            timeout_s=self.timeout_s,
            expect_instance=self.instance_id,
        )
        self.resyncs += 1
        self.applier.load_snapshot(snap)

    def apply(self, msg: dict) -> bool:
        """Apply one message in order; on a gap, a restart or a chain error, resync first.

        Returns:
            True if the message changed the tree (False if the snapshot already covered it).
        """
        for attempt in range(3):
            try:
                return self.applier.apply_message(msg)
            except PublisherRestarted:
                if attempt:
                    return False  # a message of the publisher's previous life
                self.resync()
            except NeedResync:
                self.resync()
        return False  # still not next after fresh snapshots: they cover it or a later one will

    def poll(self, timeout_s: float = 0.0, max_messages: int = 10_000) -> int:
        """Receive and apply pending messages, waiting up to ``timeout_s`` for the first.

        Returns:
            The number of messages received.
        """
        n = 0
        wait_ms = int(timeout_s * 1000)
        while n < max_messages and self._sock.poll(wait_ms):
            frames = self._sock.recv_multipart()
            n += 1
            wait_ms = 0
            try:
                msg = orjson.loads(open_frames(frames, self.auth)[1])
                if not isinstance(msg, dict):
                    raise EventFrameError("payload is not a JSON object")
            except (AuthError, EventFrameError, orjson.JSONDecodeError):
                self.dropped += 1
                continue
            self.apply(msg)
        return n

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()
