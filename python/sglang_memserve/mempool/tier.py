"""Tier interfaces: a tier is a page allocator plus a page store over one piece of memory.

A MemPool tier ("device", "host", ...) is split in two so that adapters can reuse memory and
allocators that already exist (SGLang's ``token_to_kv_pool_allocator`` / ``MHATokenToKVPool``,
HiCache's host pool, a CUDA paged store) without ever putting two allocators over the same pages:

* :class:`PageAllocator` -- the single source of truth for which page ids are free. It knows
  nothing about bytes.
* :class:`PageStore` -- the bytes of the pages. It describes its memory as a list of
  :class:`Region` (what Mooncake registers) and, for every page, the list of ``(addr, nbytes)``
  segments that page occupies, through an affine :class:`PageLayout`: segment ``i`` of page ``p``
  lives at ``streams[i].base + p * streams[i].stride``. A layer-first KV pool (per layer K and V
  tensors ``[num_pages * page_size, heads, dim]``) has ``2 * num_layers`` streams; a contiguous
  store has one. Page ids are absolute: page ``p`` of a store always lives at the same addresses
  (SGLang reserves page 0 as padding; its allocator simply never hands it out).

The *page image* of a page is the concatenation of its segments in stream order. Two stores with
equal :meth:`PageLayout.signature` hold interchangeable page images, which is what swap and
transfer move. Implementations: ``tensor_tier`` (CPU tensors, for tests and benchmarks);
``sglang_memserve.gpu`` (CUDA); the cache backend's adapters over SGLang's pools.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch

from .errors import LayoutMismatch, MemPoolError, PageOwnershipError


@dataclass(frozen=True)
class Region:
    """A piece of memory to register with the transfer engine."""

    addr: int
    nbytes: int


@dataclass(frozen=True)
class SegmentStream:
    """One segment of every page: page ``p``'s segment is at ``base + p * stride``."""

    base: int
    stride: int
    nbytes: int

    def __post_init__(self) -> None:
        if self.nbytes <= 0 or self.stride < self.nbytes:
            raise ValueError(f"bad segment stream {self}: need 0 < nbytes <= stride")


@dataclass(frozen=True)
class PageLayout:
    """Where every page's bytes live (see the module docstring).

    Attributes:
        page_size: tokens per page.
        num_pages: physical pages: valid page ids are ``range(num_pages)``.
        streams: one :class:`SegmentStream` per segment of a page, in page-image order.
    """

    page_size: int
    num_pages: int
    streams: tuple[SegmentStream, ...]

    @property
    def page_nbytes(self) -> int:
        """Bytes of one page image."""
        return sum(s.nbytes for s in self.streams)

    @property
    def signature(self) -> tuple[int, tuple[int, ...]]:
        """What must be equal for two stores to exchange pages: page size and segment sizes."""
        return (self.page_size, tuple(s.nbytes for s in self.streams))

    def segments(self, page: int) -> list[tuple[int, int]]:
        """The ``(addr, nbytes)`` segments of ``page``, in page-image order.

        Raises:
            MemPoolError: if ``page`` is not a physical page of this layout.
        """
        if not 0 <= page < self.num_pages:
            raise MemPoolError(f"page {page} outside physical range [0, {self.num_pages})")
        return [(s.base + page * s.stride, s.nbytes) for s in self.streams]

    def to_json(self) -> dict:
        """A JSON-able form (sent to peers in membership info)."""
        return {
            "page_size": self.page_size,
            "num_pages": self.num_pages,
            "streams": [[s.base, s.stride, s.nbytes] for s in self.streams],
        }

    @classmethod
    def from_json(cls, obj: dict) -> PageLayout:
        """Inverse of :meth:`to_json`."""
        return cls(
            page_size=int(obj["page_size"]),
            num_pages=int(obj["num_pages"]),
            streams=tuple(SegmentStream(int(b), int(st), int(n)) for b, st, n in obj["streams"]),
        )


def check_compatible(a: PageLayout, b: PageLayout) -> None:
    """Raise :class:`LayoutMismatch` unless pages of ``a`` and ``b`` are interchangeable."""
    if a.signature != b.signature:
        raise LayoutMismatch(f"page layouts differ: {a.signature} vs {b.signature}")


class PageAllocator(abc.ABC):
    """Free list of page ids ``[base, base + capacity)``; the only owner of "is this page free".

    The allocator does not know who uses an allocated page (the pool tracks that). ``capacity``
    is elastic between 0 and ``max_capacity`` (the physical pages behind it).

    Subclasses set ``_base`` and ``_capacity`` (``resize`` keeps the latter current).
    """

    _base: int
    _capacity: int

    @property
    def base(self) -> int:
        """First page id this allocator manages (SGLang: 1, page 0 is padding)."""
        return self._base

    @property
    def capacity(self) -> int:
        """Pages currently managed: ids ``range(base, base + capacity)``."""
        return self._capacity

    @property
    @abc.abstractmethod
    def max_capacity(self) -> int:
        """Largest capacity :meth:`resize` accepts (physical pages behind the allocator)."""

    @property
    @abc.abstractmethod
    def num_free(self) -> int:
        """Pages that :meth:`alloc` can hand out right now."""

    @abc.abstractmethod
    def alloc(self, n: int) -> list[int]:
        """Take ``n`` free pages. All or nothing.

        Changes: the returned pages are no longer free.

        Returns:
            ``n`` distinct page ids.

        Raises:
            OutOfPages: fewer than ``n`` free pages; nothing was taken.
        """

    @abc.abstractmethod
    def free(self, pages: Iterable[int]) -> None:
        """Return pages to the free list.

        Changes: the pages become free.

        Raises:
            PageOwnershipError: a page is already free or outside the managed range; nothing
                was freed.
        """

    @abc.abstractmethod
    def free_page_ids(self) -> set[int]:
        """The set of free page ids (for integrity checks; may be O(capacity))."""

    @abc.abstractmethod
    def resize(self, new_capacity: int) -> None:
        """Grow or shrink the managed range to ``range(base, base + new_capacity)``.

        Growing adds the new ids as free. Shrinking requires every retired id to be free (the
        pool relocates or evicts pages first).

        Changes: capacity and the free list.

        Raises:
            CapacityError: beyond ``max_capacity``, negative, or a retired page is not free;
                nothing was changed.
        """

    @property
    def page_ids(self) -> range:
        """All page ids currently managed."""
        return range(self.base, self.base + self.capacity)

    def check_freeable(self, pages: Sequence[int], free: Collection[int]) -> None:
        """What :meth:`free` must check first. Changes nothing.

        Raises:
            PageOwnershipError: a page of ``pages`` is in ``free`` (already free), outside the
                managed range, or repeated.
        """
        top = self.base + self.capacity
        bad = [p for p in pages if p in free or not self.base <= p < top]
        if bad or len(set(pages)) != len(pages):
            raise PageOwnershipError(
                f"cannot free pages {(bad or list(pages))[:8]}: already free, foreign or repeated"
            )


class PageStore(abc.ABC):
    """The bytes of a tier's pages. Subclasses give :attr:`layout` and the copy helpers.

    Nothing here allocates: which pages are free is the :class:`PageAllocator`'s business.
    """

    @property
    @abc.abstractmethod
    def layout(self) -> PageLayout:
        """Affine description of where every page's segments are."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """``"cpu"`` or a torch device string such as ``"cuda:0"``."""

    @abc.abstractmethod
    def regions(self) -> list[Region]:
        """Memory regions to register with the transfer engine; every segment lies in one."""

    @abc.abstractmethod
    def read_pages(self, pages: Sequence[int]) -> torch.Tensor:
        """Page images of ``pages``.

        Changes: nothing.

        Returns:
            A ``uint8`` CPU tensor of shape ``[len(pages), layout.page_nbytes]``.
        """

    @abc.abstractmethod
    def write_pages(self, pages: Sequence[int], data: torch.Tensor) -> None:
        """Overwrite ``pages`` with page images ``data`` (``uint8 [len(pages), page_nbytes]``,
        any device).

        Changes: the bytes of ``pages`` only.
        """

    @property
    def page_size(self) -> int:
        """Tokens per page."""
        return self.layout.page_size

    def page_segments(self, page: int) -> list[tuple[int, int]]:
        """``(addr, nbytes)`` segments of ``page`` in page-image order."""
        return self.layout.segments(page)

    def copy_pages(
        self, src_pages: Sequence[int], dst: PageStore, dst_pages: Sequence[int]
    ) -> None:
        """Copy page images ``self[src_pages]`` -> ``dst[dst_pages]`` (local, same process).

        The default goes through a CPU page-image tensor; stores override it with a faster path
        (same-device ``index_copy``, pinned DMA...).

        Changes: the bytes of ``dst_pages`` in ``dst`` only.

        Raises:
            LayoutMismatch: the two layouts are not interchangeable.
            ValueError: the page lists differ in length.
        """
        if len(src_pages) != len(dst_pages):
            raise ValueError(f"{len(src_pages)} source pages vs {len(dst_pages)} destination pages")
        check_compatible(self.layout, dst.layout)
        if src_pages:
            dst.write_pages(dst_pages, self.read_pages(src_pages))


@dataclass(frozen=True)
class Tier:
    """A named tier: one allocator over one store (never two allocators over one store)."""

    name: str
    allocator: PageAllocator
    store: PageStore

    def __post_init__(self) -> None:
        top = self.allocator.base + self.allocator.max_capacity
        if self.allocator.base < 0 or top > self.store.layout.num_pages:
            raise ValueError(
                f"tier {self.name!r}: allocator range [{self.allocator.base}, {top}) exceeds "
                f"the store's {self.store.layout.num_pages} physical pages"
            )

    @property
    def page_size(self) -> int:
        """Tokens per page."""
        return self.store.page_size
