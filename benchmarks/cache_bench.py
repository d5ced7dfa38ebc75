"""Issue 4 benchmark: one instance, ShareGPT multi-turn replay, four cache configurations in one run.

    .venv/bin/python benchmarks/cache_bench.py --out results/cache_bench

Configurations (same model, same device KV size, same host size where there is a host tier):
no cache; SGLang's radix cache; SGLang's HiCache (its default write-through policy); MemServe's
cache with its DRAM tier. Conversations start at Poisson times; turns run in order, each carrying
the previous answer's token ids. Rounds alternate the order of configurations to spread drift.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import profiling  # benchmarks/profiling.py, beside this file

from sglang_memserve import compat

compat.apply_import_patches()

from transformers import AutoTokenizer  # noqa: E402

from sglang_memserve.bench.replay import ReplayConfig  # noqa: E402
from sglang_memserve.bench.runner import markdown_table, run_server_config  # noqa: E402
from sglang_memserve.model import ensure_model  # noqa: E402
from sglang_memserve.workloads import load_sharegpt  # noqa: E402


def configs(model: Path, device_tokens: int, host_ratio: float) -> dict[str, list[str]]:
    base = ["--model-path", str(model), "--max-total-tokens", str(device_tokens)]
    hicache = ["--enable-hierarchical-cache", "--hicache-ratio", str(host_ratio),
               "--hicache-io-backend", "direct", "--hicache-mem-layout", "layer_first"]
    return {
        "no-cache": base + ["--memserve-cache", "off"],
        "sglang-radix": base + ["--memserve-cache", "stock"],
        "sglang-hicache": base + ["--memserve-cache", "stock"] + hicache,
        "memserve": base + ["--memserve-cache", "memserve",
                            "--mempool-host-ratio", str(host_ratio)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/cache_bench"))
    p.add_argument("--model", choices=("tiny", "bench"), default="bench")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--max-chars", type=int, default=1200)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--think-time", type=float, default=0.0,
                   help="mean pause (s) between a reply and the next turn")
    p.add_argument("--device-tokens", type=int, default=6144)
    p.add_argument("--host-ratio", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="subset of configurations")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="record each server's scheduler with py-spy (100 Hz) during the "
                        "replay into DIR, one file per configuration and round; "
                        "`python benchmarks/profiling.py DIR --requests N` tabulates them "
                        "(py-spy is not in the install: `.venv/bin/pip install py-spy`)")
    args = p.parse_args()

    model = ensure_model(args.model)
    tok = AutoTokenizer.from_pretrained(model)
    convs = load_sharegpt(limit=args.conversations, min_turns=2, max_turns=args.turns,
                          max_chars=args.max_chars)
    cfg = ReplayConfig(rate=args.rate, max_new_tokens=args.max_new_tokens,
                       think_time_s=args.think_time)
    todo = configs(model, args.device_tokens, args.host_ratio)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only}
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, list[dict]] = {k: [] for k in todo}
    for rnd in range(args.rounds):
        order = list(todo) if rnd % 2 == 0 else list(reversed(todo))
        for name in order:
            around = None
            if args.profile is not None:
                tag = f"{name}-r{rnd}"
                around = lambda pid, tag=tag: profiling.recording(args.profile, tag, [pid])  # noqa: E731
            row = run_server_config(name, todo[name], convs, tok, cfg, out / f"round{rnd}",
                                    around=around)
            rows[name].append(row)
            print(f"round {rnd} {name}: JCT {row['jct_avg']:.3f}s TTFT {row['ttft_avg']:.3f}s "
                  f"hit {row['hit_rate']:.3f} failed {row['failed']}", flush=True)
    # Median over rounds of each figure (one round: that round's figures).
    merged = [sorted(rs, key=lambda r: r["jct_avg"])[len(rs) // 2] for rs in rows.values()]
    meta = {"workload": {"conversations": len(convs), "turns": args.turns,
                         "max_chars": args.max_chars, "rate": args.rate,
                         "think_time": args.think_time,
                         "max_new_tokens": args.max_new_tokens,
                         "requests": sum(len(c.user_turns) for c in convs)},
            "device_tokens": args.device_tokens, "host_ratio": args.host_ratio,
            "model": args.model, "rounds": args.rounds}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown_table(merged, baseline="no-cache")
    (out / "table.md").write_text(table + "\n")
    print(json.dumps(meta))
    print(table)


if __name__ == "__main__":
    main()
