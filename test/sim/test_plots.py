"""``sim.plots``: the policy sweep and the validation table as PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from sglang_memserve.sim.plots import main, parse_validation

PNG = b"\x89PNG\r\n\x1a\n"
ROW = ("| 8192 | sglang-router round_robin | round_robin | 2 | 7.17 | 0.040 / 0.045 | "
       "1.943 / 11.475 | 4.234 / 32.433 | 5.91x |")


def test_policies_plot_from_sweep_lines(tmp_path: Path) -> None:
    rows = [{"policy": p, "instances": n, "hit_rate": 0.3, "oracle_hit_rate": 0.4,
             "ttft_avg_s": 0.2, "ttft_p99_s": 2.0, "jct_avg_s": 3.0, "jct_p99_s": 9.0,
             "decision_p50_us": 50.0} for p in ("memserve", "prefix") for n in (8, 64)]
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.png"
    assert main(["policies", str(sweep), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_validation_rows_parse_and_plot(tmp_path: Path) -> None:
    (r,) = parse_validation("| KV tokens | configuration |\n|---|---|\n" + ROW + "\n\n| x | y |")
    assert r == {"kv": "8192", "config": "sglang-router round_robin", "cores": "2",
                 "scale": 7.17, "sim": 1.943, "measured": 11.475}
    table = tmp_path / "v.md"
    table.write_text(ROW + "\n")
    out = tmp_path / "v.png"
    assert main(["validation", str(table), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    table.write_text("nothing here\n")
    assert main(["validation", str(table), "--out", str(out)]) == 2
