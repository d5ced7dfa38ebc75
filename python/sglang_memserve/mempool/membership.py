"""Pool membership: who is in the pool, how to reach it, what memory it registered."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import UnknownPeer
from .tier import PageLayout, Region


@dataclass(frozen=True)
class TierInfo:
    """What a peer needs to address one tier of a member: its layout and registered regions."""

    layout: PageLayout
    regions: tuple[Region, ...]

    def to_json(self) -> dict:
        return {
            "layout": self.layout.to_json(),
            "regions": [[r.addr, r.nbytes] for r in self.regions],
        }

    @classmethod
    def from_json(cls, obj: dict) -> TierInfo:
        return cls(
            PageLayout.from_json(obj["layout"]),
            tuple(Region(int(a), int(n)) for a, n in obj["regions"]),
        )


@dataclass(frozen=True)
class MemberInfo:
    """One pool member.

    Attributes:
        instance_id: unique name of the member.
        segment_name: Mooncake segment name (``host:rpc_port``), empty without a transfer agent.
        control_endpoint: ZMQ endpoint of its control channel (transfers, snapshots).
        event_endpoint: ZMQ PUB endpoint of its KV events, empty without a publisher.
        tiers: per tier name, layout and registered regions.
    """

    instance_id: str
    segment_name: str = ""
    control_endpoint: str = ""
    event_endpoint: str = ""
    tiers: dict[str, TierInfo] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "segment_name": self.segment_name,
            "control_endpoint": self.control_endpoint,
            "event_endpoint": self.event_endpoint,
            "tiers": {k: v.to_json() for k, v in self.tiers.items()},
        }

    @classmethod
    def from_json(cls, obj: dict) -> MemberInfo:
        return cls(
            instance_id=obj["instance_id"],
            segment_name=obj.get("segment_name", ""),
            control_endpoint=obj.get("control_endpoint", ""),
            event_endpoint=obj.get("event_endpoint", ""),
            tiers={k: TierInfo.from_json(v) for k, v in obj.get("tiers", {}).items()},
        )


class MemberRegistry:
    """Thread-safe map instance id -> :class:`MemberInfo`."""

    def __init__(self) -> None:
        self._members: dict[str, MemberInfo] = {}
        self._lock = threading.Lock()

    def join(self, info: MemberInfo) -> None:
        """Add or replace a member."""
        with self._lock:
            self._members[info.instance_id] = info

    def leave(self, instance_id: str) -> None:
        """Remove a member.

        Raises:
            UnknownPeer: not a member.
        """
        with self._lock:
            if self._members.pop(instance_id, None) is None:
                raise UnknownPeer(f"{instance_id!r} is not a pool member")

    def get(self, instance_id: str) -> MemberInfo:
        """The member's info.

        Raises:
            UnknownPeer: not a member.
        """
        with self._lock:
            info = self._members.get(instance_id)
        if info is None:
            raise UnknownPeer(f"{instance_id!r} is not a pool member (known: {self.ids()})")
        return info

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._members)

    def __contains__(self, instance_id: object) -> bool:
        with self._lock:
            return instance_id in self._members
