"""What a patch touches in SGLang or torch, declared so it can be checked at start-up.

A :class:`Target` names one object (``module`` + dotted ``attribute``) and what MemServe relies
on about it: its leading parameters, keywords it must accept, attributes it must have, attributes
its instances get (``self.NAME = ...`` in the class's source), a name its code reads.
:meth:`Target.check` resolves it and raises :class:`CompatError` -- naming the installed SGLang
version, the pinned one and the patch -- when it is missing or changed, so a renamed SGLang
internal stops the server at start-up instead of turning a patch into a silent no-op.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ast

# NOTE: ast/inspect are imported where used: this module is imported at every interpreter start
# on CPU hosts (compat/startup.py, through the .pth file), where only the finder is needed.

# NOTE: the SGLang release every target was written against; scripts/install.sh pins the same
# version (test_compat_targets.py keeps the two equal).
PINNED_SGLANG = "0.5.23"


class CompatError(RuntimeError):
    """A patched SGLang/torch internal is missing or has changed.

    Args:
        patch: the patch (or hook, or replaced attribute) that depends on it.
        target: the dotted name of what it patches.
        problem: what is wrong with it.
    """

    def __init__(self, patch: str, target: str, problem: str) -> None:
        self.patch, self.target, self.problem = patch, target, problem
        super().__init__(
            f"MemServe compat: patch {patch!r} cannot apply: {target} {problem}. "
            f"Installed SGLang {installed_sglang()}, MemServe is pinned to SGLang {PINNED_SGLANG} "
            "(scripts/install.sh); install the pinned version or update the patch "
            "(docs/cpu-compat.md).")


class Unavailable(Exception):
    """A target's module needs a third-party package that is not installed: the feature is absent
    here, so the patch legitimately does not apply (the census says why)."""


def installed_sglang() -> str:
    """``sglang.__version__`` of the installed SGLang (``"not installed"`` without one)."""
    try:
        return str(importlib.import_module("sglang").__version__)
    except ImportError:
        return "not installed"


@dataclass(frozen=True)
class Target:
    """One object a patch relies on, and what it relies on about it.

    Args:
        module: the module holding it (e.g. ``"sglang.srt.mem_cache.events"``).
        attribute: dotted path inside the module (``"Class.method"``); empty: the module itself.
        params: the leading parameter names of the callable, in order (``self`` included).
        keywords: parameter names the callable must accept anywhere in its signature.
        attrs: attributes the object must have (``hasattr``).
        instance_attrs: attributes a class's instances get (``self.NAME =`` in its or a base's
            source).
        reads: a name the object's source reads -- a global, an attribute or a ``getattr``
            string (a patch that sets it must still matter).
    """

    module: str
    attribute: str = ""
    params: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    instance_attrs: tuple[str, ...] = ()
    reads: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attribute}" if self.attribute else self.module

    def resolve(self, patch: str) -> Any:
        """The object itself.

        Raises:
            CompatError: the module or the attribute does not exist.
            Unavailable: the module needs a package that is not installed.
        """
        try:
            obj = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and not _same_package(missing, self.module):
                raise Unavailable(f"{self.module} needs {missing!r}, not installed") from exc
            raise CompatError(patch, self.name, f"cannot be imported ({exc})") from exc
        for part in filter(None, self.attribute.split(".")):
            if not hasattr(obj, part):
                raise CompatError(patch, self.name, f"does not exist (no {part!r})")
            obj = getattr(obj, part)
        return obj

    def check(self, patch: str) -> Any:
        """Resolve the target and check every expectation; reads, never changes, anything.

        Args:
            patch: the name of the patch relying on it (for the error message).

        Returns:
            The resolved object.

        Raises:
            CompatError: the first expectation that does not hold.
            Unavailable: the module needs a package that is not installed.
        """
        obj = self.resolve(patch)
        if self.params or self.keywords:
            self._check_signature(patch, obj)
        missing = [a for a in self.attrs if not hasattr(obj, a)]
        if missing:
            raise CompatError(patch, self.name, f"has no attribute(s) {missing}")
        if self.instance_attrs:
            assigned = _instance_attrs(obj)
            missing = [a for a in self.instance_attrs if a not in assigned]
            if missing:
                raise CompatError(patch, self.name, f"no longer sets self.{missing[0]} "
                                  f"(expected instance attributes {list(self.instance_attrs)})")
        if self.reads and self.reads not in _names_read(obj):
            raise CompatError(patch, self.name, f"no longer reads {self.reads!r}")
        return obj

    def _check_signature(self, patch: str, obj: Any) -> None:
        import inspect

        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError) as exc:
            raise CompatError(patch, self.name, f"has no signature ({exc})") from exc
        names = list(sig.parameters)
        if self.params and names[: len(self.params)] != list(self.params):
            raise CompatError(patch, self.name, f"has signature {sig}, expected leading "
                              f"parameters {list(self.params)}")
        missing = [k for k in self.keywords if k not in sig.parameters]
        if missing:
            raise CompatError(patch, self.name, f"has signature {sig}, without {missing}")


def _same_package(missing: str, module: str) -> bool:
    """Whether the missing module is ``module``'s own package tree (a rename in SGLang) rather
    than a third-party dependency (a feature not installed)."""
    return missing.split(".")[0] == module.split(".")[0]


def _instance_attrs(cls: Any) -> set[str]:
    """Names assigned as ``self.NAME`` anywhere in the source of ``cls`` and of its bases from
    the same package (``typing``/``abc`` bases assign nothing MemServe reads, and parsing them
    costs more than the rest of the check)."""
    package = cls.__module__.split(".")[0]
    out: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        if klass.__module__.split(".")[0] == package:
            out |= _assigned_self_attrs(klass)
    return out


@functools.cache
def _assigned_self_attrs(klass: type) -> frozenset[str]:
    import ast

    node = _class_node(klass)
    names = set()
    for sub in ast.walk(node) if node is not None else ():
        targets = (sub.targets if isinstance(sub, ast.Assign)
                   else [sub.target] if isinstance(sub, ast.AnnAssign | ast.AugAssign) else [])
        for t in targets:
            for leaf in ast.walk(t):
                if (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name)
                        and leaf.value.id == "self"):
                    names.add(leaf.attr)
    return frozenset(names)


def _class_node(klass: type) -> ast.ClassDef | None:
    """The class's definition in its module's syntax tree (each file is parsed once)."""
    import ast
    import inspect

    try:
        tree = _file_ast(inspect.getsourcefile(klass) or "")
    except (OSError, TypeError, SyntaxError):
        return None
    scope: list[ast.stmt] = tree.body
    node = None
    for part in klass.__qualname__.split("."):
        node = next((n for n in scope if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            return None
        scope = node.body
    return node


def forget_sources() -> None:
    """Drop the parsed source files kept while checking (the instance-attribute answers stay)."""
    _file_ast.cache_clear()


@functools.cache
def _file_ast(path: str) -> ast.Module:
    import ast

    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _names_read(obj: Any) -> frozenset[str]:
    """Every name read in the source of ``obj`` (a module, class or function): loaded globals,
    attributes, and string constants (``getattr(x, "name")``)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return frozenset()
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            out.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            out.add(n.value)
    return frozenset(out)

