"""benchmarks/profiling.tree_cpu_s: a process tree's CPU seconds keep what a child that has
exited used (the routers' figures in paper_eval went negative when one did)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import profiling  # noqa: E402

_BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
# The parent runs a child that burns 0.4 s of CPU, waits for it, says so and then idles.
_PARENT = (f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', '{_BURN}'])\n"
           "print('done', flush=True)\ntime.sleep(30)")


def test_a_waited_for_childs_cpu_stays_in_the_tree() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        after = profiling.tree_cpu_s(proc.pid)
        assert after >= 0.4  # the child is gone; its 0.4 s count through its parent
        time.sleep(0.2)
        assert profiling.tree_cpu_s(proc.pid) >= after  # idle: never drops
    finally:
        proc.kill()
        proc.wait()
    assert profiling.tree_cpu_s(proc.pid) == 0.0  # gone
