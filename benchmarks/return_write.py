"""What one PD-Caching-3 return's write costs the *sending* process (decode), written as the
protocol plans it (one block per page per K/V stream) or through the staged writer
(cache/staging.py: scattered source pages gathered, one block per destination-contiguous run).

The receiver is a separate process (its own Mooncake engine, loopback TCP), so this process's
CPU time is the sender's alone: the calling thread plus its engine's threads, as on decode's
core. Layout of the bench model: 8 layers x K/V = 16 streams, 16-token pages of 16 KiB per
stream; source pages scattered over the pool, destination pages consecutive (one allocation).

    .venv/bin/python benchmarks/return_write.py [--pages 7] [--streams 16] [--repeat 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time
from typing import Any

import torch

from sglang_memserve.cache.staging import StagedWriter
from sglang_memserve.mempool import MemPoolConfig, PageLayout, Region, TransferAgent
from sglang_memserve.mempool.tier import SegmentStream
from sglang_memserve.mempool.transfer import plan_segments

POOL_PAGES = 512


def _layout(buf: torch.Tensor, streams: int, page_bytes: int) -> PageLayout:
    row = buf.stride(0)
    return PageLayout(16, POOL_PAGES, tuple(
        SegmentStream(buf.data_ptr() + s * row, page_bytes, page_bytes) for s in range(streams)))


def _receiver(conn: Any, streams: int, page_bytes: int) -> None:
    agent = TransferAgent(MemPoolConfig())
    buf = torch.zeros(streams, POOL_PAGES * page_bytes, dtype=torch.uint8)
    agent.register([Region(buf.data_ptr(), buf.numel())])
    conn.send((agent.segment_name, _layout(buf, streams, page_bytes).to_json()))
    conn.recv()  # until the sender is done


class _AgentTransport:
    """A TransferAgent in the shape the staged writer expects."""

    def __init__(self, agent: TransferAgent) -> None:
        self.agent = agent

    def bind(self, regions: list[tuple[int, int]]) -> None:
        pass

    def register(self, addr: int, nbytes: int) -> None:
        self.agent.register([Region(addr, nbytes)])

    def write(self, segment: str, writes: list[tuple[int, int, int]]) -> int:
        return self.agent.write(segment, writes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=7, help="pages one return sends")
    ap.add_argument("--streams", type=int, default=16, help="layers x K/V")
    ap.add_argument("--page-kib", type=int, default=16, help="one page of one stream")
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    page_bytes = a.page_kib * 1024
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_receiver, args=(child, a.streams, page_bytes))
    proc.start()
    segment, dst_json = parent.recv()
    dst = PageLayout.from_json(dst_json)
    agent = TransferAgent(MemPoolConfig())
    src_buf = torch.ones(a.streams, POOL_PAGES * page_bytes, dtype=torch.uint8)
    agent.register([Region(src_buf.data_ptr(), src_buf.numel())])
    src = _layout(src_buf, a.streams, page_bytes)
    rng = random.Random(0)
    writers = {"as planned (one block per page per stream)":
               StagedWriter(_AgentTransport(agent), [], staging_bytes=0),
               "staged (one block per destination run)":
               StagedWriter(_AgentTransport(agent), [])}
    print(f"{a.pages} pages x {a.streams} streams x {a.page_kib} KiB = "
          f"{a.pages * a.streams * page_bytes / 2**20:.2f} MiB per return; sender process only; "
          f"median of {a.repeat}\n")
    print("| writer | blocks sent | wall ms | sender CPU ms |\n|---|---|---|---|")
    for label, writer in writers.items():
        writer.write(segment, plan_segments(src, [0], dst, [0]))  # first use: staging, warm-up
        wall, cpu, blocks = [], [], 0
        for _ in range(a.repeat):
            src_pages = rng.sample(range(POOL_PAGES), a.pages)
            start = rng.randrange(POOL_PAGES - a.pages)
            before = writer.stats.blocks_sent
            t, c = time.perf_counter(), time.process_time()
            writer.write(segment, plan_segments(src, src_pages, dst,
                                                list(range(start, start + a.pages))))
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            blocks = writer.stats.blocks_sent - before
        print(f"| {label} | {blocks} | {statistics.median(wall) * 1e3:.2f} | "
              f"{statistics.median(cpu) * 1e3:.2f} |", flush=True)
    parent.send("done")
    proc.join(10)


if __name__ == "__main__":
    main()
