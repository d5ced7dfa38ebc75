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
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """User + system CPU seconds of ``root`` and every process below it, with those of its
    descendants that ended and were waited for (so the figure never drops when a helper process
    exits; 0 when ``root`` is gone)."""
    total = 0.0
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu_s() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    return _cpu_s(os.getpid())


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def tree_pids(root: int) -> set[int]:
    """``root`` and every process below it (gone ones are left out)."""
    try:
        proc = psutil.Process(root)
        return {root} | {c.pid for c in proc.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def renice_tree(root: int, nice: int, skip: frozenset[int] = frozenset()) -> int:
    """Set the niceness of every thread of ``root``'s process tree (Linux keeps it per thread,
    and a thread started later inherits its creator's).

    Args:
        skip: pids left as they are (e.g. py-spy's).

    Returns:
        Threads changed. Raises PermissionError for a negative ``nice`` without root.
    """
    changed = 0
    for pid in tree_pids(root) - skip:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                changed += 1
            except (ProcessLookupError, FileNotFoundError):
                continue
    return changed


def own_autogroup(nice: int) -> str | None:
    """Put this process in a scheduling group of its own with the given niceness.

    With the kernel's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``) CPU time is
    shared between sessions first and by nice value only within one, so another session's
    ``nice -n 10`` work still gets a whole session's share against ours. ``setsid`` starts a
    new session (a new autogroup, inherited by every process started afterwards) and the
    group's nice is written to ``/proc/self/autogroup`` (negative: root only).

    Returns:
        The autogroup line after the change, or None when the kernel has no autogroups.
    """
    path = Path("/proc/self/autogroup")
    if not path.exists():
        return None
    try:
        os.setsid()
    except PermissionError:  # already a session or process-group leader: keep that group
        pass
    path.write_text(str(nice))
    return path.read_text().strip()


def sched_s(root: int) -> tuple[float, float]:
    """``(on CPU, waiting to run)`` seconds summed over every thread of ``root``'s process tree
    (``/proc/PID/task/TID/schedstat``; threads that already ended are not counted).

    The wait is time a thread was runnable but another one held its core: on a pinned
    instance, how long the other processes on its core (its own helpers, the router, other
    sessions' work) delayed it. Take differences between two calls.
    """
    run = wait = 0
    for pid in tree_pids(root):
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                fields = stat.read_text().split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def _busy_s() -> float:
    """Non-idle CPU seconds of the whole host since boot (/proc/stat: all but idle, iowait)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class HostLoad:
    """What else ran on the host during a replay (filled by :func:`host_load`).

    Attributes:
        others_cpu_s: CPU seconds of every process outside this benchmark's tree (the host's
            busy time minus the tree's; short-lived processes included).
        loadavg: 1-minute load average, one sample per ``interval_s``.
        top: the other processes that used the most CPU, ``(cpu s, pid, command)``, from
            per-process samples (processes that lived shorter than a sample are missed).
    """

    wall_s: float = 0.0
    others_cpu_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)
    top: list[tuple[float, int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "others_cpu_s": self.others_cpu_s,
                "others_cores": self.others_cpu_s / self.wall_s if self.wall_s else 0.0,
                "loadavg_mean": statistics.fmean(self.loadavg) if self.loadavg else 0.0,
                "loadavg_max": max(self.loadavg, default=0.0), "top": self.top}


def _others(mine: set[int]) -> dict[int, tuple[float, str]]:
    out = {}
    for p in psutil.process_iter(["pid", "cpu_times", "cmdline", "name"]):
        if p.pid in mine or p.info["cpu_times"] is None:
            continue
        t = p.info["cpu_times"]
        out[p.pid] = (t.user + t.system, _label(p.info["name"], p.info["cmdline"] or []))
    return out


def _label(name: str | None, cmdline: list[str]) -> str:
    """A process's name, and for an interpreter the script or module it runs (never the
    other arguments: they may carry anything)."""
    label = name or "?"
    if label.startswith("python") and len(cmdline) > 1:
        args = iter(cmdline[1:])
        for a in args:
            if a == "-m":
                return f"{label} -m {next(args, '?')}"
            if not a.startswith("-"):
                return f"{label} {Path(a).name}"
    return label


@contextmanager
def host_load(interval_s: float = 2.0, top: int = 5) -> Iterator[HostLoad]:
    """Sample the host while the block runs; the yielded :class:`HostLoad` is filled on exit.
    "This benchmark" is this process and everything below it (servers, routers, py-spy)."""
    me = os.getpid()
    load = HostLoad()
    stop = threading.Event()
    first: dict[int, tuple[float, str]] = {}
    last: dict[int, tuple[float, str]] = {}

    def sample() -> None:
        while True:
            load.loadavg.append(os.getloadavg()[0])
            for pid, v in _others(tree_pids(me)).items():
                first.setdefault(pid, v)
                last[pid] = v
            if stop.wait(interval_s):
                return

    t0, busy0, mine0 = time.perf_counter(), _busy_s(), tree_cpu_s(me)
    thread = threading.Thread(target=sample, name="host-load", daemon=True)
    thread.start()
    try:
        yield load
    finally:
        stop.set()
        thread.join()
        load.wall_s = time.perf_counter() - t0
        load.others_cpu_s = max(0.0, (_busy_s() - busy0) - (tree_cpu_s(me) - mine0))
        used = sorted(((last[p][0] - first[p][0], p, last[p][1]) for p in last), reverse=True)
        load.top = [(round(c, 2), p, cmd) for c, p, cmd in used[:top] if c > 0]


# SGLang's decode log line (every decode_log_interval steps): the batch at the log and the
# tokens generated per second since the previous line.
_DECODE_LINE = re.compile(r"Decode batch.*?#running-req: (\d+),.*?gen throughput \(token/s\): "
                          r"([\d.]+)")


def decode_steps(log: Path, offset: int = 0) -> dict[int, list[float]]:
    """Decode step times (ms) by batch size, from SGLang's decode log lines after ``offset``.

    A line's step time is batch / throughput: the interval's wall time per step, with the
    scheduler's own work between steps included. The first line after an idle spell includes
    the idle time; take medians.
    """
    out: dict[int, list[float]] = collections.defaultdict(list)
    if not log.exists():
        return {}
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    for m in _DECODE_LINE.finditer(text):
        n, tput = int(m[1]), float(m[2])
        if n and tput > 0:
            out[n].append(1e3 * n / tput)
    return dict(out)


def step_ratio(ours: dict[int, list[float]], ref: dict[int, list[float]], min_lines: int = 3
               ) -> float | None:
    """Geometric mean over batch sizes both have (each with >= ``min_lines`` lines) of the
    median step time ratio, weighted by the fewer lines of the two; None without overlap."""
    logs, weights = [], []
    for n in ours.keys() & ref.keys():
        a, b = ours[n], ref[n]
        if len(a) >= min_lines and len(b) >= min_lines:
            w = min(len(a), len(b))
            logs.append(w * math.log(statistics.median(a) / statistics.median(b)))
            weights.append(w)
    return math.exp(sum(logs) / sum(weights)) if weights else None


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
