"""Keeps the listeners SGLang and torch open inside an instance on the configured ``--host``.

Two of them ignore SGLang's ``--host`` (seen on SGLang 0.5.23, torch 2.13, listed by
test/security/test_secured_cluster.py):

* torch's ``TCPStore`` master, which SGLang's scheduler starts for its ``tcp://HOST:PORT``
  rendezvous (``init_process_group``), listens on ``::`` (every interface, both families):
  torch has no bind-address option for it. On one node MemServe gives SGLang a ``file://``
  rendezvous instead, through SGLang's own ``SGLANG_DISTRIBUTED_INIT_METHOD_OVERRIDE``: a
  FileStore in a private temporary folder, no socket at all.
* gloo's listener binds the address the machine's hostname resolves to, which need not be the
  configured host: ``GLOO_SOCKET_IFNAME`` names the interface that holds it.

Mooncake's TransferEngine (PD roles) binds its handshake port to ``0.0.0.0`` and its TCP
transport to ``::`` with no setting to change either (docs/reliability.md). For those, the
launcher preloads ``bind_host.c`` (built on first use with the machine's C compiler): with
``MEMSERVE_BIND_HOST`` set, a wildcard ``bind()`` in the SGLang processes binds the host
instead. Without a C compiler (or with ``MEMSERVE_BIND_SHIM=0``) the launcher warns and
Mooncake listens on every interface.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

BIND_HOST_ENV = "MEMSERVE_BIND_HOST"
SHIM_SWITCH_ENV = "MEMSERVE_BIND_SHIM"
SHIM_SOURCE = Path(__file__).with_name("bind_host.c")


class ShimError(RuntimeError):
    """The bind shim could not be built (no C compiler, or it failed)."""


def _shim_dirs() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(sys.prefix) / "lib" / "sglang-memserve", cache / "sglang-memserve"]


def build_shim() -> Path:
    """The shared object built from ``bind_host.c``, compiled once per source version.

    Returns:
        Its path (in the environment's ``lib/sglang-memserve``, else the user's cache).
    Raises:
        ShimError: no C compiler, or compiling failed in every candidate folder.
    """
    source = SHIM_SOURCE.read_bytes()
    name = f"bind_host-{hashlib.sha256(source).hexdigest()[:12]}.so"
    for folder in _shim_dirs():
        if (folder / name).is_file():
            return folder / name
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ShimError("no C compiler (cc, gcc or $CC) to build the bind shim")
    errors = []
    for folder in _shim_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
            os.close(fd)
        except OSError as e:
            errors.append(f"{folder}: {e}")
            continue
        run = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SHIM_SOURCE), "-ldl"],
                             capture_output=True, text=True)
        if run.returncode != 0:
            os.unlink(tmp)
            raise ShimError(f"{cc} failed on {SHIM_SOURCE}: {run.stderr.strip()[-500:]}")
        os.replace(tmp, folder / name)  # atomic: a concurrent launcher sees all of it or none
        return folder / name
    raise ShimError("no writable folder for the bind shim: " + "; ".join(errors))


def shim_env(host: str, environ: dict[str, str] | os._Environ[str] = os.environ
             ) -> dict[str, str]:
    """Variables that make the SGLang processes' wildcard binds bind ``host`` instead.

    Args:
        host: the instance's ``--host``; a wildcard, or a name that is not an IP address
            literal once resolved, sets nothing.
        environ: the environment to extend (its ``LD_PRELOAD`` is kept after the shim).
    Returns:
        ``MEMSERVE_BIND_HOST`` and ``LD_PRELOAD``, or nothing where the shim is switched off
        or cannot be built (logged).
    """
    if host in WILDCARDS or environ.get(SHIM_SWITCH_ENV, "1") == "0":
        return {}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except (socket.gaierror, ValueError, IndexError):
            return {}
    try:
        shim = build_shim()
    except (ShimError, OSError) as e:
        logger.warning("%s: Mooncake's listeners will bind every interface", e)
        return {}
    preload = " ".join(p for p in (str(shim), environ.get("LD_PRELOAD", "")) if p)
    return {BIND_HOST_ENV: str(ip), "LD_PRELOAD": preload}

DIST_OVERRIDE_ENV = "SGLANG_DISTRIBUTED_INIT_METHOD_OVERRIDE"
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def interface_of(host: str) -> str | None:
    """The network interface holding the address ``host`` (None: no interface has it)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return None
    wanted = {str(i[4][0]) for i in infos}
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%", 1)[0] in wanted for a in addrs):
            return name
    return None


def local_bind_env(host: str, store_dir: str, *, nnodes: int = 1,
                   dist_init_addr: str | None = None) -> dict[str, str]:
    """Environment for the SGLang processes that keeps torch's listeners on ``host``.

    Args:
        host: the instance's ``--host``; a wildcard asks for every interface (nothing is set).
        store_dir: a private, empty folder for the FileStore rendezvous (the caller removes it).
        nnodes, dist_init_addr: SGLang's ``--nnodes`` / ``--dist-init-addr``: a multi-node
            instance keeps its TCP rendezvous (the other nodes must reach it).
    Returns:
        Variables to set where the environment does not set them already.
    """
    if host in WILDCARDS:
        return {}
    env: dict[str, str] = {}
    if nnodes == 1 and not dist_init_addr:
        env[DIST_OVERRIDE_ENV] = f"file://{store_dir}/dist-store"
        # SGLang's CPU shared-memory all-reduce (AMX hosts) names its segments from these,
        # which it otherwise derives from the tcp:// rendezvous.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            env["MASTER_ADDR"], env["MASTER_PORT"] = host, str(s.getsockname()[1])
    iface = interface_of(host)
    if iface:
        env["GLOO_SOCKET_IFNAME"] = iface
    return env
