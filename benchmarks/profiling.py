"""Sampling profiles of SGLang's scheduler processes during a benchmark (py-spy, optional).

``pd_bench.py --profile DIR`` records every ``sglang::scheduler`` process of a configuration
while the replay runs and writes, per process, the collapsed stacks and a short summary: where
the scheduler thread's time went (self time per function, and inclusive time of MemServe's and
SGLang's cache, transfer and polling code). py-spy is not a dependency: ``pip install py-spy``.

``python benchmarks/profiling.py DIR --requests N`` turns every recording in DIR into a
breakdown: milliseconds of busy thread time per request in each category of :data:`CATEGORIES`
(a 100 Hz sample is 10 ms of one thread; threads of one process share its core).
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


# Innermost frames of a thread that is blocked, not running: py-spy's idle filter does not see
# these native waits, so they are counted apart (no CPU).
WAITS = ("Poller.poll", "Condition.wait", "Event.wait", "Socket.recv", "time.sleep")
# (category, frame substrings): a stack counts in the first category one of its frames matches.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MemServe KV return (source worker: prepare RPC, Mooncake write, commit)",
     ("PeerService._run", "PeerService._send", "_sglang_writer")),
    ("MemServe control channel + scheduler bridge",
     ("RpcServer.", "SchedulerBridge.", "memserve_tick", "_hold_for_returns")),
    ("MemServe index recorder + KV events",
     ("IndexRecorder.", "node_page_path", "EngineMemPool.", "EventPublisher.")),
    ("SGLang tree ops (match, insert, evict, lock)",
     ("TreeCore", "RadixCache.", "tree_core", "radix_cache.py")),
    ("forward pass (run_batch)", ("Scheduler.run_batch",)),
    ("SGLang KV transfer (Mooncake, bootstrap)", ("MooncakeKV", "mooncake", "disaggregation/")),
    ("result processing + output streaming", ("process_batch_result", "stream_output")),
    ("idle loop / polling", ("on_idle",)),
)


def breakdown(raw: Path) -> dict[str, int]:
    """Samples per category (and ``other``) of a py-spy ``raw`` file."""
    out: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if any(w in leaf for w in WAITS) and "run_batch" not in stack:
            out["blocked in a wait (no CPU)"] += int(count)
            continue
        name = next((c for c, subs in CATEGORIES if any(s in stack for s in subs)), "other")
        out[name] += int(count)
    return dict(out)


def breakdown_table(out_dir: Path, requests: int) -> str:
    """Markdown: ms of busy thread time per request, per category, one column per recording."""
    raws = sorted(p for p in out_dir.glob("*.txt") if not p.name.endswith(".summary.txt"))
    cols = [breakdown(r) for r in raws]
    names = [c for c, _ in CATEGORIES] + ["other", "blocked in a wait (no CPU)"]
    lines = ["| category | " + " | ".join(r.stem for r in raws) + " |",
             "|---|" + "---|" * len(raws)]
    for name in names + ["total"]:
        cells = [(sum(c.values()) if name == "total" else c.get(name, 0)) * 10.0 / requests
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


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


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of ``root`` and every process below it (0 for gone ones)."""
    total = 0.0
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            total += _cpu_s(p.pid)
        except psutil.NoSuchProcess:
            continue
    return total


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


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--requests", type=int, required=True, help="requests per replay")
    a = ap.parse_args()
    print(breakdown_table(a.dir, a.requests))
