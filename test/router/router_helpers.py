"""Helpers of the router tests (importable: test/router is on sys.path while they run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from sglang_memserve.cluster import MemServeRouterProcess

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


def generate(url: str, ids: list[int], headers: dict[str, str] | None = None,
             sampling: dict | None = None) -> tuple[dict, dict[str, str]]:
    """Greedy /generate with token ids; returns (body, response headers)."""
    r = requests.post(f"{url}/generate", timeout=120, headers=headers or {},
                      json={"input_ids": ids, "sampling_params": sampling or GREEDY})
    assert r.status_code == 200, r.text
    return r.json(), dict(r.headers)


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_router(args: list[str], log_dir: Path) -> MemServeRouterProcess:
    # Fast health checks so a killed instance leaves within ~2 s.
    return MemServeRouterProcess([*args, "--health-check-interval-secs", "0.5",
                                  "--health-check-timeout-secs", "5",
                                  "--health-failure-threshold", "3"], log_dir).start()
