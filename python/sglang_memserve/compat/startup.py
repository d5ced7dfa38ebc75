"""Imported at interpreter start by ``sglang_memserve_compat.pth`` (CPU hosts only).

Installs the lazy import finder of :mod:`sglang_memserve.compat.imports`; imports nothing heavy.
``python -m sglang_memserve.compat.startup install|uninstall`` writes or removes the ``.pth``.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from sglang_memserve.compat import imports

PTH_NAME = "zz_sglang_memserve_compat.pth"  # after the editable-install .pth in site order

imports.apply()


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "install"
    if action == "install":
        pth_path().write_text("import sglang_memserve.compat.startup\n")
    elif action == "uninstall":
        pth_path().unlink(missing_ok=True)
    else:
        print("usage: python -m sglang_memserve.compat.startup [install|uninstall]")
        return 2
    print(f"{action}: {pth_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
