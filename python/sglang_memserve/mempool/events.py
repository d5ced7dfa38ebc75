"""KV events: each pool publishes its index changes; mirrors rebuild the tree from them.

Wire format (ZMQ PUB, two frames ``[topic, payload]``; topic ``b"kv." + instance id``), payload
an orjson object::

    {"v": 1, "instance": ID, "seq": N, "ts": UNIX_SECONDS, "events": [EVENT, ...]}

``seq`` grows by one per message, per instance, starting at 1. An EVENT is

* ``{"type": "stored", "tier": T, "path": [[tok,...], ...], "start": S, "ids": [page,...]}`` --
  pages ``path[S:]`` are now held in tier ``T`` by page ids ``ids``; ``path`` is the full page
  path from the root (token ids per page, so a mirror never trusts a hash);
* ``{"type": "removed", "tier": T, "path": [...], "start": S, "ids": [...]}`` -- they no longer are;
* ``{"type": "cleared"}`` -- the instance's whole index was dropped.

A snapshot is asked over the pool's control channel: ``{"op": "snapshot"}`` returns ``{"v", "seq",
"entries": [stored EVENT, ...]}``, the whole tree as of message ``seq``. :class:`TreeMirror`
subscribes, takes a snapshot, applies messages in seq order and resyncs by snapshot on a gap.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson
import zmq

from .radix import Change, RadixTree
from .rpc import rpc_call

EVENT_FORMAT_VERSION = 1


def topic_of(instance_id: str) -> bytes:
    """ZMQ topic of an instance's events."""
    return b"kv." + instance_id.encode()


def change_to_event(c: Change) -> dict:
    """Wire form of a :class:`~.radix.Change` (its location is a tier name)."""
    return {
        "type": c.kind,
        "tier": c.loc,
        "path": [list(p) for p in c.path],
        "start": c.start,
        "ids": list(c.pages),
    }


def tree_snapshot(tree: RadixTree, seq: int) -> dict:
    """A snapshot reply: the whole ``tree`` as ``stored`` events, as of message ``seq``."""
    entries = []
    for n in tree.nodes():
        p = tree.path_of(n)
        for tier, ids in n.locs.items():
            entries.append(change_to_event(Change("stored", tier, p, len(p) - len(n.pages), ids)))
    return {"v": EVENT_FORMAT_VERSION, "seq": seq, "entries": entries}


class EventPublisher:
    """PUB socket of one instance's KV events. Not thread-safe: the pool calls it under its lock.

    Args:
        instance_id: the publishing instance.
        host: bind address (loopback by default). port: 0 picks a free port.
    """

    def __init__(self, instance_id: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.instance_id = instance_id
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        if port:
            self._sock.bind(f"tcp://{host}:{port}")
        else:
            port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.seq = 0
        self._topic = topic_of(instance_id)

    def publish(self, events: Iterable[dict]) -> int:
        """Send one message with ``events`` (skipped if empty).

        Returns:
            The message's seq (the current seq if nothing was sent).
        """
        events = list(events)
        if not events:
            return self.seq
        self.seq += 1
        payload = {
            "v": EVENT_FORMAT_VERSION,
            "instance": self.instance_id,
            "seq": self.seq,
            "ts": time.time(),
            "events": events,
        }
        self._sock.send_multipart([self._topic, orjson.dumps(payload)])
        return self.seq

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


class EventFormatError(ValueError):
    """A message of an unknown format version or shape."""


class TreeMirror:
    """Rebuilds one instance's index from its events into ``tree`` (locations ``(instance,
    tier)``), so several mirrors can feed one router tree.

    Args:
        instance_id: the instance to follow.
        event_endpoint / control_endpoint: its PUB and control endpoints.
        page_size: tokens per page (of a fresh tree).
        tree: a shared mirror tree (``allow_empty=True``); a fresh one if ``None``.
        timeout_s: bound on a snapshot request.
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
    ) -> None:
        self.instance_id = instance_id
        self.control_endpoint = control_endpoint
        self.tree = tree if tree is not None else RadixTree(page_size, allow_empty=True)
        self.timeout_s = timeout_s
        self.last_seq: int | None = None
        self.resyncs = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic_of(instance_id))
        self._sock.connect(event_endpoint)

    def resync(self) -> None:
        """Replace this instance's part of the tree by a fresh snapshot."""
        snap = rpc_call(
            self.control_endpoint,
            {"op": "snapshot"},
            timeout_s=self.timeout_s,
            expect_instance=self.instance_id,
        )
        if snap.get("v") != EVENT_FORMAT_VERSION:
            raise EventFormatError(f"snapshot format {snap.get('v')}")
        self._drop_instance()
        for e in snap["entries"]:
            self._apply_event(e)
        self.last_seq = int(snap["seq"])
        self.resyncs += 1

    def _drop_instance(self) -> None:
        for n in list(self.tree.nodes()):
            for loc in [loc for loc in n.locs if loc[0] == self.instance_id]:
                del n.locs[loc]
        leaves = [n for n in self.tree.nodes() if not n.children]
        for n in leaves:
            self.tree._prune(n)  # noqa: SLF001 -- same package

    def _apply_event(self, e: dict) -> None:
        kind = e.get("type")
        if kind == "cleared":
            self._drop_instance()
            return
        path = [tuple(p) for p in e["path"]]
        loc = (self.instance_id, e["tier"])
        if kind == "stored":
            self.tree.set_loc(path, int(e["start"]), loc, e["ids"])
        elif kind == "removed":
            self.tree.drop_loc(path, int(e["start"]), loc)
        else:
            raise EventFormatError(f"unknown event type {kind!r}")

    def apply(self, msg: dict) -> bool:
        """Apply one message in order; on a gap, resync by snapshot first.

        Returns:
            True if the message changed the tree (False if the snapshot already covered it).
        """
        if msg.get("v") != EVENT_FORMAT_VERSION:
            raise EventFormatError(f"event format {msg.get('v')}")
        seq = int(msg["seq"])
        if self.last_seq is None or seq > self.last_seq + 1:
            self.resync()
        if seq <= self.last_seq:
            return False
        if seq > self.last_seq + 1:  # still a gap after a fresh snapshot: the publisher restarted
            self.resync()
            if seq <= self.last_seq:
                return False
        for e in msg["events"]:
            self._apply_event(e)
        self.last_seq = seq
        return True

    def poll(self, timeout_s: float = 0.0, max_messages: int = 10_000) -> int:
        """Receive and apply pending messages, waiting up to ``timeout_s`` for the first.

        Returns:
            The number of messages received.
        """
        n = 0
        wait_ms = int(timeout_s * 1000)
        while n < max_messages and self._sock.poll(wait_ms):
            _topic, raw = self._sock.recv_multipart()
            self.apply(orjson.loads(raw))
            n += 1
            wait_ms = 0
        return n

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()
