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

Mooncake's listeners (PD roles) are out of reach: see docs/reliability.md.
"""

from __future__ import annotations

import socket

import psutil

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
