"""The router judges a request in full before it looks for an instance: a malformed request
gets its 4xx even while no instance is healthy (the full soak saw 110 malformed requests
answered 503 while its only decode was down). Unit checks of ``memserve_router.checks`` and a
real router whose only instance (a stand-in, ``memserve_router.stub``) is dead, fed the soak's
malformed corpus."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

from memserve_router.checks import check, load_fields
from memserve_router.prompts import BadRequest
from sglang_memserve.cluster import MemServeRouterProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from soak import MALFORMED  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_liveness import Stub  # noqa: E402


@pytest.mark.parametrize("path,body", [
    ("/generate", {"text": "a", "sampling_params": {"temperature": -3}}),
    ("/generate", {"text": "a", "sampling_params": {"top_p": 0}}),
    ("/generate", {"text": "a", "sampling_params": {"top_p": 1.5}}),
    ("/generate", {"text": "a", "sampling_params": {"min_p": -0.1}}),
    ("/generate", {"text": "a", "sampling_params": {"frequency_penalty": 2.5}}),
    ("/generate", {"text": "a", "sampling_params": {"repetition_penalty": 0}}),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": -1}}),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": 1.5}}),
    ("/generate", {"text": "a", "sampling_params": [{"temperature": float("nan")}]}),
    ("/generate", {"text": "a", "sampling_params": {"temperature": "hot"}}),
    ("/generate", {"text": "a", "sampling_params": {"temperature": True}}),
    ("/v1/completions", {"prompt": "a", "max_tokens": -5}),
    ("/v1/chat/completions", {"messages": [], "temperature": -3}),
    ("/v1/chat/completions", {"messages": [], "presence_penalty": -2.01}),
    ("/v1/chat/completions", {"messages": [], "max_completion_tokens": -1}),
    ("/generate", {"text": "a", "bogus_field": 1}),
    ("/v1/chat/completions", {"messages": [], "bogus": 1}),
])
def test_refused(path: str, body: dict) -> None:
    fields = {"/generate": frozenset({"text", "sampling_params"}),
              "/v1/chat/completions": frozenset({"messages", "temperature", "presence_penalty",
                                                 "max_completion_tokens"}),
              "/v1/completions": frozenset({"prompt", "max_tokens"})}
    with pytest.raises(BadRequest):
        check(path, body, fields)


@pytest.mark.parametrize("path,body", [
    ("/generate", {"text": "a", "sampling_params": {"temperature": 0, "top_p": 1,
                                                     "min_p": 0, "repetition_penalty": 2,
                                                     "frequency_penalty": -2,
                                                     "max_new_tokens": 0}}),
    ("/generate", {"text": "a", "sampling_params": [{"temperature": 1.0}, {}]}),
    ("/v1/chat/completions", {"messages": [], "temperature": 0.7, "max_tokens": 16,
                              "top_p": 0.5, "bogus": 1}),
])
def test_accepted(path: str, body: dict) -> None:
    check(path, body, None)  # fields unknown: only the ranges are judged


def test_schema_fields_are_sglangs() -> None:
    fields = load_fields()
    assert fields is not None
    assert {"text", "input_ids", "sampling_params", "stream", "bootstrap_room",
            "model"} <= fields["/generate"]
    assert {"messages", "temperature", "max_tokens", "n"} <= fields["/v1/chat/completions"]
    assert "bogus_field" not in fields["/generate"]


def test_malformed_get_4xx_with_no_healthy_instance(tmp_path: Path, tiny_model: Path) -> None:
    stub = Stub()
    args = ["--worker-urls", stub.url, "--tokenizer-path", str(tiny_model)]
    try:
        with MemServeRouterProcess(args, tmp_path).start(probe=False) as router:
            # The schema's field list arrives in the background: wait until it is there.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                r = requests.post(f"{router.url}/generate", timeout=10,
                                  data=b'{"input_ids": [1], "bogus_field": 1}')
                if r.status_code == 400:
                    break
                time.sleep(0.5)
            assert r.status_code == 400, r.text
            stub.stop()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = requests.post(f"{router.url}/generate", json={"input_ids": [1, 2]},
                                  timeout=10)
                if r.status_code == 503:
                    break
                time.sleep(0.2)
            assert r.status_code == 503 and r.headers.get("Retry-After") == "1", r.text
            for path, body in MALFORMED:
                r = requests.post(f"{router.url}{path}", data=body, timeout=10,
                                  headers={"Content-Type": "application/json"})
                assert r.status_code == 400, (path, body, r.status_code, r.text)
                assert r.json()["error"]["message"], r.text
    finally:
        stub.stop()
