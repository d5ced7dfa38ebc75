"""The simulator's settings (frozen): cluster shape, memory, batching, links, routing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["colocated", "prefill", "decode"]

# The GPU table measured on an H100 ships with the package; the H200 one lives in ../shared and
# is taken by path (``--cost-table PATH``).
DEFAULT_TABLE = "nvidia-h100-80gb-hbm3"


@dataclass(frozen=True)
class InstanceSpec:
    """One instance's resources and batching.

    Attributes:
        hbm_tokens: KV tokens its HBM holds (the device tier).
        dram_tokens: KV tokens its DRAM tier holds (0: no DRAM tier). A page leaves HBM for DRAM
            only when HBM evicts it (MemServe's write-back HiCache setting).
        chunk_tokens: prefill chunk size (SGLang's ``--chunked-prefill-size``): one scheduler
            iteration computes at most this many new prompt tokens of one request.
        max_batch: most requests in one decode batch (SGLang's ``--max-running-requests``).
        iteration_overhead_s: fixed seconds each scheduler iteration (a prefill chunk, a decode
            step) takes beyond the table's forward time: the serving engine's own work per
            iteration (batch building, sampling, streaming the tokens out), which a table of
            model forwards does not contain (0: none, the GPU tables' assumption).
        batch_prefill: one prefill iteration also computes the queued prompts that fit whole
            in what is left of its ``chunk_tokens`` (SGLang's prefill batch; their first tokens
            come together); False: one prompt per iteration.
        prefix_cache: reuse cached KV (False: every prefill computes the whole prompt and a
            decode instance receives all of it, as SGLang without a radix cache; the index
            still tracks pages, so memory use is the same).
    """

    hbm_tokens: int = 800_000
    dram_tokens: int = 0
    chunk_tokens: int = 8192
    max_batch: int = 256
    prefix_cache: bool = True
    iteration_overhead_s: float = 0.0
    batch_prefill: bool = False

    def __post_init__(self) -> None:
        if self.iteration_overhead_s < 0:
            raise ValueError(f"iteration_overhead_s must be >= 0, got {self.iteration_overhead_s}")
        if self.hbm_tokens <= 0 or self.dram_tokens < 0:
            raise ValueError(f"need hbm_tokens > 0 and dram_tokens >= 0, got {self.hbm_tokens}, "
                             f"{self.dram_tokens}")
        if self.chunk_tokens <= 0 or self.max_batch <= 0:
            raise ValueError("chunk_tokens and max_batch must be positive")


@dataclass(frozen=True)
class SimConfig:
    """A simulated cluster.

    Attributes:
        instances: colocated instances (``pd`` False), else prefill + decode instances in all.
        pd: prefill/decode disaggregation.
        prefill_share: with ``pd``: fraction of the instances that prefill (at least one each).
        instance: every instance's resources.
        decode_instance: with ``pd``: the decode instances' (None: ``instance``), e.g. a decode
            instance without a prefix cache (stock SGLang PD's), which receives every prompt's
            whole KV.
        policy: routing policy name (``memserve_router.policies``): colocated, and PD's prefill.
        decode_policy: PD's decode choice (default: ``policy``).
        cost_table: cost table name or path (``sglang_memserve.gpu.costmodel.load_table``); the
            simulator's times and the ``memserve`` policy's estimates both come from it.
        unit_tokens: tokens per simulated KV block. Prompts are sequences of block ids and every
            index (the instances' and the router's trees) keys one block per page: 512 for the
            Mooncake trace, whose hash ids name 512-token blocks. A multiple of the table's page.
        link_gbps: KV transfer bandwidth between instances, GB/s (None: the table's per-page
            figure). Transfers are not queued behind each other (no link contention).
        kv_return: PD-Caching-3: decode sends a finished request's prompt and answer back to its
            prefill instance.
        migrate: let the ``memserve`` policy migrate prefixes between instances.
        min_migrate_gain_s: the router's ``--min-migrate-gain-secs``.
        predict_ttl_s: the router's ``--predict-ttl-secs`` (simulated seconds).
        event_delay_s: delay between an index change on an instance and its event reaching the
            router's tree (0: at once).
        evict_batch: evict at least this fraction of a tier's capacity when it runs short, so the
            tree's LRU scan is amortised over many admissions.
        migration_overhead_s: fixed cost of one migration on top of its pages' transfer (the
            control round trips through both instances' scheduler loops).
        load_per_request_s: the router's ``--load-per-request-secs`` (None: its default).
        affinity_slack: the router's ``--affinity-slack`` (None: the router's default).
        shared_cores: None: every instance computes on a device of its own (a GPU each). A
            number C: all instances share C cores by processor sharing -- while k of them run
            an iteration, each advances at min(1, C / k) of the table's speed
            (:class:`~.compute.CorePool`; the CPU bench's instances share 2 cores).
        router_cost_table: the router's own ``--cost-table`` (the ``memserve`` policy's and the
            queued-prefill estimates), when it differs from the instances' (None: the same).
            memserve-router's default is ``cpu-bench``, whatever model the instances serve.
        cost_scale: every iteration's table time is multiplied by this (> 0) for the instances,
            not for the router's estimates: a what-if for instances slower than the table says.
        request_overhead_s: fixed latency a request spends outside the instances before its
            prefill is queued (client -> router -> instance hops), added to its TTFT; it uses
            no simulated compute.
    """

    instances: int = 8
    pd: bool = False
    prefill_share: float = 0.5
    instance: InstanceSpec = InstanceSpec()
    decode_instance: InstanceSpec | None = None
    policy: str = "memserve"
    decode_policy: str | None = None
    cost_table: str = DEFAULT_TABLE
    unit_tokens: int = 512
    link_gbps: float | None = None
    kv_return: bool = True
    migrate: bool = True
    min_migrate_gain_s: float = 0.05
    predict_ttl_s: float = 5.0
    event_delay_s: float = 0.0
    evict_batch: float = 0.01
    migration_overhead_s: float = 0.0
    load_per_request_s: float | None = None
    affinity_slack: float | None = None
    shared_cores: float | None = None
    router_cost_table: str | None = None
    cost_scale: float = 1.0
    request_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.instances < (2 if self.pd else 1):
            raise ValueError(f"need at least {2 if self.pd else 1} instances, got {self.instances}")
        if not 0.0 < self.prefill_share < 1.0:
            raise ValueError(f"prefill_share must be in (0, 1), got {self.prefill_share}")
        if self.unit_tokens <= 0:
            raise ValueError(f"unit_tokens must be positive, got {self.unit_tokens}")
        if self.link_gbps is not None and self.link_gbps <= 0:
            raise ValueError(f"link_gbps must be positive, got {self.link_gbps}")
        if self.migration_overhead_s < 0:
            raise ValueError(f"migration_overhead_s must be >= 0, got {self.migration_overhead_s}")
        if self.shared_cores is not None and not self.shared_cores > 0:
            raise ValueError(f"shared_cores must be positive, got {self.shared_cores}")
        if not self.cost_scale > 0:
            raise ValueError(f"cost_scale must be positive, got {self.cost_scale}")
        if self.request_overhead_s < 0:
            raise ValueError(f"request_overhead_s must be >= 0, got {self.request_overhead_s}")
        if self.predict_ttl_s <= 0 or self.event_delay_s < 0 or not 0 <= self.evict_batch < 1:
            raise ValueError("need predict_ttl_s > 0, event_delay_s >= 0, 0 <= evict_batch < 1")

    def roles(self) -> list[Role]:
        """The role of each instance, in order (prefill instances first under ``pd``)."""
        if not self.pd:
            return ["colocated"] * self.instances
        n_pre = min(self.instances - 1, max(1, round(self.instances * self.prefill_share)))
        return ["prefill"] * n_pre + ["decode"] * (self.instances - n_pre)

    def spec(self, role: Role) -> InstanceSpec:
        """The resources of an instance of ``role``."""
        if role == "decode" and self.decode_instance is not None:
            return self.decode_instance
        return self.instance
