"""The bind shim (``sglang_memserve/bind_host.c``): wildcard binds land on the configured host.

Each case runs a fresh Python process with the shim preloaded, as the launcher runs SGLang's
processes. The last one is a real Mooncake transfer over TCP on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sglang_memserve import bind
from sglang_memserve.bind import BIND_HOST_ENV, SHIM_SWITCH_ENV, build_shim, shim_env

HOST = "127.0.0.1"
MAPPED = "::ffff:127.0.0.1"  # an IPv6 socket's address for the IPv4 host

BINDS = textwrap.dedent("""
    import json, socket
    out = {}
    for name, fam, addr in [("v4_any", socket.AF_INET, "0.0.0.0"), ("v6_any", socket.AF_INET6, "::"),
                            ("v4_named", socket.AF_INET, "127.0.0.1"),
                            ("v6_named", socket.AF_INET6, "::1")]:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((addr, 0))
        s.listen()
        out[name] = s.getsockname()[0]
    print(json.dumps(out))
""")


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> str:
    full = {k: v for k, v in os.environ.items() if k not in (BIND_HOST_ENV, "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_wildcard_binds_take_the_host_and_named_ones_are_kept() -> None:
    got = json.loads(run_python(BINDS, shim_env(HOST)))
    assert got == {"v4_any": HOST, "v6_any": MAPPED, "v4_named": HOST, "v6_named": "::1"}


def test_without_the_host_variable_nothing_changes() -> None:
    env = shim_env(HOST)
    del env[BIND_HOST_ENV]
    got = json.loads(run_python(BINDS, env))
    assert got["v4_any"] == "0.0.0.0" and got["v6_any"] == "::"


def test_an_ipv4_client_reaches_the_rebound_ipv6_listener() -> None:
    code = textwrap.dedent("""
        import socket
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::", 0)); srv.listen()
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        peer, _ = srv.accept()
        c.sendall(b"ok"); print(peer.recv(2).decode())
    """)
    assert run_python(code, shim_env(HOST)) == "ok"


def test_env_keeps_an_existing_preload_and_knows_when_to_stay_out(tmp_path: Path) -> None:
    env = shim_env(HOST, {"LD_PRELOAD": "/opt/other.so"})
    shim, other = env["LD_PRELOAD"].split(" ")
    assert Path(shim) == build_shim() and other == "/opt/other.so"
    assert env[BIND_HOST_ENV] == HOST
    assert shim_env("localhost", {})[BIND_HOST_ENV] in (HOST, "::1")
    for host in ("0.0.0.0", "::", ""):
        assert shim_env(host, {}) == {}
    assert shim_env(HOST, {SHIM_SWITCH_ENV: "0"}) == {}


def test_the_shim_is_built_once_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr(bind, "_shim_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    first = build_shim()
    assert first.parent == tmp_path / "a" and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert build_shim() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left


def test_no_compiler_is_a_typed_error_and_the_launcher_env_is_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bind, "_shim_dirs", lambda: [tmp_path])
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(bind.ShimError, match="no C compiler"):
        build_shim()
    assert shim_env(HOST, {}) == {}


def test_mooncake_transfers_with_every_listener_on_the_host() -> None:
    """A real TransferEngine pair (TCP, P2P handshake) in one process: the write lands, and
    none of Mooncake's listeners (handshake and transport, both engines) is a wildcard."""
    code = textwrap.dedent("""
        import json, psutil, torch
        from sglang_memserve.mempool import MemPoolConfig, TransferAgent
        from sglang_memserve.mempool.transfer import Region
        cfg = MemPoolConfig()
        a, b = TransferAgent(cfg), TransferAgent(cfg)
        src = (torch.arange(8192) % 251).to(torch.uint8)
        dst = torch.zeros(8192, dtype=torch.uint8)
        a.register([Region(src.data_ptr(), src.numel())])
        b.register([Region(dst.data_ptr(), dst.numel())])
        a.write(b.segment_name, [(src.data_ptr(), dst.data_ptr(), 8192)])
        ips = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
               if c.status == psutil.CONN_LISTEN]
        print(json.dumps({"host": cfg.host, "equal": bool(torch.equal(src, dst)), "ips": ips}))
    """)
    got = json.loads(run_python(code, {**shim_env(HOST), "MC_LOG_LEVEL": "ERROR"}, timeout=120))
    assert got["host"] == HOST and got["equal"]
    assert len(got["ips"]) >= 4, got  # two engines: a handshake and a transport listener each
    assert set(got["ips"]) <= {HOST, MAPPED}, got
