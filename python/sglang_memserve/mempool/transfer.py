"""Moving pages between members over Mooncake's TransferEngine (one-sided writes).

:class:`TransferAgent` owns one engine per process. Mooncake reads its settings from the
environment when the engine is created, so the agent sets ``MC_TCP_BIND_ADDRESS`` (bind to the
configured host: Mooncake has no authentication), ``MC_TRANSFER_TIMEOUT`` (the configured bound
instead of 30 s) and ``MC_LOG_LEVEL`` first. Every Mooncake call returns an int; negatives become
:class:`~.errors.TransferError` / :class:`~.errors.TransferTimeout`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from .config import MemPoolConfig
from .errors import MemPoolError, TransferError, TransferTimeout
from .tier import PageLayout, Region, check_compatible


def plan_segments(
    src: PageLayout, src_pages: Sequence[int], dst: PageLayout, dst_pages: Sequence[int]
) -> list[tuple[int, int, int]]:
    """``(src_addr, dst_addr, nbytes)`` writes that copy ``src_pages`` to ``dst_pages``,
    with runs that are contiguous on both sides merged into one (fewer Mooncake blocks).

    Raises:
        LayoutMismatch: the page layouts are not interchangeable.
        MemPoolError: a page is outside its layout, or the lists differ in length.
    """
    check_compatible(src, dst)
    if len(src_pages) != len(dst_pages):
        raise MemPoolError(f"{len(src_pages)} source pages vs {len(dst_pages)} destination pages")
    for pages, lay, side in ((src_pages, src, "source"), (dst_pages, dst, "destination")):
        bad = [p for p in pages if not 0 <= p < lay.num_pages]
        if bad:
            raise MemPoolError(f"{side} pages {bad[:8]} outside [0, {lay.num_pages})")
    out: list[list[int]] = []
    # Stream-major order puts consecutive pages of one stream next to each other, which is
    # where merges happen (page p and p+1 of a stream are adjacent when stride == nbytes).
    for ss, ds in zip(src.streams, dst.streams, strict=True):
        for sp, dp in zip(src_pages, dst_pages, strict=True):
            sa, da = ss.base + sp * ss.stride, ds.base + dp * ds.stride
            if out and out[-1][0] + out[-1][2] == sa and out[-1][1] + out[-1][2] == da:
                out[-1][2] += ss.nbytes
            else:
                out.append([sa, da, ss.nbytes])
    return [(a, b, n) for a, b, n in out]


class TransferAgent:
    """One Mooncake TransferEngine, its registered regions and batched writes.

    Args:
        config: host, protocol, device name, timeout bound, batch size.

    Raises:
        TransferError: the engine could not start.
    """

    def __init__(self, config: MemPoolConfig) -> None:
        self.config = config
        os.environ["MC_TCP_BIND_ADDRESS"] = config.host
        os.environ["MC_TRANSFER_TIMEOUT"] = str(config.mooncake_timeout_s)
        os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
        from mooncake.engine import TransferEngine  # heavy import, only when transfers are used

        self._engine = TransferEngine()
        rc = self._engine.initialize(
            config.host, "P2PHANDSHAKE", config.protocol, config.device_name
        )
        if rc != 0:
            raise TransferError(f"Mooncake initialize({config.host}, {config.protocol}) -> {rc}")
        self.segment_name = f"{config.host}:{self._engine.get_rpc_port()}"
        self._regions: list[Region] = []
        self.bytes_written = 0

    def register(self, regions: Sequence[Region]) -> None:
        """Register memory regions so peers can write into them.

        Raises:
            TransferError: Mooncake refused; nothing stays registered from this call.
        """
        done: list[Region] = []
        for r in regions:
            rc = self._engine.register_memory(r.addr, r.nbytes)
            if rc != 0:
                for d in done:
                    self._engine.unregister_memory(d.addr)
                raise TransferError(f"register_memory({r.addr:#x}, {r.nbytes}) -> {rc}")
            done.append(r)
        self._regions.extend(done)

    def unregister(self, regions: Sequence[Region]) -> None:
        """Unregister regions (best effort; errors are reported)."""
        bad = []
        for r in regions:
            if self._engine.unregister_memory(r.addr) != 0:
                bad.append(r)
            self._regions = [x for x in self._regions if x.addr != r.addr]
        if bad:
            raise TransferError(f"unregister_memory failed for {bad}")

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    def write(self, segment_name: str, writes: Sequence[tuple[int, int, int]]) -> int:
        """Write ``(local_addr, remote_addr, nbytes)`` blocks to a peer, in batches.

        Returns:
            Bytes written.

        Raises:
            TransferTimeout: a batch failed after running for about the configured bound.
            TransferError: a batch failed sooner (dead or wrong peer, address out of range).
                Some earlier batches may have landed: the caller must not index the
                destination pages (transfer_with_insert aborts them).
        """
        total = 0
        step = self.config.max_batch_entries
        for i in range(0, len(writes), step):
            chunk = writes[i : i + step]
            t = time.monotonic()
            rc = self._engine.batch_transfer_sync_write(
                segment_name,
                [w[0] for w in chunk],
                [w[1] for w in chunk],
                [w[2] for w in chunk],
            )
            if rc < 0:
                took = time.monotonic() - t
                cls = (
                    TransferTimeout
                    if took >= 0.9 * self.config.mooncake_timeout_s
                    else TransferError
                )
                raise cls(
                    f"write to {segment_name}: batch {i // step} of {len(chunk)} blocks failed "
                    f"(rc={rc}) after {took:.2f}s; {total} bytes landed before"
                )
            total += sum(w[2] for w in chunk)
        self.bytes_written += total
        return total
