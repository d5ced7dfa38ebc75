"""A 1P1D cluster (real prefill, decode and memserve-router processes, PD-Caching-3) started with
``--mempool-secret-file`` everywhere: no process of it listens outside 127.0.0.1; the router's
signed snapshots and decode's signed KV return work; unsigned, wrong-key and replayed control
requests to the prefill instance are refused with a typed error; the cluster keeps serving.
Both instances run with ``--mempool-peers`` (each other's control endpoint, and on prefill a decoy
that does not hold the secret): a push to an unregistered address is refused with UnknownPeer and
nothing reaches it; a push to the registered decoy fails on its unsigned reply before any KV is
written; pushes between the two instances still work."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import zmq
from socket_audit import Listener, listeners, outside, tree_pids

from sglang_memserve.mempool.auth import AuthError, ControlAuth
from sglang_memserve.mempool.errors import UnknownPeer
from sglang_memserve.mempool.rpc import rpc_call
from sglang_memserve.pd import PdCluster, PdOptions
from sglang_memserve.pd.cluster import free_ports

HOST = "127.0.0.1"
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROMPT = list(range(10, 90))


class Listener0mq:
    """A ZMQ ROUTER on loopback that records every request and answers it like a destination
    that does not hold the secret (an unsigned, plausible ``kv_prepare`` reply)."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"tcp://{HOST}:{port}"
        self.ops: list[str] = []
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            frames = self._sock.recv_multipart()
            try:
                msg = orjson.loads(frames[-1])
                self.ops.append(str(msg.get("op")))
            except orjson.JSONDecodeError:
                self.ops.append("?")
                continue
            reply = {"ok": True, "txn": msg.get("txn"), "skip": 0, "pages": [1],
                     "segment": f"{HOST}:1", "layout": {}}
            self._sock.send_multipart([frames[0], b"", orjson.dumps(reply)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)


class Secured:
    def __init__(self, pd: PdCluster, auth: ControlAuth, decoy: Listener0mq,
                 stranger: Listener0mq) -> None:
        self.pd, self.auth = pd, auth
        self.decoy, self.stranger = decoy, stranger

    def state(self, which: str) -> dict[str, Any]:
        server = getattr(self.pd, which)
        info = requests.get(f"{server.url}/server_info", timeout=30).json()
        return info["internal_states"][0]["memserve"]

    def control(self, which: str) -> str:
        return str(self.state(which)["endpoints"]["control"])

    def generate(self, ids: list[int]) -> dict:
        r = requests.post(f"{self.pd.url}/generate", timeout=120,
                          json={"input_ids": ids, "sampling_params": GREEDY})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def secured(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    logs = tmp_path_factory.mktemp("secured")
    secret = logs / "control.secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    flag = ("--mempool-secret-file", str(secret))
    decode_control, decoy_port, stranger_port = free_ports(3, HOST)
    decoy, stranger = Listener0mq(decoy_port), Listener0mq(stranger_port)
    opts = PdOptions(stage="caching3", common_args=("--model-path", str(tiny_model), *flag),
                     router_args=flag)
    pd = PdCluster(opts, logs, host=HOST)
    # Registered peers: prefill knows decode and the decoy; decode knows prefill (its KV return).
    pd.prefill.args += ["--mempool-peers", f"{HOST}:{decode_control},{decoy.endpoint}"]
    pd.decode.args += ["--mempool-control-port", str(decode_control),
                       "--mempool-peers", f"{HOST}:{pd.bootstrap_port + 1}"]
    try:
        with pd:
            yield Secured(pd, ControlAuth(secret.read_bytes().strip()), decoy, stranger)
    finally:
        decoy.close()
        stranger.close()


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_no_listener_outside_the_configured_host(secured: Secured) -> None:
    pd = secured.pd
    secured.generate(PROMPT)  # a transfer and a KV return have run: lazy listeners exist
    procs = {"prefill": pd.prefill.proc, "decode": pd.decode.proc, "router": pd.router.proc}
    found: list[Listener] = []
    for proc in procs.values():
        assert proc is not None and proc.poll() is None
        found += listeners(tree_pids(proc.pid))
    # Mooncake's handshake and transport listeners included: the launcher's bind shim moves
    # their wildcard binds onto the host (sglang_memserve/bind.py).
    bad = outside(found, HOST)
    assert not bad, "listeners outside 127.0.0.1:\n" + "\n".join(map(str, bad))
    # Not vacuous: the known listeners are among those listed.
    ports = {s.port for s in found}
    expected = {pd.prefill.port, pd.decode.port, pd.router.port, pd.bootstrap_port}
    for which in ("prefill", "decode"):
        ends = secured.state(which)["endpoints"]
        expected |= {_port(ends["control"]), _port(ends["events"])}
    assert expected <= ports, f"missing {expected - ports} among {sorted(ports)}"
    on_host = {s.port for s in found if s.ip == HOST}
    assert expected <= on_host
    # Mooncake's listeners are among those audited: each instance's handshake port (the port
    # of the segment it hands peers) is listed, on the host.
    for which in ("prefill", "decode"):
        prep = rpc_call(secured.control(which), {"op": "kv_prepare", "txn": f"audit-{which}",
                                                 "tokens": []}, timeout_s=30, auth=secured.auth)
        rpc_call(secured.control(which), {"op": "kv_abort", "txn": f"audit-{which}"},
                 timeout_s=30, auth=secured.auth)
        rpc_port = _port(str(prep["segment"]))
        assert rpc_port in {s.port for s in found if not outside([s], HOST)}, (which, rpc_port)


def _per_instance(metrics: str, name: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(
        rf'memserve_router_event_{name}(?:_total)?\{{instance="([^"]+)"\}} (\S+)', metrics)}


def test_signed_snapshots_and_kv_return_work(secured: Secured) -> None:
    secured.generate(PROMPT + [5, 6, 7])
    # Decode's KV return (kv_prepare/kv_commit to prefill, signed) landed on prefill.
    _wait(lambda: secured.state("prefill")["peer"]["pages_received"] > 0, 30,
          "the decode's KV return on prefill")
    # The router joined both instances through a signed snapshot (else their views stay empty
    # and resyncs are retried).
    metrics = requests.get(f"{secured.pd.url}/metrics", timeout=10).text
    resyncs = {m[0]: float(m[1]) for m in re.findall(
        r'memserve_router_event_resyncs(?:_total)?\{instance="([^"]+)"\} (\S+)', metrics)}
    assert resyncs.get("prefill-0", 0) >= 1 and resyncs.get("decode-0", 0) >= 1, resyncs
    # Its event stream is signed: events were applied from prefill, none dropped as forged.
    events = _per_instance(metrics, "events")
    forged = _per_instance(metrics, "forged")
    assert events.get("prefill-0", 0) > 0, events
    assert forged.get("prefill-0", 0) == 0 and forged.get("decode-0", 0) == 0, forged
    counts = rpc_call(secured.control("prefill"), {"op": "integrity"}, timeout_s=30,
                      auth=secured.auth)["counts"]
    assert counts["device"]["capacity"] > 0


def test_unsigned_wrong_key_and_replayed_requests_refused(secured: Secured) -> None:
    control = secured.control("prefill")
    dst = secured.control("decode")
    before = secured.state("prefill")["peer"]["pushes"]
    push = {"op": "kv_push", "tokens": PROMPT, "dst": dst}
    for op in (push, {"op": "snapshot"}):
        with pytest.raises(AuthError, match="unauthenticated"):
            rpc_call(control, op, timeout_s=10, auth=None)
        with pytest.raises(AuthError, match="bad MAC"):
            rpc_call(control, op, timeout_s=10,
                     auth=ControlAuth(b"not-the-cluster-secret-0123456789"))
    # A signed snapshot works; the very same frames sent again are a replay.
    body = orjson.dumps({"op": "snapshot"})
    header, _ = secured.auth.sign_request(body)
    ctx = zmq.Context.instance()
    replies = []
    for _ in range(2):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(control)
        sock.send_multipart([b"", header, body])
        assert sock.poll(10_000)
        replies.append(orjson.loads(sock.recv_multipart()[-1]))
        sock.close(0)
    assert replies[0]["ok"] is True
    assert replies[1]["ok"] is False and replies[1]["error"] == "AuthError"
    assert "replayed" in replies[1]["message"]
    # Nothing ran, and everything still serves.
    assert secured.state("prefill")["peer"]["pushes"] == before
    assert secured.generate(PROMPT)["meta_info"]["completion_tokens"] == 8
    assert rpc_call(control, {"op": "integrity"}, timeout_s=30, auth=secured.auth)["ok"]


def _settled(secured: Secured, which: str) -> dict[str, Any]:
    """The instance's integrity counts once no request or transfer holds pages."""
    control = secured.control(which)

    def idle() -> dict[str, Any] | None:
        out = rpc_call(control, {"op": "integrity"}, timeout_s=30, auth=secured.auth)
        return out if out["protected_tokens"] == 0 else None

    return _wait(idle, 30, f"{which} to release every lock")


def test_push_outside_the_registered_peers_refused(secured: Secured) -> None:
    secured.generate(PROMPT + [1, 2])  # both instances hold this prefix
    before = {w: secured.state(w)["peer"] for w in ("prefill", "decode")}
    for which in ("prefill", "decode"):
        control = secured.control(which)
        for op in ({"op": "kv_push", "tokens": PROMPT, "dst": secured.stranger.endpoint},
                   {"op": "transfer_with_insert", "tokens": PROMPT,
                    "peer": secured.stranger.endpoint},
                   {"op": "kv_push", "tokens": PROMPT, "dst": "tcp://localhost:1"}):
            with pytest.raises(UnknownPeer, match="not a registered peer"):
                rpc_call(control, op, timeout_s=30, auth=secured.auth)
    # Nothing reached the stranger, nothing was pushed, no page stays locked.
    time.sleep(1)
    assert secured.stranger.ops == []
    for which in ("prefill", "decode"):
        assert secured.state(which)["peer"]["pushes"] == before[which]["pushes"]
        assert _settled(secured, which)["ok"]
    # Pushes between the registered instances still work, both ways.
    for src, dst in (("decode", "prefill"), ("prefill", "decode")):
        out = rpc_call(secured.control(src), {"op": "kv_push", "tokens": PROMPT,
                                              "dst": secured.control(dst)},
                       timeout_s=30, auth=secured.auth)
        assert out["ok"] and out["sent_pages"] + out["skip"] > 0, out
    assert secured.generate(PROMPT)["meta_info"]["completion_tokens"] == 8


def test_registered_peer_without_the_secret_gets_no_kv(secured: Secured) -> None:
    secured.generate(PROMPT + [3, 4])
    control = secured.control("prefill")
    before = secured.state("prefill")["peer"]
    with pytest.raises(AuthError, match="not signed"):
        rpc_call(control, {"op": "kv_push", "tokens": PROMPT, "dst": secured.decoy.endpoint},
                 timeout_s=30, auth=secured.auth)
    # The decoy saw the prepare (and at most an abort), never a commit; no byte was written.
    assert secured.decoy.ops and secured.decoy.ops[0] == "kv_prepare", secured.decoy.ops
    assert "kv_commit" not in secured.decoy.ops, secured.decoy.ops
    after = secured.state("prefill")["peer"]
    assert after["bytes_sent"] == before["bytes_sent"] and after["pushes"] == before["pushes"]
    assert after["push_failures"] == before["push_failures"] + 1
    assert _settled(secured, "prefill")["ok"]
    assert secured.generate(PROMPT)["meta_info"]["completion_tokens"] == 8
