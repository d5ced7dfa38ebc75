"""CPU compatibility layer: the smallest patches that let stock SGLang 0.5.23 run on a CPU-only host.

Every patch is applied only where it is needed (see ``docs/cpu-compat.md``):

* import time (:func:`apply_import_patches`): a CUDA-built torchvision whose C ops are absent, and
  the missing CPU build of ``sgl_kernel``;
* run time (:func:`apply_runtime_patches`): host-memory pinning, Mooncake host-tensor indices,
  HiCache's copy kernels and CPU streams.

On a machine with CUDA and a normal SGLang install, :func:`needed` is False and nothing is touched.
"""

from __future__ import annotations

import functools
import os

from sglang_memserve.compat import imports, runtime


@functools.cache
def needed() -> bool:
    """True on a host without CUDA (the only case any patch applies to)."""
    if os.environ.get("MEMSERVE_FORCE_CPU_COMPAT") == "1":
        return True
    import torch

    return not torch.cuda.is_available()


def apply_import_patches() -> None:
    """Installs the lazy import finder (it checks for CUDA itself, when first triggered)."""
    imports.apply()


def apply_runtime_patches() -> None:
    """Patches of SGLang classes; called in every SGLang process by the plugin; idempotent."""
    if needed():
        imports.apply()
        runtime.apply()


def applied() -> list[str]:
    """Names of the patches applied in this process (for logs and ``/server_info``)."""
    return imports.APPLIED + runtime.APPLIED
