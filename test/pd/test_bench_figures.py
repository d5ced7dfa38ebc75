"""pd_bench's noise figures (benchmarks/profiling.py): decode step times from SGLang's log lines,
the step ratio, what else ran on the host, and the priority it gives the measured processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import profiling  # noqa: E402

_LINE = ("[2026-12-01 17:23:0{s}] Decode batch, #running-req: {n}, #token: 64, token usage: 0.00, "
         "pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, "
         "cpu graph: False, gen throughput (token/s): {tput}, #queue-req: 0\n")


def test_decode_steps_from_log_lines_after_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "decode.log"
    head = _LINE.format(s=0, n=1, tput="5.00")  # before the replay: left out by the offset
    log.write_text(head + _LINE.format(s=1, n=1, tput="50.00") + "other line\n"
                   + _LINE.format(s=2, n=4, tput="100.00") + _LINE.format(s=3, n=4, tput="0.00"))
    steps = profiling.decode_steps(log, offset=len(head.encode()))
    assert steps == {1: [pytest.approx(20.0)], 4: [pytest.approx(40.0)]}  # 0 tok/s skipped
    assert profiling.decode_steps(tmp_path / "missing.log") == {}


def test_step_ratio_at_equal_batch_size() -> None:
    ref = {1: [10.0] * 4, 2: [20.0] * 4, 9: [90.0] * 4}
    ours = {1: [20.0] * 4, 2: [40.0] * 8, 3: [1.0] * 4}  # batch 3 has no reference
    assert profiling.step_ratio(ours, ref) == pytest.approx(2.0)
    assert profiling.step_ratio({1: [10.0] * 2}, ref) is None  # too few lines
    assert profiling.step_ratio({5: [1.0] * 4}, ref) is None  # no common batch size


def test_host_load_counts_a_process_outside_the_benchmark() -> None:
    # Double fork: the spinner is re-parented away from this process, so it is "other work".
    spin = ("import os, time\nif os.fork() == 0:\n    t = time.process_time()\n"
            "    while time.process_time() - t < 1.5: pass\n")
    with profiling.host_load(interval_s=0.3) as load:
        subprocess.run([sys.executable, "-c", spin], check=True)
        time.sleep(2.0)
    out = load.as_dict()
    assert out["others_cpu_s"] >= 1.0
    assert any("python" in cmd and c >= 0.5 for c, _, cmd in out["top"])
    assert len(load.loadavg) >= 2  # sampled during the block


def test_renice_tree_reaches_every_thread_of_a_child() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(30,)).start()\n"
                              "time.sleep(30)\n"])
    try:
        for _ in range(50):  # until its second thread exists
            tasks = list(Path(f"/proc/{child.pid}/task").iterdir())
            if len(tasks) >= 2:
                break
            time.sleep(0.1)
        assert profiling.renice_tree(child.pid, 7) >= 2
        assert {os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks} == {7}
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups")
def test_own_autogroup_gives_a_new_session_its_nice() -> None:
    code = (f"import sys; sys.path.insert(0, {str(Path(profiling.__file__).parent)!r})\n"
            "import os, profiling\nbefore = os.getsid(0)\n"
            "line = profiling.own_autogroup(3)\nprint(line, os.getsid(0) != before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-3:] == ["nice", "3", "True"]


def test_sched_s_sees_a_thread_kept_off_its_core() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    core = sorted(os.sched_getaffinity(0))[0]
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)\n" + spin])
            for _ in range(2)]
    try:
        for k in kids:  # both on one core: each waits while the other runs
            os.sched_setaffinity(k.pid, {core})
        deadline = time.monotonic() + 20
        run, wait = profiling.sched_s(kids[0].pid)
        while run < 0.4 and time.monotonic() < deadline:  # into the spin
            time.sleep(0.1)
            run, wait = profiling.sched_s(kids[0].pid)
        assert run >= 0.4
        assert wait >= 0.1
    finally:
        for k in kids:
            k.kill()
            k.wait()
