"""Failures: peer killed or frozen mid-transfer -> typed error within the bound, and both
pools stay consistent (no half-indexed pages; the destination frees what it had reserved)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from mp_worker import PS, checksums, fill, make_pool

from sglang_memserve.mempool import (
    MemberInfo,
    MemPoolConfig,
    TransferError,
    TransferTimeout,
)

TIMEOUT = 2.0
CFG = MemPoolConfig(page_size=PS, transfer_timeout_s=TIMEOUT)
BIG = 6144  # scattered pages: 4 x 4 KiB blocks each, ~25k blocks, well over a second on loopback


@pytest.fixture(scope="module")
def src_pool():
    pool = make_pool("src", 2 * BIG + 64, CFG)
    pool.serve()
    yield pool
    pool.close()


def run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
        box["t"] = time.monotonic()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def test_destination_killed_mid_transfer(src_pool, spawn_worker):
    w = spawn_worker("victim", BIG + 16, transfer_timeout_s=TIMEOUT)
    src_pool.join(MemberInfo.from_json(w.info))
    got = src_pool.alloc_mem(2 * BIG)
    src_pool.free_mem(got[1::2])
    pages = got[::2]  # every other page: no merged blocks
    tokens = list(range(BIG * PS))
    before = src_pool.transfer_agent.bytes_written
    th, box = run_in_thread(lambda: src_pool.transfer_with_insert("victim", tokens, pages))
    time.sleep(0.4)
    assert th.is_alive(), "transfer finished before the kill: make it bigger"
    w.kill()
    killed_at = time.monotonic()
    th.join(TIMEOUT + 10)
    assert not th.is_alive()
    assert isinstance(box.get("error"), TransferError), box
    assert box["t"] - killed_at < TIMEOUT + 1.5
    assert src_pool.transfer_agent.bytes_written == before  # nothing counted as delivered
    src_pool.check_integrity()
    src_pool.free_mem(pages)
    src_pool.leave("victim")
    # The agent still works with another peer.
    w2 = spawn_worker("after", 64)
    src_pool.join(MemberInfo.from_json(w2.info))
    t = list(range(1000, 1000 + 3 * PS))
    p = fill(src_pool, t)
    assert src_pool.transfer_with_insert("after", t, p).pages_sent == 3
    assert w2.call("matched_checksums", t) == checksums(src_pool, p)
    w2.call("integrity")
    src_pool.check_integrity()


def test_source_killed_mid_transfer_destination_reaps(spawn_worker):
    cfg = MemPoolConfig(page_size=PS, transfer_timeout_s=1.0)  # lease 3 s
    dst = make_pool("dst", BIG + 16, cfg)
    dst.serve()
    try:
        w = spawn_worker("sender", 2 * BIG + 16, transfer_timeout_s=1.0)
        w.call("join", dst.member_info().to_json())
        tokens = list(range(BIG * PS))
        got = w.call("alloc", 2 * BIG)
        w.send_cmd("send", "dst", tokens, got[::2])
        deadline = time.monotonic() + 10
        while dst.pending_transfers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dst.pending_transfers == 1
        time.sleep(0.2)
        w.kill()
        dst.check_integrity()  # reserved pages count as in use meanwhile
        assert dst.match(tokens).num_tokens == 0
        deadline = time.monotonic() + cfg.txn_lease_s + 8  # + size-scaled part
        while dst.pending_transfers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dst.pending_transfers == 0
        counts = dst.check_integrity()["device"]
        assert counts["cached"] == 0 and counts["in_use"] == 0
        assert dst.match(tokens).num_tokens == 0
    finally:
        dst.close()


def test_frozen_destination_times_out_within_bound(src_pool, spawn_worker):
    w = spawn_worker("frozen", 64, transfer_timeout_s=TIMEOUT)
    src_pool.join(MemberInfo.from_json(w.info))
    t = list(range(5000, 5000 + 2 * PS))
    pages = fill(src_pool, t)
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(TransferTimeout):
            src_pool.transfer_with_insert("frozen", t, pages)
        assert time.monotonic() - t0 < TIMEOUT + 1.0
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    # The queued prepare ran after the thaw; its reservation is reaped after the lease.
    deadline = time.monotonic() + CFG.txn_lease_s + 5
    while w.call("pending") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert w.call("pending") == 0
    assert w.call("integrity")["device"]["in_use"] == 0
    src_pool.check_integrity()
