"""An event publisher that keeps its messages in a list instead of sending them (tests and
benchmarks replay them into mirrors without sockets)."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from .events import EVENT_FORMAT_VERSION, EventPublisher


class CapturingPublisher(EventPublisher):
    """Publishes into ``messages``, each in its wire form (through orjson). No socket.

    Args:
        instance_id: the publishing instance.
        epoch: the publisher epoch its messages carry.
    """

    def __init__(self, instance_id: str, epoch: str = "e1") -> None:  # noqa: D107 -- no socket
        self.instance_id, self.epoch, self.seq, self.bytes_sent = instance_id, epoch, 0, 0
        self.endpoint = ""
        self.messages: list[dict] = []

    def publish(self, events: Iterable[dict]) -> int:
        events = list(events)
        if events:
            self.seq += 1
            self.messages.append(orjson.loads(orjson.dumps(
                {"v": EVENT_FORMAT_VERSION, "instance": self.instance_id, "epoch": self.epoch,
                 "seq": self.seq, "events": events})))
        return self.seq

    def close(self) -> None:
        pass  # nothing to close
