"""Run-time patches of SGLang classes for CPU hosts (applied in every SGLang process by the plugin).

Each patch declares the targets it changes (:class:`~.targets.Target`); :func:`apply` checks them
before running it, so a renamed or changed SGLang internal raises :class:`~.targets.CompatError`
instead of making the patch a silent no-op. A patch returns ``None`` when it applied, or why it
was not needed (torch or SGLang already provide what it adds).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from sglang_memserve.compat.targets import Target, Unavailable


@dataclass(frozen=True)
class Patch:
    """One run-time patch.

    Args:
        name: its name (census, errors, docs/cpu-compat.md).
        fn: applies it; returns ``None`` when it did, else why it was not needed.
        targets: what it changes, checked before ``fn`` runs.
    """

    name: str
    fn: Callable[[], str | None]
    targets: tuple[Target, ...]

    @property
    def why(self) -> str:
        return (self.fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


# NOTE: process-local: {patch: (status, reason)} once apply() ran it (the census reads it).
RESULTS: dict[str, tuple[str, str]] = {}
APPLIED: list[str] = []

PATCHES: dict[str, Patch] = {}


def patch(name: str, *targets: Target) -> Callable[[Callable[[], str | None]],
                                                  Callable[[], str | None]]:
    """Register a run-time patch under ``name`` with the targets it changes (a registry, not an
    if/elif chain)."""

    def register(fn: Callable[[], str | None]) -> Callable[[], str | None]:
        PATCHES[name] = Patch(name, fn, targets)
        return fn

    return register


def apply() -> None:
    """Check each patch's targets, then apply it; idempotent. May change the patched SGLang and
    torch classes; records each outcome in ``RESULTS``.

    Raises:
        CompatError: a target is missing or changed (never a silent skip).
    """
    for p in PATCHES.values():
        if p.name in RESULTS:
            continue
        try:
            for target in p.targets:
                target.check(p.name)
        except Unavailable as exc:  # a feature that is not installed here: nothing to patch
            RESULTS[p.name] = ("unavailable", str(exc))
            continue
        reason = p.fn()
        RESULTS[p.name] = ("applied", "") if reason is None else ("not needed", reason)
        if reason is None:
            APPLIED.append(p.name)


@patch("mooncake-host-indices",
       Target("sglang.srt.disaggregation.mooncake.conn", "MooncakeKVSender",
              attrs=("supports_host_tensor_indices",)),
       Target("sglang.srt.disaggregation.prefill", "", reads="supports_host_tensor_indices"))
def _mooncake_plain_page_indices() -> str | None:
    """Prefill's ``_send_kv_chunk`` pins host index tensors (CUDA-only); take the plain path."""
    conn = importlib.import_module("sglang.srt.disaggregation.mooncake.conn")
    conn.MooncakeKVSender.supports_host_tensor_indices = False
    return None


@patch("cpu-stream-synchronize", Target("torch.cpu", "Stream"))
def _cpu_stream_synchronize() -> str | None:
    """HiCache synchronizes its copy streams; ``torch.cpu.Stream`` lacks ``synchronize`` on CPU."""
    import torch

    if hasattr(torch.cpu.Stream, "synchronize"):
        return "this torch's torch.cpu.Stream has synchronize"
    torch.cpu.Stream.synchronize = lambda self: None  # type: ignore[attr-defined]
    return None


@patch("hicache-host-pool-unpinned",
       Target("sglang.srt.mem_cache.pool_host.base", "HostKVCache.__init__",
              keywords=("pin_memory",)))
def _hicache_unpinned_host_pool() -> str | None:
    """HiCache's host pools pin (cudaHostRegister) their memory; without CUDA that raises."""
    import inspect

    base = importlib.import_module("sglang.srt.mem_cache.pool_host.base")
    init = base.HostKVCache.__init__
    if getattr(init, "_memserve_unpinned", False):
        return None  # applied earlier in this process
    signature = inspect.signature(init)

    def unpinned_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["pin_memory"] = False
        init(*bound.args, **bound.kwargs)

    unpinned_init._memserve_unpinned = True  # type: ignore[attr-defined]
    base.HostKVCache.__init__ = unpinned_init
    return None


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


@patch("hicache-direct-io",
       Target("sglang.srt.mem_cache.pool_host.mha", "", reads="transfer_kv_direct"))
def _hicache_direct_io() -> str | None:
    """HiCache's host pool imports its copy kernels from ``sgl_kernel`` only on CUDA/HIP; the
    ``direct`` io backend with the ``layer_first`` layout needs just ``transfer_kv_direct``."""
    mha = importlib.import_module("sglang.srt.mem_cache.pool_host.mha")
    current = getattr(mha, "transfer_kv_direct", None)
    if current is not None and current is not transfer_kv_direct:
        return "SGLang's host pool imported its own transfer_kv_direct (a kernel build)"
    mha.transfer_kv_direct = transfer_kv_direct
    return None
