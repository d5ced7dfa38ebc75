"""The router's configuration: which instances it fronts and how it routes (frozen, from the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from memserve_router.policies import PolicyConfig
from sglang_memserve.gpu.costmodel import load_table
from sglang_memserve.mempool.auth import ControlAuth
from sglang_memserve.overload import OverloadLimits
from sglang_memserve.validate import RequestLimits

# Context of the decode step that ``load_per_request_steps`` counts in (tokens).
DECODE_STEP_CONTEXT = 1024

Role = Literal["colocated", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("colocated", "prefill", "decode")


@dataclass(frozen=True)
class WorkerSpec:
    """One instance the router fronts.

    Attributes:
        url: its HTTP base URL (``http://host:port``).
        role: ``colocated``, ``prefill`` or ``decode``.
        bootstrap_port: prefill only: SGLang's disaggregation bootstrap port (decode instances
            fetch the KV from there); ``None`` asks the instance (its ``/server_info``).
    """

    url: str
    role: Role = "colocated"
    bootstrap_port: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"worker URL must start with http:// or https://, got {self.url!r}")
        object.__setattr__(self, "url", self.url.rstrip("/"))


@dataclass(frozen=True)
class RouterConfig:
    """How the router runs.

    Attributes:
        workers: the instances at start (more join through ``POST /workers``).
        pd: prefill/decode disaggregation (each request goes to one prefill and one decode).
        policy / prefill_policy / decode_policy: policy names (colocated; PD's two choices).
        host, port: where the router listens (loopback by default).
        api_key: required as ``Authorization: Bearer KEY`` on the admin API (and, like
            sglang-router, on every route) when set.
        tokenizer_path: the model's tokenizer (default: the instances' ``model_path``).
        cost_table: cost table of the ``memserve`` policy (name or path).
        transfer_per_page_s: the link's cost per KV page (overrides the table's).
        migrate: let the ``memserve`` policy move KV between instances (``kv_push``).
        min_migrate_gain_s: a migration must beat serving locally by this much: its fixed cost
            (control round trips through both instances' scheduler loops) is not in the cost
            table's per-page figure.
        migration_overhead_s: a migration's fixed cost for the ``memserve`` policy, pinned;
            None (default) learns it from the migrations the router awaited.
        affinity_slack: the ``memserve`` policy keeps a request on the holder of its longest
            cached prefix unless another option is estimated faster by more than this
            fraction of the holder's estimate, scaled by the share of the prompt the holder
            caches beyond it (:class:`~memserve_router.policies.base.PolicyConfig`), and by
            the holder's chance of keeping that prefix through its queue
            (``affinity_pressure``). At 2 a conversation whose cached history is over half
            its prompt stays with an idle-enough holder (it moves only by migration): on
            ``router_bench.py hits`` a flat 2 reached 0.99 of the oracle with ample memory
            (0.97-0.98 at 0.95) but doubled the P99 TTFT under memory pressure, which the
            pressure scaling is for (docs/performance.md).
        affinity_pressure: scale the slack by the holder's queue against its KV capacity
            (``PolicyConfig.affinity_pressure``); False keeps it flat.
        load_per_request_s: the ``memserve`` policy's cost of each request already on an
            instance (seconds; small, so equal estimates spread). Raise it where requests
            decode long enough for a crowded instance's decode batch to slow them.
        load_per_request_steps: instead of ``load_per_request_s``: that cost as this many of
            the cost table's decode steps (one sequence, :data:`DECODE_STEP_CONTEXT` tokens of
            context), so it follows the hardware the table describes (a decode step is 1/80 of
            a 1,024-token prefill on ``cpu-bench``, 1/3 on the H100 table). None: use
            ``load_per_request_s``.
        hit_survival: price each hit by the holder's survival inside the ``memserve``
            policy's estimate (``PolicyConfig.hit_survival``).
        cache_threshold, balance_abs_threshold, balance_rel_threshold: the ``prefix``
            policy's thresholds (sglang-router's ``cache_aware`` defaults).
        health_interval_s, health_timeout_s, health_failure_threshold: health checks; an
            instance failing that many in a row leaves the rotation and the trees.
        liveness_interval_s, liveness_timeout_s, liveness_failure_threshold: the liveness
            probe (``GET /ping``, answered by SGLang's HTTP process, not its scheduler, so a
            busy instance answers it at once): an instance that misses that many in a row is
            taken out of rotation and its requests that have not sent a byte yet are ended
            (retried elsewhere, else 503 with ``Retry-After``). 0 interval: no probe.
        load_interval_s: how often each instance's ``/v1/loads`` is polled.
        predict_ttl_s: how long a routed request's pages count as cached on the chosen instance
            before an event confirms them.
        prefill_hold_s: longest a request waits for an earlier request's prefill on the same
            instance that is about to store its prefix (:mod:`memserve_router.inflight`; 0:
            never waits).
        approx_ttl_s: lifetime of the approximate tree of an instance without KV events.
        request_timeout_s: bound on one proxied request.
        migrate_timeout_s: bound on one ``kv_push`` the router asks for.
        session_header: the header the ``session`` policy reads.
        retries: how often a request whose instance failed before any byte was sent is
            retried on another instance.
        control_auth: the instances' control-channel secret: the router signs its snapshot
            and ``kv_push`` requests with it (None: unsigned). The CLI loads it from
            ``--mempool-secret-file`` or the environment (``MEMSERVE_SECRET_FILE``,
            ``MEMSERVE_SECRET``).
        max_body_bytes: largest request body (413 beyond; sglang-router's
            ``--max-payload-size``).
        max_n: largest ``n`` a generation request may ask for (400 beyond).
        max_concurrent_requests, queue_size, queue_timeout_s: admission of generation requests
            (``memserve_router.limits``; 0 concurrent: unlimited): beyond the running ones up to
            ``queue_size`` wait up to ``queue_timeout_s``; the rest get 429/503 with
            ``Retry-After``.
        request_read_timeout_s: a generation request's body must arrive within this (408
            after it; 0: no deadline).
        header_read_timeout_s: any request's head (request line and headers) must arrive
            within this of its first byte (408 and the connection closed; 0: no deadline).
    """

    workers: tuple[WorkerSpec, ...] = ()
    pd: bool = False
    policy: str = "memserve"
    prefill_policy: str | None = None
    decode_policy: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    tokenizer_path: str | None = None
    cost_table: str = "cpu-bench"
    transfer_per_page_s: float | None = None
    migrate: bool = True
    min_migrate_gain_s: float = 0.05
    affinity_slack: float = 2.0
    affinity_pressure: bool = True
    migration_overhead_s: float | None = None
    load_per_request_s: float = PolicyConfig.load_per_request_s
    load_per_request_steps: float | None = None
    hit_survival: bool = True
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    health_interval_s: float = 2.0
    health_timeout_s: float = 10.0
    health_failure_threshold: int = 3
    liveness_interval_s: float = 0.5
    liveness_timeout_s: float = 1.5
    liveness_failure_threshold: int = 2
    load_interval_s: float = 0.5
    predict_ttl_s: float = 5.0
    approx_ttl_s: float = 120.0
    prefill_hold_s: float = 5.0
    request_timeout_s: float = 600.0
    migrate_timeout_s: float = 30.0
    session_header: str = "X-Session-ID"
    retries: int = 1
    control_auth: ControlAuth | None = None
    max_body_bytes: int = RequestLimits.max_body_bytes
    max_n: int = RequestLimits.max_n
    max_concurrent_requests: int = 0
    queue_size: int = 100
    queue_timeout_s: float = 60.0
    request_read_timeout_s: float = OverloadLimits.read_timeout_s
    header_read_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        roles = {w.role for w in self.workers}
        if self.pd and "colocated" in roles:
            raise ValueError("a PD router fronts prefill and decode instances, not colocated ones")
        if not self.pd and roles - {"colocated"}:
            raise ValueError("prefill/decode instances need --pd-disaggregation")
        if self.header_read_timeout_s < 0:
            raise ValueError(f"header read timeout must be >= 0 s, got "
                             f"{self.header_read_timeout_s}")
        if self.liveness_interval_s < 0 or self.liveness_timeout_s <= 0 \
                or self.liveness_failure_threshold < 1:
            raise ValueError("liveness: interval >= 0, timeout > 0 and failure threshold >= 1 "
                             f"required, got {self.liveness_interval_s}, "
                             f"{self.liveness_timeout_s}, {self.liveness_failure_threshold}")
        if self.prefill_hold_s < 0:
            raise ValueError(f"prefill hold must be >= 0 s, got {self.prefill_hold_s}")
        self.limits  # noqa: B018 -- validates them
        self.overload  # noqa: B018
        self.policy_config  # noqa: B018 -- validates the policies' settings at parse time

    @property
    def policy_config(self) -> PolicyConfig:
        """The settings every policy reads, from this config (raises ValueError when bad)."""
        return PolicyConfig(cache_threshold=self.cache_threshold,
                            balance_abs_threshold=self.balance_abs_threshold,
                            balance_rel_threshold=self.balance_rel_threshold,
                            cost_table=self.cost_table,
                            transfer_per_page_s=self.transfer_per_page_s,
                            migrate=self.migrate, min_migrate_gain_s=self.min_migrate_gain_s,
                            affinity_slack=self.affinity_slack,
                            affinity_pressure=self.affinity_pressure,
                            hit_survival=self.hit_survival,
                            migration_overhead_s=self.migration_overhead_s,
                            load_per_request_s=self.per_request_s)

    @property
    def per_request_s(self) -> float:
        """The ``memserve`` policy's cost per request on an instance, seconds: from
        ``load_per_request_steps`` and the cost table when set, else ``load_per_request_s``
        (raises ValueError for a negative count or a table without decode points)."""
        steps = self.load_per_request_steps
        if steps is None:
            return self.load_per_request_s
        if steps < 0:
            raise ValueError(f"load_per_request_steps must be >= 0, got {steps}")
        return steps * load_table(self.cost_table).decode_time(1, DECODE_STEP_CONTEXT)

    @property
    def limits(self) -> RequestLimits:
        """The bounds every generation request is checked against."""
        return RequestLimits(self.max_body_bytes, self.max_n)

    @property
    def overload(self) -> OverloadLimits:
        """The admission bounds and read deadline (raises ValueError when bad)."""
        return OverloadLimits(max_concurrent=self.max_concurrent_requests,
                              max_queued=self.queue_size, queue_timeout_s=self.queue_timeout_s,
                              read_timeout_s=self.request_read_timeout_s)

    def policy_for(self, role: str) -> str:
        """The policy name that picks an instance of ``role``."""
        own = {"prefill": self.prefill_policy, "decode": self.decode_policy}.get(role)
        return own or self.policy
