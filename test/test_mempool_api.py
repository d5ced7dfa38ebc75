"""MemPool's API on real SGLang instances (tiny model, page size 16, a small DRAM tier): match,
swap_out / swap_in, delete and transfer_with_insert through MemPoolClient; swap_out into a full
DRAM tier (all or nothing); typed errors for bad arguments with the instance still serving; a source that dies after kv_prepare is reaped on the
scheduler's idle tick; a posted scheduler job that raises does not take the scheduler down.
Integrity holds after every step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.mempool.client import MemPoolClient
from sglang_memserve.mempool.errors import (
    InvalidRequest,
    MemPoolError,
    OutOfPages,
    PageLocked,
    UnknownPeer,
    UnknownPrefix,
    UnknownTier,
)
from sglang_memserve.mempool.rpc import rpc_call
from sglang_memserve.pd.client import memserve_state

PAGE = 16
PROMPT = [((i * 37) % 900) + 10 for i in range(300)]
WHOLE = len(PROMPT) // PAGE * PAGE
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
# DRAM tier: 5% of the device pool's 16,384 tokens, about 52 pages: small enough that a prefix
# within the tiny model's 2,048-token context overflows it.
HOST_RATIO = "0.05"


def generate(server: ServerProcess, ids: list[int]) -> dict:
    r = requests.post(f"{server.url}/generate", timeout=120,
                      json={"input_ids": ids, "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()


def cached(reply: dict) -> dict[str, int]:
    meta = reply["meta_info"]
    details = meta.get("cached_tokens_details") or {}
    return {"total": int(meta["cached_tokens"]), "device": int(details.get("device", 0)),
            "host": int(details.get("host", 0))}


@pytest.fixture(scope="module")
def tiered(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-path", str(tiny_model), "--instance-id", "api",
                        "--page-size", str(PAGE), "--mempool-host-ratio", HOST_RATIO],
                       tmp_path_factory.mktemp("logs"), name="api") as s:
        yield s


@pytest.fixture(scope="module")
def peer(tiny_model: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-path", str(tiny_model), "--instance-id", "api-peer",
                        "--page-size", str(PAGE)],
                       tmp_path_factory.mktemp("logs"), name="api-peer") as s:
        yield s


def test_match_swap_out_swap_in_delete(tiered: ServerProcess, settled) -> None:
    pool = MemPoolClient.from_url(tiered.url)
    first = generate(tiered, PROMPT)
    assert cached(first)["total"] == 0
    m = pool.match(PROMPT)
    assert (m.tokens, m.matched, m.tiers["device"]) == (WHOLE, WHOLE, WHOLE)
    on_device = settled(tiered.url)["cached"]

    # The prompt's pages and the answer's that extend them (the tree holds both).
    moved = pool.swap_out(PROMPT)
    assert moved >= WHOLE // PAGE
    m = pool.match(PROMPT)
    assert m.tiers == {"device": 0, "host": WHOLE}, m
    assert settled(tiered.url)["cached"] == on_device - moved
    assert pool.integrity()["host"]["cached"] >= WHOLE // PAGE

    assert pool.swap_in(PROMPT) == WHOLE // PAGE
    assert pool.match(PROMPT).tiers["device"] == WHOLE
    settled(tiered.url)
    again = generate(tiered, PROMPT)
    assert cached(again)["device"] >= WHOLE and cached(again)["host"] == 0, again["meta_info"]
    assert again["output_ids"] == first["output_ids"]

    # Out again: the next request is served from DRAM, same output.
    assert pool.swap_out(PROMPT) > 0
    from_dram = generate(tiered, PROMPT)
    assert cached(from_dram)["host"] >= WHOLE - PAGE, from_dram["meta_info"]
    assert from_dram["output_ids"] == first["output_ids"]
    settled(tiered.url)

    freed = pool.delete(PROMPT[:PAGE])  # the first page and everything below it
    assert sum(freed.values()) >= WHOLE // PAGE, freed
    assert pool.match(PROMPT).matched == 0
    settled(tiered.url)
    gone = generate(tiered, PROMPT)
    assert cached(gone)["total"] == 0, gone["meta_info"]
    assert gone["output_ids"] == first["output_ids"]

    # delete(tokens) drops the last page of tokens and below: the prefix before it stays.
    pool.delete(PROMPT)
    assert pool.match(PROMPT).matched == WHOLE - PAGE
    settled(tiered.url)


def test_swap_out_into_a_full_dram_tier_is_all_or_nothing(tiered: ServerProcess,
                                                           settled) -> None:
    pool = MemPoolClient.from_url(tiered.url)
    cap = pool.integrity()["host"]["capacity"]
    assert 16 <= cap <= 100, cap  # the tier this test is sized for

    # A prefix bigger than the whole DRAM tier: refused, nothing of it moves, still on HBM.
    big = [3 + (i * 13) % 1000 for i in range((cap + 4) * PAGE)]
    first = generate(tiered, big)
    held = pool.match(big).tiers
    assert held["device"] == len(big), held
    with pytest.raises(OutOfPages, match="host"):
        pool.swap_out(big)
    assert pool.match(big).tiers == held
    settled(tiered.url)
    again = generate(tiered, big)
    assert cached(again)["device"] >= len(big) - PAGE and cached(again)["host"] == 0
    assert again["output_ids"] == first["output_ids"]
    pool.delete(big[:PAGE])
    settled(tiered.url)

    # DRAM full of another prefix: room is made by evicting it (LRU) and all of this one moves.
    a, b = ([base + (i * 29) % 900 for i in range(cap * 2 // 3 * PAGE)] for base in (5, 9))
    out_a, out_b = generate(tiered, a), generate(tiered, b)
    assert pool.swap_out(a) >= len(a) // PAGE
    assert pool.match(a).tiers["host"] == len(a)
    assert pool.swap_out(b) >= len(b) // PAGE
    assert pool.match(b).tiers == {"device": 0, "host": len(b)}
    assert pool.match(a).tiers["host"] < len(a)  # evicted (at least its tail) for b
    settled(tiered.url)
    host = pool.integrity()["host"]
    assert host["engine"] == 0 and host["in_use"] == 0, host  # free + cached == capacity
    from_dram = generate(tiered, b)
    assert cached(from_dram)["host"] >= len(b) - PAGE, from_dram["meta_info"]
    assert from_dram["output_ids"] == out_b["output_ids"]
    assert generate(tiered, a)["output_ids"] == out_a["output_ids"]
    settled(tiered.url)


def test_bad_arguments_get_typed_errors_and_the_instance_keeps_serving(
        tiered: ServerProcess, peer: ServerProcess, settled) -> None:
    pool = MemPoolClient.from_url(tiered.url)
    other = [7 + (i % 50) for i in range(64)]
    for op, call in {
        "not token ids": lambda: pool.match(["a", "b"]),  # type: ignore[list-item]
        "less than a page": lambda: pool.match([1, 2, 3]),
        "negative id": lambda: pool.delete([-1] * PAGE),
        "not an endpoint": lambda: pool.transfer_with_insert(PROMPT, "nowhere"),
    }.items():
        with pytest.raises(InvalidRequest):
            call()
            pytest.fail(op)
    with pytest.raises(UnknownPrefix):
        pool.delete(other)
    with pytest.raises(UnknownPrefix):
        pool.swap_out(other)
    with pytest.raises(UnknownPrefix):
        pool.swap_in(other)
    with pytest.raises(UnknownTier):
        MemPoolClient.from_url(peer.url).swap_out(PROMPT)
    # Pages a transfer holds are busy: kv_prepare of a longer prompt locks the cached prefix.
    generate(tiered, PROMPT)
    control = memserve_state(tiered.url)["endpoints"]["control"]
    rpc_call(control, {"op": "kv_prepare", "txn": "hold", "tokens": PROMPT + other},
             timeout_s=30)
    try:
        with pytest.raises(PageLocked):
            pool.delete(PROMPT)
        with pytest.raises(PageLocked):
            pool.swap_out(PROMPT)
    finally:
        assert rpc_call(control, {"op": "kv_abort", "txn": "hold"}, timeout_s=30)["aborted"]
    assert pool.match(PROMPT).matched >= WHOLE - PAGE  # nothing changed
    assert generate(tiered, [5, 6, 7])["meta_info"]["completion_tokens"] == 8
    settled(tiered.url)


def test_transfer_with_insert_to_a_peer(tiered: ServerProcess, peer: ServerProcess,
                                        settled) -> None:
    src, dst = MemPoolClient.from_url(tiered.url), MemPoolClient.from_url(peer.url)
    prompt = PROMPT[::-1]
    first = generate(tiered, prompt)
    if src.match(prompt).tiers["device"] < WHOLE:
        src.swap_in(prompt)
    with pytest.raises(UnknownPeer):  # the peer is not the instance named: refused there
        src.transfer_with_insert(prompt, MemPoolClient(dst.control, "someone-else"))
    assert dst.match(prompt).matched == 0
    out = src.transfer_with_insert(prompt, dst)
    assert out["sent_pages"] == WHOLE // PAGE and out["skip"] == 0
    assert dst.match(prompt).tiers["device"] == WHOLE
    hit = generate(peer, prompt)
    assert cached(hit)["total"] >= WHOLE
    assert hit["output_ids"] == first["output_ids"]
    assert src.transfer_with_insert(prompt, dst)["sent_pages"] == 0  # delta only
    settled(peer.url)
    settled(tiered.url)


def test_dead_source_after_prepare_is_reaped_on_the_idle_tick(tiered: ServerProcess,
                                                              settled) -> None:
    """The test is the source: it prepares, then goes silent. No other prepare arrives; the
    idle scheduler's tick frees the pages once the lease passes."""
    control = memserve_state(tiered.url)["endpoints"]["control"]
    tokens = [11 + (i * 7) % 800 for i in range(10 * PAGE)]
    prep = rpc_call(control, {"op": "kv_prepare", "txn": "dies", "tokens": tokens},
                    timeout_s=30)
    assert len(prep["pages"]) == 10
    assert MemPoolClient(control).integrity()["device"]["in_use"] == 10
    t0 = time.monotonic()
    while memserve_state(tiered.url)["pending_transfers"] and time.monotonic() - t0 < 60:
        time.sleep(1.0)
    state = memserve_state(tiered.url)
    assert state["pending_transfers"] == 0 and state["peer"]["reaped"] >= 1
    assert time.monotonic() - t0 > 15  # the lease (2 x 10 s + 1 s), not at once
    settled(tiered.url)
    with pytest.raises(MemPoolError, match="unknown or expired"):
        rpc_call(control, {"op": "kv_commit", "txn": "dies"}, timeout_s=30)


def test_failing_posted_job_leaves_the_scheduler_serving(tiered: ServerProcess,
                                                         settled) -> None:
    control = memserve_state(tiered.url)["endpoints"]["control"]
    before = memserve_state(tiered.url)["bridge"]["failed_posts"]
    # With a transfer pending, a queued commit whose txn id is a list raises TypeError in the
    # posted job on the scheduler thread (the bridge used to re-raise it into SGLang's loop,
    # which killed the server).
    rpc_call(control, {"op": "kv_prepare", "txn": "pending", "tokens": PROMPT[:2 * PAGE]},
             timeout_s=30)
    assert rpc_call(control, {"op": "kv_commit", "txns": [[1, 2]], "wait": False},
                    timeout_s=30)["queued"] == 1
    t0 = time.monotonic()
    while memserve_state(tiered.url)["bridge"]["failed_posts"] == before:
        assert time.monotonic() - t0 < 30
        time.sleep(0.5)
    assert "TypeError" in memserve_state(tiered.url)["bridge"]["last_error"]
    assert generate(tiered, PROMPT[:40])["meta_info"]["completion_tokens"] == 8
    assert rpc_call(control, {"op": "kv_abort", "txn": "pending"}, timeout_s=30)["aborted"]
    settled(tiered.url)
