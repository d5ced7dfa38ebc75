"""Asynchronous swap of scattered KV pages between HBM and pinned DRAM.

:class:`SwapEngine` moves a batch of pages between a :class:`~.kv_store.CudaPagedKVStore` and a
:class:`~.kv_store.PinnedHostKVStore` on side streams, so the copies overlap the model's compute
on the current stream, and returns a :class:`SwapHandle` whose CUDA event marks completion.

A page of the device tier is ``2 * num_layers`` segments scattered over the pool (one per layer
and K/V), so a page-by-page ``cudaMemcpy`` would issue thousands of small copies. Two batched
modes:

* ``"staged"`` (default): a Triton kernel gathers a chunk of pages into a page-major device
  staging buffer, then one DMA copy per run of consecutive host pages moves it to pinned DRAM
  (reverse for swap-in). Several staging buffers and two streams (a high-priority kernel
  stream, a copy stream) pipeline the gather of later chunks with the DMA of earlier ones; the
  copy engine does the bulk of the work, so compute on the SMs runs alongside.
* ``"direct"``: one Triton kernel reads the device pages and writes pinned host memory directly
  through unified virtual addressing (zero-copy), no staging memory.

Issuing a staged swap takes the host one DMA call per run of consecutive host pages (hundreds
for a large, fragmented batch: ~10-20 ms of CPU). By default a worker thread issues them, so
``swap_out`` / ``swap_in`` return at once and the scheduler thread keeps launching the model; the
calls are issued in order.

Ordering: the swap streams first wait for an event recorded on the caller's current stream at
the call, so a swap-out sees every write the model issued before the call, and a swap-in never
overwrites pages that earlier kernels still read. Before using swapped-in pages, or reusing
swapped-out device pages, call :meth:`SwapHandle.wait` (a device-side wait on the current
stream); before reading swapped-out host pages on the CPU call :meth:`SwapHandle.synchronize`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .kernels import PageView, copy_pages, flat_words
from .kv_store import CudaPagedKVStore, PinnedHostKVStore

SWAP_MODES = ("staged", "direct", "torch")


@dataclass
class SwapHandle:
    """Completion of one swap call.

    Attributes:
        event: CUDA event recorded after the last copy (``None`` on CPU: already done).
        num_pages: pages moved.
        nbytes: bytes moved.
        keepalive: tensors the copies use, held until the handle is dropped.
    """

    event: torch.cuda.Event | None
    num_pages: int
    nbytes: int
    keepalive: list[Any] = field(default_factory=list)
    _enqueued: threading.Event | None = None
    _error: BaseException | None = None

    def _check_enqueued(self, block: bool) -> bool:
        """Whether the engine's worker has issued the copies (re-raising its error)."""
        if self._enqueued is not None:
            if block:
                self._enqueued.wait()
            elif not self._enqueued.is_set():
                return False
        if self._error is not None:
            raise RuntimeError("swap failed while issuing its copies") from self._error
        return True

    def done(self) -> bool:
        """Whether the swap has completed (non-blocking).

        Returns:
            True once every copy of the call has finished.
        """
        if not self._check_enqueued(block=False):
            return False
        return self.event is None or self.event.query()

    def wait(self, stream: torch.cuda.Stream | None = None) -> None:
        """Make ``stream`` (default: the current stream) wait for the swap, without blocking the
        host on the copies (it waits only until they are issued).

        Args:
            stream: the stream whose later work needs the pages.
        """
        self._check_enqueued(block=True)
        if self.event is not None:
            (stream or torch.cuda.current_stream()).wait_event(self.event)

    def synchronize(self) -> None:
        """Block the host until the swap has completed."""
        self._check_enqueued(block=True)
        if self.event is not None:
            self.event.synchronize()


def _runs(ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Split a page-id list into runs of consecutive ids.

    Args:
        ids: page ids in batch order.

    Returns:
        ``(batch_start, first_id, length)`` for each maximal run ``ids[i] = first_id + (i -
        batch_start)``.
    """
    runs: list[tuple[int, int, int]] = []
    for i, p in enumerate(ids):
        if runs and runs[-1][1] + runs[-1][2] == p and runs[-1][0] + runs[-1][2] == i:
            b, f, n = runs[-1]
            runs[-1] = (b, f, n + 1)
        else:
            runs.append((i, int(p), 1))
    return runs


class SwapEngine:
    """Batched, asynchronous page swap between a device store and a pinned host store.

    Args:
        device_store: the HBM tier.
        host_store: the pinned DRAM tier (same :class:`~.kv_store.KVShape`).
        mode: ``"staged"``, ``"direct"`` or ``"torch"`` (``index_select`` + copy, reference).
        chunk_pages: pages per staging buffer (``"staged"``).
        num_staging: staging buffers (``"staged"``): gathers run this many chunks ahead of DMA.
        high_priority: run the swap kernels on a high-priority stream, so that their blocks are
            scheduled ahead of pending compute blocks.
        async_enqueue: issue the copies from a worker thread (CUDA only); the call returns
            after recording one event.
    """

    def __init__(self, device_store: CudaPagedKVStore, host_store: PinnedHostKVStore, *,
                 mode: str = "staged", chunk_pages: int = 32, num_staging: int = 4,
                 high_priority: bool = True, async_enqueue: bool = True) -> None:
        if device_store.shape != host_store.shape:
            raise ValueError(f"shape mismatch: {device_store.shape} vs {host_store.shape}")
        if mode not in SWAP_MODES:
            raise ValueError(f"mode {mode!r} not in {SWAP_MODES}")
        self.dev = device_store
        self.host = host_store
        self.mode = mode
        self.chunk_pages = chunk_pages
        self.cuda = device_store.buffer.is_cuda
        self.page_nbytes = device_store.shape.page_nbytes
        self._queue: queue.SimpleQueue | None = None
        if not self.cuda:
            return
        device = device_store.buffer.device
        self.kernel_stream = torch.cuda.Stream(device, priority=-1 if high_priority else 0)
        self.copy_stream = torch.cuda.Stream(device)
        s = device_store.shape
        self._staging: list[torch.Tensor] = []
        if mode == "staged":
            with torch.cuda.stream(self.kernel_stream):
                self._staging = [
                    torch.empty((chunk_pages, s.num_segs, s.seg_words), dtype=s.word_dtype,
                                device=device)
                    for _ in range(num_staging)
                ]
                self._arange = torch.arange(chunk_pages, dtype=torch.int64, device=device)
        nbuf = max(1, len(self._staging))
        self._ready = [torch.cuda.Event() for _ in range(nbuf)]
        self._free = [torch.cuda.Event() for _ in range(nbuf)]
        self._next = 0
        if async_enqueue:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._worker, args=(device,), daemon=True,
                                            name="memserve-swap")
            self._thread.start()

    def _worker(self, device: torch.device) -> None:
        """Issue queued swaps in order (the caller's thread only records an event)."""
        torch.cuda.set_device(device)
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, handle = item
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - handed to the waiter
                handle._error = e
            finally:
                handle._enqueued.set()

    def close(self) -> None:
        """Stop the issuing thread (after the swaps already queued)."""
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def _stage_view(self, k: int) -> PageView:
        s = self.dev.shape
        buf = self._staging[k]
        return PageView(flat_words(buf, s.word_dtype), buf.shape[0], s.num_segs, s.seg_words,
                        s.num_segs * s.seg_words, s.seg_words)

    def swap_out(self, dev_pages: Sequence[int], host_pages: Sequence[int]) -> SwapHandle:
        """Copy device pages to host pages, asynchronously.

        Args:
            dev_pages: page ids in the device store.
            host_pages: page ids in the host store, same length.

        Returns:
            A handle; call ``synchronize()`` before the CPU reads the host pages.
        """
        return self._swap(list(dev_pages), list(host_pages), out=True)

    def swap_in(self, host_pages: Sequence[int], dev_pages: Sequence[int]) -> SwapHandle:
        """Copy host pages to device pages, asynchronously.

        Args:
            host_pages: page ids in the host store.
            dev_pages: page ids in the device store, same length.

        Returns:
            A handle; call ``wait()`` before kernels on the current stream read the pages.
        """
        return self._swap(list(dev_pages), list(host_pages), out=False)

    def _swap(self, dev_pages: list[int], host_pages: list[int], *, out: bool) -> SwapHandle:
        n = len(dev_pages)
        if n != len(host_pages):
            raise ValueError(f"{n} device pages vs {len(host_pages)} host pages")
        nbytes = n * self.page_nbytes
        if n == 0:
            return SwapHandle(None, 0, 0)
        for ids, store in ((dev_pages, self.dev), (host_pages, self.host)):
            if min(ids) < 0 or max(ids) >= store.num_pages:
                raise IndexError(f"page ids outside [0, {store.num_pages})")
        if not self.cuda:
            dv, hv = self.dev.page_view(), self.host.page_view()
            di = self.dev._ids(dev_pages, self.dev.buffer.device)
            hi = self.host._ids(host_pages, torch.device("cpu"))
            src, dst, si, dsti = (dv, hv, di, hi) if out else (hv, dv, hi, di)
            copy_pages(src, dst, si, dsti, use_triton=False)
            return SwapHandle(None, n, nbytes)
        # Everything issued before this call on the current stream comes first.
        start = torch.cuda.Event()
        start.record()
        done = torch.cuda.Event()
        handle = SwapHandle(done, n, nbytes)
        issue = {"staged": self._swap_staged, "direct": self._swap_direct,
                 "torch": self._swap_torch}[self.mode]

        def job() -> None:
            self.kernel_stream.wait_event(start)
            self.copy_stream.wait_event(start)
            handle.keepalive.extend(issue(dev_pages, host_pages, out, done))

        if self._queue is None:
            job()
        else:
            handle._enqueued = threading.Event()
            self._queue.put((job, handle))
        return handle

    def _swap_torch(self, dev_pages: list[int], host_pages: list[int], out: bool,
                    done: torch.cuda.Event) -> list[Any]:
        dv, hv = self.dev.page_view(), self.host.page_view()
        with torch.cuda.stream(self.kernel_stream):
            di = self.dev._ids(dev_pages, self.dev.buffer.device)
            hi = self.host._ids(host_pages, torch.device("cpu"))
            src, dst, si, dsti = (dv, hv, di, hi) if out else (hv, dv, hi, di)
            copy_pages(src, dst, si, dsti, use_triton=False)
            done.record(self.kernel_stream)
        return [di]

    def _swap_direct(self, dev_pages: list[int], host_pages: list[int], out: bool,
                     done: torch.cuda.Event) -> list[Any]:
        device = self.dev.buffer.device
        ids = torch.tensor([dev_pages, host_pages], dtype=torch.int64).pin_memory()
        with torch.cuda.stream(self.kernel_stream):
            ids_d = ids.to(device, non_blocking=True)
            dv, hv = self.dev.page_view(), self.host.page_view()
            if out:
                copy_pages(dv, hv, ids_d[0], ids_d[1], use_triton=True)
            else:
                copy_pages(hv, dv, ids_d[1], ids_d[0], use_triton=True)
            done.record(self.kernel_stream)
        return [ids, ids_d]

    def _swap_staged(self, dev_pages: list[int], host_pages: list[int], out: bool,
                     done: torch.cuda.Event) -> list[Any]:
        device = self.dev.buffer.device
        n = len(dev_pages)
        # Host order: consecutive host pages become one DMA copy each.
        order = sorted(range(n), key=host_pages.__getitem__)
        dev_pages = [dev_pages[i] for i in order]
        host_pages = [host_pages[i] for i in order]
        ids = torch.tensor(dev_pages, dtype=torch.int64).pin_memory()
        with torch.cuda.stream(self.kernel_stream):
            ids_d = ids.to(device, non_blocking=True)
        rows = self.host.page_rows()
        dv = self.dev.page_view()
        for c0 in range(0, n, self.chunk_pages):
            c1 = min(n, c0 + self.chunk_pages)
            m = c1 - c0
            k = self._next
            self._next = (k + 1) % len(self._staging)
            buf = self._staging[k].view(self.chunk_pages, -1)
            sv = self._stage_view(k)
            runs = _runs(host_pages[c0:c1])
            if out:
                # Kernel stream: gather m pages into staging k once its last reader is done.
                self.kernel_stream.wait_event(self._free[k])
                with torch.cuda.stream(self.kernel_stream):
                    copy_pages(dv, sv, ids_d[c0:c1], self._arange[:m], use_triton=True)
                    self._ready[k].record(self.kernel_stream)
                # Copy stream: DMA runs of consecutive host pages.
                self.copy_stream.wait_event(self._ready[k])
                with torch.cuda.stream(self.copy_stream):
                    for b, h, r in runs:
                        rows[h:h + r].copy_(buf[b:b + r], non_blocking=True)
                    self._free[k].record(self.copy_stream)
            else:
                self.copy_stream.wait_event(self._free[k])
                with torch.cuda.stream(self.copy_stream):
                    for b, h, r in runs:
                        buf[b:b + r].copy_(rows[h:h + r], non_blocking=True)
                    self._ready[k].record(self.copy_stream)
                self.kernel_stream.wait_event(self._ready[k])
                with torch.cuda.stream(self.kernel_stream):
                    copy_pages(sv, dv, self._arange[:m], ids_d[c0:c1], use_triton=True)
                    self._free[k].record(self.kernel_stream)
        # The last consumer stream finished everything before it (both streams are in order, and
        # each chunk's consumer waited for its producer).
        done.record(self.copy_stream if out else self.kernel_stream)
        return [ids, ids_d]
