"""One MemServe (or stock SGLang) server as a child process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import requests


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (all held open while picking, so
    the OS cannot hand out one twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pairs(n: int, host: str = "127.0.0.1", attempts: int = 64) -> list[int]:
    """``n`` TCP ports ``p`` such that every ``p`` and ``p + 1`` were free a moment ago, all
    ``2 n`` distinct (held open while picking): for instances whose second port is implied (a
    prefill's control port is its bootstrap port + 1).

    Raises:
        OSError: fewer than ``n`` such pairs found in ``attempts`` tries.
    """
    held: list[socket.socket] = []
    out: list[int] = []
    try:
        for _ in range(attempts):
            if len(out) == n:
                break
            a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            a.bind((host, 0))
            p = int(a.getsockname()[1])
            b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                b.bind((host, p + 1))
            except (OSError, OverflowError):
                a.close()
                b.close()
                continue
            held += [a, b]
            out.append(p)
        if len(out) < n:
            raise OSError(f"{len(out)} of {n} adjacent free port pairs on {host} "
                          f"in {attempts} tries")
        return out
    finally:
        for s in held:
            s.close()


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL
    what is left after ``timeout`` (children that outlived the leader too); waits for it.
    No-op for None."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def pin(pid: int, cpus: Sequence[int] | None) -> None:
    """Restrict a just-started process to ``cpus`` (no-op for None). Call it right after
    ``Popen``, before the child's interpreter starts threads: threads and children it starts
    later inherit the mask (``sched_setaffinity`` on a pid sets only that thread)."""
    if cpus:
        os.sched_setaffinity(pid, list(cpus))


def file_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Starts tried when the chosen port was taken before the server bound it (see ServerProcess.start).
BIND_ATTEMPTS = 3


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _bind_failed(log_tail: str) -> bool:
    """Whether a server's log says its HTTP port was taken ("address already in use")."""
    return "address already in use" in log_tail.lower()


class ServerStartError(RuntimeError):
    """The server process exited or did not become healthy in time; carries its log tail."""


class ServerProcess:
    """``python -m sglang_memserve.launch_server ARGS --port P`` with its log in ``log_dir``.

    Args:
        args: launch_server arguments (MemServe's and SGLang's), without --port/--host.
        log_dir: where ``<name>.log`` is written.
        name: label for the log file and errors.
        host: the address the server binds to.
        env: extra environment variables for the process.
        port: a fixed port (default: a free one).
        cpus: cores the process tree may run on (Linux CPU affinity; default: all).
    """

    def __init__(
        self,
        args: Sequence[str],
        log_dir: Path,
        name: str = "server",
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        port: int | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.args = list(args)
        self.host = host
        self._fixed_port = port is not None
        self.port = port or free_port(host)
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cpus = list(cpus) if cpus else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        """Start the process and wait until ``/health`` answers 200; raises ServerStartError.

        A free port can be taken by another process between :func:`free_port` and the server's
        bind (busy machines, parallel tests): when the log says so and the port was not given
        by the caller, the server is restarted on another free port, up to
        ``BIND_ATTEMPTS`` times in all."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        note = b""
        exited: int | None = None
        for attempt in range(1, BIND_ATTEMPTS + 1):
            if self._spawn_and_wait(deadline, note):
                return self
            exited = self.proc.poll() if self.proc is not None else None
            lost_port = _bind_failed(self.log_tail(200))
            self.stop()
            if not lost_port or self._fixed_port or attempt == BIND_ATTEMPTS:
                break
            old, self.port = self.port, free_port(self.host)
            note = f"[memserve] port {old} was taken before the server bound it: restarted " \
                   f"on port {self.port}\n".encode()
        if exited is not None:
            # NOTE: SGLang's launcher kills its own process tree when a child (the scheduler)
            # fails, so a signal here is not necessarily ours: the wait ended because it exited.
            raise ServerStartError(f"{self.name} exited with {_exit_status(exited)} "
                                   f"{time.monotonic() - t0:.0f} s into its start:\n"
                                   f"{self.log_tail()}")
        raise ServerStartError(f"{self.name} not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def _spawn_and_wait(self, deadline: float, note: bytes = b"") -> bool:
        """Start the process; True once healthy, False if it exited, lost its port or ran out
        of time (the process may still be running: the caller stops it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sglang_memserve.launch_server", *self.args,
               "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            log.write(note)
            log.flush()
            # A new session so stop() can signal SGLang's whole process tree.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        # Set before the launcher imports anything: SGLang's processes inherit it.
        pin(self.proc.pid, self.cpus)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            if _bind_failed(self.log_tail(5)):
                return False  # uvicorn can hang after a failed bind instead of exiting
            time.sleep(0.5)
        return False

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for failure tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        stop_group(self.proc, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
