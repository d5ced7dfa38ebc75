"""Delta-only transfers (PD-Caching-2): the second turn of a conversation sends prefill -> decode
only the pages decode does not already hold. Measured with prefill's own counter of the KV bytes
it sent (``sglang:kv_transfer_total_mb``, see sglang_memserve.pd.metrics)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sglang_memserve.pd import PdCluster
from sglang_memserve.pd.client import generate
from sglang_memserve.pd.metrics import TransferStats, kv_bytes_per_token, kv_transfer_stats


def transferred_tokens(pd: PdCluster, before: TransferStats, bytes_per_token: int) -> int:
    """Tokens of KV sent since ``before`` (waits for prefill to record the transfer)."""
    deadline = time.monotonic() + 10
    while True:
        delta = kv_transfer_stats(pd.prefill.url) - before
        if delta.transfers >= 1 or time.monotonic() > deadline:
            assert delta.transfers == 1, delta
            return delta.tokens(bytes_per_token)
        time.sleep(0.1)


def two_turns(pd: PdCluster, bpt: int, first: list[int], follow: list[int]
              ) -> list[tuple[int, int, int]]:
    """(prompt tokens, cached tokens, transferred tokens) of each turn."""
    out = []
    ids = first
    for turn in range(2):
        before = kv_transfer_stats(pd.prefill.url)
        body = generate(pd.url, ids, 16)
        out.append((len(ids), body["meta_info"]["cached_tokens"],
                    transferred_tokens(pd, before, bpt)))
        ids = ids + body["output_ids"] + follow
        del turn
    return out


@pytest.mark.parametrize("stage", ["pd_basic", "pd_cached"])
def test_second_turn_transfer(stage: str, request: pytest.FixtureRequest, tiny_model: Path
                              ) -> None:
    pd: PdCluster = request.getfixturevalue(stage)
    bpt = kv_bytes_per_token(str(tiny_model))
    first = [(7 * i + 3) % 900 + 20 for i in range(240)]  # a prompt no other test sends
    follow = [(11 * i + 5) % 900 + 20 for i in range(40)]
    (p1, _, t1), (p2, c2, t2) = two_turns(pd, bpt, first, follow)
    assert t1 == p1  # a new prompt: all of it crosses the wire
    if stage == "pd_basic":
        assert t2 == p2
    else:
        # Decode kept turn 1's prompt and answer: only the new suffix is sent.
        assert t2 < p2
        assert t2 <= p2 - p1
        assert c2 >= p1
