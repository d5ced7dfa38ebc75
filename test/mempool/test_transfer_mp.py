"""Multi-process transfers over real Mooncake TCP on loopback; bytes verified by checksum."""

from __future__ import annotations

import random

import pytest
from mp_worker import PS, checksums, fill, make_pool

from sglang_memserve.mempool import (
    LayoutMismatch,
    MemberInfo,
    MemPoolConfig,
    TransferError,
    UnknownPeer,
)

CFG = MemPoolConfig(page_size=PS, transfer_timeout_s=3.0)


def toks(n_pages: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n_pages * PS)]


@pytest.fixture(scope="module")
def local_pool():
    pool = make_pool("parent", 2048, CFG)
    pool.serve()
    yield pool
    pool.close()


def test_single_page_scattered_batch_and_large_run(local_pool, spawn_worker):
    w = spawn_worker("w1", 1024)
    local_pool.join(MemberInfo.from_json(w.info))
    agent = local_pool.transfer_agent
    cases = {"single": 1, "batch": 48, "large": 512}
    for name, n in cases.items():
        t = toks(n, hash(name) & 0xFFFF)
        if name == "batch":  # scatter the source pages
            got = local_pool.alloc_mem(2 * n)
            random.Random(0).shuffle(got)
            local_pool.free_mem(got[n:])
            pages = fill(local_pool, t, got[:n])
        else:
            pages = fill(local_pool, t)
        before = agent.bytes_written
        r = local_pool.transfer_with_insert("w1", t, pages)
        page_bytes = local_pool.tiers["device"].store.layout.page_nbytes
        assert (r.pages_sent, r.pages_skipped) == (n, 0)
        assert r.bytes_sent == agent.bytes_written - before == n * page_bytes
        assert w.call("matched_checksums", t) == checksums(local_pool, pages), name
    counts = w.call("integrity")["device"]
    assert counts["cached"] == sum(cases.values()) and counts["in_use"] == 0
    local_pool.check_integrity()


def test_delta_only_and_raw_transfer(local_pool, spawn_worker):
    w = spawn_worker("w2", 256)
    local_pool.join(MemberInfo.from_json(w.info))
    page_bytes = local_pool.tiers["device"].store.layout.page_nbytes
    t = toks(40, 7)
    pages = fill(local_pool, t)
    r1 = local_pool.transfer_with_insert("w2", t[: 25 * PS], pages[:25])
    assert r1.pages_sent == 25
    before = local_pool.transfer_agent.bytes_written
    r2 = local_pool.transfer_with_insert("w2", t, pages)
    assert (r2.pages_sent, r2.pages_skipped) == (15, 25)
    assert local_pool.transfer_agent.bytes_written - before == 15 * page_bytes
    assert w.call("matched_checksums", t) == checksums(local_pool, pages)
    r3 = local_pool.transfer_with_insert("w2", t, pages)  # everything there: nothing moves
    assert (r3.pages_sent, r3.bytes_sent) == (0, 0)
    # Raw transfer into pages the peer reserved.
    dst = w.call("alloc", 5)
    assert local_pool.transfer("w2", pages[3:8], dst) == 5 * page_bytes
    assert w.call("checksums", dst) == checksums(local_pool, pages[3:8])
    w.call("integrity")


def test_three_processes(spawn_worker):
    a, b = spawn_worker("a", 256), spawn_worker("b", 256)
    a.call("join", b.info)
    t = toks(30, 11)
    pages = a.call("scattered_fill", t)
    assert a.call("send", "b", t, pages) == (30, 0, 30 * 16384)
    assert b.call("matched_checksums", t) == a.call("matched_checksums", t)
    b.call("integrity")
    a.call("integrity")


def test_wrong_peer_is_an_immediate_clear_error(local_pool, spawn_worker):
    w = spawn_worker("w3", 64)
    t = toks(2, 3)
    pages = fill(local_pool, t)
    with pytest.raises(UnknownPeer):
        local_pool.transfer_with_insert("nobody", t, pages)
    impostor = MemberInfo.from_json({**w.info, "instance_id": "w-other"})
    local_pool.join(impostor)
    with pytest.raises(UnknownPeer, match="w-other"):
        local_pool.transfer_with_insert("w-other", t, pages)
    # Raw transfer to a segment nobody listens on: Mooncake fails fast.
    dead = MemberInfo.from_json({**w.info, "instance_id": "w-dead", "segment_name": "127.0.0.1:9"})
    local_pool.join(dead)
    with pytest.raises(TransferError):
        local_pool.transfer("w-dead", pages, [0, 1])
    with pytest.raises(LayoutMismatch):
        bad = MemberInfo.from_json(w.info)
        lay = bad.tiers["device"].layout.to_json()
        lay["streams"] = lay["streams"][:2]
        j = {**w.info, "instance_id": "w-bad"}
        j["tiers"] = {"device": {**w.info["tiers"]["device"], "layout": lay}}
        local_pool.join(MemberInfo.from_json(j))
        local_pool.transfer("w-bad", pages, [0, 1])
    local_pool.leave("w-other")
    with pytest.raises(UnknownPeer):
        local_pool.leave("w-other")
    assert w.call("pending") == 0
    local_pool.check_integrity()
