"""Import-time patches: CUDA-built torchvision without its C ops, and a stand-in ``sgl_kernel``."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

# NOTE: process-local record of what was patched, for logs only.
APPLIED: list[str] = []


def apply() -> None:
    _guard_torchvision_meta_ops()
    _install_sgl_kernel_standin()


def _guard_torchvision_meta_ops() -> None:
    """Import torchvision with ``register_fake`` skipping ops that its (absent) C library lacks.

    PyPI's torchvision 0.28 is a CUDA build: on a CPU torch its ``_meta_registrations`` call
    ``torch.library.register_fake("torchvision::nms")`` for an operator that was never
    defined, so ``import torchvision`` raises. Skipping the fake kernels of undefined ops is
    exactly what ``torchvision.extension._has_ops()`` guards do for the other ops.
    """
    if "torchvision" in sys.modules or "torchvision" in APPLIED:
        return
    if importlib.util.find_spec("torchvision") is None:
        return
    import torch
    import torch.library

    original = torch.library.register_fake

    def register_fake(op: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(op, str) and op.startswith("torchvision::"):
            namespace, name = op.split("::", 1)
            if not hasattr(getattr(torch.ops, namespace), name.split(".")[0]):
                return lambda fn=None: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        raise
    finally:
        torch.library.register_fake = original
    APPLIED.append("torchvision")


class _MissingKernel:
    """A stand-in for a ``sgl_kernel`` object: raises when called; its attributes are stand-ins too
    (SGLang reads constants such as ``scalar_types.uint4b8`` at import time)."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{self._qualname} is a sgl_kernel CUDA/AMX kernel; this CPU host has no sgl_kernel "
            "build (sglang_memserve.compat stand-in). Use --attention-backend torch_native."
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _MissingKernel(f"{self._qualname}.{attr}")

    def __repr__(self) -> str:
        return f"<sgl_kernel stand-in {self._qualname}>"


class _StandinModule(types.ModuleType):
    """A module whose every missing attribute is a function that raises when called."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _MissingKernel(f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class _StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``sgl_kernel`` and its submodules to stand-in modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "sgl_kernel" or fullname.startswith("sgl_kernel."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandinModule(spec.name)
        module.__path__ = []  # a package, so any submodule import resolves here too
        module.__version__ = "0.0.0+memserve-cpu-standin"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _install_sgl_kernel_standin() -> None:
    """SGLang imports ``sgl_kernel`` on CPU but, without AMX, never calls it; PyPI has no CPU build."""
    if "sgl_kernel" in APPLIED:
        return
    if importlib.util.find_spec("sgl_kernel") is not None:
        return
    sys.meta_path.append(_StandinFinder())
    APPLIED.append("sgl_kernel")
