"""Small blocking clients for a PD cluster's HTTP endpoints (tests, benchmarks, demos)."""

from __future__ import annotations

from typing import Any

import requests


def generate(url: str, input_ids: list[int], max_new_tokens: int = 16,
             timeout: float = 120.0) -> dict[str, Any]:
    """Greedy ``POST /generate`` with EOS ignored; returns the JSON body (raises on HTTP errors)."""
    body = {"input_ids": input_ids, "sampling_params": {
        "temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    r = requests.post(f"{url}/generate", json=body, timeout=timeout)
    r.raise_for_status()
    return r.json()


def memserve_state(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The instance's ``/server_info`` ``internal_states[0]["memserve"]`` (empty if absent)."""
    info = requests.get(f"{url}/server_info", timeout=timeout).json()
    states = info.get("internal_states") or [{}]
    return dict(states[0].get("memserve") or {})


def hit_tokens(url: str) -> int:
    """Prompt tokens this instance's MemServe tree cache has served from cache (all tiers)."""
    counters = memserve_state(url).get("counters") or {}
    return int(sum((counters.get("hit_tokens") or {}).values()))


def memserve_integrity(url: str, timeout: float = 30.0) -> dict[str, dict[str, int]]:
    """Run the instance's MemPool integrity check (on its scheduler thread) and return, per tier,
    ``free``/``cached``/``in_use``/``engine``/``capacity`` pages: :meth:`MemPoolClient.integrity
    <sglang_memserve.mempool.client.MemPoolClient.integrity>` of the instance at ``url``.

    Raises:
        RuntimeError: the server has no MemServe control channel.
        MemPoolError: the check failed (an ``IntegrityError`` on the instance), or no control
            channel answered.
    """
    from sglang_memserve.mempool.client import MemPoolClient

    return MemPoolClient.from_url(url, timeout_s=timeout).integrity()
