"""MemPool transfer benchmark: bytes/s over Mooncake TCP on loopback.

Two MemPools (layer-first tensor tiers, 16-token pages of 2 layers x 2 heads x 64 dims fp16 =
4 segments of 4 KiB per page) in one process, each with its own TransferEngine; the engines talk
over loopback TCP exactly as two processes would. Cases:

* single page      -- one page (4 blocks);
* scattered batch  -- N pages at random source and destination ids (no block merging);
* large run        -- M consecutive pages to consecutive pages (merged into 4 large blocks);
* with_insert      -- transfer_with_insert of the large run (control round trips included).

Usage: python benchmarks/mempool_transfer.py [--scattered 256] [--large 4096] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sglang_memserve.mempool import MemPool, MemPoolConfig, TransferAgent, make_tensor_tier


def make(name: str, pages: int, cfg: MemPoolConfig) -> MemPool:
    tier = make_tensor_tier("device", pages, cfg.page_size, num_layers=2, heads=2, head_dim=64)
    pool = MemPool(cfg, name, {"device": tier}, transfer=TransferAgent(cfg))
    pool.serve()
    return pool


def timed(fn, repeat: int) -> tuple[float, int]:
    times, nbytes = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        nbytes = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scattered", type=int, default=256)
    ap.add_argument("--large", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = MemPoolConfig(page_size=16, transfer_timeout_s=5.0)
    total = 2 * max(args.large, args.scattered) + 16
    src, dst = make("src", total, cfg), make("dst", total, cfg)
    src.join(dst.member_info())
    rng = random.Random(0)
    spages = src.alloc_mem(total - 16)
    dpages = dst.alloc_mem(total - 16)
    page_nbytes = src.tiers["device"].store.layout.page_nbytes
    rows = []

    def case(name, s, d):
        med, nbytes = timed(lambda: src.transfer("dst", s, d), args.repeat)
        rows.append((name, len(s), nbytes, med))

    case("single page", spages[:1], dpages[:1])
    case("scattered batch", rng.sample(spages, args.scattered), rng.sample(dpages, args.scattered))
    case("large run", spages[: args.large], dpages[: args.large])
    dst.free_mem(dpages)
    tokens = list(range(args.large * 16))

    def with_insert():
        r = src.transfer_with_insert("dst", tokens, spages[: args.large])
        dst.clear()
        return r.bytes_sent

    med, nbytes = timed(with_insert, args.repeat)
    rows.append(("with_insert (large)", args.large, nbytes, med))
    print(f"page = {page_nbytes} bytes (4 segments); median of {args.repeat}")
    print(f"{'case':<22}{'pages':>7}{'bytes':>12}{'seconds':>10}{'MB/s':>10}")
    for name, n, nbytes, med in rows:
        print(f"{name:<22}{n:>7}{nbytes:>12}{med:>10.5f}{nbytes / med / 1e6:>10.1f}")
    src.check_integrity()
    dst.check_integrity()
    src.close()
    dst.close()


if __name__ == "__main__":
    main()
