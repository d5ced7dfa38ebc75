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
