"""What a KV transfer's block count costs over Mooncake TCP: the same bytes as many small blocks
or as a few large ones (issue 14: PD-Caching-3's return writes one block per page per layer K/V).

Two Mooncake engines in one process talk over loopback TCP as two instances would; each case
is the median of ``--repeat`` synchronous batches, wall time and this process's CPU time (both
engines' threads: on one host the sender's and the receiver's work land on the same cores).

    .venv/bin/python benchmarks/mooncake_blocks.py [--block-kib 16] [--blocks 112] [--repeat 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from sglang_memserve.mempool import MemPoolConfig, TransferAgent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block-kib", type=int, default=16, help="one page of one layer's K or V")
    ap.add_argument("--blocks", type=int, default=112, help="blocks of one transfer")
    ap.add_argument("--runs", type=int, default=16, help="blocks per run in the middle case")
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    cfg = MemPoolConfig()
    src_agent, dst_agent = TransferAgent(cfg), TransferAgent(cfg)
    size = 4 * a.blocks * a.block_kib * 1024
    src, dst = torch.ones(size, dtype=torch.uint8), torch.zeros(size, dtype=torch.uint8)
    for agent, t in ((src_agent, src), (dst_agent, dst)):
        if agent._engine.register_memory(t.data_ptr(), t.numel()) != 0:
            raise SystemExit("Mooncake register_memory failed")
    rng = random.Random(0)
    total = a.blocks * a.block_kib * 1024

    def case(label: str, n: int, read: bool = False) -> None:
        block = total // n
        offs = rng.sample(range(size // block), n)  # scattered, as pages are
        s_addr = [src.data_ptr() + o * block for o in offs]
        d_addr = [dst.data_ptr() + o * block for o in offs]
        wall, cpu = [], []
        for _ in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            if read:
                rc = dst_agent._engine.batch_transfer_sync_read(
                    src_agent.segment_name, d_addr, s_addr, [block] * n)
            else:
                rc = src_agent._engine.batch_transfer_sync_write(
                    dst_agent.segment_name, s_addr, d_addr, [block] * n)
            if rc < 0:
                raise SystemExit(f"{label}: transfer failed ({rc})")
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(f"| {label} | {n} x {block // 1024} KiB | {statistics.median(wall) * 1e3:.2f} | "
              f"{statistics.median(cpu) * 1e3:.2f} |", flush=True)

    print(f"{total / 2**20:.2f} MiB per transfer, median of {a.repeat}\n")
    print("| case | blocks | wall ms | CPU ms (both ends) |\n|---|---|---|---|")
    case("write, one block per page and layer K/V", a.blocks)
    case("write, one run per layer K/V", a.runs)
    case("write, one block", 1)
    case("read (pull), one block per page and layer K/V", a.blocks, read=True)
    case("read (pull), one block", 1, read=True)


if __name__ == "__main__":
    main()
