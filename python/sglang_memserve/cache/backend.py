"""MemServe's tree cache: a documented subclass of SGLang's ``UnifiedRadixCache``.

SGLang builds the tree cache through its radix-cache registry; :func:`factory` is registered
there by the plugin and delegates to ``create_unified_radix_cache(ctx, cache_class=...)`` so that
SGLang's own HiCache attachment still applies.
"""

from __future__ import annotations

import logging
from typing import Any

from sglang.srt.mem_cache.registry import TreeCacheBuildContext, create_unified_radix_cache
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from sglang_memserve.config import MemServeConfig

logger = logging.getLogger(__name__)


class MemServeRadixCache(UnifiedRadixCache):
    """SGLang's unified radix tree, owned and reported by MemServe."""

    memserve_config: MemServeConfig = MemServeConfig()

    def memserve_state(self) -> dict[str, Any]:
        """What ``/server_info`` reports under ``internal_states[i]["memserve"]``; read-only."""
        return {
            "tree_cache_class": type(self).__name__,
            "role": self.memserve_config.role,
            "instance_id": self.memserve_config.instance_id,
            "page_size": self.page_size,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
        }


def factory(ctx: TreeCacheBuildContext) -> MemServeRadixCache:
    """The registry's factory: SGLang calls it in the scheduler process."""
    config = MemServeConfig.from_env()
    cache = create_unified_radix_cache(ctx, cache_class=MemServeRadixCache)
    assert isinstance(cache, MemServeRadixCache)
    cache.memserve_config = config
    logger.info("MemServe tree cache %s ready (role=%s, instance=%s)",
                type(cache).__name__, config.role, config.instance_id)
    return cache
