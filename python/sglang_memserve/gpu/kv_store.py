"""MemPool's KV page stores on a GPU machine: HBM pages FlashInfer reads in place, pinned DRAM.

* :class:`CudaPagedKVStore` -- the device tier. One tensor ``[L, 2, P, page, H, D]``: for layer
  ``l``, ``k_cache(l)`` / ``v_cache(l)`` are contiguous ``[P, page, H, D]`` tensors, exactly
  FlashInfer's ``NHD`` paged KV cache (``paged_kv_cache=(k_cache, v_cache)``), and their
  ``[P * page, H, D]`` token views are SGLang's ``MHATokenToKVPool.k_buffer[l]`` /
  ``v_buffer[l]`` (token slot ``p * page + i``). Attention reads the pool directly through a
  page table: there is no gather copy before attention.
* :class:`PinnedHostKVStore` -- the host tier: page-major ``[P, L, 2, page, H, D]`` in pinned
  (page-locked) DRAM, so one page image is one contiguous run of bytes (one Mooncake segment
  per page on the wire) and DMA runs at full PCIe speed.

Both implement MemPool's :class:`~sglang_memserve.mempool.tier.PageStore` with the same page
image (segments ``K0, V0, K1, V1, ...``), so their layouts have equal signatures with each other
and with ``mempool.tensor_tier.LayerFirstTensorStore`` of the same shape.
Swapping between them is :mod:`sglang_memserve.gpu.swap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..mempool.tensor_tier import FreeListAllocator
from ..mempool.tier import (
    PageLayout,
    PageStore,
    Region,
    SegmentStream,
    Tier,
    check_compatible,
)
from .kernels import PageView, copy_pages, flat_words, word_dtype


@dataclass(frozen=True)
class KVShape:
    """Shape of one model's KV cache pages.

    Attributes:
        num_layers: attention layers.
        num_kv_heads: KV heads (per tensor-parallel rank).
        head_dim: head dimension.
        page_size: tokens per page.
        dtype: KV element type.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int = 16
    dtype: torch.dtype = torch.bfloat16

    @property
    def num_segs(self) -> int:
        """Segments per page: K and V of every layer."""
        return 2 * self.num_layers

    @property
    def seg_nbytes(self) -> int:
        """Bytes of one segment (one layer's K or V for one page)."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.page_size * self.num_kv_heads * self.head_dim * elem

    @property
    def page_nbytes(self) -> int:
        """Bytes of one page image (all layers, K and V)."""
        return self.num_segs * self.seg_nbytes

    @property
    def word_dtype(self) -> torch.dtype:
        """Word type the copy kernels move."""
        return word_dtype(self.seg_nbytes)

    @property
    def seg_words(self) -> int:
        """Words per segment."""
        return self.seg_nbytes // torch.empty((), dtype=self.word_dtype).element_size()


class _KVPageStoreBase(PageStore):
    """Shared parts: a page view for the copy kernels and page-image read/write through it."""

    shape: KVShape
    num_pages: int
    buffer: torch.Tensor
    _layout: PageLayout

    @property
    def layout(self) -> PageLayout:
        return self._layout

    @property
    def device(self) -> str:
        return str(self.buffer.device)

    def regions(self) -> list[Region]:
        return [Region(self.buffer.data_ptr(), self.buffer.numel() * self.buffer.element_size())]

    def page_view(self) -> PageView:
        """This store as a :class:`~sglang_memserve.gpu.kernels.PageView`.

        Returns:
            The view the batched copy kernels take.
        """
        raise NotImplementedError

    def _ids(self, pages: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
        """Page ids as an int64 tensor on ``device``, range-checked."""
        ids = torch.as_tensor(pages, dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_pages):
            raise IndexError(f"page ids outside [0, {self.num_pages})")
        return ids.to(device, non_blocking=True)

    def read_pages(self, pages: Sequence[int]) -> torch.Tensor:
        """Page images of ``pages``.

        Args:
            pages: page ids.

        Returns:
            ``uint8`` CPU tensor ``[len(pages), page_nbytes]``.
        """
        dev = self.buffer.device
        n = len(pages)
        s = self.shape
        out = torch.empty((n, s.num_segs, s.seg_words), dtype=s.word_dtype, device=dev)
        view = _contiguous_view(out, self.shape)
        copy_pages(self.page_view(), view, self._ids(pages, dev), torch.arange(n, device=dev))
        return out.view(torch.uint8).reshape(n, self.shape.page_nbytes).cpu()

    def write_pages(self, pages: Sequence[int], data: torch.Tensor) -> None:
        """Overwrite ``pages`` with page images.

        Args:
            pages: page ids.
            data: ``uint8 [len(pages), page_nbytes]`` on any device.
        """
        n = _check_images(data, len(pages), self.shape.page_nbytes)
        dev = self.buffer.device
        src = data.to(dev).contiguous().view(self.shape.word_dtype)
        src = src.view(n, self.shape.num_segs, self.shape.seg_words)
        copy_pages(_contiguous_view(src, self.shape), self.page_view(),
                   torch.arange(n, device=dev), self._ids(pages, dev))
        if self.buffer.is_cuda:
            torch.cuda.current_stream(dev).synchronize()

    def copy_pages(self, src_pages: Sequence[int], dst: PageStore,
                   dst_pages: Sequence[int]) -> None:
        """Copy page images to another store; one batched kernel when ``dst`` is a KV store here.

        Synchronous: on return the bytes are in ``dst`` (use :class:`~.swap.SwapEngine` for the
        asynchronous, overlapped path).

        Args:
            src_pages: page ids in this store.
            dst: destination store (same page-image signature).
            dst_pages: page ids in ``dst``, same length.
        """
        if len(src_pages) != len(dst_pages):
            raise ValueError(f"{len(src_pages)} source pages vs {len(dst_pages)} destination pages")
        check_compatible(self.layout, dst.layout)
        if not isinstance(dst, _KVPageStoreBase):
            super().copy_pages(src_pages, dst, dst_pages)
            return
        cuda_dev = next((b.device for b in (self.buffer, dst.buffer) if b.is_cuda), None)
        dev = cuda_dev if cuda_dev is not None else self.buffer.device
        copy_pages(self.page_view(), dst.page_view(), self._ids(src_pages, dev),
                   dst._ids(dst_pages, dev))
        if cuda_dev is not None:
            torch.cuda.current_stream(cuda_dev).synchronize()


def _contiguous_view(t: torch.Tensor, shape: KVShape) -> PageView:
    """A page-major ``[n, L2, E]`` word tensor as a :class:`PageView`."""
    n = t.shape[0]
    return PageView(flat_words(t, shape.word_dtype), n, shape.num_segs, shape.seg_words,
                    shape.num_segs * shape.seg_words, shape.seg_words)


class CudaPagedKVStore(_KVPageStoreBase):
    """Device tier: KV pages in HBM in FlashInfer's paged ``NHD`` layout, per layer.

    Args:
        num_pages: physical pages ``P``.
        shape: KV page shape.
        device: torch device (``"cuda"``; ``"cpu"`` works for tests of the layout logic).
        zero: fill with zeros (else the memory is uninitialised).
    """

    def __init__(self, num_pages: int, shape: KVShape, *, device: str | torch.device = "cuda",
                 zero: bool = True) -> None:
        self.shape = shape
        self.num_pages = num_pages
        dims = (shape.num_layers, 2, num_pages, shape.page_size, shape.num_kv_heads,
                shape.head_dim)
        alloc = torch.zeros if zero else torch.empty
        self.buffer = alloc(dims, dtype=shape.dtype, device=device)
        seg = shape.seg_nbytes
        streams = tuple(
            SegmentStream(self.buffer[layer, kv].data_ptr(), seg, seg)
            for layer in range(shape.num_layers)
            for kv in (0, 1)
        )
        self._layout = PageLayout(page_size=shape.page_size, num_pages=num_pages, streams=streams)

    def k_cache(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s key pages, ``[P, page, H, D]`` (FlashInfer NHD), a view."""
        return self.buffer[layer, 0]

    def v_cache(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s value pages, ``[P, page, H, D]`` (FlashInfer NHD), a view."""
        return self.buffer[layer, 1]

    def kv_cache(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_cache, v_cache)``: the ``paged_kv_cache`` argument of FlashInfer's wrappers."""
        return self.buffer[layer, 0], self.buffer[layer, 1]

    def k_buffer(self, layer: int) -> torch.Tensor:
        """Token view ``[P * page, H, D]`` (SGLang ``MHATokenToKVPool.k_buffer[layer]``)."""
        s = self.shape
        return self.buffer[layer, 0].view(self.num_pages * s.page_size, s.num_kv_heads, s.head_dim)

    def v_buffer(self, layer: int) -> torch.Tensor:
        """Token view ``[P * page, H, D]`` (SGLang ``MHATokenToKVPool.v_buffer[layer]``)."""
        s = self.shape
        return self.buffer[layer, 1].view(self.num_pages * s.page_size, s.num_kv_heads, s.head_dim)

    def write_kv(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' K and V (SGLang's ``set_kv_buffer``).

        Args:
            layer: layer index.
            slots: int64 token slots ``page * page_size + offset``, ``[n]``, on the device.
            k: ``[n, H, D]`` keys.
            v: ``[n, H, D]`` values.
        """
        self.k_buffer(layer)[slots] = k.to(self.shape.dtype)
        self.v_buffer(layer)[slots] = v.to(self.shape.dtype)

    def page_view(self) -> PageView:
        s = self.shape
        return PageView(flat_words(self.buffer, s.word_dtype), self.num_pages, s.num_segs,
                        s.seg_words, s.seg_words, self.num_pages * s.seg_words)


class PinnedHostKVStore(_KVPageStoreBase):
    """Host tier: page-major ``[P, L, 2, page, H, D]`` pinned DRAM (one contiguous run per page).

    Args:
        num_pages: physical pages ``P``.
        shape: KV page shape (same as the device tier's).
        pin: page-lock the memory (default: when CUDA is available).
    """

    def __init__(self, num_pages: int, shape: KVShape, *, pin: bool | None = None) -> None:
        self.shape = shape
        self.num_pages = num_pages
        if pin is None:
            pin = torch.cuda.is_available()
        dims = (num_pages, shape.num_layers, 2, shape.page_size, shape.num_kv_heads,
                shape.head_dim)
        self.buffer = torch.empty(dims, dtype=shape.dtype, pin_memory=pin)
        seg = shape.seg_nbytes
        streams = tuple(
            SegmentStream(self.buffer[0, layer, kv].data_ptr(), shape.page_nbytes, seg)
            for layer in range(shape.num_layers)
            for kv in (0, 1)
        )
        self._layout = PageLayout(page_size=shape.page_size, num_pages=num_pages, streams=streams)

    @property
    def pinned(self) -> bool:
        """Whether the memory is page-locked."""
        return self.buffer.is_pinned()

    def page_rows(self) -> torch.Tensor:
        """``[P, page_words]`` word view: row ``p`` is page ``p``'s image."""
        s = self.shape
        return flat_words(self.buffer, s.word_dtype).view(self.num_pages, s.num_segs * s.seg_words)

    def page_view(self) -> PageView:
        s = self.shape
        return PageView(flat_words(self.buffer, s.word_dtype), self.num_pages, s.num_segs,
                        s.seg_words, s.num_segs * s.seg_words, s.seg_words)

    def read_pages(self, pages: Sequence[int]) -> torch.Tensor:
        """Page images of ``pages`` (a CPU gather of contiguous rows).

        Args:
            pages: page ids.

        Returns:
            ``uint8`` CPU tensor ``[len(pages), page_nbytes]``.
        """
        ids = self._ids(pages, torch.device("cpu"))
        return self.buffer.view(torch.uint8).view(self.num_pages, -1).index_select(0, ids)

    def write_pages(self, pages: Sequence[int], data: torch.Tensor) -> None:
        """Overwrite ``pages`` with page images.

        Args:
            pages: page ids.
            data: ``uint8 [len(pages), page_nbytes]`` on any device.
        """
        _check_images(data, len(pages), self.shape.page_nbytes)
        ids = self._ids(pages, torch.device("cpu"))
        self.buffer.view(torch.uint8).view(self.num_pages, -1).index_copy_(0, ids, data.cpu())


def _check_images(data: torch.Tensor, n: int, page_nbytes: int) -> int:
    """Raise ValueError unless ``data`` is ``n`` page images; returns ``n``."""
    if tuple(data.shape) != (n, page_nbytes):
        raise ValueError(f"page images of shape {tuple(data.shape)} for {n} pages")
    return n


def make_cuda_tiers(shape: KVShape, device_pages: int, host_pages: int, *,
                    device: str | torch.device = "cuda", pin: bool | None = None,
                    base: int = 0) -> tuple[Tier, Tier]:
    """MemPool tiers over the CUDA stores: ``("device", HBM)`` and ``("host", pinned DRAM)``.

    Args:
        shape: KV page shape.
        device_pages: physical HBM pages.
        host_pages: physical pinned DRAM pages.
        device: torch device of the HBM tier (``"cpu"`` for tests).
        pin: page-lock the host tier (default: when CUDA is available).
        base: first page id the allocators hand out (SGLang keeps page 0 as padding: 1).

    Returns:
        ``(device_tier, host_tier)``, each a free-list allocator over its store.
    """
    dev = CudaPagedKVStore(device_pages, shape, device=device)
    host = PinnedHostKVStore(host_pages, shape, pin=pin)
    return (
        Tier("device", FreeListAllocator(device_pages - base, base=base), dev),
        Tier("host", FreeListAllocator(host_pages - base, base=base), host),
    )
