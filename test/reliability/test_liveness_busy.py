"""A busy but alive instance is not dropped by the router's liveness probe (real SGLang).

One colocated MemServe instance on the bench model (31.8M parameters: ~1 s per 2,000 prompt
tokens here) behind a real memserve-router with its default liveness probe (``/ping`` every
0.5 s, 1.5 s timeout, 2 misses). The test keeps it busy with long prefills (4 clients sending
6,000-token prompts without a common prefix) for ~25 s and checks, meanwhile, that the
scheduler really was busy -- SGLang's ``/health``, which generates a token through it, took
longer than the liveness timeout at least once -- and that the router never took the instance
out of rotation nor missed a probe twice in a row, and that every request succeeded.
(docs/pd.md: a readiness check through the scheduler with threshold 1 dropped a busy prefill.)
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess
from sglang_memserve.model import ensure_model

BUSY_S = 25.0
PROMPT_TOKENS = 6000


@pytest.mark.slow
def test_busy_instance_stays_in_rotation(tmp_path: Path) -> None:
    model = ensure_model("bench")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    server = ServerProcess(["--model-path", str(model), "--max-total-tokens", "32768",
                            "--context-length", "8192", "--chunked-prefill-size", "8192"],
                           tmp_path, name="busy")
    with server, MemServeRouterProcess(["--worker-urls", server.url], tmp_path).start(
            probe=False) as router:
        stop = time.monotonic() + BUSY_S
        statuses: list[int] = []
        health_s: list[float] = []
        healthy: list[bool] = []

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                ids = [rng.randrange(3, vocab) for _ in range(PROMPT_TOKENS)]
                r = requests.post(f"{router.url}/generate", timeout=120, json={
                    "input_ids": ids, "sampling_params": {"max_new_tokens": 2,
                                                          "temperature": 0}})
                statuses.append(r.status_code)

        def watch() -> None:
            while time.monotonic() < stop + 2:
                t0 = time.monotonic()
                try:
                    requests.get(f"{server.url}/health", timeout=60)
                except requests.RequestException:
                    pass
                health_s.append(time.monotonic() - t0)
                w = requests.get(f"{router.url}/workers", timeout=10).json()["workers"][0]
                healthy.append(bool(w["healthy"] and w["alive"]))
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = router.log_path.read_text()
    assert statuses and all(s == 200 for s in statuses), statuses
    # The scheduler was busy: a token through it took longer than the liveness timeout.
    assert max(health_s) > 1.5, sorted(health_s)[-5:]
    assert all(healthy), healthy
    assert "liveness probes" not in log and "out of rotation" not in log, log[-3000:]
