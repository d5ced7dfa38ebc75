"""The CPU compatibility layer: stand-ins that raise only when called; a guarded torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_memserve import compat


@pytest.mark.skipif(not compat.needed(), reason="the compat layer applies to CPU hosts only")
def test_sgl_kernel_standin_raises_only_when_called() -> None:
    code = (
        "from sglang_memserve import compat; compat.apply_import_patches()\n"
        "import sgl_kernel\n"
        "from sgl_kernel.scalar_type import scalar_types\n"
        "x = scalar_types.uint4b8\n"  # attribute chains resolve, as SGLang's imports need
        "try:\n    sgl_kernel.fused_add_rmsnorm(1)\nexcept NotImplementedError as e:\n"
        "    print('raised:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised: sgl_kernel.fused_add_rmsnorm is a sgl_kernel" in out.stdout


@pytest.mark.skipif(not compat.needed(), reason="the compat layer applies to CPU hosts only")
def test_torchvision_imports_and_keeps_defined_ops() -> None:
    code = (
        "from sglang_memserve import compat; compat.apply_import_patches()\n"
        "import torch, torchvision\n"
        "print(hasattr(torch.ops.torchvision, 'nms'), torchvision.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False")
