"""Import-time patches: a CUDA-built torchvision without its C ops, and a stand-in ``sgl_kernel``.

Both work through one meta-path finder that does nothing until ``torchvision`` or ``sgl_kernel``
is imported, so installing it costs nothing at interpreter start (``startup.py`` installs it from
a ``.pth`` file on CPU hosts, which makes stock ``python -m sglang...`` tools work there too).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

from sglang_memserve.compat.sgl_kernel_api import NAMES as KERNEL_NAMES
from sglang_memserve.compat.sgl_kernel_api import SGLANG_VERSION as KERNEL_NAMES_VERSION

# NOTE: process-local record of what was patched (the census reads it).
APPLIED: list[str] = []


def apply() -> None:
    """Install the finder (idempotent)."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CompatFinder())


def _guard_torchvision_register_fake() -> None:
    """Make ``register_fake("torchvision::op")`` a no-op for ops that were never defined.

    PyPI's torchvision 0.28 is a CUDA build: on a CPU torch its ``_meta_registrations`` register
    fake kernels of ``torchvision::nms``/``qnms`` whose C library is absent, and the import
    raises. Skipping fakes of undefined ops is what its ``_has_ops()`` guards do for the others.
    """
    if "torchvision" in APPLIED:
        return
    import torch
    import torch.library

    if torch.cuda.is_available():
        return
    original = torch.library.register_fake

    def register_fake(op: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(op, str) and op.startswith("torchvision::"):
            name = op.split("::", 1)[1].split(".")[0]
            if not hasattr(torch.ops.torchvision, name):
                return lambda fn=None: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    APPLIED.append("torchvision")


class _MissingKernel:
    """A stand-in for a ``sgl_kernel`` object: raises when called; its public attributes are
    stand-ins too (SGLang reads constants such as ``scalar_types.uint4b8`` at import time), its
    private ones are absent (``getattr(metal, "_metal", None)`` probes must see ``None``)."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{self._qualname} is a sgl_kernel CUDA/AMX kernel; this CPU host has no sgl_kernel "
            "build (sglang_memserve.compat stand-in). Use --attention-backend torch_native."
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return _MissingKernel(f"{self._qualname}.{attr}")

    def __repr__(self) -> str:
        return f"<sgl_kernel stand-in {self._qualname}>"


class _StandinModule(types.ModuleType):
    """A stand-in ``sgl_kernel`` module: the names SGLang imports from it (``KERNEL_NAMES``)
    are stand-in kernels or submodules; any other name is absent, so SGLang's feature
    detection (``try: from sgl_kernel import X``) is not fooled."""

    def __getattr__(self, attr: str) -> Any:
        if attr not in KERNEL_NAMES.get(self.__name__, ()):
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {attr!r} (the CPU stand-in answers "
                f"only the names SGLang {KERNEL_NAMES_VERSION} imports from it)")
        sub = f"{self.__name__}.{attr}"
        value = (importlib.import_module(sub) if sub in KERNEL_NAMES
                 else _MissingKernel(sub))
        setattr(self, attr, value)
        return value


def _sgl_kernel_missing() -> bool:
    """No real ``sgl_kernel`` on the path and no CUDA: SGLang imports it but never calls it."""
    if importlib.machinery.PathFinder.find_spec("sgl_kernel", sys.path) is not None:
        return False
    import torch

    return not torch.cuda.is_available()


class _CompatFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "torchvision":
            _guard_torchvision_register_fake()
            return None  # the real torchvision, imported normally
        if fullname in KERNEL_NAMES and ("sgl_kernel" in APPLIED or _sgl_kernel_missing()):
            if "sgl_kernel" not in APPLIED:
                APPLIED.append("sgl_kernel")
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandinModule(spec.name)
        module.__path__ = []  # a package: its known submodules resolve here too
        module.__version__ = "0.0.0+memserve-cpu-standin"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def check() -> None:
    """Start-up check of what the import-time patches rely on; reads only.

    Raises:
        CompatError: ``torch.library.register_fake`` changed, or the stand-in's name list was
            derived from another SGLang than the installed one.
    """
    from sglang_memserve.compat.targets import CompatError, Target, installed_sglang

    Target("torch.library", "register_fake", params=("op",)).check("torchvision")
    installed = installed_sglang()
    if installed != KERNEL_NAMES_VERSION:
        raise CompatError("sgl_kernel", "sglang_memserve.compat.sgl_kernel_api",
                          f"lists the sgl_kernel names of SGLang {KERNEL_NAMES_VERSION}, not "
                          f"{installed}'s (python -m sglang_memserve.compat.kernel_names)")


def status() -> dict[str, tuple[str, str]]:
    """``{patch: (status, reason)}`` of the import-time patches in this process; reads only.

    Statuses: ``applied``; ``not needed`` (CUDA, or a real ``sgl_kernel``); ``pending`` (what
    it patches was not imported in this process); ``not applied`` (with why).
    """
    import torch

    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        why = ("not applied", "the compat import finder is not installed in this process")
        return {"torchvision": why, "sgl_kernel": why}
    cuda = torch.cuda.is_available()
    out: dict[str, tuple[str, str]] = {}
    if "torchvision" in APPLIED:
        out["torchvision"] = ("applied", "")
    elif cuda:
        out["torchvision"] = ("not needed", "CUDA is available: torchvision's C ops exist")
    elif "torchvision" not in sys.modules:
        out["torchvision"] = ("pending", "torchvision was not imported in this process")
    else:
        out["torchvision"] = ("not applied", "torchvision was imported before the finder")
    real = importlib.machinery.PathFinder.find_spec("sgl_kernel", sys.path)
    if "sgl_kernel" in APPLIED:
        out["sgl_kernel"] = ("applied", "")
    elif real is not None:
        out["sgl_kernel"] = ("not needed", f"a real sgl_kernel is installed ({real.origin})")
    elif cuda:
        out["sgl_kernel"] = ("not needed", "CUDA is available")
    else:
        out["sgl_kernel"] = ("pending", "SGLang has not imported sgl_kernel in this process")
    return out
