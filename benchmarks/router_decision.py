"""GlobalTree.match() latency: one 4,096-token prompt over N instances sharing a system prompt.

Each instance holds (tier "device", a third of them also "host") a 1,024-token system prompt
shared by all and its own 3,072-token conversation; the prompt is one instance's conversation
(fully cached there, so the walk goes the whole prompt's length) plus a new partial page.

    .venv/bin/python benchmarks/router_decision.py [--counts 16 64 256 1024] [--runs 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from memserve_router.trees import DEVICE, HOST, GlobalTree


def build(n: int, page_size: int, rng: random.Random) -> tuple[GlobalTree, list[int]]:
    gt = GlobalTree(page_size)
    system = [rng.randrange(32000) for _ in range(1024)]
    prompt: list[int] = []
    for k in range(n):
        conv = system + [rng.randrange(32000) for _ in range(3072)]
        path = gt.tree.to_pages(conv)
        gt.stored(f"inst-{k}", path, 0, DEVICE, list(range(len(path))))
        if k % 3 == 0:
            gt.stored(f"inst-{k}", path, 0, HOST, list(range(len(path))))
        if k == n // 2:
            prompt = conv + [1, 2, 3]
    return gt, prompt


def p50_us(gt: GlobalTree, prompt: list[int], runs: int) -> tuple[float, int]:
    times = []
    hits = {}
    for _ in range(runs):
        t = time.perf_counter()
        hits = gt.match(prompt)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6, len(hits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--page-size", type=int, default=16)
    args = ap.parse_args()
    print(f"match() of a 4,099-token prompt, page size {args.page_size}, {args.runs} runs")
    print(f"{'instances':>10} {'p50 us':>8} {'hits':>6}")
    for n in args.counts:
        gt, prompt = build(n, args.page_size, random.Random(n))
        us, hits = p50_us(gt, prompt, args.runs)
        print(f"{n:>10} {us:>8.1f} {hits:>6}")


if __name__ == "__main__":
    main()
