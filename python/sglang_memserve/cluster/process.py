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


def file_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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
        """Start the process and wait until ``/health`` answers 200; raises ServerStartError."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sglang_memserve.launch_server", *self.args,
               "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            # A new session so stop() can signal SGLang's whole process tree.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        if self.cpus:
            # Set before the launcher imports anything: SGLang's processes inherit it.
            os.sched_setaffinity(self.proc.pid, self.cpus)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.name} exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"{self.name} not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for failure tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the parent
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
