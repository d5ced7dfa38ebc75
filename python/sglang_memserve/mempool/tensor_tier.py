"""Tensor-backed tier adapters (CPU or any torch device) for tests and benchmarks.

* :class:`FreeListAllocator` -- a plain free list over ids ``[base, base + capacity)``.
* :class:`ContiguousTensorStore` -- one ``uint8 [num_pages, page_nbytes]`` tensor; a page is one
  segment.
* :class:`RowTensorStore` -- pages over existing per-stream tensors of token rows (how the
  cache backend views SGLang's KV pools).
* :class:`LayerFirstTensorStore` -- per layer K and V tensors ``[num_pages * page_size, heads,
  dim]``, the layout of SGLang's ``MHATokenToKVPool``; a page is ``2 * num_layers`` segments
  (K0, V0, K1, V1, ...).

``make_tensor_tier`` builds a :class:`~.tier.Tier` from either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .errors import CapacityError, OutOfPages
from .tier import PageAllocator, PageLayout, PageStore, Region, SegmentStream, Tier


class FreeListAllocator(PageAllocator):
    """A free list. Allocation order is lowest id first, so shrinking rarely has to relocate."""

    def __init__(self, capacity: int, *, base: int = 0, max_capacity: int | None = None) -> None:
        self._base = base
        self._max = capacity if max_capacity is None else max_capacity
        if not 0 <= capacity <= self._max:
            raise ValueError(f"capacity {capacity} outside [0, {self._max}]")
        self._capacity = capacity
        self._free: set[int] = set(range(base, base + capacity))

    @property
    def max_capacity(self) -> int:
        return self._max

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPages("?", n, len(self._free))
        # Lowest ids first keeps the top of the range free for cheap shrinking; O(free log free)
        # is fine at test sizes, an adapter over a real allocator uses that allocator's order.
        pages = sorted(self._free)[:n]
        self._free.difference_update(pages)
        return pages

    def free(self, pages: Iterable[int]) -> None:
        pages = list(pages)
        self.check_freeable(pages, self._free)
        self._free.update(pages)

    def free_page_ids(self) -> set[int]:
        return set(self._free)

    def resize(self, new_capacity: int) -> None:
        if not 0 <= new_capacity <= self._max:
            raise CapacityError(f"capacity {new_capacity} outside [0, {self._max}]")
        old_top, new_top = self._base + self._capacity, self._base + new_capacity
        if new_top < old_top:
            busy = [p for p in range(new_top, old_top) if p not in self._free]
            if busy:
                raise CapacityError(f"cannot retire pages still in use: {busy[:8]}...")
            self._free.difference_update(range(new_top, old_top))
        else:
            self._free.update(range(old_top, new_top))
        self._capacity = new_capacity


class _TensorStoreBase(PageStore):
    """Shared helpers: stores whose segments are views of torch tensors."""

    _layout: PageLayout
    _tensors: list[torch.Tensor]

    @property
    def layout(self) -> PageLayout:
        return self._layout

    @property
    def device(self) -> str:
        return str(self._tensors[0].device)

    def regions(self) -> list[Region]:
        return [Region(t.data_ptr(), t.numel() * t.element_size()) for t in self._tensors]

    def _byte_views(self) -> list[torch.Tensor]:
        """One ``uint8 [num_pages, segment_nbytes]`` view per stream, in page-image order."""
        raise NotImplementedError

    def read_pages(self, pages: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(list(pages), dtype=torch.long, device=self._tensors[0].device)
        parts = [v.index_select(0, idx) for v in self._byte_views()]
        return torch.cat(parts, dim=1).cpu()

    def write_pages(self, pages: Sequence[int], data: torch.Tensor) -> None:
        dev = self._tensors[0].device
        idx = torch.as_tensor(list(pages), dtype=torch.long, device=dev)
        data = data.to(dev)
        if data.shape != (len(idx), self._layout.page_nbytes):
            raise ValueError(f"page images of shape {tuple(data.shape)} for {len(idx)} pages")
        off = 0
        for v in self._byte_views():
            n = v.shape[1]
            v.index_copy_(0, idx, data[:, off : off + n])
            off += n

    def copy_pages(
        self, src_pages: Sequence[int], dst: PageStore, dst_pages: Sequence[int]
    ) -> None:
        if (
            isinstance(dst, _TensorStoreBase)
            and type(dst) is type(self)
            and dst.layout.signature == self.layout.signature
            and dst.device == self.device
            and len(src_pages) == len(dst_pages)
        ):
            # Same shape of views: copy stream by stream without building page images.
            dev = self._tensors[0].device
            si = torch.as_tensor(list(src_pages), dtype=torch.long, device=dev)
            di = torch.as_tensor(list(dst_pages), dtype=torch.long, device=dev)
            for sv, dv in zip(self._byte_views(), dst._byte_views(), strict=True):
                dv.index_copy_(0, di, sv.index_select(0, si))
            return
        super().copy_pages(src_pages, dst, dst_pages)


class ContiguousTensorStore(_TensorStoreBase):
    """Pages as rows of one ``uint8 [num_pages, page_nbytes]`` tensor: one segment per page."""

    def __init__(
        self, num_pages: int, page_size: int, page_nbytes: int, *, device: str = "cpu"
    ) -> None:
        self.buf = torch.zeros((num_pages, page_nbytes), dtype=torch.uint8, device=device)
        self._tensors = [self.buf]
        self._layout = PageLayout(
            page_size=page_size,
            num_pages=num_pages,
            streams=(SegmentStream(self.buf.data_ptr(), page_nbytes, page_nbytes),),
        )

    def _byte_views(self) -> list[torch.Tensor]:
        return [self.buf]


class RowTensorStore(_TensorStoreBase):
    """Pages over existing tensors, one per segment stream, each with ``num_pages * page_size``
    rows (token slots): page ``p`` is rows ``[p * page_size, (p + 1) * page_size)`` of every
    tensor. SGLang's ``MHATokenToKVPool`` (``k_buffer + v_buffer``) and HiCache's layer-first
    host pool are stores of this kind; the store only views their memory.

    Raises:
        ValueError: no tensors, a tensor that is not contiguous, or row counts that differ.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], page_size: int) -> None:
        if not tensors:
            raise ValueError("a row store needs at least one tensor")
        rows = tensors[0].shape[0]
        if any(t.shape[0] != rows or not t.is_contiguous() for t in tensors):
            raise ValueError("row-store tensors must be contiguous with equal row counts")
        num_pages = rows // page_size
        self._tensors = list(tensors)
        segs = [page_size * t[0].numel() * t.element_size() for t in self._tensors]
        self._layout = PageLayout(
            page_size=page_size,
            num_pages=num_pages,
            streams=tuple(SegmentStream(t.data_ptr(), n, n)
                          for t, n in zip(self._tensors, segs, strict=True)),
        )
        self._views = [t.reshape(-1).view(torch.uint8)[: num_pages * n].view(num_pages, n)
                       for t, n in zip(self._tensors, segs, strict=True)]

    def _byte_views(self) -> list[torch.Tensor]:
        return self._views


class LayerFirstTensorStore(RowTensorStore):
    """SGLang ``MHATokenToKVPool``-like layout: ``k[l]``, ``v[l]`` of shape
    ``[num_pages * page_size, heads, dim]``; page ``p`` holds tokens
    ``[p * page_size, (p + 1) * page_size)`` of every layer (segments K0, V0, K1, V1, ...)."""

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        *,
        num_layers: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float16,
        device: str = "cpu",
    ) -> None:
        shape = (num_pages * page_size, heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        super().__init__([t for kv in zip(self.k, self.v, strict=True) for t in kv], page_size)


def make_tensor_tier(
    name: str,
    num_pages: int,
    page_size: int,
    *,
    capacity: int | None = None,
    page_nbytes: int | None = None,
    num_layers: int | None = None,
    heads: int = 1,
    head_dim: int = 8,
    dtype: torch.dtype = torch.float16,
    device: str = "cpu",
) -> Tier:
    """Build a tensor-backed :class:`Tier`.

    Args:
        name: tier name ("device", "host", ...).
        num_pages: physical pages (the most the tier can grow to).
        page_size: tokens per page.
        capacity: initial allocator capacity (default: all physical pages).
        page_nbytes: if given, a :class:`ContiguousTensorStore` with pages of this many bytes.
        num_layers: if given (and ``page_nbytes`` is not), a :class:`LayerFirstTensorStore`.
        heads, head_dim, dtype, device: shape of the layer-first store / device of either.

    Returns:
        The tier (allocator ids ``[0, capacity)``, growable to ``num_pages``).
    """
    if page_nbytes is not None:
        store: PageStore = ContiguousTensorStore(num_pages, page_size, page_nbytes, device=device)
    elif num_layers is not None:
        store = LayerFirstTensorStore(
            num_pages,
            page_size,
            num_layers=num_layers,
            heads=heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )
    else:
        raise ValueError("give page_nbytes (contiguous store) or num_layers (layer-first store)")
    cap = num_pages if capacity is None else capacity
    return Tier(name, FreeListAllocator(cap, max_capacity=num_pages), store)
