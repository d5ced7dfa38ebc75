"""Peer registries that follow the router's membership (real instances, real router).

Two colocated MemServe instances (tiny model), both with ``--mempool-peers`` naming only an
unused address (so the registry is enforced) and a shared control secret; memserve-router starts
with instance a alone. A push from a to b is refused (b is no peer of a); b joins through the
router's ``POST /workers``, the router registers each member with the other (``peers_set``,
signed), and the push goes through and lands in b's pool; a push to an unknown address is still
refused; an unsigned ``peers_set`` is refused with AuthError; once b leaves (``DELETE
/workers``), pushes to it are refused again. Both pools pass their integrity check.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess, free_port
from sglang_memserve.mempool.auth import AuthError, ControlAuth
from sglang_memserve.mempool.errors import InvalidRequest, UnknownPeer
from sglang_memserve.mempool.rpc import rpc_call

PROMPT = list(range(10, 90))


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _workers(router: MemServeRouterProcess) -> dict[str, dict]:
    out = requests.get(f"{router.url}/workers", timeout=10).json()["workers"]
    return {w["id"]: w for w in out}


def test_migration_to_a_worker_that_joined_at_run_time(tiny_model: Path, tmp_path: Path,
                                                       settled: Callable,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(32)
    auth = ControlAuth(secret.encode())
    # Every process of the cluster, and this one's own calls (settled), use the secret.
    monkeypatch.setenv("MEMSERVE_SECRET", secret)
    nowhere = f"127.0.0.1:{free_port()}"
    ports = {"a": free_port(), "b": free_port()}
    servers = {name: ServerProcess(
        ["--model-path", str(tiny_model), "--instance-id", f"peer-{name}",
         "--mempool-control-port", str(ports[name]), "--mempool-peers", nowhere],
        tmp_path, name=f"peer-{name}") for name in ("a", "b")}
    ctl = {name: f"tcp://127.0.0.1:{ports[name]}" for name in ports}
    a, b = servers["a"], servers["b"]
    with a, b, MemServeRouterProcess(["--worker-urls", a.url], tmp_path).start(
            probe=False) as router:
        r = requests.post(f"{a.url}/generate", timeout=60, json={
            "input_ids": PROMPT, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
        assert r.status_code == 200, r.text
        push = {"op": "kv_push", "tokens": PROMPT, "dst": ctl["b"]}
        with pytest.raises(UnknownPeer, match="not a registered peer"):
            rpc_call(ctl["a"], push, timeout_s=30, auth=auth)

        r = requests.post(f"{router.url}/workers", json={"url": b.url}, timeout=60)
        assert r.status_code == 201, r.text
        _wait(lambda: all(w["peers_synced"] for w in _workers(router).values())
              and len(_workers(router)) == 2, 30, "both registries synced")
        out = rpc_call(ctl["a"], push, timeout_s=60, auth=auth)
        assert out["ok"] and out["sent_pages"] > 0, out
        # b holds the prefix now: its own request over it hits.
        r = requests.post(f"{b.url}/generate", timeout=60, json={
            "input_ids": PROMPT + [5], "sampling_params": {"max_new_tokens": 1,
                                                           "temperature": 0}})
        assert r.json()["meta_info"]["cached_tokens"] >= out["sent_pages"], r.json()
        # An address outside the members is still refused, and so is an unsigned update.
        with pytest.raises(UnknownPeer, match="not a registered peer"):
            rpc_call(ctl["a"], {**push, "dst": f"tcp://127.0.0.1:{free_port()}"},
                     timeout_s=30, auth=auth)
        with pytest.raises(AuthError):
            rpc_call(ctl["a"], {"op": "peers_set", "peers": [nowhere]}, timeout_s=30,
                     auth=None)
        with pytest.raises(InvalidRequest):
            rpc_call(ctl["a"], {"op": "peers_set", "peers": ["no-port"]}, timeout_s=30,
                     auth=auth)

        r = requests.delete(f"{router.url}/workers/peer-b", timeout=10)
        assert r.status_code == 200, r.text

        def refused() -> bool:
            try:
                rpc_call(ctl["a"], push, timeout_s=30, auth=auth)
            except UnknownPeer:
                return True
            return False

        _wait(refused, 30, "a push to the departed member to be refused")
        for server in (a, b):
            settled(server.url)
