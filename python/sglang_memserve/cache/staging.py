"""Fewer, larger Mooncake blocks for a KV transfer: gather scattered source pages into one
registered staging buffer so that each run of contiguous *destination* bytes is one write.

The protocol plans one ``(src, dst, nbytes)`` block per page per K/V stream
(:func:`~sglang_memserve.mempool.transfer.plan_segments` merges only runs contiguous on *both*
sides). A finished request's pages on decode were allocated one at a time while other requests
decoded, so they are scattered; the destination's pages come from one allocation and are
mostly consecutive. Over Mooncake TCP each block costs ~60 us of CPU on the sender's core
whatever its size (``benchmarks/mooncake_blocks.py``), while copying 16 KiB costs ~1 us: a
return of 7 pages x 16 streams is 112 blocks direct and 16 staged.

:class:`StagedWriter` is the protocol's ``PageWriter``: it sorts the blocks by destination,
copies each destination-contiguous run of two or more source blocks into the staging buffer
and writes the run as one block; a lone block is written from where it is. Outputs are the
same bytes at the same destination addresses.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# One staging buffer per process, allocated and registered on the first write. A return is
# ~2 MiB for the bench model; a batch of returns larger than the buffer is written in parts.
STAGING_BYTES = 32 << 20


@dataclass
class WriteStats:
    """What the writer did, summed over writes (read by ``/server_info``)."""

    writes: int = 0
    blocks_planned: int = 0  # blocks as the protocol planned them
    blocks_sent: int = 0  # blocks handed to Mooncake after staging
    bytes_staged: int = 0
    gather_s: float = 0.0  # copying into the staging buffer (wall)
    transfer_s: float = 0.0  # inside the transport's write (wall)

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def coalesce(writes: Sequence[tuple[int, int, int]], capacity: int
             ) -> list[list[tuple[int, int, int]]]:
    """Group blocks into runs that are contiguous at the destination.

    Args:
        writes: ``(src, dst, nbytes)`` blocks; destination ranges must not overlap.
        capacity: most bytes one staged run may hold (a run is cut before it would exceed it).

    Returns:
        The runs in destination order; each run's blocks are destination-adjacent, in order.
        Changes nothing.
    """
    runs: list[list[tuple[int, int, int]]] = []
    size = 0
    for w in sorted(writes, key=lambda w: w[1]):
        last = runs[-1][-1] if runs else None
        if last is not None and last[1] + last[2] == w[1] and size + w[2] <= capacity:
            runs[-1].append(w)
            size += w[2]
        else:
            runs.append([w])
            size = w[2]
    return runs


class StagedWriter:
    """The transport as the protocol's ``PageWriter``, staging scattered sources.

    Args:
        transport: this process's Mooncake side: ``bind(regions)``, ``register(addr, nbytes)``
            (local memory the engine may read from), ``write(segment, blocks) -> bytes``.
        regions: this process's KV regions (bound on first use).
        staging_bytes: size of the staging buffer; 0 writes every block as planned.
        stats: where to sum what it did (a fresh :class:`WriteStats` if not given).
    """

    def __init__(self, transport: Any, regions: list[tuple[int, int]],
                 staging_bytes: int = STAGING_BYTES, stats: WriteStats | None = None) -> None:
        if staging_bytes < 0:
            raise ValueError(f"staging_bytes must be >= 0, not {staging_bytes}")
        self.transport = transport
        self.regions = regions
        self.staging_bytes = staging_bytes
        self.stats = stats if stats is not None else WriteStats()
        self._buf: torch.Tensor | None = None
        self._lock = threading.Lock()

    def _staging(self) -> int:
        """Address of the staging buffer (allocates and registers it on first use)."""
        if self._buf is None:
            buf = torch.empty(self.staging_bytes, dtype=torch.uint8)
            self.transport.register(buf.data_ptr(), buf.numel())
            self._buf = buf
        return self._buf.data_ptr()

    def write(self, segment: str, writes: Sequence[tuple[int, int, int]]) -> int:
        """Write ``(local, remote, nbytes)`` blocks to ``segment`` (worker thread).

        Returns:
            Bytes written.

        Raises:
            TransferError: as the transport's write (some blocks may have landed).
        """
        with self._lock:
            self.transport.bind(self.regions)
            self.stats.writes += 1
            self.stats.blocks_planned += len(writes)
            if self.staging_bytes == 0:
                return self._send(segment, list(writes))
            base = self._staging()
            out: list[tuple[int, int, int]] = []
            used = total = 0
            for run in coalesce(writes, self.staging_bytes):
                n = sum(w[2] for w in run)
                if len(run) == 1:
                    out.append(run[0])
                    continue
                if used + n > self.staging_bytes:  # the buffer is full: send what it holds
                    total += self._send(segment, out)
                    out, used = [], 0
                t = time.perf_counter()
                off = base + used
                for src, _, nbytes in run:
                    ctypes.memmove(off, src, nbytes)
                    off += nbytes
                self.stats.gather_s += time.perf_counter() - t
                self.stats.bytes_staged += n
                out.append((base + used, run[0][1], n))
                used += n
            return total + self._send(segment, out)

    def _send(self, segment: str, blocks: list[tuple[int, int, int]]) -> int:
        if not blocks:
            return 0
        t = time.perf_counter()
        try:
            return self.transport.write(segment, blocks)
        finally:
            self.stats.transfer_s += time.perf_counter() - t
            self.stats.blocks_sent += len(blocks)
