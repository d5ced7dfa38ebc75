"""Which ``sgl_kernel`` names the installed SGLang imports, read from its source.

The stand-in ``sgl_kernel`` (:mod:`.imports`) answers only these names, so SGLang's feature
detection (``try: from sgl_kernel import X except ImportError``) sees what a missing kernel is:
absent. The list is data (:mod:`.sgl_kernel_api`); ``python -m
sglang_memserve.compat.kernel_names`` rewrites it from the installed SGLang, and
``test_compat_kernel_names.py`` re-derives it and compares.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

ROOT = "sgl_kernel"


def sglang_dir() -> Path:
    """The installed SGLang package's folder (found without importing it).

    Raises:
        ModuleNotFoundError: SGLang is not installed.
    """
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("sglang is not installed", name="sglang")
    return Path(next(iter(spec.submodule_search_locations)))


def _ours(module: str) -> bool:
    return module == ROOT or module.startswith(ROOT + ".")


def derive(root: Path | None = None) -> dict[str, tuple[str, ...]]:
    """``{module: names}`` over every ``sgl_kernel`` import and attribute use in SGLang's source.

    Covers ``from sgl_kernel[.sub] import a, b``, ``import sgl_kernel.sub [as x]`` and
    ``sgl_kernel.a`` / ``x.a`` attribute reads (through submodules). Reads files only.

    Args:
        root: the SGLang package folder (default: the installed one).

    Returns:
        Each module (``sgl_kernel`` and the submodules SGLang imports) with its sorted names;
        a submodule is also a name of its parent.
    """
    names: dict[str, set[str]] = defaultdict(set)
    modules = {ROOT}
    uses: list[tuple[str, list[str]]] = []  # (module an alias stands for, attribute chain)
    for path in sorted((root or sglang_dir()).rglob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        if ROOT not in source:
            continue
        try:
            tree = ast.parse(source, str(path))
        except SyntaxError:
            continue
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module):
                modules.update(_packages(node.module))
                names[node.module].update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if _ours(a.name):
                        modules.update(_packages(a.name))
                        aliases[a.asname or ROOT] = a.name if a.asname else ROOT
        for node in ast.walk(tree):  # inner nodes of a chain add its prefixes: harmless
            if isinstance(node, ast.Attribute):
                chain, base = _chain(node)
                if isinstance(base, ast.Name) and base.id in aliases:
                    uses.append((aliases[base.id], chain))
    for module, chain in uses:
        for attr in chain:
            names[module].add(attr)
            module = f"{module}.{attr}"
            if module not in modules:
                break
    for module in modules:
        parent, _, leaf = module.rpartition(".")
        names.setdefault(module, set())  # every imported module is listed, names or not
        if parent:
            names[parent].add(leaf)
    return {m: tuple(sorted(n)) for m, n in sorted(names.items())}


def _packages(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b", "a.b.c"]``: importing a module imports its packages too."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _chain(node: ast.AST) -> tuple[list[str], ast.AST]:
    """``a.b.c`` -> (["b", "c"], Name a)."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    return chain[::-1], node


def render(names: dict[str, tuple[str, ...]], version: str) -> str:
    """The source of :mod:`.sgl_kernel_api` for ``names``."""
    lines = ['"""The ``sgl_kernel`` names SGLang imports (generated; do not edit).', "",
             f"Derived from SGLang {version} by ``python -m sglang_memserve.compat.kernel_names``.",
             '"""', "", f'SGLANG_VERSION = "{version}"', "",
             "NAMES: dict[str, tuple[str, ...]] = {"]
    for module, members in names.items():
        lines.append(f'    "{module}": (')
        lines.extend(f'        "{n}",' for n in members)
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    from sglang_memserve.compat.targets import installed_sglang

    out = Path(__file__).with_name("sgl_kernel_api.py")
    out.write_text(render(derive(), installed_sglang()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
