"""ServerProcess survives losing its chosen port to another process before the server binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.cluster.process import ServerStartError, free_port_pairs


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


def test_a_scheduler_that_dies_starting_is_reported_as_an_exit(tiny_model: Path,
                                                                tmp_path: Path) -> None:
    """The scheduler dies binding its control port and SGLang's launcher kills its own tree:
    the error says the server exited, with the scheduler's traceback (before: "not healthy
    after <timeout>s", which read as a hang)."""
    squatter = _listener()
    try:
        server = ServerProcess(["--model-path", str(tiny_model), "--memserve-cache", "memserve",
                                "--mempool-control-port", str(squatter.getsockname()[1])],
                               tmp_path, name="dies")
        with pytest.raises(ServerStartError, match=r"dies exited with .* into its start") as err:
            server.start(timeout=600)
        assert "Address already in use" in str(err.value)
        assert "not healthy" not in str(err.value)
    finally:
        squatter.close()


def test_free_port_pairs_gives_distinct_bindable_pairs() -> None:
    """Each port and the one after it bind (a prefill's control port is its bootstrap port +
    1), and no pair overlaps another: ``free_ports(2)`` could return p and p + 1."""
    ports = free_port_pairs(4)
    taken = [q for p in ports for q in (p, p + 1)]
    assert len(set(taken)) == 8, ports
    socks = []
    try:
        for q in taken:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", q))
    finally:
        for s in socks:
            s.close()


def test_free_port_pairs_skips_a_port_whose_successor_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose p + 1 is in use is never returned."""
    squatters = []
    real_socket = socket.socket

    class _Sock(real_socket):  # the first candidate's successor is taken by a squatter
        def bind(self, addr: tuple[str, int]) -> None:
            super().bind(addr)
            if addr[1] == 0 and not squatters:
                s = real_socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((addr[0], self.getsockname()[1] + 1))
                except OSError:  # already taken by someone else: squat the next candidate's
                    s.close()
                    return
                squatters.append(s)

    monkeypatch.setattr(socket, "socket", _Sock)
    try:
        ports = free_port_pairs(1)
        assert squatters
        blocked = squatters[0].getsockname()[1]
        assert ports[0] + 1 != blocked and ports[0] != blocked
    finally:
        for s in squatters:
            s.close()
