"""Fixtures for the multi-process MemPool tests: workers in spawned processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import mp_worker
import pytest
from mp_worker import PS


class Worker:
    """A MemPool in a spawned process (see ``mp_worker``)."""

    def __init__(self, instance_id: str, num_pages: int, **cfg) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        cfg.setdefault("page_size", PS)
        self.proc = ctx.Process(
            target=mp_worker.run_worker, args=(child, instance_id, num_pages, cfg), daemon=True
        )
        self.proc.start()
        if not self.conn.poll(60):
            raise RuntimeError(f"worker {instance_id} did not start")
        self.info = self.conn.recv()
        self.instance_id = instance_id

    def send_cmd(self, *cmd) -> None:
        self.conn.send(cmd)

    def result(self, timeout: float = 60):
        if not self.conn.poll(timeout):
            raise TimeoutError(f"worker {self.instance_id}: no answer")
        status, *rest = self.conn.recv()
        if status == "err":
            raise RuntimeError(f"{rest[0]}: {rest[1]}")
        return rest[0]

    def call(self, *cmd, timeout: float = 60):
        self.send_cmd(*cmd)
        return self.result(timeout)

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("stop", timeout=10)
            except Exception:  # noqa: BLE001
                pass
            self.proc.join(10)
        self.kill()


@pytest.fixture
def spawn_worker():
    made: list[Worker] = []

    def make(instance_id: str, num_pages: int = 256, **cfg) -> Worker:
        w = Worker(instance_id, num_pages, **cfg)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
