"""MemPool's GPU path: CUDA page stores, batched swap, FlashInfer attention over pool pages, and
the measured cost model.

Modules:

* ``costmodel`` -- the versioned exec(x, y) / swap / transfer cost table (pure Python).
* ``kernels`` -- batched scattered-page copy (Triton on CUDA, torch elsewhere).
* ``kv_store`` -- ``CudaPagedKVStore`` (HBM, FlashInfer paged layout) and ``PinnedHostKVStore``.
* ``swap`` -- ``SwapEngine``: asynchronous HBM <-> pinned DRAM swap on side streams.
* ``attention`` -- FlashInfer paged prefill/decode over store pages, and an fp32 reference.

Only ``costmodel`` is imported eagerly; the others need torch (and CUDA to be useful).
"""

from .costmodel import CostTable, load_table

__all__ = ["CostTable", "load_table"]
