"""The patch census: every patch, hook and replaced or read SGLang internal, and what became of it.

``census()`` lists, for this process, each import-time and run-time patch (:mod:`.imports`,
:mod:`.runtime`), each plugin hook and each internal MemServe replaces or reads
(:mod:`.surface`), with its status and, when it did not apply, why. ``/server_info`` carries it
under ``internal_states[i]["memserve"]["compat_census"]`` (the scheduler process's view).

Statuses: ``applied`` (patched or hooked in this process), ``checked`` (a replaced or read
internal whose targets passed the start-up check; MemServe's cache uses it when it is built),
``not needed`` (CUDA, or torch/SGLang already provide it), ``unavailable`` (a feature that is not
installed), ``pending`` (not reached yet in this process: its module was not imported, or SGLang
has not applied the hooks yet), ``not applied`` (with why).
"""

from __future__ import annotations

from typing import Any

from sglang_memserve.compat import imports, runtime, surface
from sglang_memserve.compat.targets import CompatError, Unavailable

# NOTE: process-local: {use: (status, reason)} once check_surface() ran.
SURFACE_RESULTS: dict[str, tuple[str, str]] = {}

_IMPORT_TARGETS = {"torchvision": ["torch.library.register_fake"],
                   "sgl_kernel": ["sgl_kernel (stand-in module)"]}


def check_surface() -> None:
    """Check the targets of every hook and replaced or read internal (:mod:`.surface`); reads
    only; records the outcomes. Idempotent.

    Raises:
        CompatError: a target is missing or changed.
    """
    for use in surface.USES:
        if use.name in SURFACE_RESULTS:
            continue
        try:
            for target in use.targets:
                target.check(use.name)
        except Unavailable as exc:
            SURFACE_RESULTS[use.name] = ("unavailable", str(exc))
            continue
        SURFACE_RESULTS[use.name] = ("checked", "")


def census(cpu_compat: bool) -> list[dict[str, Any]]:
    """Every patch, hook and replaced or read internal, with its status in this process.

    Args:
        cpu_compat: whether the CPU patches are needed here (``compat.needed()``).

    Returns:
        One JSON-ready dict per entry: ``name``, ``kind`` (import | runtime | hook | replaced |
        reads), ``status``, ``reason`` (empty when it applied), ``targets``, ``why``.
    """
    out: list[dict[str, Any]] = []
    import_status = imports.status()
    for name, targets in _IMPORT_TARGETS.items():
        status, reason = (import_status[name] if cpu_compat
                          else ("not needed", "CUDA is available (compat.needed() is False)"))
        out.append(_entry(name, "import", status, reason, targets, _IMPORT_WHY[name]))
    for p in runtime.PATCHES.values():
        if not cpu_compat:
            status, reason = "not needed", "CUDA is available (compat.needed() is False)"
        else:
            status, reason = runtime.RESULTS.get(p.name, ("pending", "compat not applied yet"))
        out.append(_entry(p.name, "runtime", status, reason, [t.name for t in p.targets], p.why))
    for use in surface.USES:
        status, reason = SURFACE_RESULTS.get(use.name, ("pending", "not checked yet"))
        if use.kind == "hook" and status == "checked":
            status, reason = _hook_status(use.hook_target)
        out.append(_entry(use.name, use.kind, status, reason, [t.name for t in use.targets],
                          use.why))
    return out


def _hook_status(target: str) -> tuple[str, str]:
    """Whether the plugin's hook on ``target`` is registered and SGLang has applied it."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_memserve import plugin

    hook = plugin._HOOKS.get(target, (None,))[0]
    if hook is None:
        return "not applied", "the plugin declares no hook on it"
    if not any(h[1] is hook for h in HookRegistry._hooks.get(target, [])):
        return "pending", "the plugin has not registered it yet"
    if target not in HookRegistry._patched:
        return "pending", "registered; SGLang has not applied its hooks yet (load_plugins)"
    return "applied", ""


def _entry(name: str, kind: str, status: str, reason: str, targets: list[str], why: str
           ) -> dict[str, Any]:
    return {"name": name, "kind": kind, "status": status, "reason": reason,
            "targets": targets, "why": why}


_IMPORT_WHY = {
    "torchvision": "PyPI's torchvision is a CUDA build: register_fake skips torchvision:: ops "
                   "whose C library is absent",
    "sgl_kernel": "sgl_kernel's CPU build is not on PyPI: a stand-in answering only the names "
                  "SGLang imports, raising when called",
}

__all__ = ["CompatError", "census", "check_surface"]
