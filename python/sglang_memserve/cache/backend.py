"""MemServe's tree cache: a documented subclass of SGLang's ``UnifiedRadixCache``.

SGLang builds the tree cache through its radix-cache registry; :func:`factory` is registered
there by the plugin and delegates to ``create_unified_radix_cache(ctx, cache_class=...)`` so that
SGLang's HiCache attachment (the DRAM tier: host pool, async load-back) still applies.

What the subclass adds:

* MemPool's index of this instance (:class:`~.index.InstanceIndex`), kept exact through SGLang's
  placement-event hook, with KV events and snapshots for the router;
* per-request hit accounting per tier and swap accounting (:mod:`.metrics`);
* ``memserve_state()`` for ``/server_info``.
"""

from __future__ import annotations

import logging
from typing import Any

from sglang.srt.mem_cache.registry import TreeCacheBuildContext, create_unified_radix_cache
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from sglang_memserve.cache.index import IndexRecorder, InstanceIndex
from sglang_memserve.cache.metrics import CacheMetrics
from sglang_memserve.config import MemServeConfig

logger = logging.getLogger(__name__)


class MemServeRadixCache(UnifiedRadixCache):
    """SGLang's unified radix tree, indexed by MemPool and reported by MemServe."""

    memserve_config: MemServeConfig = MemServeConfig()
    memserve_index: InstanceIndex | None = None
    memserve_metrics: CacheMetrics | None = None

    def attach_memserve(self, config: MemServeConfig, publish: bool = True) -> None:
        """Install MemServe's index and counters (once, right after construction).

        Args:
            config: the instance's MemServe settings.
            publish: whether this process publishes KV events (only TP rank 0 does).
        """
        self.memserve_config = config
        self.memserve_index = InstanceIndex(
            config.instance_id, self.page_size, config.host,
            events_port=config.events_port if publish and config.events_port >= 0 else None)
        self.memserve_metrics = CacheMetrics(config.instance_id)
        kvcache = self.token_to_kv_pool_allocator.get_kvcache()
        buffers = list(getattr(kvcache, "k_buffer", [])) + list(getattr(kvcache, "v_buffer", []))
        self._page_nbytes = self.page_size * sum(b[0].numel() * b.element_size() for b in buffers)
        core = self.tree_core
        core.kv_events = IndexRecorder(core.kv_events, self.memserve_index,
                                       self._page_ids, on_store=self._on_store)

    # ---- hooks -------------------------------------------------------------------------

    def _page_ids(self, node: Any, tier: str) -> list[int] | None:
        data = _full_data(node)
        if data is None:
            return None
        value = data.value if tier == "device" else data.host_value
        if value is None:
            return None
        return [int(t) // self.page_size for t in value[:: self.page_size].tolist()]

    def _on_store(self, node: Any, tier: str, pages: int) -> None:
        if self.memserve_metrics is None or pages <= 0:
            return
        data = _full_data(node)
        if tier == "host":
            self.memserve_metrics.swap("out", pages, pages * self._page_nbytes)
        elif data is not None and data.host_value is not None:
            self.memserve_metrics.swap("in", pages, pages * self._page_nbytes)

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        if self.memserve_metrics is not None and not getattr(req, "_memserve_counted", False):
            req._memserve_counted = True
            self.memserve_metrics.request(
                len(req.origin_input_ids), int(getattr(req, "cached_tokens_device", 0) or 0),
                int(getattr(req, "cached_tokens_host", 0) or 0))

    def memserve_state(self) -> dict[str, Any]:
        """What ``/server_info`` reports under ``internal_states[i]["memserve"]``; read-only."""
        index = self.memserve_index
        pages = index.pages_by_tier() if index else {}
        if self.memserve_metrics is not None:
            self.memserve_metrics.occupancy(pages)
        return {
            "tree_cache_class": type(self).__name__,
            "role": self.memserve_config.role,
            "instance_id": self.memserve_config.instance_id,
            "page_size": self.page_size,
            "dram_tier": self.cache_controller is not None,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
            "index_pages": pages,
            "endpoints": index.endpoints() if index else {},
            "counters": self.memserve_metrics.counters.as_dict() if self.memserve_metrics else {},
        }


def _full_data(node: Any) -> Any:
    """The node's Full-attention component data (``component_data`` is indexed by the enum)."""
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    data = getattr(node, "component_data", None)
    return data[ComponentType.FULL] if data is not None else None


def factory(ctx: TreeCacheBuildContext) -> MemServeRadixCache:
    """The registry's factory: SGLang calls it in the scheduler process."""
    config = MemServeConfig.from_env()
    # NOTE: SGLang's default TreeCore is Rust; its placement events stay inside the binding.
    # The Python TreeCore reports each one through the recorder MemServe's index hooks.
    ctx.params.tree_core_backend = "python"
    cache = create_unified_radix_cache(ctx, cache_class=MemServeRadixCache)
    assert isinstance(cache, MemServeRadixCache)
    cache.attach_memserve(config, publish=ctx.tp_rank == 0)
    logger.info("MemServe tree cache %s ready (role=%s, instance=%s, dram tier=%s)",
                type(cache).__name__, config.role, config.instance_id,
                cache.cache_controller is not None)
    return cache
