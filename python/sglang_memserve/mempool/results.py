"""Result types of MemPool operations (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .radix import Node


@dataclass(frozen=True)
class InsertResult:
    """What :meth:`MemPool.insert` did.

    Attributes:
        num_pages: pages of the token path that are now indexed in the tier.
        new_pages: given page ids the index now owns.
        duplicates: given page ids whose pages were already indexed: the caller still owns
            them and should free them (or keep using them privately).
        handle: node ending the path (for :meth:`MemPool.lock`).
    """

    num_pages: int
    new_pages: list[int]
    duplicates: list[int]
    handle: Node | None


@dataclass(frozen=True)
class MatchedNode:
    """One node of a match: ``num_pages`` pages and where they are held."""

    num_pages: int
    locations: list[tuple[str, str, list[int]]]  # (tier, instance, page ids)


@dataclass(frozen=True)
class MatchResult:
    """What :meth:`MemPool.match` found (a read-only view).

    Attributes:
        num_tokens: tokens of the longest cached prefix (whole pages, any tier).
        nodes: per node along the prefix, its locations.
        tier_tokens: per tier, tokens of the longest prefix held entirely in that tier.
        handle: last node of the prefix, for :meth:`MemPool.lock` (``None`` on a miss).
    """

    num_tokens: int
    nodes: list[MatchedNode]
    tier_tokens: dict[str, int]
    handle: Node | None
    instance_id: str = ""

    def pages(self, tier: str) -> list[int]:
        """Page ids of the longest prefix held in ``tier``, in token order."""
        out: list[int] = []
        for n in self.nodes:
            ids = next((p for t, _, p in n.locations if t == tier), None)
            if ids is None:
                break
            out.extend(ids)
        return out


@dataclass(frozen=True)
class TransferResult:
    """What :meth:`MemPool.transfer_with_insert` did.

    Attributes:
        pages_sent: pages written to the destination (those it lacked).
        pages_skipped: leading pages the destination already held in the tier.
        bytes_sent: bytes that crossed the wire.
        dst_duplicates: sent pages the destination found indexed meanwhile (it freed them).
    """

    pages_sent: int
    pages_skipped: int
    bytes_sent: int
    dst_duplicates: int = 0
    dst_pages: list[int] = field(default_factory=list)
