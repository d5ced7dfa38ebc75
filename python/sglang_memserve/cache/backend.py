"""MemServe's tree cache: a documented subclass of SGLang's ``UnifiedRadixCache``.

SGLang builds the tree cache through its radix-cache registry; :func:`factory` is registered
there by the plugin and delegates to ``create_unified_radix_cache(ctx, cache_class=...)`` so that
SGLang's HiCache attachment (the DRAM tier: host pool, async load-back) still applies.

What the subclass adds:

* the instance's MemPool (:class:`~sglang_memserve.mempool.EngineMemPool`): its memory API runs
  over SGLang's own allocators and KV pools (device, and HiCache's host pool: :mod:`.tiers`), its
  index is kept exact through SGLang's placement-event hook (:mod:`.index`) and publishes KV
  events for the router;
* one control channel (ZMQ) serving index snapshots and KV movement (:mod:`.peer`): decode ->
  prefill KV return when a request ends (PD-Caching-3) and peer prefix migration;
* per-request hit accounting per tier and swap accounting (:mod:`.metrics`);
* ``memserve_state()`` for ``/server_info``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sglang.srt.mem_cache.registry import TreeCacheBuildContext, create_unified_radix_cache
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from sglang_memserve.cache.api import InstanceApi
from sglang_memserve.cache.bridge import SchedulerBridge
from sglang_memserve.cache.index import IndexRecorder
from sglang_memserve.cache.metrics import CacheMetrics
from sglang_memserve.cache.peer import PeerService
from sglang_memserve.cache.tiers import SGLangEngine, device_tier, full_data, host_tier
from sglang_memserve.config import MemServeConfig
from sglang_memserve.mempool import EngineMemPool, EventPublisher, MemPoolConfig
from sglang_memserve.mempool.rpc import RpcServer

logger = logging.getLogger(__name__)


class MemServeRadixCache(UnifiedRadixCache):
    """SGLang's unified radix tree, indexed by MemPool and reported by MemServe."""

    memserve_config: MemServeConfig = MemServeConfig()
    memserve_pool: EngineMemPool | None = None
    memserve_metrics: CacheMetrics | None = None
    memserve_bridge: SchedulerBridge | None = None
    memserve_peer: PeerService | None = None
    memserve_control: RpcServer | None = None

    def attach_memserve(self, config: MemServeConfig, primary: bool = True) -> None:
        """Install MemServe's index, counters and control channel (once, after construction).

        Args:
            config: the instance's MemServe settings.
            primary: whether this process speaks for the instance (TP rank 0): only it
                publishes events and serves the control channel.
        """
        self.memserve_config = config
        tiers = {"device": device_tier(self)}
        host = host_tier(self)
        if host is not None:
            tiers["host"] = host
        events = (EventPublisher(config.instance_id, config.host, config.events_port)
                  if primary and config.events_port >= 0 else None)
        self.memserve_pool = EngineMemPool(
            MemPoolConfig(page_size=self.page_size, host=config.host,
                          transfer_timeout_s=config.peer_timeout_s),
            config.instance_id, tiers, SGLangEngine(self), events)
        self.memserve_metrics = CacheMetrics(config.instance_id)
        self._page_nbytes = tiers["device"].store.layout.page_nbytes
        core = self.tree_core
        core.kv_events = IndexRecorder(core.kv_events, self.memserve_pool,
                                       self._page_ids, on_store=self._on_store)
        if not primary:
            return
        self.memserve_bridge = SchedulerBridge()
        pool = self.memserve_pool
        handlers: dict[str, Callable[[dict], dict]] = {
            "snapshot": lambda _m: pool.snapshot(),
            "integrity": lambda _m: self.memserve_bridge.call(self.memserve_check,
                                                              config.peer_timeout_s)}
        self.memserve_peer = PeerService(self, pool, self.memserve_bridge,
                                         _Transport(pool.config),
                                         timeout_s=config.peer_timeout_s, peers=config.peers)
        handlers.update(self.memserve_peer.handlers())
        api = InstanceApi(self, lambda fn: self.memserve_bridge.call(fn, config.peer_timeout_s),
                          self.memserve_peer._on_push)
        handlers.update(api.handlers())
        self.memserve_control = RpcServer(
            config.instance_id, config.host, config.control_port, handlers,
            # NOTE: prepares wait for the scheduler (a whole forward pass): on their own threads
            # the control thread keeps taking announcements (``kv_announce``) meanwhile.
            slow_ops=frozenset({"kv_push", "transfer_with_insert", "kv_prepare",
                                "kv_prepare_batch"}))

    def memserve_check(self) -> dict[str, Any]:
        """MemPool's integrity check over SGLang's memory (scheduler thread): per tier free,
        cached (the index, equal to SGLang's tree), in use (MemPool transfers) and engine-held
        (running requests) pages, disjoint and summing to the capacity.

        Raises:
            IntegrityError: on any inconsistency.
        """
        assert self.memserve_pool is not None
        return {"counts": self.memserve_pool.check_integrity(),
                "evictable_tokens": int(self.evictable_size()),
                "protected_tokens": int(self.protected_size())}

    # ---- hooks -------------------------------------------------------------------------

    def memserve_tick(self, scheduler: Any) -> None:
        """Called by the plugin after each ``Scheduler.ingest_requests`` (scheduler thread)."""
        if self.memserve_bridge is not None:
            self.memserve_bridge.drain(scheduler)
        if self.memserve_peer is not None:
            self.memserve_peer.tick()  # leases pass on idle iterations too

    def _page_ids(self, node: Any, tier: str) -> list[int] | None:
        data = full_data(node)
        if data is None:
            return None
        value = data.value if tier == "device" else data.host_value
        if value is None:
            return None
        return [int(t) // self.page_size for t in value[:: self.page_size].tolist()]

    def _on_store(self, node: Any, tier: str, pages: int) -> None:
        if self.memserve_metrics is None or pages <= 0:
            return
        data = full_data(node)
        if tier == "host":
            self.memserve_metrics.swap("out", pages, pages * self._page_nbytes)
        elif data is not None and data.host_value is not None:
            self.memserve_metrics.swap("in", pages, pages * self._page_nbytes)

    def protected_size(self) -> int:
        # NOTE: slots reserved for an incoming transfer are held like a running request's:
        # SGLang's pool invariant (available + evictable + protected + ... == total) must see them.
        pool = self.memserve_pool
        reserved = pool.in_use_pages("device") * self.page_size if pool else 0
        return super().protected_size() + reserved

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        if getattr(req, "_memserve_released", False):
            return
        req._memserve_released = True
        if self.memserve_metrics is not None:
            self.memserve_metrics.request(
                len(req.origin_input_ids), int(getattr(req, "cached_tokens_device", 0) or 0),
                int(getattr(req, "cached_tokens_host", 0) or 0))
        config = self.memserve_config
        if config.kv_return and self.memserve_peer is not None and req.finished():
            dst = config.kv_return_peer or _prefill_control(req)
            if dst is not None:
                # The last generated token has no KV yet (it was never fed back).
                tokens = list(req.origin_input_ids) + list(req.output_ids)[:-1]
                self.memserve_peer.push(tokens, dst)

    def memserve_state(self) -> dict[str, Any]:
        """What ``/server_info`` reports under ``internal_states[i]["memserve"]``; read-only."""
        pool = self.memserve_pool
        pages = pool.pages_by_tier() if pool else {}
        if self.memserve_metrics is not None:
            self.memserve_metrics.occupancy(pages)
        return {
            "tree_cache_class": type(self).__name__,
            "role": self.memserve_config.role,
            "instance_id": self.memserve_config.instance_id,
            "page_size": self.page_size,
            "dram_tier": self.cache_controller is not None,
            "kv_return": self.memserve_config.kv_return,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
            "index_pages": pages,
            "endpoints": {
                "events": pool.events.endpoint if pool and pool.events else None,
                "control": self.memserve_control.endpoint if self.memserve_control else None,
            },
            "counters": self.memserve_metrics.counters.as_dict() if self.memserve_metrics else {},
            "peer": self.memserve_peer.state() if self.memserve_peer else {},
            "pending_transfers": self.memserve_peer.pending() if self.memserve_peer else 0,
            "bridge": ({"failed_posts": self.memserve_bridge.failed_posts,
                        "last_error": self.memserve_bridge.last_error}
                       if self.memserve_bridge else {}),
        }


class _Transport:
    """Where peers write into this process and how it writes to them: SGLang's own Mooncake
    engine when the process has one (PD roles), else a MemPool TransferAgent over SGLang's KV
    buffers. Resolved on first use: SGLang creates its engine after the tree cache."""

    def __init__(self, config: MemPoolConfig) -> None:
        self.config = config
        self._segment: str | None = None
        self._write: Callable[[str, list[tuple[int, int, int]]], int] | None = None
        self._register: Callable[[int, int], None] | None = None

    def bind(self, regions: list[tuple[int, int]]) -> None:
        if self._segment is not None:
            return
        from sglang.srt.distributed.parallel_state import get_mooncake_transfer_engine

        engine = get_mooncake_transfer_engine()
        if engine is not None:
            self._segment = engine.get_session_id()
            self._write = _sglang_writer(engine, self.config.max_batch_entries)
            self._register = engine.register
            return
        from sglang_memserve.mempool import Region, TransferAgent

        agent = TransferAgent(self.config)
        agent.register([Region(a, n) for a, n in regions])
        self._segment, self._write = agent.segment_name, agent.write
        self._register = lambda addr, nbytes: agent.register([Region(addr, nbytes)])

    def register(self, addr: int, nbytes: int) -> None:
        """Register more local memory the engine may send from (the return's staging buffer).

        Raises:
            RuntimeError / TransferError: the engine refused (nothing registered).
        """
        assert self._register is not None, "bind() first"
        self._register(addr, nbytes)

    @property
    def segment(self) -> str:
        assert self._segment is not None, "bind() first"
        return self._segment

    def write(self, segment: str, writes: list[tuple[int, int, int]]) -> int:
        assert self._write is not None, "bind() first"
        return self._write(segment, writes)


def _sglang_writer(engine: Any, step: int) -> Callable[[str, list[tuple[int, int, int]]], int]:
    """Writes through SGLang's Mooncake engine in batches of ``step`` blocks (Mooncake fails
    whole batches of a few thousand: ``MemPoolConfig.max_batch_entries``)."""
    from sglang_memserve.mempool.errors import TransferError

    def write(segment: str, writes: list[tuple[int, int, int]]) -> int:
        for i in range(0, len(writes), step):
            chunk = writes[i:i + step]
            rc = engine.batch_transfer_sync(segment, [w[0] for w in chunk],
                                            [w[1] for w in chunk], [w[2] for w in chunk])
            if rc < 0:
                raise TransferError(f"Mooncake write to {segment} failed (rc={rc})")
        return sum(w[2] for w in writes)

    return write


def _prefill_control(req: Any) -> str | None:
    host, port = getattr(req, "bootstrap_host", None), getattr(req, "bootstrap_port", None)
    if not host or not port:
        return None
    return f"tcp://{host}:{int(port) + 1}"


def factory(ctx: TreeCacheBuildContext) -> MemServeRadixCache:
    """The registry's factory: SGLang calls it in the scheduler process."""
    config = MemServeConfig.from_env()
    # NOTE: SGLang's default TreeCore is Rust; its placement events stay inside the binding.
    # The Python TreeCore reports each one through the recorder MemServe's index hooks.
    ctx.params.tree_core_backend = "python"
    cache = create_unified_radix_cache(ctx, cache_class=MemServeRadixCache)
    assert isinstance(cache, MemServeRadixCache)
    cache.attach_memserve(config, primary=ctx.tp_rank == 0)
    logger.info("MemServe tree cache %s ready (role=%s, instance=%s, dram tier=%s)",
                type(cache).__name__, config.role, config.instance_id,
                cache.cache_controller is not None)
    return cache
