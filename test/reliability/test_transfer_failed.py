"""A failed KV transfer is a retry or a 503 with ``Retry-After`` at the router, never a 500.

SGLang answers a PD request whose KV did not move with HTTP 500: decode's ``Decode transfer
failed`` (as a body, or as a stream's first event) or prefill's ``Prefill transfer failed``. A
real memserve-router process in front of stand-in prefill and decode instances (small aiohttp
apps in this process, real HTTP) that answer so: the client gets 503 with ``Retry-After`` (1P1D:
no other pair to retry on) and the router's log shows the failed attempt."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from sglang_memserve.cluster import MemServeRouterProcess, free_port

DECODE_FAILED = (b'{"object":"error","message":"Decode transfer failed for request rank=0 '
                 b'decode_req.req.rid=\'x\' with exception KVTransferError","code":500}')
PREFILL_FAILED = (b'{"object":"error","message":"Prefill transfer failed for request rank=0 '
                  b'req.rid=\'x\'","code":500}')


class Fake:
    """A stand-in SGLang instance answering generation requests as ``mode`` says."""

    def __init__(self, role: str, bootstrap_port: int | None = None) -> None:
        self.role, self.bootstrap_port = role, bootstrap_port
        self.mode = "ok"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/server_info", self._info)
        app.router.add_get("/get_model_info", self._model)
        app.router.add_get("/v1/loads", self._loads)
        app.router.add_get("/ping", self._ok)
        app.router.add_get("/health", self._ok)
        app.router.add_post("/generate", self._generate)
        return app

    async def _ok(self, _r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _info(self, _r: web.Request) -> web.Response:
        return web.json_response({"page_size": 1, "disaggregation_mode": self.role,
                                  "disaggregation_bootstrap_port": self.bootstrap_port,
                                  "internal_states": [{}]})

    async def _model(self, _r: web.Request) -> web.Response:
        return web.json_response({"model_path": None})

    async def _loads(self, _r: web.Request) -> web.Response:
        return web.json_response({"loads": [{"num_running_reqs": 0, "num_waiting_reqs": 0,
                                             "token_usage": 0.0}]})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        if self.mode == "prefill-failed":
            return web.Response(body=PREFILL_FAILED, status=500,
                                content_type="application/json")
        if self.role == "prefill":
            await asyncio.sleep(0.3)  # decode's answer (or failure) comes first otherwise
            return web.json_response({"text": "", "meta_info": {}})
        if self.mode == "waiting":
            await asyncio.sleep(5)  # for KV that never comes (its prefill failed)
        if self.mode == "decode-failed":
            if body.get("stream"):
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(b"data: {\"error\": " + DECODE_FAILED + b"}\n\n")
                await resp.write(b"data: [DONE]\n\n")
                return resp
            return web.Response(body=DECODE_FAILED, status=500,
                                content_type="application/json")
        return web.json_response({"text": "x", "output_ids": [7], "meta_info": {}})


@pytest.fixture()
def fakes() -> Iterator[tuple[Fake, Fake]]:
    prefill, decode = Fake("prefill", free_port()), Fake("decode")
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start() -> None:
        for fake in (prefill, decode):
            runner = web.AppRunner(fake.app())
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", fake.port).start()
            runners.append(runner)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield prefill, decode

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.mark.parametrize("who,stream", [("decode", False), ("decode", True),
                                        ("prefill", False), ("prefill", True)])
def test_failed_transfer_is_a_503(fakes: tuple[Fake, Fake], tmp_path: Path, who: str,
                                  stream: bool) -> None:
    prefill, decode = fakes
    args = ["--pd-disaggregation", "--prefill", prefill.url, str(prefill.bootstrap_port),
            "--decode", decode.url]
    with MemServeRouterProcess(args, tmp_path).start(probe=False) as router:
        ok = requests.post(f"{router.url}/generate", json={"input_ids": [1, 2]}, timeout=10)
        assert ok.status_code == 200, ok.text
        (prefill if who == "prefill" else decode).mode = f"{who}-failed"
        if who == "prefill":
            decode.mode = "waiting"
        r = requests.post(f"{router.url}/generate", timeout=10,
                          json={"input_ids": [1, 2], "stream": stream})
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code,
                                                                               r.text)
        assert "no healthy prefill/decode instance left after a failed attempt" in r.text
        log = router.log_path.read_text()
        assert "attempt 1 of /generate failed" in log and "transfer failed" in log, log[-2000:]
