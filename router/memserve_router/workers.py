"""What the router knows of each instance: identity, endpoints, health and load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from memserve_router.config import WorkerSpec
from memserve_router.policies import Load

# The fields a worker's load score is made of (workers.load_key): setting one tells the watcher.
LOAD_FIELDS = frozenset({"healthy", "polled", "inflight", "pending_s", "polled_wait_s"})


class WorkerError(ValueError):
    """An instance cannot join: unreachable, inconsistent with the cluster, or a duplicate."""


@dataclass(frozen=True)
class WorkerInfo:
    """What an instance says of itself (``/server_info``, ``/get_model_info``).

    Attributes:
        instance_id: MemServe's instance id (``None``: a stock SGLang server).
        page_size: tokens per KV page.
        events: ZMQ PUB endpoint of its KV events (``None``: no events, approximate tree).
        control: its MemPool control channel (snapshots, ``kv_push``).
        model_path: the model it serves.
        bootstrap_port: prefill: SGLang's disaggregation bootstrap port.
        kv_tokens: KV tokens its device pool holds (SGLang's ``max_total_num_tokens``), where
            eviction loses pages; None when unknown or when a DRAM tier keeps what it evicts.
    """

    instance_id: str | None
    page_size: int
    events: str | None
    control: str | None
    model_path: str | None
    bootstrap_port: int | None
    kv_tokens: int | None = None

    @classmethod
    def from_server_info(cls, info: dict, model_info: dict) -> WorkerInfo:
        states = info.get("internal_states") or [{}]
        ms = dict(states[0].get("memserve") or {})
        endpoints = ms.get("endpoints") or {}
        port = info.get("disaggregation_bootstrap_port")
        kv = info.get("max_total_num_tokens")
        return cls(
            instance_id=ms.get("instance_id"),
            page_size=int(ms.get("page_size") or info.get("page_size") or 1),
            events=endpoints.get("events"),
            control=endpoints.get("control"),
            model_path=model_info.get("model_path"),
            bootstrap_port=int(port) if port else None,
            kv_tokens=int(kv) if kv and not ms.get("dram_tier") else None,
        )


@dataclass
class Worker:
    """One instance in the router's rotation. Mutated only on the router's event loop.

    Attributes:
        id: the name the trees and the metrics use (MemServe's instance id, else the URL).
        spec: how it was added. info: what it said of itself when it joined.
        healthy: in rotation. failures: consecutive failed health checks.
        alive: its HTTP process answers the liveness probe (False after
            ``liveness_failure_threshold`` misses in a row; it rejoins only once alive again).
        live_failures: consecutive missed liveness probes.
        peers_synced: its peer registry holds the router's last member list (``peers_set``).
        aborts: one future per request on it that has not sent the client a byte yet; each is
            set to a message when the instance is found dead (:meth:`abort_waiting`).
        polled: its last ``/v1/loads`` core figures, the request counts less this router's
            own requests in flight when the answer came (others' requests only).
        inflight: requests the router sent it that have not finished.
        pending_s: estimated prefill seconds of the requests the router sent it whose prefill
            has not finished (first byte not seen yet): the ``memserve`` policy's queue wait.
            NOTE: it drains as answers arrive, not as time passes, so it measures the real
            queue in the cost table's units even when the table is off for this hardware.
        polled_wait_s: the prefill time of the uncached tokens waiting in its own queue beyond
            those this router has pending there, as of the last poll (requests that did not come
            through this router).
        watcher: called with the worker after any of :data:`LOAD_FIELDS` is assigned (the
            cluster's load index marks it for re-sorting). ``polled`` must therefore be
            replaced, never changed in place.
    """

    id: str
    spec: WorkerSpec
    info: WorkerInfo
    healthy: bool = True
    failures: int = 0
    alive: bool = True
    live_failures: int = 0
    peers_synced: bool = False
    aborts: set[asyncio.Future[str]] = field(default_factory=set, repr=False, compare=False)
    polled: dict[str, float] = field(default_factory=dict)
    inflight: int = 0
    pending_s: float = 0.0
    pending_tokens: int = 0
    polled_wait_s: float = 0.0
    # Running totals (never decrease): what drained since a poll was sent, so a poll that was
    # answered before those drains does not count this router's finished requests again.
    drained_tokens: int = 0
    finished_requests: int = 0
    watcher: Callable[[Worker], None] | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in LOAD_FIELDS:
            watcher = self.__dict__.get("watcher")  # absent while __init__ runs
            if watcher is not None:
                watcher(self)

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def host(self) -> str:
        return urlparse(self.spec.url).hostname or "127.0.0.1"

    @property
    def bootstrap_port(self) -> int | None:
        return self.spec.bootstrap_port or self.info.bootstrap_port

    def load(self) -> Load:
        """Its load as the policies see it: others' polled requests plus the router's own
        in flight; the queue wait is the router's estimate plus others' polled queue."""
        return Load(
            running=int(self.polled.get("num_running_reqs", 0)),
            queued=int(self.polled.get("num_waiting_reqs", 0)),
            kv_usage=float(self.polled.get("token_usage", 0.0)),
            inflight=self.inflight,
            queue_wait_s=self.pending_s + self.polled_wait_s,
            kv_tokens=self.info.kv_tokens or 0,
        )

    def watch(self, fut: asyncio.Future[str]) -> asyncio.Future[str]:
        """Register ``fut`` to be set when this instance is found dead; returns it."""
        self.aborts.add(fut)
        return fut

    def unwatch(self, fut: asyncio.Future[str] | None) -> None:
        """``fut``'s request no longer depends on this instance (or has sent a byte)."""
        if fut is not None:
            self.aborts.discard(fut)

    def abort_waiting(self, why: str) -> int:
        """End every request on it that has not sent a byte (their futures get ``why``);
        returns how many. Empties :attr:`aborts`."""
        futs, self.aborts = self.aborts, set()
        n = 0
        for fut in futs:
            if not fut.done():
                fut.set_result(why)
                n += 1
        return n

    def queue_prefill(self, seconds: float, tokens: int) -> None:
        """Account ``seconds`` of prefill work (``tokens`` uncached tokens) just routed to it."""
        self.pending_s += seconds
        self.pending_tokens += tokens

    def prefilled(self, seconds: float, tokens: int) -> None:
        """A request's prefill (estimated ``seconds``) is done: its first byte arrived."""
        self.pending_s = max(0.0, self.pending_s - seconds)
        self.pending_tokens = max(0, self.pending_tokens - tokens)
        self.drained_tokens += tokens

    def finished(self) -> None:
        """One of its requests ended; an idle instance has no queue left."""
        self.inflight = max(0, self.inflight - 1)
        self.finished_requests += 1
        if self.inflight == 0:
            self.pending_s, self.pending_tokens = 0.0, 0

    def describe(self) -> dict:
        """JSON-able view for ``GET /workers``; read-only."""
        return {
            "id": self.id, "url": self.url, "role": self.role, "healthy": self.healthy,
            "alive": self.alive, "peers_synced": self.peers_synced,
            "bootstrap_port": self.bootstrap_port, "page_size": self.info.page_size,
            "events": self.info.events, "control": self.info.control,
            "inflight": self.inflight, "load": self.polled,
        }


def load_key(w: Worker, per_request_s: float) -> tuple[float, int, str]:
    """``w``'s place in a load order: ``(score, requests, id)``, where ``score`` is the
    ``memserve`` policy's per-instance term -- queue wait + ``Load.requests`` x
    ``per_request_s`` -- computed with the same float operations, so equal here is equal there.
    Read-only."""
    polled = w.polled
    r = (int(polled.get("num_running_reqs", 0)) + int(polled.get("num_waiting_reqs", 0))
         + w.inflight)
    return ((w.pending_s + w.polled_wait_s) + r * per_request_s, r, w.id)
