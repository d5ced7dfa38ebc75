"""The destination side of :mod:`.protocol` over a standalone :class:`~.pool.MemPool`: match
and lock in the pool's radix tree, pages from ``alloc_mem``, ``insert`` at commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol import DestinationAdapter, Reservation

if TYPE_CHECKING:
    from .pool import MemPool


class PoolDestination(DestinationAdapter):
    """Args: pool: the destination pool (every call runs under its lock)."""

    def __init__(self, pool: MemPool) -> None:
        self.pool = pool
        self.page_size = pool.config.page_size

    def reserve(self, tokens: list[int], tier: str) -> Reservation:
        """Locks the prefix held in ``tier``; ``alloc_mem`` the rest (may evict LRU pages)."""
        pool = self.pool
        pool._tier(tier)
        path = pool.tree.to_pages(tokens)
        skip, handle = 0, None
        for node, k in pool.tree.match_pages(path).steps:
            if tier not in node.locs:
                break
            skip, handle = skip + k, node
        if handle is not None:
            pool.tree.lock(handle)  # the prefix we skip must survive until commit
        try:
            pages = pool.alloc_mem(len(path) - skip, tier)
        except BaseException:
            if handle is not None:
                pool.tree.unlock(handle)
            raise
        return Reservation(tokens, tier, skip * self.page_size, pages, handle)

    def release(self, res: Reservation) -> None:
        """``free_mem`` the pages, unlock the prefix."""
        self.pool.free_mem(res.pages, res.tier)
        if res.hold is not None:
            self.pool.tree.unlock(res.hold)

    def insert(self, res: Reservation) -> int:
        """Indexes the path; pages someone else indexed meanwhile are freed as duplicates."""
        pool, tier = self.pool, res.tier
        path = pool.tree.to_pages(res.tokens)
        skip = res.skip // self.page_size
        prefix: list[int] = []
        for node, k in pool.tree.match_pages(path[:skip]).steps:
            prefix.extend(node.locs[tier][:k])  # locked since prepare: still there
        ids = prefix + res.pages
        dup_idx, changes, _ = pool.tree.insert(path, tier, ids)
        late = [ids[i] for i in dup_idx if i >= skip]
        pool._in_use[tier].difference_update(p for p in res.pages if p not in late)
        if late:
            pool.free_mem(late, tier)
        if res.hold is not None:
            pool.tree.unlock(res.hold)
        pool._emit(changes)
        return len(late)

    def describe(self, tier: str) -> dict[str, Any]:
        agent = self.pool.transfer_agent
        return {"segment": agent.segment_name if agent is not None else "",
                "layout": self.pool._tier(tier).store.layout.to_json()}

    def page_nbytes(self, tier: str) -> int:
        return self.pool._tier(tier).store.layout.page_nbytes
