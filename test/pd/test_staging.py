"""The return's staged writer (cache/staging.py): scattered source pages gathered so that each
destination-contiguous run is one Mooncake block, the same bytes landing at the same places.
No SGLang server: the last test writes through real Mooncake engines (two in this process,
loopback TCP) via the instance's own transport class."""

from __future__ import annotations

import ctypes
import random

import torch

from sglang_memserve.cache.staging import StagedWriter, coalesce
from sglang_memserve.mempool import MemPoolConfig, PageLayout, Region, TransferAgent
from sglang_memserve.mempool.tier import SegmentStream
from sglang_memserve.mempool.transfer import plan_segments

PAGE_BYTES = 256  # one page of one stream
STREAMS = 4
PAGES = 64


class LocalTransport:
    """Writes by memmove in this process; records what it was asked to do."""

    def __init__(self) -> None:
        self.registered: list[tuple[int, int]] = []
        self.calls: list[list[tuple[int, int, int]]] = []
        self.bound = 0

    def bind(self, regions: list[tuple[int, int]]) -> None:
        self.bound += 1

    def register(self, addr: int, nbytes: int) -> None:
        self.registered.append((addr, nbytes))

    def write(self, segment: str, writes: list[tuple[int, int, int]]) -> int:
        self.calls.append(list(writes))
        for src, dst, n in writes:
            ctypes.memmove(dst, src, n)
        return sum(w[2] for w in writes)


def _pool(fill: bool) -> tuple[torch.Tensor, PageLayout]:
    """One tensor per stream, like SGLang's per-layer K/V buffers."""
    bufs = torch.zeros(STREAMS, PAGES * PAGE_BYTES, dtype=torch.uint8)
    if fill:
        bufs.copy_(torch.randint(0, 256, bufs.shape, dtype=torch.uint8,
                                 generator=torch.Generator().manual_seed(1)))
    row = bufs.stride(0)
    streams = tuple(SegmentStream(bufs.data_ptr() + s * row, PAGE_BYTES, PAGE_BYTES)
                    for s in range(STREAMS))
    return bufs, PageLayout(1, PAGES, streams)


def _pages(src_bufs: torch.Tensor, dst_bufs: torch.Tensor, src: list[int], dst: list[int]
           ) -> bool:
    v = src_bufs.view(STREAMS, PAGES, PAGE_BYTES)
    w = dst_bufs.view(STREAMS, PAGES, PAGE_BYTES)
    return torch.equal(v[:, src], w[:, dst])


def test_coalesce_groups_destination_runs_and_respects_capacity() -> None:
    writes = [(900, 30, 10), (100, 10, 10), (500, 20, 10), (700, 50, 10), (300, 60, 10)]
    assert coalesce(writes, 1 << 20) == [[(100, 10, 10), (500, 20, 10), (900, 30, 10)],
                                         [(700, 50, 10), (300, 60, 10)]]
    assert coalesce(writes, 20) == [[(100, 10, 10), (500, 20, 10)], [(900, 30, 10)],
                                    [(700, 50, 10), (300, 60, 10)]]


def test_scattered_sources_to_consecutive_pages_are_one_block_per_stream() -> None:
    src_bufs, src = _pool(fill=True)
    dst_bufs, dst = _pool(fill=False)
    src_pages = random.Random(0).sample(range(PAGES), 7)
    dst_pages = list(range(20, 27))
    blocks = plan_segments(src, src_pages, dst, dst_pages)
    assert len(blocks) == 7 * STREAMS  # nothing merges as planned
    transport = LocalTransport()
    writer = StagedWriter(transport, [], staging_bytes=1 << 20)
    assert writer.write("peer", blocks) == 7 * STREAMS * PAGE_BYTES
    assert _pages(src_bufs, dst_bufs, src_pages, dst_pages)
    assert [len(c) for c in transport.calls] == [STREAMS]
    assert writer.stats.blocks_planned == 28 and writer.stats.blocks_sent == STREAMS
    assert len(transport.registered) == 1  # registered once, reused
    writer.write("peer", plan_segments(src, src_pages[:2], dst, [40, 41]))
    assert len(transport.registered) == 1 and transport.bound == 2


def test_small_buffer_splits_the_write_and_lone_blocks_go_direct() -> None:
    src_bufs, src = _pool(fill=True)
    dst_bufs, dst = _pool(fill=False)
    src_pages = random.Random(2).sample(range(PAGES), 12)
    dst_pages = [3, 4, 5, 6, 7, 8, 9, 10, 30, 50, 51, 60]  # runs of 8, 1, 2, 1 pages
    blocks = plan_segments(src, src_pages, dst, dst_pages)
    transport = LocalTransport()
    writer = StagedWriter(transport, [], staging_bytes=3 * PAGE_BYTES)
    assert writer.write("peer", blocks) == 12 * STREAMS * PAGE_BYTES
    assert _pages(src_bufs, dst_bufs, src_pages, dst_pages)
    sent = [w for c in transport.calls for w in c]
    assert len(transport.calls) > 1  # the 3-page buffer filled up and was reused
    assert all(n <= 3 * PAGE_BYTES for _, _, n in sent)
    lone = {(s, d, n) for s, d, n in blocks if d in {dst.streams[k].base + 30 * PAGE_BYTES
                                                     for k in range(STREAMS)}}
    assert lone <= set(sent)  # written from where they are, not copied
    assert len(sent) < len(blocks)


def test_zero_staging_writes_as_planned() -> None:
    src_bufs, src = _pool(fill=True)
    dst_bufs, dst = _pool(fill=False)
    blocks = plan_segments(src, [5, 1, 9], dst, [0, 1, 2])
    transport = LocalTransport()
    StagedWriter(transport, [], staging_bytes=0).write("peer", blocks)
    assert transport.calls == [blocks] and transport.registered == []
    assert _pages(src_bufs, dst_bufs, [5, 1, 9], [0, 1, 2])


def test_staged_write_over_real_mooncake_through_the_instance_transport() -> None:
    from sglang_memserve.cache.backend import _Transport

    cfg = MemPoolConfig()
    src_bufs, src = _pool(fill=True)
    dst_bufs, dst = _pool(fill=False)
    receiver = TransferAgent(cfg)
    receiver.register([Region(dst_bufs.data_ptr(), dst_bufs.numel())])
    sender = _Transport(cfg)  # outside SGLang: a MemPool TransferAgent over our regions
    writer = StagedWriter(sender, [(src_bufs.data_ptr(), src_bufs.numel())], 1 << 16)
    src_pages = random.Random(3).sample(range(PAGES), 9)
    dst_pages = [11, 12, 13, 14, 15, 33, 34, 35, 36]
    n = writer.write(receiver.segment_name, plan_segments(src, src_pages, dst, dst_pages))
    assert n == 9 * STREAMS * PAGE_BYTES
    assert _pages(src_bufs, dst_bufs, src_pages, dst_pages)
    assert writer.stats.blocks_sent == 2 * STREAMS and writer.stats.bytes_staged == n
