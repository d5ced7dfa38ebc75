"""Sampling profiles of SGLang's scheduler processes during a benchmark (py-spy, optional).

``pd_bench.py --profile DIR`` records every ``sglang::scheduler`` process of a configuration
while the replay runs and writes, per process, the collapsed stacks and a short summary: where
the scheduler thread's time went (self time per function, and inclusive time of MemServe's and
SGLang's cache, transfer and polling code). py-spy is not a dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

# Substrings of frames whose inclusive share is reported.
WATCH = ("sglang_memserve", "tree_core", "radix_cache", "record_", "kv_events", "mooncake",
         "process_input_requests", "recv_requests", "run_batch", "get_next_batch_to_run",
         "process_batch_result", "on_idle", "poll", "stream_output", "disaggregation")


def schedulers(root_pids: list[int]) -> dict[int, str]:
    """``{pid: name}`` of the scheduler processes below ``root_pids``."""
    out = {}
    for root in root_pids:
        for p in psutil.Process(root).children(recursive=True):
            try:
                if "sglang::scheduler" in " ".join(p.cmdline()):
                    out[p.pid] = f"{root}-{p.pid}"
            except psutil.NoSuchProcess:
                continue
    return out


@contextmanager
def recording(out_dir: Path, label: str, root_pids: list[int]) -> Iterator[None]:
    """Record the schedulers under ``root_pids`` (100 Hz, threads not idle) until exit."""
    beside = Path(sys.executable).parent / "py-spy"  # installed into this venv
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    found = schedulers(root_pids)
    cpu0 = {pid: _cpu_s(pid) for pid in found}
    for pid, name in found.items():
        raw = out_dir / f"{label}-{name}.txt"
        procs.append((raw, subprocess.Popen(
            [spy, "record", "--nonblocking", "-r", "100", "--format", "raw",
             "-o", str(raw), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    try:
        yield
    finally:
        cpu = {pid: _cpu_s(pid) - c for pid, c in cpu0.items()}
        for _, p in procs:
            p.send_signal(signal.SIGINT)
        for (raw, p), pid in zip(procs, found, strict=True):
            p.wait(timeout=60)
            if raw.exists():
                head = f"CPU time of the process during the replay: {cpu[pid]:.2f} s\n"
                raw.with_suffix(".summary.txt").write_text(head + summarize(raw))


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def summarize(raw: Path, top: int = 15) -> str:
    """Self and inclusive shares of the samples in a py-spy ``raw`` (collapsed) file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{raw.name}: {total} samples (threads not idle)", "", "self:"]
    lines += [f"  {v / total:6.1%} {k}" for k, v in own.most_common(top)] if total else []
    lines += ["", "inclusive (watched frames):"]
    lines += [f"  {v / total:6.1%} {k}" for k, v in incl.most_common()
              if any(w in k for w in WATCH) and v / total >= 0.005] if total else []
    return "\n".join(lines) + "\n"
