"""Decode dies while a request is in flight: the client hears about it within a bounded time,
prefill keeps serving with its MemPool intact, and a replacement decode behind a new router serves
the same outputs.

The test runs on, and repairs, the session's caching cluster (MemServe's cache on both sides; the
replacement decode and router take the dead ones' places), so tests that run after it still have a
working cluster.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.pd import PdCluster, RouterProcess
from sglang_memserve.pd.client import generate

BOUND_S = 30.0
LONG = 1900  # new tokens: prompt + LONG stays within the tiny model's 2,048-token context


def stream_until_killed(url: str, ids: list[int], max_new_tokens: int,
                        started: threading.Event, out: dict[str, Any]) -> None:
    """Streams a long generation; records how it ended (error, abort or completion)."""
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    chunks = 0
    last: dict[str, Any] = {}
    try:
        with requests.post(f"{url}/generate", json=body, stream=True, timeout=BOUND_S) as r:
            out["status"] = r.status_code
            for raw in r.iter_lines():
                if not raw.startswith(b"data:"):
                    continue
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    out["done"] = True
                    break
                last = json.loads(payload)
                if "error" in last:
                    out["error"] = last["error"]
                    break
                chunks += 1
                if last.get("output_ids"):
                    started.set()
    except requests.RequestException as exc:
        out["error"] = repr(exc)
    finally:
        out["chunks"] = chunks
        out["finish_reason"] = (last.get("meta_info") or {}).get("finish_reason")
        out["ended"] = time.monotonic()
        started.set()


def test_decode_killed_mid_request(pd_cached: PdCluster, reference: ServerProcess, settled
                                   ) -> None:
    pd = pd_cached
    ids = list(range(20, 120))
    started, out = threading.Event(), {}
    client = threading.Thread(target=stream_until_killed,
                              args=(pd.url, ids, LONG, started, out), daemon=True)
    client.start()
    assert started.wait(60), "the request never started streaming"
    assert "ended" not in out, f"finished before decode was killed: {out}"
    killed = time.monotonic()
    pd.decode.kill()
    client.join(BOUND_S + 5)
    assert not client.is_alive(), "client still waiting after the decode died"
    waited = out["ended"] - killed
    print(f"decode killed: client ended {waited:.2f}s later: {out}")
    assert waited < BOUND_S, out
    # The stream did not finish normally: a transport error or an aborted/failed finish.
    completed = out.get("done") and (out.get("finish_reason") or {}).get("type") == "length"
    assert not completed or out["chunks"] < LONG, out

    # Prefill is alive and its scheduler still runs a forward pass (SGLang's health_generate
    # on a prefill instance uses a fake bootstrap, no decode needed).
    assert requests.get(f"{pd.prefill.url}/health_generate", timeout=BOUND_S).status_code == 200
    settled(pd.prefill.url)

    # The router notices the dead decode (its health check) and then fails fast, without
    # sending prefill a request whose decode half cannot bootstrap.
    deadline = time.monotonic() + BOUND_S
    while requests.get(f"{pd.url}/readiness", timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "router still ready with a dead decode"
        time.sleep(0.5)
    t = time.monotonic()
    r = requests.post(f"{pd.url}/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 4}}, timeout=BOUND_S)
    assert r.status_code == 503 and time.monotonic() - t < 5, r.text

    # A replacement decode behind a new router: the same prefill serves again.
    old_router = pd.router
    decode = pd.new_decode("decode-replacement").start()
    pd.decode = decode  # the cluster's teardown now stops the replacement
    assert old_router is not None
    old_router.stop()
    pd.router = RouterProcess(pd.prefill, pd.bootstrap_port, decode, pd.log_dir,
                              pd.options.router_args, pd.host, dict(pd.options.env)).start()
    want = generate(reference.url, ids, 16)["output_ids"]
    assert generate(pd.url, ids, 16)["output_ids"] == want
    time.sleep(1.0)  # the decode side releases the request after the response is sent
    settled(pd.prefill.url)
    settled(decode.url)
