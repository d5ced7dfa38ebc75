"""CPU compatibility layer and the start-up check of every SGLang internal MemServe patches.

* import time (:func:`apply_import_patches`): a CUDA-built torchvision whose C ops are absent, and
  the missing CPU build of ``sgl_kernel`` (a stand-in answering only the names SGLang imports);
* run time (:func:`apply_runtime_patches`, the plugin's first step in every SGLang process): each
  patch's declared targets are checked, then the CPU patches applied where needed; the plugin's
  hooks and the internals MemServe replaces or reads (:mod:`.surface`) are checked on every host;
* :func:`census`: what became of each of them in this process (``/server_info`` shows it).

A missing or changed target stops the process with a message naming the installed and the
pinned SGLang version and the patch (:class:`CompatError`); nothing is skipped silently. On a
machine with CUDA and a normal SGLang install, :func:`needed` is False and no CPU patch applies.
See ``docs/cpu-compat.md``.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from typing import Any

from sglang_memserve.compat import imports, runtime, targets
from sglang_memserve.compat.targets import PINNED_SGLANG, CompatError, Target, installed_sglang

logger = logging.getLogger(__name__)

__all__ = ["PINNED_SGLANG", "CompatError", "Target", "applied", "apply_import_patches",
           "apply_runtime_patches", "census", "check", "installed_sglang", "needed"]


@functools.cache
def needed() -> bool:
    """True on a host without CUDA (the only case any CPU patch applies to)."""
    if os.environ.get("MEMSERVE_FORCE_CPU_COMPAT") == "1":
        return True
    import torch

    return not torch.cuda.is_available()


def apply_import_patches() -> None:
    """Installs the lazy import finder (it checks for CUDA itself, when first triggered)."""
    imports.apply()


def check() -> None:
    """Check every declared target and apply the CPU patches where needed; idempotent. May
    patch SGLang and torch classes (CPU hosts only).

    Raises:
        CompatError: a target is missing or changed.
    """
    # NOTE: the checks parse a few SGLang source files; with all of SGLang loaded, the garbage
    # collector's full passes over those syntax trees cost most of the time (~0.6 s -> ~0.1 s).
    collecting = gc.isenabled()
    gc.disable()
    try:
        if needed():
            imports.apply()
            imports.check()
            runtime.apply()
        from sglang_memserve.compat.outcomes import check_surface

        check_surface()
    finally:
        targets.forget_sources()  # the parsed files are not kept alive in a serving process
        if collecting:
            gc.enable()


def apply_runtime_patches() -> None:
    """The plugin's start-up step, in every SGLang process: :func:`check`, stopping the process
    when it fails. SGLang's plugin loader logs and swallows a plugin's exceptions (the server
    would then run without MemServe and fail later, elsewhere), so a failed check exits instead.

    Raises:
        SystemExit: with the :class:`CompatError` message (SGLang, pinned version, patch).
    """
    try:
        check()
    except CompatError as exc:
        logger.critical("%s", exc)
        raise SystemExit(str(exc)) from exc


def census() -> list[dict[str, Any]]:
    """Each patch, hook and replaced or read SGLang internal, with its status in this process
    and why it did not apply (see :mod:`.outcomes`); reads only."""
    from sglang_memserve.compat import outcomes

    return outcomes.census(needed())


def applied() -> list[str]:
    """Names of the CPU patches applied in this process."""
    return imports.APPLIED + runtime.APPLIED
