"""The routing policies' interface: cluster state in, one explained decision out.

A policy sees one request (its length, session) and one :class:`Candidate` per instance that
may serve it: the instance's :class:`Load` and how much of the prompt it already caches (from the
global prompt tree). ``select`` returns a :class:`Decision`: the chosen instance, optionally a
prefix migration to run first, and the options it weighed (:class:`Estimate`). Pure Python: no
I/O, no asyncio; the router owns polling, trees and HTTP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar


class NoCandidate(RuntimeError):
    """``select`` was given no candidate instance."""


@dataclass(frozen=True, slots=True)
class Load:
    """One instance's load, as the router sees it.

    Attributes:
        running: requests running on the instance that this router did not send (polled from
            its load endpoint, less this router's own in flight when the answer came).
        queued: requests waiting there that this router did not send (polled, likewise).
        kv_usage: fraction of its KV pool in use (polled), 0..1.
        inflight: router-side: requests sent to it and not yet finished (exact at any time).
        queue_wait_s: the router's estimate of seconds of prefill work queued ahead on it.
        kv_tokens: KV tokens its cache holds, where eviction decides what stays (0: unknown,
            or a DRAM tier keeps what the device evicts): the ``memserve`` policy weakens its
            affinity slack when the work queued ahead would rewrite much of it.
    """

    running: int = 0
    queued: int = 0
    kv_usage: float = 0.0
    inflight: int = 0
    queue_wait_s: float = 0.0
    kv_tokens: int = 0

    def __post_init__(self) -> None:
        if min(self.running, self.queued, self.inflight, self.kv_tokens) < 0 \
                or self.kv_usage < 0 or self.queue_wait_s < 0:
            raise ValueError(f"negative load: {self!r}")

    @property
    def requests(self) -> int:
        """Requests on the instance: others' as of the last poll plus this router's own now.

        NOTE: the router's own count is never taken from a poll, so one of its requests that
        finishes just after a poll is not counted until the next (it made an idle instance
        look busy, and an eager migration moved conversations off their holder)."""
        return self.running + self.queued + self.inflight


@dataclass(frozen=True, slots=True)
class Candidate:
    """An instance that may serve the request.

    Attributes:
        instance_id: the instance's id (unique among the candidates).
        load: its load.
        hit_tokens: cached prefix of this request on it, any tier (from the global tree).
        host_tokens: of ``hit_tokens``, how many are only in DRAM (must be swapped in first).
    """

    instance_id: str
    load: Load
    hit_tokens: int = 0
    host_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.host_tokens <= self.hit_tokens:
            raise ValueError(f"candidate {self.instance_id!r}: need 0 <= host_tokens <= "
                             f"hit_tokens, got {self.host_tokens}, {self.hit_tokens}")


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy knows of the request.

    Attributes:
        num_tokens: prompt length in tokens (> 0).
        session_id: the client's session id (e.g. an ``X-Session-ID`` header), if any.
        page_size: the instances' KV page size in tokens (informational: cost tables convert
            tokens to their own pages).
        explain: fill :attr:`Decision.estimates` with every option weighed; when False only the
            chosen option is kept (the hot path: building one object per option is most of a
            large cluster's decision time).
    """

    num_tokens: int
    session_id: str | None = None
    page_size: int = 1
    explain: bool = True

    def __post_init__(self) -> None:
        if self.num_tokens <= 0 or self.page_size <= 0:
            raise ValueError(f"need num_tokens > 0 and page_size > 0, got {self.num_tokens}, "
                             f"{self.page_size}")


@dataclass(frozen=True, slots=True)
class Estimate:
    """One explained option: serve the request on ``instance_id`` (after migrating the prefix
    from ``migrate_from`` when set).

    Attributes:
        instance_id: where the request would run.
        hit_tokens: cached prefix it would start from (after the migration, if any).
        host_tokens: of those, pages in DRAM that must be swapped in.
        wait_s: queued prefill work ahead of it.
        exec_s: prefill of the uncached part.
        swap_s: swap-in of the DRAM part.
        transfer_s: migration of the missing prefix.
        migrate_from: the instance pushing the prefix, or None for a local option.
        load_s: the small per-request load term that spreads equal options.
    """

    instance_id: str
    hit_tokens: int
    host_tokens: int
    wait_s: float
    exec_s: float
    swap_s: float = 0.0
    transfer_s: float = 0.0
    migrate_from: str | None = None
    load_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Estimated time to first token of this option, seconds."""
        return self.wait_s + self.exec_s + self.swap_s + self.transfer_s + self.load_s


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's choice.

    Attributes:
        instance_id: where to send the request.
        policy: the policy's name.
        reason: one line saying why.
        migrate_from: push the prefix from this instance to ``instance_id`` first (or None).
        migrate_tokens: length of the prefix to push (tokens, from the prompt's start).
        migrate_cached_tokens: of ``migrate_tokens``, how many ``instance_id`` already holds
            (only the rest has to move).
        estimates: the options weighed (empty for policies without a cost model).
    """

    instance_id: str
    policy: str
    reason: str = ""
    migrate_from: str | None = None
    migrate_tokens: int = 0
    migrate_cached_tokens: int = 0
    estimates: tuple[Estimate, ...] = ()

    def explain(self) -> dict[str, Any]:
        """The decision as JSON-able data (for ``/route?debug`` and log lines).

        Returns:
            ``{"policy", "choice", "reason", "migrate_from", "migrate_tokens",
            "migrate_cached_tokens", "candidates": [...]}``; each candidate is an estimate's
            fields plus ``total_s`` and ``chosen``, cheapest first.
        """
        rows = []
        for e in sorted(self.estimates, key=lambda e: e.total_s):
            row = asdict(e)
            row["total_s"] = e.total_s
            row["chosen"] = (e.instance_id == self.instance_id
                             and e.migrate_from == self.migrate_from)
            rows.append(row)
        return {"policy": self.policy, "choice": self.instance_id, "reason": self.reason,
                "migrate_from": self.migrate_from, "migrate_tokens": self.migrate_tokens,
                "migrate_cached_tokens": self.migrate_cached_tokens, "candidates": rows}


@dataclass(frozen=True)
class PolicyConfig:
    """Settings shared by the policies (each reads the fields it needs).

    Attributes:
        cache_threshold: ``prefix``: minimum hit ratio to follow the cache (sglang-router's).
        balance_abs_threshold: ``prefix``: load gap (requests) that counts as imbalance.
        balance_rel_threshold: ``prefix``: load ratio that counts as imbalance.
        cost_table: ``memserve``: cost table name or path (``costmodel.load_table``).
        transfer_per_page_s: ``memserve``: link cost per table page, overriding the table's.
        migrate: ``memserve``: allow choosing a migration.
        min_migrate_gain_s: ``memserve``: a migration must beat the source's and the target's
            local options by this much.
        load_per_request_s: ``memserve``: seconds added per request on an instance, so equal
            estimates spread over idle instances instead of piling onto one.
        max_migrate_sources: ``memserve``: distinct longest hit lengths considered as migration
            sources (bounds the decision's cost; shorter holders save less and rarely win).
        affinity_slack: ``memserve``: the instance holding the longest cached prefix keeps the
            request unless another option's estimate is below the holder's by more than this
            fraction of it, scaled by the share of the prompt the holder caches beyond that
            option (0: pure lowest estimate; from 1 on, a holder caching the whole prompt
            beyond the other option never loses it, and one caching a share above
            ``1 / affinity_slack`` neither). The estimates are a queue model over a
            cost table; moving a conversation on a small predicted gain loses its cache for a
            gain inside the model's error. Migrations (the cache moves along) are not held
            back by it.
        affinity_pressure: ``memserve``: scale the slack by the chance the holder's cached
            prefix survives its queue: ``1 - wait / exec(kv_tokens, 0)``, clamped to [0, 1]
            (the share of the holder's KV that the prefill work queued ahead of the request
            would not rewrite). Where the holder's ``Load.kv_tokens`` is unknown (0), no
            scaling.
        hit_survival: ``memserve``: price each local hit by its survival inside the
            estimate: ``exec(x, y) + lost * (exec(x, 0) - exec(x, y))``, ``lost`` =
            ``min(1, (queue wait + load term) / exec(kv_tokens, 0))``, the share of the pool
            rewritten before the request runs (a hit that will be gone is worth nothing).
            Where ``Load.kv_tokens`` is unknown (0) or nothing waits, the hit counts in full.
        migration_overhead_s: ``memserve``: a migration's fixed cost, pinned; None learns it
            from the migrations the router awaits (``observe_migration``).
        session_table_size: ``session``: sessions remembered (least recently used evicted).
    """

    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    cost_table: str = "cpu-bench"
    transfer_per_page_s: float | None = None
    migrate: bool = True
    min_migrate_gain_s: float = 0.0
    load_per_request_s: float = 1e-3
    max_migrate_sources: int = 4
    affinity_slack: float = 0.0
    affinity_pressure: bool = True
    hit_survival: bool = True
    migration_overhead_s: float | None = None
    session_table_size: int = 100_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1], got {self.cache_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("need balance_abs_threshold >= 0 and balance_rel_threshold >= 1")
        if self.transfer_per_page_s is not None and self.transfer_per_page_s < 0:
            raise ValueError(f"transfer_per_page_s must be >= 0, got {self.transfer_per_page_s}")
        if self.min_migrate_gain_s < 0 or self.load_per_request_s < 0:
            raise ValueError("min_migrate_gain_s and load_per_request_s must be >= 0")
        if self.migration_overhead_s is not None and self.migration_overhead_s < 0:
            raise ValueError(f"migration_overhead_s must be >= 0, got {self.migration_overhead_s}")
        if not self.affinity_slack >= 0.0:
            raise ValueError(f"affinity_slack must be >= 0, got {self.affinity_slack}")
        if self.max_migrate_sources < 1 or self.session_table_size < 1:
            raise ValueError("max_migrate_sources and session_table_size must be >= 1")


class Policy(ABC):
    """A routing policy: one ``select`` per request.

    Subclasses set ``name`` through :func:`register_policy`. ``self._last`` is the instance
    chosen last, which :meth:`_rotate` uses so that tied instances alternate.
    """

    name: ClassVar[str]

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._last: str | None = None

    @abstractmethod
    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """Picks one candidate.

        Args:
            request: the request.
            candidates: the instances that may serve it (not modified).

        Returns:
            The decision.

        Raises:
            NoCandidate: ``candidates`` is empty.

        May change the policy's own state (round-robin position, session table), nothing else.
        """

    def _rotate(self, tied: Sequence[Candidate]) -> Candidate:
        """Round robin among ``tied`` by instance id: the first id after the last chosen one,
        wrapping around. Works whatever the order or membership of ``tied``; O(len(tied)).

        Args:
            tied: non-empty candidates to pick from.

        Returns:
            The pick; ``self._last`` becomes its id.
        """
        if len(tied) == 1:
            pick = tied[0]
        else:
            last = self._last
            lowest = after = None
            for c in tied:
                cid = c.instance_id
                if lowest is None or cid < lowest.instance_id:
                    lowest = c
                if last is not None and cid > last and (after is None
                                                        or cid < after.instance_id):
                    after = c
            pick = after if after is not None else lowest
        assert pick is not None
        self._last = pick.instance_id
        return pick


def require_candidates(candidates: Sequence[Candidate]) -> None:
    """Raises :class:`NoCandidate` if ``candidates`` is empty."""
    if not candidates:
        raise NoCandidate("no instance can serve the request (no candidates)")


def least_loaded(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates with the fewest ``load.requests``, then the lowest ``kv_usage``.

    Args:
        candidates: non-empty.

    Returns:
        Every candidate tied on that key, in input order.
    """
    best_r, best_kv = -1, 0.0
    tied: list[Candidate] = []
    for c in candidates:        # inlined Load.requests: this runs once per candidate
        ld = c.load
        r = ld.running + ld.queued + ld.inflight
        if best_r < 0 or r < best_r or (r == best_r and ld.kv_usage < best_kv):
            best_r, best_kv, tied = r, ld.kv_usage, [c]
        elif r == best_r and ld.kv_usage == best_kv:
            tied.append(c)
    return tied


POLICIES: dict[str, type[Policy]] = {}

_P = TypeVar("_P", bound=type[Policy])


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator: registers a policy under ``name`` (and sets its ``name``).

    Raises:
        ValueError: ``name`` is already registered.
    """
    def deco(cls: _P) -> _P:
        if name in POLICIES:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        POLICIES[name] = cls
        return cls
    return deco


def make_policy(name: str, config: PolicyConfig | None = None) -> Policy:
    """A new policy by name.

    Args:
        name: a key of :data:`POLICIES`.
        config: settings (defaults when None).

    Returns:
        The policy (its own state: one per router role).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return cls(config if config is not None else PolicyConfig())
