"""The sgl_kernel stand-in answers exactly the names SGLang imports, so feature detection works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sglang_memserve import compat
from sglang_memserve.compat.kernel_names import derive, render
from sglang_memserve.compat.sgl_kernel_api import NAMES, SGLANG_VERSION


def test_the_name_list_is_what_the_installed_sglang_imports() -> None:
    assert SGLANG_VERSION == compat.installed_sglang()
    derived = derive()
    assert derived == NAMES, "python -m sglang_memserve.compat.kernel_names regenerates it"
    assert "fused_add_rmsnorm" in NAMES["sgl_kernel"]  # a from-import
    assert "transfer_kv_direct" in NAMES["sgl_kernel.kvcacheio"]  # a submodule's from-import
    assert "init_custom_ar" in NAMES["sgl_kernel.allreduce"]  # through `import ... as alias`


def test_derive_reads_every_import_form(tmp_path: Path) -> None:
    pkg = tmp_path / "fake_sglang"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "from sgl_kernel import silu_and_mul, rmsnorm as rn\n"
        "from sgl_kernel.sub import op_a\n"
        "import sgl_kernel.deep.mod as dm\n"
        "import sgl_kernel\n"
        "x = sgl_kernel.top_k(dm.op_b)\n"
        "y = sgl_kernel.sub.op_c\n"
        "s = 'sgl_kernel.in_a_string_only'\n")
    (pkg / "b.py").write_text("from sgl_kernel_npu import not_ours\nimport torch\n"
                              "torch.ops.sgl_kernel.not_the_module\n")
    names = derive(pkg)
    assert names == {
        "sgl_kernel": ("deep", "rmsnorm", "silu_and_mul", "sub", "top_k"),
        "sgl_kernel.deep": ("mod",),
        "sgl_kernel.deep.mod": ("op_b",),
        "sgl_kernel.sub": ("op_a", "op_c"),
    }
    namespace: dict = {}
    exec(render(names, "9.9"), namespace)  # the generated module is valid Python, same data
    assert namespace["NAMES"] == names and namespace["SGLANG_VERSION"] == "9.9"


@pytest.mark.skipif(not compat.needed(), reason="the stand-in applies to CPU hosts only")
def test_standin_answers_only_known_names() -> None:
    code = (
        "import types\n"
        "from sglang_memserve import compat; compat.apply_import_patches()\n"
        "import sgl_kernel\n"
        "assert hasattr(sgl_kernel, 'fused_add_rmsnorm')\n"
        "assert not hasattr(sgl_kernel, 'memserve_not_a_kernel')\n"
        "try:\n    from sgl_kernel import memserve_not_a_kernel\n"
        "except ImportError as e:\n    print('from-import refused:', e)\n"
        "try:\n    import sgl_kernel.memserve_no_such_module\n"
        "except ModuleNotFoundError:\n    print('submodule refused')\n"
        "from sgl_kernel import kvcacheio\n"  # a known submodule is the module, not a stand-in
        "assert isinstance(kvcacheio, types.ModuleType) and hasattr(kvcacheio, 'transfer_kv_direct')\n"
        "assert not hasattr(kvcacheio, 'transfer_kv_memserve')\n"
        "from sgl_kernel import metal\n"  # SGLang probes metal._metal to detect the native build
        "assert getattr(metal, '_metal', None) is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "from-import refused: cannot import name 'memserve_not_a_kernel'" in out.stdout
    assert "submodule refused" in out.stdout and out.stdout.endswith("ok\n")
