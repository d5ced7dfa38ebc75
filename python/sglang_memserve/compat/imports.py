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

# NOTE: process-local record of what was patched, for logs only.
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
    """A stand-in for a ``sgl_kernel`` object: raises when called; its attributes are stand-ins
    too (SGLang reads constants such as ``scalar_types.uint4b8`` at import time)."""

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
    """A module whose every missing attribute is a stand-in kernel."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _MissingKernel(f"{self.__name__}.{attr}")
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
        if fullname.split(".")[0] == "sgl_kernel" and (
            "sgl_kernel" in APPLIED or _sgl_kernel_missing()
        ):
            if "sgl_kernel" not in APPLIED:
                APPLIED.append("sgl_kernel")
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandinModule(spec.name)
        module.__path__ = []  # a package, so any submodule import resolves here too
        module.__version__ = "0.0.0+memserve-cpu-standin"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None
