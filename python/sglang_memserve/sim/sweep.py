"""``python -m sglang_memserve.sim.sweep``: the simulator over cluster sizes and policies.

Each run is its own process (``python -m sglang_memserve.sim ... --json``), one after another,
so each run's peak memory is its own. ``--scale-rate`` keeps the load per instance constant: the
trace is replayed ``instances / base`` times faster (``--speedup`` is the base's). Prints one
markdown table row per run and writes every run's figures to ``--out`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("instances", "policy", "speedup", "requests", "hit_rate", "oracle_hit_rate",
           "ttft_avg_s", "ttft_p99_s", "jct_avg_s", "jct_p99_s", "migrations",
           "decision_p50_us", "decision_p99_us", "sim_time_s", "wall_s", "events", "peak_rss_mb")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglang_memserve.sim.sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, nargs="+", default=[8, 64, 256, 1024])
    p.add_argument("--policies", nargs="+",
                   default=["round_robin", "session", "prefix", "memserve"])
    p.add_argument("--speedup", type=float, default=1.0)
    p.add_argument("--scale-rate", action="store_true",
                   help="speedup x instances / the smallest instance count")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per run")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per run")
    a, rest = p.parse_known_args(argv)
    base = min(a.instances)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    with open(a.out, "a") as out, tempfile.TemporaryDirectory() as tmp:
        for n in a.instances:
            speed = a.speedup * (n / base if a.scale_rate else 1.0)
            for policy in a.policies:
                js = Path(tmp) / f"{n}-{policy}.json"
                cmd = [sys.executable, "-m", "sglang_memserve.sim", "--instances", str(n),
                       "--policy", policy, "--speedup", f"{speed:g}", "--json", str(js), *rest]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True,
                                          timeout=a.timeout_s)
                except subprocess.TimeoutExpired:
                    print(f"| {n} | {policy} | timed out after {a.timeout_s:.0f} s |", flush=True)
                    continue
                if done.returncode != 0:
                    print(f"| {n} | {policy} | failed: {done.stderr.strip()[-200:]} |",
                          flush=True)
                    continue
                row = json.loads(js.read_text()) | {"speedup": speed}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |", flush=True)
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
