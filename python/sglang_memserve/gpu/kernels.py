"""Batched page copy between strided page stores (HBM pool, pinned DRAM, staging buffers).

Every MemPool KV store here is a set of ``L2 = 2 * num_layers`` *segments* per page, each
``E`` words long. A store is described by a :class:`PageView`: a flat word tensor plus a page
stride and a segment stride, so segment ``s`` of page ``p`` starts at word
``p * page_stride + s * seg_stride``:

* the HBM pool (FlashInfer / SGLang layer-first layout ``[L, 2, P, page, H, D]``):
  ``page_stride = E``, ``seg_stride = P * E``;
* pinned host pages and staging buffers (page-major ``[P, L, 2, page, H, D]``):
  ``page_stride = L2 * E``, ``seg_stride = E``.

:func:`copy_pages` moves ``dst[dst_ids[i]] = src[src_ids[i]]`` for a batch of scattered pages in
one launch: a Triton kernel on CUDA (which also reads or writes pinned host memory directly,
zero-copy, through unified addressing), or ``index_select`` / ``index_copy_`` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # Triton is optional: CPU-only installs use the torch path.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


@dataclass(frozen=True)
class PageView:
    """A store seen as ``num_pages`` pages of ``num_segs`` segments of ``seg_words`` words.

    Attributes:
        words: flat 1-D tensor over the store's memory (int32 words, or int16/uint8 when the
            segment size is not a multiple of 4 bytes).
        num_pages: physical pages.
        num_segs: segments per page (``2 * num_layers``).
        seg_words: words per segment.
        page_stride: words between page ``p`` and ``p + 1`` of one segment.
        seg_stride: words between segment ``s`` and ``s + 1`` of one page.
    """

    words: torch.Tensor
    num_pages: int
    num_segs: int
    seg_words: int
    page_stride: int
    seg_stride: int

    def as_strided(self) -> torch.Tensor:
        """A ``[num_pages, num_segs, seg_words]`` strided view over :attr:`words`.

        Returns:
            The view (writes through to the store).
        """
        return self.words.as_strided(
            (self.num_pages, self.num_segs, self.seg_words), (self.page_stride, self.seg_stride, 1)
        )


def word_dtype(seg_nbytes: int) -> torch.dtype:
    """The widest integer word that divides a segment.

    Args:
        seg_nbytes: bytes of one segment.

    Returns:
        ``torch.int32``, ``torch.int16`` or ``torch.uint8``.
    """
    if seg_nbytes % 4 == 0:
        return torch.int32
    if seg_nbytes % 2 == 0:
        return torch.int16
    return torch.uint8


def flat_words(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View a contiguous tensor's bytes as a flat tensor of ``dtype`` words.

    Args:
        t: a contiguous tensor.
        dtype: word type from :func:`word_dtype`.

    Returns:
        A 1-D view sharing ``t``'s memory.
    """
    if not t.is_contiguous():
        raise ValueError("page stores must be contiguous tensors")
    return t.reshape(-1).view(torch.uint8).view(dtype)


if HAVE_TRITON:

    @triton.jit
    def _copy_pages_kernel(
        src,
        dst,
        src_ids,
        dst_ids,
        src_page_stride,
        src_seg_stride,
        dst_page_stride,
        dst_seg_stride,
        seg_words,
        BLOCK: tl.constexpr,
    ):
        """Program (i, s, c): words [c*BLOCK, (c+1)*BLOCK) of segment s of the i-th page pair."""
        i = tl.program_id(0)
        s = tl.program_id(1).to(tl.int64)
        c = tl.program_id(2)
        sp = tl.load(src_ids + i).to(tl.int64)
        dp = tl.load(dst_ids + i).to(tl.int64)
        offs = c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < seg_words
        src_base = sp * src_page_stride + s * src_seg_stride
        dst_base = dp * dst_page_stride + s * dst_seg_stride
        x = tl.load(src + src_base + offs, mask=mask)
        tl.store(dst + dst_base + offs, x, mask=mask)


def _block_for(seg_words: int) -> int:
    """Words per Triton program: up to 4,096 (16 KiB of int32), a power of two."""
    block = 1
    while block < seg_words and block < 4096:
        block *= 2
    return block


def copy_pages(
    src: PageView,
    dst: PageView,
    src_ids: torch.Tensor,
    dst_ids: torch.Tensor,
    *,
    use_triton: bool | None = None,
) -> None:
    """Copy segment images ``dst[dst_ids[i]] = src[src_ids[i]]`` for every ``i`` in one batch.

    Runs on the current CUDA stream when a CUDA tensor is involved. Either side may be pinned
    host memory when the Triton path is used (zero-copy through unified addressing).

    Args:
        src: source store view.
        dst: destination store view (same ``num_segs``, ``seg_words`` and word dtype).
        src_ids: int64 page ids into ``src`` (on the kernel's device for Triton, else CPU).
        dst_ids: int64 page ids into ``dst``, same length.
        use_triton: force (True) or forbid (False) the Triton kernel; default: Triton when
            available and either side is a CUDA tensor.

    Returns:
        None. The copy is asynchronous on CUDA.
    """
    if (src.num_segs, src.seg_words) != (dst.num_segs, dst.seg_words):
        raise ValueError(
            f"segment shape mismatch: {(src.num_segs, src.seg_words)} vs "
            f"{(dst.num_segs, dst.seg_words)}"
        )
    if src.words.dtype != dst.words.dtype:
        raise ValueError(f"word dtype mismatch: {src.words.dtype} vs {dst.words.dtype}")
    n = int(src_ids.numel())
    if n != int(dst_ids.numel()):
        raise ValueError(f"{n} source pages vs {dst_ids.numel()} destination pages")
    if n == 0:
        return
    on_cuda = src.words.is_cuda or dst.words.is_cuda
    if use_triton is None:
        use_triton = HAVE_TRITON and on_cuda
    if use_triton:
        if not HAVE_TRITON:
            raise RuntimeError("Triton is not installed")
        block = _block_for(src.seg_words)
        grid = (n, src.num_segs, triton.cdiv(src.seg_words, block))
        _copy_pages_kernel[grid](
            src.words,
            dst.words,
            src_ids,
            dst_ids,
            src.page_stride,
            src.seg_stride,
            dst.page_stride,
            dst.seg_stride,
            src.seg_words,
            BLOCK=block,
            num_warps=4,
        )
        return
    # Torch path: gather on the source's device, then scatter on the destination's.
    # Segment by segment: each is a [pages, seg_words] view with contiguous rows, which
    # index_select / index_copy_ move row by row (a 3-D strided gather takes a slow path).
    # Blocking device change: a non-blocking device->host copy could be read before it lands.
    sdev, ddev = src.words.device, dst.words.device
    sids, dids = src_ids.to(sdev), dst_ids.to(ddev)
    sv, dv = src.as_strided(), dst.as_strided()
    for s in range(src.num_segs):
        dv[:, s, :].index_copy_(0, dids, sv[:, s, :].index_select(0, sids).to(ddev))
