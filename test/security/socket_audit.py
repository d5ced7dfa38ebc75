"""Helpers of the security tests: every listening socket of a whole process tree.

Importable as ``socket_audit`` (test/security is on sys.path while its tests run).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Listener:
    """One bound, listening socket.

    Attributes:
        pid: the process holding it. name: that process's command name.
        kind: ``tcp`` (state LISTEN) or ``udp`` (bound, no peer).
        ip, port: its local address.
    """

    pid: int
    name: str
    kind: str
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.kind} {self.ip}:{self.port} (pid {self.pid} {self.name})"


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    proc = psutil.Process(root)
    return [proc.pid, *(c.pid for c in proc.children(recursive=True))]


def listeners(pids: list[int]) -> list[Listener]:
    """Every TCP LISTEN socket and every bound, unconnected UDP socket of ``pids``.

    Args:
        pids: processes to inspect (gone ones are skipped).
    Returns:
        The sockets, one entry per (process, socket).
    """
    out: list[Listener] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
                kind = "tcp"
            elif c.type == socket.SOCK_DGRAM and not c.raddr and c.laddr:
                kind = "udp"
            else:
                continue
            out.append(Listener(pid, name, kind, c.laddr.ip, c.laddr.port))
    return out


def outside(found: list[Listener], host: str) -> list[Listener]:
    """The listeners not bound to exactly ``host`` (a wildcard such as 0.0.0.0 or :: counts as
    outside: it answers on every interface). An IPv6 socket bound to the IPv4 host's mapped
    address (``::ffff:127.0.0.1``, what the launcher's bind shim makes of Mooncake's ``::``)
    is on the host: it answers on that address alone."""
    return [s for s in found if s.ip not in (host, f"::ffff:{host}")]
