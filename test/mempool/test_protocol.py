"""The one transfer_with_insert protocol (mempool.protocol) on a real MemPool, with a fake clock:
leases that grow with the bytes to receive, reaping without a further prepare, batches,
misaddressed requests refused over the real control channel."""

from __future__ import annotations

import pytest

from sglang_memserve.mempool import MemPool, MemPoolConfig, UnknownPeer, make_tensor_tier
from sglang_memserve.mempool.errors import OutOfPages, TransferError
from sglang_memserve.mempool.rpc import rpc_call

PS = 4
PAGE_NBYTES = 4096
RATE = 1e6  # bytes/s a healthy transfer is assumed to reach


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(pages: int = 64) -> tuple[MemPool, FakeClock]:
    cfg = MemPoolConfig(page_size=PS, transfer_timeout_s=1.0, min_transfer_rate_bps=RATE)
    pool = MemPool(cfg, "dst", {"device": make_tensor_tier("device", pages, PS,
                                                           page_nbytes=PAGE_NBYTES)})
    clock = FakeClock()
    pool.incoming.clock = clock
    return pool, clock


def tokens(n_pages: int, base: int = 100) -> list[int]:
    return list(range(base, base + n_pages * PS))


def test_slow_large_transfer_outlives_the_fixed_lease_and_commits() -> None:
    pool, clock = make_pool()
    cfg = pool.config
    toks = tokens(40)
    prep = pool.incoming.prepare("big", toks)
    assert prep["skip"] == 0 and len(prep["pages"]) == 40
    scaled = cfg.txn_lease_s + 40 * PAGE_NBYTES / RATE
    assert scaled > cfg.txn_lease_s + 0.1
    # Slower than the fixed lease of before (2 x timeout) and than txn_lease_s alone, but
    # within the lease scaled by the 160 KiB to receive: still reserved, then indexed.
    clock.now += cfg.txn_lease_s + 0.1
    assert pool.reap_expired() == 0 and pool.pending_transfers == 1
    assert pool.incoming.commit("big") == {"indexed": 40, "duplicates": 0}
    assert pool.match(toks).num_tokens == len(toks)
    counts = pool.check_integrity()["device"]
    assert counts["cached"] == 40 and counts["in_use"] == 0


def test_dead_source_is_reaped_without_another_prepare() -> None:
    pool, clock = make_pool()
    pool.incoming.prepare("orphan", tokens(8))
    assert pool.check_integrity()["device"]["in_use"] == 8
    clock.now += pool.incoming.lease_for(8 * PAGE_NBYTES) + 0.01
    pool._on_idle()  # what the control channel's thread runs when idle
    assert pool.pending_transfers == 0
    counts = pool.check_integrity()["device"]
    assert counts["in_use"] == 0 and counts["cached"] == 0
    with pytest.raises(TransferError, match="unknown or expired"):
        pool.incoming.commit("orphan")  # a source that wakes up late indexes nothing


def test_prefix_held_is_skipped_and_locked_until_commit() -> None:
    pool, _ = make_pool()
    toks = tokens(6)
    first = pool.alloc_mem(3)
    pool.insert(toks[: 3 * PS], first)
    prep = pool.incoming.prepare("t", toks)
    assert prep["skip"] == 3 * PS and len(prep["pages"]) == 3
    assert pool.evict(100) == 0  # the skipped prefix is locked
    pool.incoming.commit("t")
    assert pool.match(toks).num_tokens == len(toks)
    assert pool.evict(100) == 6
    pool.check_integrity()


def test_batch_refuses_per_item_and_duplicate_txn() -> None:
    pool, _ = make_pool(pages=10)
    out = pool.incoming.prepare_batch([
        {"txn": "a", "tokens": tokens(4, 1)},
        {"txn": "b", "tokens": tokens(20, 500)},  # more pages than the pool has
        {"txn": "c", "tokens": tokens(2, 900)},
    ])
    assert "pages" in out[0] and "pages" in out[2]
    assert out[1]["error"].startswith("OutOfPages")
    with pytest.raises(TransferError, match="already prepared"):
        pool.incoming.prepare("a", tokens(1, 7000))
    assert pool.incoming.abort("a") and not pool.incoming.abort("a")
    pool.incoming.commit("c")
    assert pool.check_integrity()["device"]["in_use"] == 0
    with pytest.raises(OutOfPages):
        pool.incoming.prepare("d", tokens(20, 3000))
    assert pool.pending_transfers == 0


def test_misaddressed_prepare_is_refused_over_the_control_channel() -> None:
    pool, _ = make_pool()
    endpoint = pool.serve().control_endpoint
    try:
        with pytest.raises(UnknownPeer, match="reached 'dst'"):
            rpc_call(endpoint, {"op": "kv_prepare", "txn": "x", "tokens": tokens(2),
                                "to": "someone-else"}, timeout_s=5)
        assert pool.pending_transfers == 0
        rep = rpc_call(endpoint, {"op": "kv_prepare", "txn": "y", "tokens": tokens(2)},
                       timeout_s=5, expect_instance="dst")
        assert len(rep["pages"]) == 2 and rep["layout"]["page_size"] == PS
        assert rpc_call(endpoint, {"op": "kv_abort", "txn": "y"}, timeout_s=5)["aborted"]
        assert pool.check_integrity()["device"]["in_use"] == 0
    finally:
        pool.close()
