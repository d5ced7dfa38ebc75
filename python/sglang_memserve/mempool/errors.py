"""Typed errors of MemPool. Every failure a caller can act on has its own class.

All derive from :class:`MemPoolError`, so ``except MemPoolError`` catches everything this
package raises on purpose; anything else is a bug.
"""

from __future__ import annotations


class MemPoolError(Exception):
    """Base class of every error MemPool raises on purpose."""


class OutOfPages(MemPoolError):
    """An allocation could not be satisfied, even after evicting every unlocked cached page."""

    def __init__(self, tier: str, requested: int = -1, available: int = -1) -> None:
        # A bare message (re-raised from a peer's reply) is accepted too.
        super().__init__(
            tier
            if requested < 0
            else f"tier {tier!r}: requested {requested} pages, only {available} obtainable"
        )
        self.tier = tier
        self.requested = requested
        self.available = available


class CapacityError(MemPoolError):
    """A resize was refused (locked / in-use pages in the way, or beyond physical memory)."""


class UnknownTier(MemPoolError):
    """A tier name that the pool does not have."""


class PageOwnershipError(MemPoolError):
    """A page was passed to an operation that does not own it (double free, freeing a cached
    page, inserting a page that was never allocated, ...). Nothing was changed."""


class PageLocked(MemPoolError):
    """The operation would remove or move a page that a lock reference protects."""


class InvalidRequest(MemPoolError):
    """A control-channel request whose arguments are malformed (not token ids, no whole page,
    not an endpoint). Nothing was changed."""


class UnknownPrefix(MemPoolError):
    """The tokens an index operation names are not cached. Nothing was changed."""


class LayoutMismatch(MemPoolError):
    """Two page stores whose per-page segment layouts differ cannot exchange pages."""


class IntegrityError(MemPoolError):
    """check_integrity() found an inconsistency: this is always a bug."""


class UnknownPeer(MemPoolError):
    """A transfer or control request named a member that is not in the registry, or the peer
    answering is not the member it was supposed to be."""


class TransferError(MemPoolError):
    """A transfer failed (peer dead, address out of range, destination refused...). Both pools
    are consistent afterwards: nothing half-indexed."""


class TransferTimeout(TransferError):
    """A transfer or control request did not finish within the configured bound."""
