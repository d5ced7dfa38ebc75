"""``memserve-router`` as a child process on a free loopback port (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import requests

from sglang_memserve.cluster.process import (
    ServerStartError,
    file_tail,
    free_port,
    pin,
    stop_group,
)


class MemServeRouterProcess:
    """``python -m memserve_router ARGS --host H --port P``, ready once it routes.

    Args:
        args: router arguments (workers, policy, ...), without --host/--port.
        log_dir: where ``<name>.log`` is written.
        name: label of the log file.
        host: the address it binds to.
        env: extra environment variables.
        cpus: cores the router may run on (Linux CPU affinity; default: all).
    """

    def __init__(self, args: Sequence[str], log_dir: Path, name: str = "memserve-router",
                 host: str = "127.0.0.1", env: dict[str, str] | None = None,
                 cpus: Sequence[int] | None = None) -> None:
        self.cpus = list(cpus) if cpus else None
        self.args = list(args)
        self.host = host
        self.port = free_port(host)
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        key = next((self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == "--api-key"),
                   None)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0, probe: bool = True) -> MemServeRouterProcess:
        """Start it and wait until ``/readiness`` says every instance type has a member and, if
        ``probe``, one request went through; raises ServerStartError with the log tail."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "memserve_router", *self.args,
               "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        pin(self.proc.pid, self.cpus)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.name} exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/readiness", timeout=2, headers=self.headers)
                if r.status_code == 200:
                    if not probe or self._routes(deadline):
                        return self
                last = r.text[:200]
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.3)
        self.stop()
        raise ServerStartError(f"{self.name} not ready after {timeout:.0f}s ({last}):\n"
                               f"{self.log_tail()}")

    def _routes(self, deadline: float) -> bool:
        body = {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 1}}
        try:
            r = requests.post(f"{self.url}/generate", json=body, headers=self.headers,
                              timeout=max(1.0, deadline - time.monotonic()))
            return r.status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout``."""
        stop_group(self.proc, timeout)

    def __enter__(self) -> MemServeRouterProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
