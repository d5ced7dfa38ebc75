"""MemPool's index and memory API on a running SGLang instance, over its control channel.

Each op runs on the scheduler thread (through :class:`~.bridge.SchedulerBridge`), changes
SGLang's tree only through the tree's own eviction, backup and load-back steps (so SGLang's
size accounting and MemServe's index, fed by the tree's placement events, stay exact), and
answers a typed error instead of raising into SGLang's loop:

==========================  ==========================================================
op (control channel)        what it does
==========================  ==========================================================
``match {"tokens"}``        ``{"tokens", "matched", "tiers": {tier: tokens}}``: the cached
                            prefix of the whole pages of ``tokens`` per tier (read-only)
``delete {"tokens"}``       drops the node holding the last whole page of ``tokens`` and
                            everything below it, both tiers: ``{"pages": {tier: n}}``
``swap_out {"tokens"}``     moves the device-resident part of the prefix (and what extends
                            it) to the DRAM tier, all or nothing: ``{"pages": device pages
                            released, "kept": pages an ancestor keeps on the device}``
``swap_in {"tokens"}``      loads the prefix's DRAM-only pages back to the device
``transfer_with_insert``    ``{"tokens", "peer", "peer_instance"?}``: MemPool's
                            ``transfer_with_insert`` to the peer's control endpoint
==========================  ==========================================================

Errors: :class:`~sglang_memserve.mempool.errors.InvalidRequest` (no whole page, not token
ids), ``UnknownPrefix`` (nothing of it cached), ``PageLocked`` (a running request or transfer
holds the pages: nothing changed), ``OutOfPages`` (no room in the target tier even after
evicting: the prefix stays where it was), ``UnknownTier`` (no DRAM tier).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Any

from sglang_memserve.mempool.errors import (
    InvalidRequest,
    OutOfPages,
    PageLocked,
    UnknownPrefix,
    UnknownTier,
)

API_OPS = ("match", "delete", "swap_out", "swap_in", "transfer_with_insert")


def whole_pages(msg: dict, page_size: int) -> list[int]:
    """The whole pages of ``msg["tokens"]``.

    Raises:
        InvalidRequest: not a list of non-negative ints, or shorter than one page.
    """
    tokens = msg.get("tokens")
    if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise InvalidRequest("tokens must be a list of non-negative token ids")
    n = len(tokens) // page_size * page_size
    if n == 0:
        raise InvalidRequest(f"{len(tokens)} tokens: less than one page of {page_size}")
    return tokens[:n]


class InstanceApi:
    """The ops of the module docstring over one MemServe tree cache.

    Args:
        cache: the MemServe tree cache (a ``UnifiedRadixCache`` subclass).
        call: runs a closure on the scheduler thread and returns its result.
        push: ``kv_push``'s handler (transfer_with_insert is that push).
    """

    def __init__(self, cache: Any, call: Callable[[Callable[[], Any]], Any],
                 push: Callable[[dict], dict]) -> None:
        self.cache = cache
        self.call = call
        self.push = push
        self.ps = int(cache.page_size)

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        def on_thread(fn: Callable[[list[int]], dict]) -> Callable[[dict], dict]:
            return lambda m: self.call(lambda: fn(whole_pages(m, self.ps)))

        return {"match": on_thread(self.match), "delete": on_thread(self.delete),
                "swap_out": on_thread(self.swap_out), "swap_in": on_thread(self.swap_in),
                "transfer_with_insert": self._transfer}

    def _transfer(self, msg: dict) -> dict:
        tokens = whole_pages(msg, self.ps)
        peer = msg.get("peer")
        if not isinstance(peer, str) or not peer.startswith("tcp://"):
            raise InvalidRequest(f"peer must be a control endpoint tcp://HOST:PORT, not {peer!r}")
        return self.push({"tokens": tokens, "dst": peer, "dst_instance": msg.get("peer_instance")})

    # ---- tree helpers (scheduler thread) ---------------------------------------------

    def _node(self, handle: Any) -> Any:
        core = self.cache.tree_core
        return core.node_by_id(handle) if isinstance(handle, int) else handle

    def _match(self, tokens: list[int]) -> Any:
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        return self.cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens))))

    @staticmethod
    def _busy(node: Any) -> bool:
        return (any(cd.lock_ref > 0 or cd.host_lock_ref > 0 for cd in node.component_data)
                or node.load_back_pending_id is not None
                or node.write_through_pending_id is not None)

    @staticmethod
    def _postorder(node: Any) -> Iterator[Any]:
        stack, out = [node], []
        while stack:
            x = stack.pop()
            out.append(x)
            stack.extend(x.children.values())
        return reversed(out)

    def _refuse_busy(self, nodes: list[Any], what: str) -> None:
        busy = [n for n in nodes if self._busy(n)]
        if busy:
            raise PageLocked(f"{what}: {len(busy)} node(s) are held by a running request, a "
                             "transfer or an in-flight copy; nothing changed")

    def _pages(self) -> dict[str, int]:
        return self.cache.memserve_pool.pages_by_tier()

    def _host(self) -> Any:
        cc = self.cache.cache_controller
        if cc is None:
            raise UnknownTier("this instance has no DRAM tier (start it with "
                              "--mempool-host-ratio R)")
        return cc

    # ---- ops (scheduler thread) --------------------------------------------------------

    def match(self, tokens: list[int]) -> dict:
        """Cached length of ``tokens`` per tier, from MemPool's index (equal to SGLang's tree).
        Changes nothing, not even LRU order."""
        m = self.cache.memserve_pool.match(tokens)
        return {"tokens": len(tokens), "matched": m.num_tokens, "tiers": m.tier_tokens}

    def delete(self, tokens: list[int]) -> dict:
        """Drop the node holding the last page of ``tokens`` and all below it, both tiers.

        Raises:
            UnknownPrefix: that page is not cached. PageLocked: something there is held.
        """
        n = len(tokens)
        if n > self.ps:
            self._match(tokens[: n - self.ps])  # splits the tree at the last page's start
        m = self._match(tokens)
        end = self._node(m.best_match_node)
        if int(m.device_prefix_len) + int(m.host_hit_length) < n or end.parent is None:
            raise UnknownPrefix(f"the last page of these {n} tokens is not cached")
        root, depth = end, n  # root: the node holding token n - ps (the last page's first)
        while depth - len(root.key) > n - self.ps:
            depth -= len(root.key)
            root = root.parent
        nodes = list(self._postorder(root))
        self._refuse_busy(nodes, "delete")
        before = self._pages()
        core = self.cache.tree_core
        for x in nodes:
            if x.parent is None or all(c is not x for c in x.parent.children.values()):
                continue  # already gone with a tombstone sweep
            self._drop(core, x)
        after = self._pages()
        return {"pages": {t: before.get(t, 0) - after.get(t, 0) for t in before}}

    def _drop(self, core: Any, x: Any) -> None:
        """Remove one node whose children are gone (device and host copies)."""
        from sglang.srt.mem_cache.unified_cache.unified_tree_core_interface import (
            DriveHostEvictionResult,
        )

        cache = self.cache
        tracker = {ct: 0 for ct in cache.tree_components}
        if not x.evicted:
            if not x.backuped:
                if not cache._drop_subtree_no_host(x.id, tracker):
                    raise PageLocked(f"delete: node {x.id} was refused by SGLang's tree")
                return
            cache._demote(x.id, tracker)  # now a host-only leaf
        res = DriveHostEvictionResult()
        core._evict_host_leaf(x, res.tracker, res.device_frees, res.host_frees,
                              cache_actions=res.cache_actions)
        cache._apply_eviction_result(res)

    def swap_out(self, tokens: list[int]) -> dict:
        """Move the device-resident prefix of ``tokens`` and what extends it to the DRAM tier
        (write-back through SGLang's own backup). An ancestor another device branch still
        needs stays on the device (``kept`` pages).

        All or nothing: a caller that frees HBM ahead of use must know whether it did. Room
        for all of it is made first, by evicting other DRAM-cached pages (LRU, as SGLang's own
        write-back would); if it cannot be made, nothing of the prefix moves. May change: SGLang's tree (the nodes demoted; other DRAM-only prefixes
        evicted, also when it then refuses) and through it MemPool's index.

        Raises:
            UnknownTier: no DRAM tier. UnknownPrefix: nothing of it cached.
            PageLocked: held pages (nothing changed).
            OutOfPages: the DRAM tier cannot take the prefix even after evicting every
                unlocked DRAM-only page (bigger than the tier, or the rest held); the prefix
                stays where it was.
        """
        self._host()
        m = self._match(tokens)
        if int(m.device_prefix_len) == 0:
            if int(m.host_hit_length) == 0:
                raise UnknownPrefix(f"none of these {len(tokens)} tokens is cached")
            return {"pages": 0, "kept": 0}
        last = self._node(m.last_device_node)
        order = [x for x in self._postorder(last) if not x.evicted]
        chosen = set(map(id, order))
        kept = 0
        up = last.parent
        while up is not None and up.parent is not None:
            if any(not c.evicted and id(c) not in chosen for c in up.children.values()):
                kept += len(up.key)
                up = up.parent
                while up is not None and up.parent is not None:
                    kept += len(up.key)
                    up = up.parent
                break
            order.append(up)
            chosen.add(id(up))
            up = up.parent
        self._refuse_busy(order, "swap_out")
        # Room for every page, DRAM copies or not: making room may reclaim those copies (SGLang
        # drops host duplicates of device pages first under write-back).
        self._make_host_room(sum(len(x.key) for x in order) // self.ps)
        before = self._pages().get("device", 0)
        for x in order:
            self._demote(x)
        return {"pages": before - self._pages().get("device", 0), "kept": kept // self.ps}

    def _make_host_room(self, need: int) -> None:
        """Free DRAM pages until ``need`` are free (SGLang's host eviction).

        Raises:
            OutOfPages: fewer than ``need`` pages could be freed.
        """
        host = self.cache.memserve_pool.tiers["host"].allocator
        if host.num_free < need:
            self.cache.evict_host((need - host.num_free) * self.ps)
        if host.num_free < need:
            raise OutOfPages("host", need, host.num_free)

    def _demote(self, x: Any) -> None:
        cache = self.cache
        tracker = {ct: 0 for ct in cache.tree_components}
        backup = cache._evict_device_leaf(x.id, tracker)
        if backup is None:
            return  # it had a DRAM copy: demoted
        self._make_host_room(len(x.key) // self.ps)  # made up front: a safety net
        if cache._execute_and_commit_kv_backup(backup, write_back=True) <= 0:
            raise OutOfPages("host", len(x.key) // self.ps,
                             cache.memserve_pool.tiers["host"].allocator.num_free)
        cache.writing_check(write_back=True)
        cache._demote(x.id, tracker)

    def swap_in(self, tokens: list[int]) -> dict:
        """Load the DRAM-only pages of the prefix of ``tokens`` back to the device (SGLang's
        load-back, finished before answering).

        Raises:
            UnknownTier: no DRAM tier. UnknownPrefix: nothing of it cached.
            OutOfPages: the device has no room even after evicting.
        """
        cc = self._host()
        m = self._match(tokens)
        host = int(m.host_hit_length)
        if host == 0:
            if int(m.device_prefix_len) == 0:
                raise UnknownPrefix(f"none of these {len(tokens)} tokens is cached")
            return {"pages": 0}
        if not self.cache.load_back(m.best_match_node, None, req=None):
            raise OutOfPages("device", host // self.ps,
                             int(self.cache.token_to_kv_pool_allocator.available_size())
                             // self.ps)
        self.cache.ready_to_load_host_cache()
        acks = list(cc.ack_load_queue)
        for ack in acks:
            ack.finish_event.synchronize()
        self.cache.loading_check(finish_count=len(acks))
        return {"pages": host // self.ps}
