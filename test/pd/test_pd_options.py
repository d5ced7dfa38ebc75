"""PdOptions -> launch arguments, environment and cores (no servers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sglang_memserve.cluster.process import pin
from sglang_memserve.pd import PdOptions
from sglang_memserve.pd.cluster import ROUTER_DEFAULTS, free_ports, parse_cpus


def test_stage_flags() -> None:
    basic = PdOptions(stage="basic", cpus=None)
    assert basic.prefill_argv(7000)[:4] == ["--role", "prefill", "--memserve-cache", "off"]
    assert "--disaggregation-decode-enable-radix-cache" not in basic.decode_argv()
    c1 = PdOptions(stage="caching1", cpus=None)
    assert c1.prefill_argv(7000)[3] == "memserve"
    assert "--disaggregation-decode-enable-radix-cache" not in c1.decode_argv()
    c2 = PdOptions(stage="caching2", cpus=None, page_size=16, common_args=("--x", "1"))
    assert "--disaggregation-decode-enable-radix-cache" in c2.decode_argv()
    argv = c2.prefill_argv(7000)
    assert argv[argv.index("--disaggregation-bootstrap-port") + 1] == "7000"
    assert argv[-4:] == ["--page-size", "16", "--x", "1"]
    c3 = PdOptions(stage="caching3")
    assert "--kv-return" in c3.decode_argv()
    assert "--disaggregation-decode-enable-radix-cache" in c3.decode_argv()
    assert "--kv-return" not in c2.decode_argv()
    with pytest.raises(ValueError):
        PdOptions(stage="caching4")


def test_cores_and_env() -> None:
    opts = PdOptions(cpus=("0", "1"), env=(("A", "b"),))
    pre, dec = opts.instance_env(0), opts.instance_env(1)
    assert pre["SGLANG_CPU_OMP_THREADS_BIND"] == "0" and dec["SGLANG_CPU_OMP_THREADS_BIND"] == "1"
    assert pre["OMP_NUM_THREADS"] == "1" and pre["A"] == "b"
    assert "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT" in pre
    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert "--disable-retries" in ROUTER_DEFAULTS


def test_the_router_runs_on_prefills_cores_unless_told_otherwise() -> None:
    assert PdOptions(cpus=("0", "1")).router_cpus() == [0]
    assert PdOptions(cpus=("0-1", "2-3")).router_cpus() == [0, 1]
    assert PdOptions(cpus=("0", "1"), router_on_prefill_cores=False).router_cpus() is None
    assert PdOptions(cpus=None).router_cpus() is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to restrict")
def test_pin_restricts_a_started_process_and_the_threads_it_starts_later() -> None:
    core = min(os.sched_getaffinity(0))
    code = ("import os, threading, time; time.sleep(0.3); out = []; "
            "t = threading.Thread(target=lambda: out.append(sorted(os.sched_getaffinity(0)))); "
            "t.start(); t.join(); print(sorted(os.sched_getaffinity(0)), out[0])")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pin(proc.pid, [core])
    out, _ = proc.communicate(timeout=30)
    assert out.split() == [f"[{core}]", f"[{core}]"]
    pin(os.getpid(), None)  # None: nothing changes
    assert len(os.sched_getaffinity(0)) >= 2


def test_only_schedulers_are_held_to_an_instances_cores_by_default() -> None:
    opts = PdOptions(cpus=("0", "1"))
    assert opts.process_cpus(0) == opts.process_cpus(1) == [0, 1]
    whole = PdOptions(cpus=("0-1", "2-3"), pin_schedulers_only=False)
    assert whole.process_cpus(0) == [0, 1] and whole.process_cpus(1) == [2, 3]
    assert PdOptions(cpus=None).process_cpus(0) is None


class _Server:
    """What ``pin_schedulers`` reads of a ServerProcess: its launcher ``proc`` and ``name``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.name = proc, "fake"


# A launcher (this code) with one child titled like SGLang's scheduler, holding a thread.
_LAUNCHER = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
    "time.sleep(30)', sys.argv[1]]); print(child.pid, flush=True); time.sleep(30)")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to restrict")
@pytest.mark.parametrize("title", ["sglang::scheduler", "sglang::detokenizer"])
def test_pin_schedulers_holds_the_scheduler_and_leaves_the_rest(title: str) -> None:
    import psutil

    from sglang_memserve.pd.cluster import pin_schedulers

    everywhere = sorted(os.sched_getaffinity(0))
    core = everywhere[-1]
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, title], stdout=subprocess.PIPE,
                            text=True)
    try:
        child = psutil.Process(int(proc.stdout.readline()))
        import time
        deadline = time.monotonic() + 20
        while len(child.threads()) < 2:
            assert time.monotonic() < deadline, "the fake scheduler never started its thread"
            time.sleep(0.01)
        found = pin_schedulers(_Server(proc), [core])
        child_threads = {tuple(os.sched_getaffinity(t.id)) for t in child.threads()}
        launcher = sorted(os.sched_getaffinity(proc.pid))
        if title == "sglang::scheduler":
            assert found == 1 and child_threads == {(core,)} and launcher == everywhere
        else:  # no scheduler: the whole instance is pinned, as before
            assert found == 0 and child_threads == {(core,)} and launcher == [core]
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()
