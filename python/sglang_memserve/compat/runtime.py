"""Run-time patches of SGLang classes for CPU hosts (applied in every SGLang process by the plugin)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# NOTE: process-local record of what was patched, for logs only.
APPLIED: list[str] = []

_PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register a run-time patch under ``name`` (a registry, not an if/elif chain)."""

    def register(fn: Callable[[], None]) -> Callable[[], None]:
        _PATCHES[name] = fn
        return fn

    return register


def apply() -> None:
    for name, fn in _PATCHES.items():
        if name in APPLIED:
            continue
        try:
            fn()
        except ImportError as exc:  # the patched feature is not installed: nothing to patch
            logger.debug("compat patch %s skipped: %s", name, exc)
            continue
        APPLIED.append(name)


@patch("mooncake-host-indices")
def _mooncake_plain_page_indices() -> None:
    """Prefill's ``_send_kv_chunk`` pins host index tensors (CUDA-only); take the plain path."""
    conn = importlib.import_module("sglang.srt.disaggregation.mooncake.conn")
    conn.MooncakeKVSender.supports_host_tensor_indices = False


@patch("cpu-stream-synchronize")
def _cpu_stream_synchronize() -> None:
    """HiCache synchronizes its copy streams; ``torch.cpu.Stream`` lacks ``synchronize`` on CPU."""
    import torch

    if not hasattr(torch.cpu.Stream, "synchronize"):
        torch.cpu.Stream.synchronize = lambda self: None  # type: ignore[attr-defined]


@patch("hicache-host-pool-unpinned")
def _hicache_unpinned_host_pool() -> None:
    """HiCache's host pools pin (cudaHostRegister) their memory; without CUDA that raises."""
    import inspect

    base = importlib.import_module("sglang.srt.mem_cache.pool_host.base")
    init = base.HostKVCache.__init__
    if getattr(init, "_memserve_unpinned", False):
        return
    signature = inspect.signature(init)

    def unpinned_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["pin_memory"] = False
        init(*bound.args, **bound.kwargs)

    unpinned_init._memserve_unpinned = True  # type: ignore[attr-defined]
    base.HostKVCache.__init__ = unpinned_init


def transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices,  # type: ignore[no-untyped-def]
                       page_size: int) -> None:
    """Torch version of ``sgl_kernel.kvcacheio.transfer_kv_direct``: per buffer pair,
    ``dst[dst_indices] = src[src_indices]`` (token indices, whole pages)."""
    src_idx = src_indices.to(device=src_layers[0].device, dtype=_long())
    dst_idx = dst_indices.to(device=dst_layers[0].device, dtype=_long())
    for src, dst in zip(src_layers, dst_layers, strict=True):
        dst.index_copy_(0, dst_idx, src.index_select(0, src_idx).to(dst.device))


def _long():  # type: ignore[no-untyped-def]
    import torch

    return torch.int64


@patch("hicache-direct-io")
def _hicache_direct_io() -> None:
    """HiCache's host pool imports its copy kernels from ``sgl_kernel`` only on CUDA/HIP; the
    ``direct`` io backend with the ``layer_first`` layout needs just ``transfer_kv_direct``."""
    mha = importlib.import_module("sglang.srt.mem_cache.pool_host.mha")
    if not hasattr(mha, "transfer_kv_direct"):
        mha.transfer_kv_direct = transfer_kv_direct
