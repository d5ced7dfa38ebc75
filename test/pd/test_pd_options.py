"""PdOptions -> launch arguments and environment (no processes)."""

from __future__ import annotations

import pytest

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
