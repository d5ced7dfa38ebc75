"""Render ``gpu_bench.py``'s ``results.json`` as the markdown tables of ``docs/performance.md``.

Usage::

    python benchmarks/gpu/report.py benchmarks/gpu/results/<device>.results.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def render(r: dict[str, Any]) -> str:
    """Markdown for one results file.

    Args:
        r: parsed ``results.json``.

    Returns:
        Markdown text.
    """
    out: list[str] = []
    c = r.get("ceilings", {})
    fi = r.get("attention", {}).get("flashinfer")
    out.append(f"Device: **{r['device']}** ({r['sms']} SMs, {r['memory_GiB']:.0f} GiB), torch "
               f"{r['torch']}, CUDA {r['cuda']}, FlashInfer {fi}. Medians.\n")
    out.append("| ceiling | GB/s |\n| --- | ---: |")
    out.append(f"| device copy (read + write) | {c.get('d2d_copy_GBps', 0):.0f} |")
    out.append(f"| pinned host -> device | {c.get('h2d_pinned_GBps', 0):.1f} |")
    out.append(f"| device -> pinned host | {c.get('d2h_pinned_GBps', 0):.1f} |\n")

    sw = r.get("swap", {})
    out.append("**Swap** (Llama-3-8B pages: 16 tokens x 32 layers x K/V = 2 MiB, scattered over "
               f"a {sw.get('device_pool_GiB', 0):.0f} GiB HBM pool; host pages scattered over "
               f"{sw.get('host_pool_GiB', 0):.0f} GiB of pinned DRAM, or consecutive):\n")
    out.append("| mode | pages | host pages | swap-out GB/s | of D2H copy | swap-in GB/s "
               "| of H2D copy |\n| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in sw.get("rows", []):
        if "error" in row:
            out.append(f"| {row['mode']} | {row['pages']} | {row['host']} | error | | | |")
            continue
        out.append(f"| {row['mode']} | {row['pages']} | {row['host']} | {row['out_GBps']:.1f} | "
                   f"{row.get('out_frac_of_copy', 0):.0%} | {row['in_GBps']:.1f} | "
                   f"{row.get('in_frac_of_copy', 0):.0%} |")
    out.append("")
    ov = sw.get("overlap", {})
    if ov:
        out.append("**Overlap** with bf16 8192^3 matmuls on the model's stream (1,024 pages, "
                   "2 GiB):\n")
        out.append("| swap | compute alone ms | swap alone ms | both ms | shorter one hidden "
                   "| call returns after ms |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, v in ov.items():
            ret = v.get("call_returns_after_s", 0) * 1e3
            out.append(f"| {k} | {_ms(v['compute_s'])} | {_ms(v['swap_s'])} | {_ms(v['both_s'])}"
                       f" | {v['hidden_frac']:.0%} | {ret:.2f} |")
        out.append("")

    at = r.get("attention", {})
    corr = at.get("correctness", {})
    if corr:
        out.append("**FlashInfer over MemPool pages** (32 query / 8 KV heads, dim 128, bf16, "
                   "page 16): relative error against fp32 attention: prefill (append) "
                   f"{corr['prefill_rel_err']:.1e}, decode {corr['decode_rel_err_tc0']:.1e} "
                   f"(tensor-core decode {corr['decode_rel_err_tc1']:.1e}); outputs over MemPool "
                   "pages equal those over a fresh contiguous cache bit for bit: prefill "
                   f"{corr['prefill_equal_to_fresh']}, decode {corr['decode_equal_to_fresh']}.\n")
    cmp_rows = at.get("mempool_vs_fresh", [])
    if cmp_rows:
        out.append("| kernel | batch x KV tokens (+ new) | MemPool pages ms | fresh cache ms "
                   "| ratio |\n| --- | --- | ---: | ---: | ---: |")
        for row in cmp_rows:
            out.append(f"| {row['kind']} | {row['batch']} x {row['kv_len']} (+{row['qo_len']}) | "
                       f"{_ms(row['mempool_s'])} | {_ms(row['fresh_s'])} | "
                       f"{row['mempool_over_fresh']:.3f} |")
        out.append("")
    sweep = at.get("decode_sweep", [])
    if sweep:
        ctxs = sorted({row["ctx"] for row in sweep})
        for tc in (False, True):
            rows = [row for row in sweep if row["tensor_cores"] == tc]
            if not rows:
                continue
            label = "tensor-core decode" if tc else "decode (default CUDA-core kernel)"
            out.append(f"Paged {label}: KV read bandwidth as a fraction of the device copy "
                       "bandwidth (time in ms):\n")
            out.append("| batch \\ context | " + " | ".join(str(x) for x in ctxs) + " |")
            out.append("| --- |" + " ---: |" * len(ctxs))
            for b in sorted({row["batch"] for row in rows}):
                cells = []
                for x in ctxs:
                    m = [row for row in rows if row["batch"] == b and row["ctx"] == x]
                    cells.append(f"{m[0]['frac_of_copy']:.0%} ({_ms(m[0]['s'])})" if m else "")
                out.append(f"| {b} | " + " | ".join(cells) + " |")
            out.append("")
        best = at.get("decode_best")
        if best:
            out.append(f"Best point: {best['batch']} x {best['ctx']} tokens, "
                       f"{best['kv_GBps']:.0f} GB/s = {best['frac_of_copy']:.0%} of the copy "
                       "bandwidth.\n")

    cm = r.get("costmodel", {})
    det = cm.get("exec_detail", [])
    if det:
        xs = sorted({d["x"] for d in det})
        out.append("**exec(x, y)**, Llama-3-8B (32 layers scaled from "
                   "4 measured, random weights, FlashInfer append attention over MemPool pages), "
                   "GPU time in ms (eager PyTorch with its launch gaps in brackets):\n")
        ncol = max(sum(1 for d in det if d["x"] == x) for x in xs)
        fr = cm.get("fractions") or [0.0, 0.25, 0.5, 0.75, 0.9][:ncol]
        out.append("| x \\ cached (y rounded to pages) | "
                   + " | ".join(f"{f:.0%}" for f in fr) + " |")
        out.append("| --- |" + " ---: |" * len(fr))
        for x in xs:
            cells = []
            for d in sorted((d for d in det if d["x"] == x), key=lambda d: d["y"]):
                cells.append(f"{_ms(d['scaled_s'])} ({_ms(d['eager_scaled_s'])})")
            out.append(f"| {x} | " + " | ".join(cells) + " |")
        out.append("")
    dd = cm.get("decode_detail", [])
    if dd:
        out.append("Decode step (whole model, batch x context), GPU ms (eager):\n")
        out.append("| batch | context | GPU ms | eager ms |\n| ---: | ---: | ---: | ---: |")
        for d in dd:
            out.append(f"| {d['batch']} | {d['ctx']} | {_ms(d['scaled_s'])} | "
                       f"{_ms(d['eager_scaled_s'])} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    """Print the markdown for a results file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    args = ap.parse_args()
    with open(args.results, encoding="utf-8") as f:
        print(render(json.load(f)))


if __name__ == "__main__":
    main()
