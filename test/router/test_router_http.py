"""The router's HTTP paths against stand-in instances (memserve_router.stub, real processes, no
model): forwarding, streams, PD bootstrap fields, retries, mid-stream failure, admin API, API key,
fan-out, metrics and CLI errors. Fast: nothing here loads SGLang."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from memserve_router.stub import StubProcess
from sglang_memserve.cluster import MemServeRouterProcess


def _id(stub: StubProcess) -> str:
    """The router names an instance without a MemServe instance id by its address."""
    return f"127.0.0.1:{stub.port}"


@pytest.fixture()
def stubs() -> Iterator[list[StubProcess]]:
    made: list[StubProcess] = []
    yield made
    for s in made:
        s.stop()


def _router(args: list[str], tmp_path: Path) -> MemServeRouterProcess:
    return MemServeRouterProcess([*args, "--health-check-interval-secs", "0.3",
                                  "--health-failure-threshold", "2"], tmp_path).start()


def test_colocated_forwarding_and_streams(stubs: list[StubProcess], tmp_path: Path) -> None:
    stubs += [StubProcess(), StubProcess()]
    with _router(["--worker-urls", *(s.url for s in stubs)], tmp_path) as router:
        r = requests.post(f"{router.url}/generate", json={"input_ids": [1, 2, 3]}, timeout=10)
        assert r.status_code == 200 and r.json()["output_ids"] == [7]
        assert r.headers["X-MemServe-Instance"] in {_id(s) for s in stubs}
        r = requests.post(f"{router.url}/generate", json={"input_ids": [1, 2], "stream": True},
                          timeout=10, stream=True)
        events = [ln for ln in r.iter_lines() if ln]
        assert events[-1] == b"data: [DONE]" and len(events) == 4
        r = requests.post(f"{router.url}/v1/completions", json={"prompt": [5, 6]}, timeout=10)
        assert r.status_code == 200
        served = next(s for s in stubs if _id(s) == r.headers["X-MemServe-Instance"])
        assert served.last()["body"]["prompt"] == [5, 6]
        assert requests.get(f"{router.url}/v1/models", timeout=10).json()["data"]
        flushed = requests.post(f"{router.url}/flush_cache", timeout=10).json()["flushed"]
        assert sorted(flushed) == sorted(_id(s) for s in stubs)
        metrics = requests.get(f"{router.url}/metrics", timeout=10).text
        # two here and the readiness probe of MemServeRouterProcess.start
        assert 'memserve_router_requests_total{route="/generate",status="200"} 3.0' in metrics, \
            [ln for ln in metrics.splitlines() if "requests_total" in ln]
        assert "memserve_router_decision_seconds_bucket" in metrics


def test_pd_injects_bootstrap_fields(stubs: list[StubProcess], tmp_path: Path) -> None:
    prefill = StubProcess("--role", "prefill", "--bootstrap-port", "4242")
    decode = StubProcess("--role", "decode")
    stubs += [prefill, decode]
    with _router(["--pd-disaggregation", "--prefill", prefill.url, "--decode", decode.url],
                 tmp_path) as router:
        r = requests.post(f"{router.url}/generate", json={"input_ids": [1, 2, 3]}, timeout=10)
        assert r.status_code == 200
        assert r.headers["X-MemServe-Prefill"] == _id(prefill)
        time.sleep(0.2)
        p, d = prefill.last()["body"], decode.last()["body"]
        assert p["bootstrap_port"] == 4242 and p["bootstrap_host"] == "127.0.0.1"
        assert p["bootstrap_room"] == d["bootstrap_room"]  # one room for the pair
        assert d["input_ids"] == [1, 2, 3]


def test_dead_instance_is_retried_then_leaves(stubs: list[StubProcess], tmp_path: Path) -> None:
    stubs += [StubProcess(), StubProcess()]
    with _router(["--worker-urls", *(s.url for s in stubs), "--policy", "round_robin"],
                 tmp_path) as router:
        stubs[0].stop()
        for _ in range(4):  # round robin hits the dead one: retried on the live one
            r = requests.post(f"{router.url}/generate", json={"input_ids": [1]}, timeout=10)
            assert r.status_code == 200 and r.headers["X-MemServe-Instance"] == _id(stubs[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = requests.get(f"{router.url}/workers", timeout=5).json()["workers"]
            if not next(w for w in workers if w["url"] == stubs[0].url)["healthy"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("dead instance never left the rotation")
        assert "memserve_router_retries_total" in requests.get(f"{router.url}/metrics",
                                                                timeout=5).text


def test_mid_stream_failure_ends_with_an_error(stubs: list[StubProcess], tmp_path: Path) -> None:
    stubs.append(StubProcess("--fail-after-chunks", "1"))
    with _router(["--worker-urls", stubs[0].url], tmp_path) as router:
        r = requests.post(f"{router.url}/generate", json={"input_ids": [1], "stream": True},
                          timeout=10, stream=True)
        lines = [ln for ln in r.iter_lines() if ln]
        assert lines[0].startswith(b"data: {\"text\"")
        assert b"failed mid-stream" in lines[-2] and lines[-1] == b"data: [DONE]"


def test_admin_api_and_api_key(stubs: list[StubProcess], tmp_path: Path) -> None:
    stubs += [StubProcess(), StubProcess()]
    auth = {"Authorization": "Bearer s3cret"}
    router = MemServeRouterProcess(["--worker-urls", stubs[0].url, "--api-key", "s3cret"],
                                   tmp_path)
    with router.start():
        url = router.url
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        assert requests.get(f"{url}/workers", timeout=5).status_code == 401
        r = requests.post(f"{url}/generate", json={"input_ids": [1]}, timeout=5)
        assert r.status_code == 401
        r = requests.post(f"{url}/workers", json={"url": stubs[1].url}, headers=auth, timeout=10)
        assert r.status_code == 201, r.text
        r = requests.post(f"{url}/workers", json={"url": stubs[1].url}, headers=auth, timeout=10)
        assert r.status_code == 409
        r = requests.post(f"{url}/workers", json={"url": "ftp://x"}, headers=auth, timeout=10)
        assert r.status_code == 400
        r = requests.post(f"{url}/workers", json={"url": "http://127.0.0.1:1"}, headers=auth,
                          timeout=20)
        assert r.status_code == 400 and "did not answer" in r.json()["error"]["message"]
        ids = {w["id"] for w in requests.get(f"{url}/workers", headers=auth,
                                             timeout=5).json()["workers"]}
        assert ids == {_id(stubs[0]), _id(stubs[1])}
        assert requests.delete(f"{url}/workers/{_id(stubs[0])}", headers=auth,
                               timeout=5).status_code == 200
        for _ in range(3):
            r = requests.post(f"{url}/generate", json={"input_ids": [1]}, headers=auth, timeout=5)
            assert r.headers["X-MemServe-Instance"] == _id(stubs[1])


def test_no_instance_is_503_and_bad_cli_is_refused(tmp_path: Path) -> None:
    router = MemServeRouterProcess(["--worker-urls"], tmp_path)
    with _no_ready(router):
        r = requests.post(f"{router.url}/generate", json={"input_ids": [1]}, timeout=5)
        assert r.status_code == 503 and "no healthy" in r.json()["error"]["message"]
        assert requests.get(f"{router.url}/readiness", timeout=5).status_code == 503
    bad = subprocess.run([sys.executable, "-m", "memserve_router", "--prefill", "http://x:1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--pd-disaggregation" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "memserve_router", "--policy", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "memserve" in bad.stderr


class _no_ready:
    """Start a router with no instance (never ready) and stop it after."""

    def __init__(self, router: MemServeRouterProcess) -> None:
        self.router = router

    def __enter__(self) -> MemServeRouterProcess:
        r = self.router
        r.log_path.parent.mkdir(parents=True, exist_ok=True)
        r.proc = subprocess.Popen([sys.executable, "-m", "memserve_router", *r.args, "--host",
                                   r.host, "--port", str(r.port)], start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{r.url}/health", timeout=1)
                return r
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("router did not start")

    def __exit__(self, *_exc: object) -> None:
        self.router.stop()
