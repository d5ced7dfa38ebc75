"""Stock sglang-router (the ``sglang-router`` package from PyPI) in front of colocated workers,
as a child process on free loopback ports (router benchmarks and the paper evaluation)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from sglang_memserve.cluster.process import free_ports, stop_group


@dataclass
class SglangRouter:
    """``python -m sglang_router.launch_router --worker-urls URLS ARGS`` (e.g. ``--policy
    cache_aware``), its log appended to ``log_dir/sglang-router.log``.

    Attributes:
        urls: the workers' base URLs.
        args: router arguments beyond workers, host and ports.
        log_dir: where the log goes.
        proc: the launcher process once started.
    """

    urls: list[str]
    args: list[str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start it and wait until one request routes through it.

        Returns:
            Its base URL.
        Raises:
            RuntimeError: it exited, or no request went through within ``timeout`` (then it is
                stopped).
        """
        port, prom = free_ports(2)
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *self.urls,
               "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
               "--prometheus-port", str(prom), "--log-level", "warn", *self.args]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_dir / "sglang-router.log", "ab")  # noqa: SIM115 -- lives with proc
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1}}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sglang-router exited with {self.proc.returncode} (log: "
                                   f"{self.log_dir / 'sglang-router.log'})")
            try:
                if requests.post(f"{url}/generate", json=body, timeout=5).status_code == 200:
                    return url
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("sglang-router did not become routable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the launcher's process group (it and its Rust child), SIGKILL after
        ``timeout``; closes the log."""
        stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
