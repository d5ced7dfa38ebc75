"""A stand-in SGLang instance that answers at once: measures the router alone and tests its HTTP
paths without a model.

``python -m memserve_router.stub --port P [--role prefill --bootstrap-port B] [--delay-s S]``
answers SGLang's endpoints the router uses (``/server_info``, ``/get_model_info``, ``/v1/loads``,
``/health``, ``/generate``, ``/v1/completions``, ``/v1/chat/completions`` with or without
``stream``, ``/flush_cache``, ``/v1/models``) with fixed small bodies, and records the last request
body it received (``GET /stub/last``), so tests can see what the router forwarded. It has no KV
events: the router keeps an approximate tree for it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiohttp import web


class Stub:
    """State of one stand-in instance.

    Args:
        role: what ``/server_info`` reports (``disaggregation_mode``).
        bootstrap_port: prefill's bootstrap port to report.
        delay_s: time before each generation answer (0: at once).
        stream_chunks: ``data:`` events per streamed answer.
        fail_after_chunks: a stream is cut (connection closed) after this many events.
    """

    def __init__(self, role: str = "colocated", bootstrap_port: int | None = None,
                 delay_s: float = 0.0, stream_chunks: int = 3,
                 fail_after_chunks: int | None = None) -> None:
        self.role = role
        self.bootstrap_port = bootstrap_port
        self.delay_s = delay_s
        self.stream_chunks = stream_chunks
        self.fail_after_chunks = fail_after_chunks
        self.last: dict[str, Any] = {}
        self.count = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/server_info", self._server_info)
        app.router.add_get("/get_model_info", self._model_info)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/loads", self._loads)
        app.router.add_get("/health", self._ok)
        app.router.add_route("*", "/flush_cache", self._ok)
        app.router.add_get("/stub/last", self._last)
        for path in ("/generate", "/v1/completions", "/v1/chat/completions"):
            app.router.add_post(path, self._generate)
        return app

    async def _ok(self, _r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _server_info(self, _r: web.Request) -> web.Response:
        mode = {"colocated": "null"}.get(self.role, self.role)
        return web.json_response({"page_size": 1, "disaggregation_mode": mode,
                                  "disaggregation_bootstrap_port": self.bootstrap_port,
                                  "internal_states": [{}]})

    async def _model_info(self, _r: web.Request) -> web.Response:
        return web.json_response({"model_path": None, "is_generation": True})

    async def _models(self, _r: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def _loads(self, _r: web.Request) -> web.Response:
        return web.json_response({"loads": [{"num_running_reqs": 0, "num_waiting_reqs": 0,
                                             "token_usage": 0.0}]})

    async def _last(self, _r: web.Request) -> web.Response:
        return web.json_response({"body": self.last, "count": self.count})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.last = {"path": request.path, **body}
        self.count += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        meta = {"prompt_tokens": len(body.get("input_ids") or []), "cached_tokens": 0,
                "completion_tokens": 1}
        answer = {"text": "x", "output_ids": [7], "meta_info": meta}
        if not body.get("stream"):
            return web.json_response(answer, dumps=lambda o: orjson.dumps(o).decode())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.stream_chunks):
            if self.fail_after_chunks is not None and i >= self.fail_after_chunks:
                assert request.transport is not None
                request.transport.close()  # a crash mid-stream
                return resp
            await resp.write(b"data: " + orjson.dumps(answer) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--role", default="colocated", choices=("colocated", "prefill", "decode"))
    p.add_argument("--bootstrap-port", type=int, default=None)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--fail-after-chunks", type=int, default=None)
    a = p.parse_args()
    stub = Stub(a.role, a.bootstrap_port, a.delay_s, fail_after_chunks=a.fail_after_chunks)
    web.run_app(stub.app(), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()


class StubProcess:
    """This stub as a child process on a free loopback port (the tests' stand-in instance).

    Args:
        args: the stub's flags (``--role``, ``--bootstrap-port``, ...).
    """

    def __init__(self, *args: str) -> None:
        import subprocess
        import sys
        import time
        import urllib.error
        import urllib.request

        from sglang_memserve.cluster import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "memserve_router.stub",
                                      "--port", str(self.port), *args])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("stub did not start")

    @property
    def id(self) -> str:
        """How the router names it (an instance without a MemServe instance id: its address)."""
        return f"127.0.0.1:{self.port}"

    def last(self) -> dict:
        """The last request body it received."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/stub/last", timeout=5) as r:
            return orjson.loads(r.read())

    def stop(self) -> None:
        """Kill it (continued first, in case a test stopped it); idempotent."""
        import os
        import signal

        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
