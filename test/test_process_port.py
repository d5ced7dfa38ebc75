"""ServerProcess survives losing its chosen port to another process before the server binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.cluster.process import ServerStartError


def _listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_taken_port_restarts_on_another(tiny_model: Path, tmp_path: Path) -> None:
    squatter = _listener()  # takes the port "between" free_port and the server's bind
    try:
        server = ServerProcess(["--model-path", str(tiny_model)], tmp_path, name="moved")
        taken = squatter.getsockname()[1]
        server.port = taken
        with server:
            assert server.port != taken
            assert "was taken before the server bound it" in server.log_tail(400)
            r = requests.post(f"{server.url}/generate", json={
                "input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1}}, timeout=60)
            assert r.status_code == 200, r.text
    finally:
        squatter.close()


def test_taken_fixed_port_fails_fast(tiny_model: Path, tmp_path: Path) -> None:
    """A port the caller fixed is not changed behind its back: a clear error, not a hang."""
    squatter = _listener()
    try:
        port = squatter.getsockname()[1]
        server = ServerProcess(["--model-path", str(tiny_model)], tmp_path, name="fixed",
                               port=port)
        with pytest.raises(ServerStartError, match="address already in use"):
            server.start(timeout=170)
        assert server.proc is not None and server.proc.poll() is not None
    finally:
        squatter.close()
