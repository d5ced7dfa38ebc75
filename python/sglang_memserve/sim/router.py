"""The router inside the simulator: memserve-router's own cluster view, trees and policies.

Nothing here decides anything itself. Each request goes through the calls
``memserve_router.server.Router._decide`` makes -- ``Cluster.candidates`` (one walk of the
role's :class:`~memserve_router.trees.GlobalTree`; for ``memserve`` only the instances it can
choose, from the cluster's load order) and the policy's ``select`` -- and the accounting
``Router._account`` and ``Cluster.routed`` do (in-flight count, queued prefill estimate, the request's pages predicted in
the chosen instance's tree). The trees are fed by the simulated instances' index changes through
the ``stored`` / ``removed`` methods the router's event feed calls.

Two adaptations, both outside the policy: the trees key one block (``unit_tokens`` tokens) per
page, so candidates' hit lengths are converted from blocks to tokens before ``select`` sees them
(the policy prices tokens with the cost table); and predictions are timed on the simulated clock
(``GlobalTree.predict(..., now=)``), not the wall clock.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from memserve_router.cluster import Cluster
from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.policies import Candidate, Decision, Policy, RouteRequest
from memserve_router.server import Router
from memserve_router.workers import Worker, WorkerInfo
from sglang_memserve.gpu.costmodel import CostTable, load_table
from sglang_memserve.mempool.radix import Change

from .config import Role, SimConfig


def router_config(cfg: SimConfig, transfer_per_page_s: float) -> RouterConfig:
    """The :class:`RouterConfig` a user would start memserve-router with for ``cfg``."""
    return RouterConfig(pd=cfg.pd, policy=cfg.policy, decode_policy=cfg.decode_policy,
                        cost_table=cfg.router_cost_table or cfg.cost_table, transfer_per_page_s=transfer_per_page_s,
                        migrate=cfg.migrate, min_migrate_gain_s=cfg.min_migrate_gain_s,
                        predict_ttl_s=cfg.predict_ttl_s,
                        **({} if cfg.affinity_slack is None
                           else {"affinity_slack": cfg.affinity_slack}),
                        **({} if cfg.load_per_request_s is None
                           else {"load_per_request_s": cfg.load_per_request_s}))


class SimRouter:
    """See the module docstring.

    Args:
        cfg: the simulated cluster.
        table: its cost table (the router's too, unless ``cfg.router_cost_table`` names one).
        transfer_per_page_s: the link's cost per table page.

    Attributes:
        cluster: the router's :class:`Cluster` (no HTTP session: nothing is polled or probed).
        policies: one policy object per role, as ``memserve_router.server.Router`` makes them.
        decision_s: wall-clock seconds of each decision (tree walk + candidates + select).
        events / event_s: index changes applied to the trees, and the wall seconds they took.
    """

    def __init__(self, cfg: SimConfig, table: CostTable, transfer_per_page_s: float) -> None:
        self.cfg = cfg
        # The router estimates with its own table, as memserve-router loads --cost-table.
        self.table = load_table(cfg.router_cost_table) if cfg.router_cost_table else table
        self.unit = cfg.unit_tokens
        self.config = router_config(cfg, transfer_per_page_s)
        # The router's own policy objects, built by the router from its configuration (no
        # I/O happens before its app starts).
        self.policies: dict[str, Policy] = Router(self.config).policies
        self.cluster = Cluster(self.config, None, self.table.exec_time)  # type: ignore[arg-type]
        # Events come from the simulator, not a socket: close the feed's ZMQ socket now (an
        # open one would block its context's teardown when the cluster is collected).
        self.cluster.feed.close()
        self.decision_s: list[float] = []
        self.events = 0
        self.event_s = 0.0

    def add_instance(self, iid: str, role: Role, index: int) -> Worker:
        """A member, as ``Cluster.join`` records it once probed (``Cluster.admit``: its type's
        tree and load order). It has no event endpoint for the feed to connect to: the
        simulator applies its events itself (:meth:`event`).

        Returns:
            Its worker.
        """
        spec = WorkerSpec(f"http://sim-{index}.invalid:30000", role,
                          8998 if role == "prefill" else None)
        inst = self.cfg.spec(role)  # its KV capacity, as /server_info reports it (no DRAM tier)
        kv = inst.hbm_tokens if not inst.dram_tokens else None
        return self.cluster.admit(Worker(iid, spec, WorkerInfo(iid, 1, None, None, None, None,
                                                               kv)))

    def event(self, iid: str, role: Role, change: Change) -> None:
        """One index change of instance ``iid``, applied as the event feed applies it."""
        tree = self.cluster.trees[role]
        t0 = time.perf_counter()
        if change.kind == "stored":
            tree.stored(iid, change.path, change.start, change.loc, change.pages)
        else:
            tree.removed(iid, change.path, change.start, change.loc)
        self.event_s += time.perf_counter() - t0
        self.events += 1

    def decide(self, role: Role, blocks: tuple[int, ...], tokens: int, session: str | None,
               exclude: Sequence[str] = ()) -> tuple[Decision, Worker, int]:
        """One routing decision (``Router._decide``'s calls), timed on the wall clock.

        Args:
            blocks: the prompt's block ids. tokens: its length in tokens.

        Returns:
            ``(decision, chosen worker, cached prefix in tokens there)``; changes the policy's
            own state (rotation, sessions), nothing else.
        """
        policy = self.policies[role]
        few = policy.name == "memserve"  # as Router._decide when not explaining
        u = self.unit
        t0 = time.perf_counter()
        cands = self.cluster.candidates(
            role, blocks, exclude,
            per_request_s=policy.config.load_per_request_s if few else None,
            last=policy._last)
        t1 = time.perf_counter()
        scaled = [c if not c.hit_tokens else dataclasses.replace(
            c, hit_tokens=min(c.hit_tokens * u, tokens),
            host_tokens=min(c.host_tokens * u, tokens, c.hit_tokens * u)) for c in cands]
        t2 = time.perf_counter()
        decision = policy.select(RouteRequest(tokens, session, u, explain=False), scaled)
        t3 = time.perf_counter()
        self.decision_s.append((t1 - t0) + (t3 - t2))
        hit = _hit_of(scaled, decision.instance_id)
        if decision.migrate_from:
            hit = max(hit, decision.migrate_tokens)
        return decision, self.cluster.workers[decision.instance_id], hit

    def account(self, role: Role, worker: Worker, hit: int, blocks: tuple[int, ...],
                tokens: int, now: float) -> tuple[float, int]:
        """Count a request just routed to ``worker`` (``Router._account`` + ``Cluster.routed``).

        Returns:
            ``(prefill seconds queued there for it, its uncached tokens)``, both 0 on decode.
        """
        est = 0.0 if role == "decode" else self.table.exec_time(tokens, min(hit, tokens - 1))
        uncached = 0 if role == "decode" else max(0, tokens - hit)
        self.cluster.routed(worker, (), est, uncached)  # load only: the prediction follows
        self.cluster.trees[role].predict(worker.id, blocks, self.config.predict_ttl_s, now=now)
        return est, uncached


    def migrated(self, role: Role, decision: Decision, seconds: float) -> None:
        """A migration the policy chose took ``seconds``: tell the policy, as
        ``Router._migrate`` does (the ``memserve`` policy learns its fixed cost)."""
        observe = getattr(self.policies[role], "observe_migration", None)
        if observe is not None:
            observe(decision.migrate_tokens - decision.migrate_cached_tokens, seconds)


def _hit_of(cands: Sequence[Candidate], iid: str) -> int:
    for c in cands:
        if c.instance_id == iid:
            return c.hit_tokens
    return 0
