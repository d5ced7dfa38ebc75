"""``python -m sglang_memserve.sim``: a run from the command line, and bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_memserve.sim.__main__ import main


def test_cli_runs_the_synthetic_trace_and_checks_the_mirrors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # no trace file: the synthetic one
    out = tmp_path / "run.json"
    rc = main(["--instances", "3", "--policy", "prefix", "--requests", "120",
               "--hbm-tokens", "200000", "--check", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "router trees == instance indexes: yes" in text
    res = json.loads(out.read_text())
    assert res["policy"] == "prefix" and res["requests"] == res["finished"] == 120
    assert 0 < res["hit_rate"] <= res["oracle_hit_rate"] <= 1
    assert res["ttft_p99_s"] >= res["ttft_p50_s"] > 0 and res["decision_p50_us"] > 0


def test_cli_sharegpt_pd_with_kv_return(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--instances", "4", "--pd", "--workload", "sharegpt", "--requests", "20",
               "--think-s", "1", "--check"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "yes" in text.splitlines()[-1]


def test_cli_engine_model_flags_reach_the_instances(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))
    base = ["--instances", "2", "--requests", "60", "--output-tokens", "4"]
    runs = {}
    for name, extra in {"plain": [], "overhead": ["--iteration-overhead-s", "0.01"],
                        "batched": ["--batch-prefill"]}.items():
        out = tmp_path / f"{name}.json"
        assert main([*base, *extra, "--json", str(out)]) == 0
        runs[name] = json.loads(out.read_text())
    # Every request has a prefill and three decode steps, each 10 ms longer.
    assert runs["overhead"]["jct_avg_s"] >= runs["plain"]["jct_avg_s"] + 0.04 - 1e-9
    assert runs["batched"]["finished"] == runs["plain"]["finished"] == 60


@pytest.mark.parametrize("argv, why", [
    (["--instances", "0"], "at least 1 instances"),
    (["--policy", "nope"], "unknown routing policy"),
    (["--cost-table", "no-such-table"], "no cost table"),
    (["--unit-tokens", "100"], "not a multiple"),
    (["--shared-cores", "0"], "shared_cores must be positive"),
    (["--request-overhead-s", "-0.1"], "request_overhead_s must be >= 0"),
])
def test_cli_refuses_bad_input_with_the_cause(argv: list[str], why: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert why in capsys.readouterr().err


def test_paper_runs_the_four_configurations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from sglang_memserve.sim.paper import main as paper

    monkeypatch.setenv("MEMSERVE_DATA_DIR", str(tmp_path))  # the shipped samples
    out = tmp_path / "paper.json"
    png = tmp_path / "paper.png"
    assert paper(["--instances", "4", "--workloads", "react", "longdoc", "--json", str(out),
                  "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "| react | PD + cache (MemServe) / PD |" in text
    rows = {(r["workload"], r["setup"]): r for r in json.loads(out.read_text())}
    assert len(rows) == 10
    for w in ("react", "longdoc"):
        assert rows[(w, "colocated")]["hit_rate"] == rows[(w, "PD")]["hit_rate"] == 0.0
        assert rows[(w, "PD + cache (MemServe)")]["hit_rate"] > 0.3
        assert rows[(w, "PD + cache (MemServe)")]["ttft_avg_s"] < rows[(w, "PD")]["ttft_avg_s"]
    assert rows[("react", "PD + cache (MemServe)")]["kv_returns"] > 0
