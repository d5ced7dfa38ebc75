"""The router's view of the cluster: members, one global prompt tree per instance type, KV event
feeds, health checks and load polling. Everything here runs on the router's event loop (no locks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp

from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.feed import EventFeed
from memserve_router.loadindex import SMALL_GROUP, LoadIndex
from memserve_router.policies import Candidate, PolicyConfig
from memserve_router.trees import NO_HOLDERS, GlobalTree, HitGroup
from memserve_router.workers import Worker, WorkerError, WorkerInfo

logger = logging.getLogger("memserve_router")


class Cluster:
    """Members and what they hold.

    Args:
        config: the router's configuration.
        session: the HTTP client session the router talks to instances with.
        exec_time: ``(x, y) -> seconds`` to prefill ``x`` tokens with ``y`` cached (the cost
            table): turns an instance's polled queue of uncached tokens into a wait.
    """

    def __init__(self, config: RouterConfig, session: aiohttp.ClientSession,
                 exec_time: Callable[[int, int], float]) -> None:
        self.config = config
        self.session = session
        self.exec_time = exec_time
        self.workers: dict[str, Worker] = {}
        self.trees: dict[str, GlobalTree] = {}
        self.feed = EventFeed(auth=config.control_auth)
        self.model_path: str | None = None
        # Per instance type: healthy members by load (exact), members by id, and the last
        # instances found holding nothing of a prompt (see _no_hit_ids).
        self.loads: dict[str, LoadIndex] = {}
        self._by_id: dict[str, list[Worker]] = {}
        self._no_hit: dict[str, tuple[frozenset[str], int, set[str]]] = {}
        self._tasks: list[asyncio.Task] = []
        # The instances' peer registries follow the membership (peers_set, see sync_peers).
        self._peers_dirty = False
        self._peers_task: asyncio.Task | None = None

    # ---- membership -----------------------------------------------------------------------

    async def probe(self, spec: WorkerSpec) -> WorkerInfo:
        """Ask an instance what it is; raises WorkerError if it does not answer."""
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        try:
            async with self.session.get(f"{spec.url}/server_info", timeout=timeout) as r:
                r.raise_for_status()
                info = await r.json(content_type=None)
            async with self.session.get(f"{spec.url}/get_model_info", timeout=timeout) as r:
                r.raise_for_status()
                model_info = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise WorkerError(f"{spec.url} did not answer /server_info: {exc!r}") from exc
        return WorkerInfo.from_server_info(info, model_info)

    async def join(self, spec: WorkerSpec) -> Worker:
        """Add an instance (or re-add a restarted one): probe it, subscribe to its events and
        take a fresh snapshot of its tree.

        Raises:
            WorkerError: unreachable, a duplicate URL or id, another model, or a page size
                that differs from its instance type's tree.
        """
        info = await self.probe(spec)
        # A stock server has no instance id: it is named by its address (no slashes, so the
        # id fits in an admin URL).
        wid = info.instance_id or spec.url.split("://", 1)[-1]
        for w in self.workers.values():
            if w.url == spec.url or w.id == wid:
                raise WorkerError(f"{spec.url} ({wid}) is already a member")
        if self.model_path and info.model_path and info.model_path != self.model_path:
            raise WorkerError(f"{spec.url} serves {info.model_path}, the cluster {self.model_path}")
        if spec.role == "prefill" and not (spec.bootstrap_port or info.bootstrap_port):
            raise WorkerError(f"prefill {spec.url} has no bootstrap port")
        return self.admit(Worker(wid, spec, info))

    def admit(self, worker: Worker) -> Worker:
        """Make ``worker`` a member (the synchronous part of :meth:`join`): its type's tree,
        load order and event feed.

        Raises:
            WorkerError: a page size that differs from its instance type's tree.
        """
        spec, info, wid = worker.spec, worker.info, worker.id
        tree = self.trees.get(spec.role)
        if tree is None:
            tree = self.trees[spec.role] = GlobalTree(info.page_size, spec.role)
        elif tree.page_size != info.page_size:
            raise WorkerError(f"{spec.url} has page size {info.page_size}; the {spec.role} "
                              f"tree's is {tree.page_size}")
        self.workers[wid] = worker
        self._by_id.pop(spec.role, None)
        self._load_index(spec.role).track(worker)
        self.model_path = self.model_path or info.model_path
        if info.events and info.control:
            self.feed.add(wid, tree, info.events, info.control)
        logger.info("joined %s %s (%s, page %d, events %s)", spec.role, wid, spec.url,
                    info.page_size, "exact" if info.events else "approximate")
        self.sync_peers()
        return worker

    def leave(self, wid: str) -> Worker:
        """Remove an instance from the rotation and from every tree node.

        Raises:
            KeyError: unknown id.
        """
        worker = self.workers.pop(wid)
        self._by_id.pop(worker.role, None)
        self._load_index(worker.role).untrack(wid)
        self.feed.remove(wid)
        tree = self.trees.get(worker.role)
        if tree is not None:
            tree.remove_instance(wid)
        logger.info("left %s %s", worker.role, wid)
        self.sync_peers()
        return worker

    def members(self, role: str) -> list[Worker]:
        """Healthy instances of ``role`` (in join order)."""
        return [w for w in self.workers.values() if w.role == role and w.healthy]

    # ---- routing inputs -------------------------------------------------------------------

    def candidates(self, role: str, tokens: Sequence[int], exclude: Sequence[str] = (), *,
                   per_request_s: float | None = None, last: str | None = None
                   ) -> list[Candidate]:
        """The healthy instances of ``role`` (less ``exclude``) with their load and cached
        prefix of ``tokens`` (one walk of the role's tree), in id order. Modifies nothing but
        the load order's upkeep (:meth:`LoadIndex.refresh`).

        Args:
            per_request_s: set (to the policy's ``load_per_request_s``) for the ``memserve``
                policy: then only the instances it can choose are returned -- of each group of
                instances sharing a hit, the least loaded (and those tied with them, as the
                rotation needs), found in the role's load order -- so the cost grows with the
                distinct hits, not the instances, and the policy's choice is the one it makes
                over all of them (``test/router/test_load_index.py``).
            last: with ``per_request_s``: the policy's last chosen instance (its rotation).
        """
        if per_request_s is not None:
            return self._few_candidates(role, tokens, exclude, per_request_s, last)
        tree = self.trees.get(role)
        hits = tree.match(tokens) if tree is not None and tokens else {}
        out = []
        for w in self._members_by_id(role):
            if w.healthy and w.id not in exclude:
                h = hits.get(w.id)
                out.append(Candidate(w.id, w.load(), hit_tokens=h.tokens if h else 0,
                                     host_tokens=h.host_tokens if h else 0))
        return out

    def _members_by_id(self, role: str) -> list[Worker]:
        """Every member of ``role`` (healthy or not), by id; cached until one joins or leaves."""
        out = self._by_id.get(role)
        if out is None:
            out = self._by_id[role] = sorted(
                (w for w in self.workers.values() if w.role == role), key=lambda w: w.id)
        return out

    def _load_index(self, role: str, per_request_s: float | None = None) -> LoadIndex:
        """``role``'s load order, refreshed (re-keyed first if ``per_request_s`` differs)."""
        index = self.loads.get(role)
        if index is None:
            index = self.loads[role] = LoadIndex(PolicyConfig().load_per_request_s)
        if per_request_s is not None and per_request_s != index.per_request_s:
            index.rekey(per_request_s)
        index.refresh()
        return index

    def _few_candidates(self, role: str, tokens: Sequence[int], exclude: Sequence[str],
                        per_request_s: float, last: str | None) -> list[Candidate]:
        """:meth:`candidates` for the ``memserve`` policy (see there)."""
        index = self._load_index(role, per_request_s)
        tree = self.trees.get(role)
        match = tree.match_groups(tokens) if tree is not None and tokens else None
        picked: dict[str, tuple[int, int]] = {}  # id -> (hit tokens, of which host)
        for g in match.groups if match is not None else ():
            for wid, hit in _pick_group(index, g, exclude, last):
                picked[wid] = hit
        holders = match.holders if match is not None else NO_HOLDERS
        free = self._no_hit_ids(role, index, holders)
        if len(free) <= SMALL_GROUP:
            nohit = index.pick_from(free, exclude, last)
        else:
            nohit = index.pick_where(lambda i: i not in holders, exclude, last)
        for wid in nohit:
            picked[wid] = (0, 0)
        out = []
        for wid in sorted(picked):
            hit, host = picked[wid]
            out.append(Candidate(wid, index.worker(wid).load(), hit, host))
        return out

    def _no_hit_ids(self, role: str, index: LoadIndex, holders: frozenset[str]) -> set[str]:
        """The healthy members of ``role`` outside ``holders``. ``holders`` is mostly the
        very frozenset the tree's first node keeps from one prompt to the next, so the answer
        is cached by that object and the index's membership version (O(n) set difference in C
        only when either changes)."""
        cached = self._no_hit.get(role)
        if cached is not None and cached[0] is holders and cached[1] == index.version:
            return cached[2]
        free = index.ids() - holders
        self._no_hit[role] = (holders, index.version, free)
        return free

    def routed(self, worker: Worker, tokens: Sequence[int], prefill_s: float,
               uncached: int = 0) -> None:
        """Account a request just sent to ``worker``: in-flight count, queued prefill work and
        its pages, predicted in that instance's tree until an event confirms them (an instance
        without events keeps them as its approximate tree)."""
        worker.inflight += 1
        worker.queue_prefill(prefill_s, uncached)
        tree = self.trees.get(worker.role)
        if tree is None or not tokens:
            return
        if worker.info.events:
            tree.predict(worker.id, tokens, self.config.predict_ttl_s)
        else:
            tree.observe(worker.id, tokens, self.config.approx_ttl_s)

    # ---- background -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the event feed, the health checks and the load polling (on the running loop)."""
        self._tasks = [asyncio.create_task(self.feed.run(), name="feed"),
                       asyncio.create_task(self._health_loop(), name="health"),
                       asyncio.create_task(self._load_loop(), name="loads")]
        if self.config.liveness_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._live_loop(), name="liveness"))

    async def stop(self) -> None:
        if self._peers_task is not None:
            self._tasks.append(self._peers_task)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.feed.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            workers = list(self.workers.values())
            results = await asyncio.gather(*(self._healthy(w) for w in workers))
            for w, ok in zip(workers, results, strict=True):
                if w.id in self.workers:
                    await self._record_health(w, ok)

    async def _healthy(self, w: Worker) -> bool:
        # NOTE: not SGLang's /health: by default it generates a token and waits >= 1 s (~40 ms
        # of the instance's CPU per call, measured on the tiny model; every few seconds on
        # every instance). /v1/loads is answered by the HTTP process from the load snapshot the
        # scheduler publishes in shared memory (SGLang's managers/load_snapshot.py), ~2 ms;
        # /health only where an instance has no /v1/loads.
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        try:
            async with self.session.get(f"{w.url}/v1/loads?include=core", timeout=timeout) as r:
                if r.status != 404:
                    return r.status == 200
            async with self.session.get(f"{w.url}/health", timeout=timeout) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _record_health(self, w: Worker, ok: bool) -> None:
        if ok:
            w.failures = 0
            if not w.healthy and w.alive:
                await self._rejoin(w)
            return
        w.failures += 1
        if w.healthy and w.failures >= self.config.health_failure_threshold:
            self._take_out(w)
            logger.warning("%s %s failed %d health checks: out of rotation and trees",
                           w.role, w.id, w.failures)

    def _take_out(self, w: Worker) -> None:
        """Out of rotation and of its type's tree (until :meth:`_rejoin`)."""
        w.healthy = False
        self.feed.remove(w.id)
        tree = self.trees.get(w.role)
        if tree is not None:
            tree.remove_instance(w.id)

    async def _live_loop(self) -> None:
        # NOTE: faster than the readiness checks and with a short timeout, and it ends the
        # requests waiting on a dead instance. /ping is SGLang's HTTP process alone (a flag
        # check; /v1/loads too reads a snapshot the scheduler publishes in shared memory, while
        # /health generates a token through the scheduler, which a long prefill keeps busy for
        # seconds), so a busy instance answers it at once; only a frozen or dead one misses it.
        while True:
            await asyncio.sleep(self.config.liveness_interval_s)
            workers = list(self.workers.values())
            results = await asyncio.gather(*(self._alive(w) for w in workers))
            for w, ok in zip(workers, results, strict=True):
                if w.id in self.workers:
                    self._record_live(w, ok)

    async def _alive(self, w: Worker) -> bool:
        """Whether ``w``'s HTTP process answered ``/ping`` in time (any status: it is up)."""
        timeout = aiohttp.ClientTimeout(total=self.config.liveness_timeout_s)
        try:
            async with self.session.get(f"{w.url}/ping", timeout=timeout) as r:
                await r.read()
                return True
        except (TimeoutError, aiohttp.ClientError):
            return False

    def _record_live(self, w: Worker, ok: bool) -> None:
        """Count a liveness probe; the threshold-th miss in a row takes ``w`` out and ends
        its requests that have not sent a byte. Changes ``w`` and the trees."""
        if ok:
            w.live_failures, w.alive = 0, True
            return
        w.live_failures += 1
        if w.alive and w.live_failures >= self.config.liveness_failure_threshold:
            w.alive = False
            was = w.healthy
            if was:
                self._take_out(w)
            ended = w.abort_waiting(
                f"{w.id} stopped answering ({w.live_failures} liveness probes missed, "
                f"{self.config.liveness_timeout_s:g}s each)")
            logger.warning("%s %s missed %d liveness probes: %s, %d waiting request(s) ended",
                           w.role, w.id, w.live_failures,
                           "out of rotation and trees" if was else "already out", ended)

    async def _rejoin(self, w: Worker) -> None:
        """A recovered (or restarted) instance: fresh endpoints, fresh snapshot."""
        try:
            info = await self.probe(w.spec)
        except WorkerError as exc:
            logger.warning("%s answers /health but not /server_info: %s", w.id, exc)
            return
        restarted = info.control != w.info.control
        w.info = info
        w.inflight, w.pending_s, w.healthy = 0, 0.0, True
        if restarted or not w.peers_synced:
            self.sync_peers()  # a new control endpoint, or a registry that missed an update
        tree = self.trees.get(w.role)
        if info.events and info.control and tree is not None:
            self.feed.add(w.id, tree, info.events, info.control)
        logger.info("%s %s is back in rotation", w.role, w.id)

    # ---- peer registries ------------------------------------------------------------------

    def sync_peers(self) -> None:
        """Have every member's peer registry list the others' control endpoints (the
        ``peers_set`` op, signed with the control secret), so that a migration may go to an
        instance that joined at run time and nowhere else. Runs in the background; a change
        while it runs sends again. No-op outside an event loop."""
        self._peers_dirty = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._peers_task is None or self._peers_task.done():
            self._peers_task = asyncio.create_task(self._sync_peers(), name="peers")

    async def _sync_peers(self) -> None:
        while self._peers_dirty:
            self._peers_dirty = False
            members = [w for w in self.workers.values() if w.info.control]
            controls = {w.id: w.info.control for w in members}
            await asyncio.gather(*(self._send_peers(
                w, sorted({c for i, c in controls.items() if i != w.id})) for w in members))

    async def _send_peers(self, w: Worker, peers: list[str]) -> None:
        """``peers_set`` on ``w``; sets ``w.peers_synced``. Failures are logged (the next
        membership change, or ``w``'s return to rotation, sends again)."""
        from sglang_memserve.mempool.rpc import rpc_call

        control, instance = w.info.control, w.info.instance_id
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: rpc_call(
                control, {"op": "peers_set", "peers": peers},
                timeout_s=self.config.health_timeout_s, expect_instance=instance,
                auth=self.config.control_auth))
        except Exception as exc:  # noqa: BLE001 -- MemPoolError and friends: logged, retried
            w.peers_synced = False
            logger.warning("peer registry of %s not updated: %r", w.id, exc)
            return
        w.peers_synced = True
        logger.info("peer registry of %s: %d member(s)", w.id, len(peers))

    async def _load_loop(self) -> None:
        while True:
            workers = [w for w in self.workers.values() if w.healthy]
            await asyncio.gather(*(self._poll_load(w) for w in workers))
            await asyncio.sleep(self.config.load_interval_s)

    async def _poll_load(self, w: Worker) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_s)
        drained0, finished0 = w.drained_tokens, w.finished_requests
        try:
            async with self.session.get(f"{w.url}/v1/loads?include=core", timeout=timeout) as r:
                if r.status != 200:
                    return
                body = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return
        # NOTE: the instance may have counted, before answering, requests of this router that
        # finished while the answer travelled: take those out (at worst, others' are undercounted).
        gone_tokens = w.drained_tokens - drained0
        gone_requests = w.finished_requests - finished0
        loads = body.get("loads") or []
        if loads:
            keys = ("num_running_reqs", "num_waiting_reqs", "token_usage",
                    "num_waiting_uncached_tokens")
            polled = {k: sum(float(x.get(k, 0) or 0) for x in loads) for k in keys}
            polled["token_usage"] /= len(loads)  # a mean over data-parallel ranks
            # Ours that ended in flight, then ours still in flight (Load counts those from
            # inflight, exactly): what is left is others' (ours routed after the instance
            # answered are taken too: at worst, others' are undercounted).
            own = gone_requests + w.inflight
            for key in ("num_waiting_reqs", "num_running_reqs"):   # waiting ones go first
                took = min(own, polled[key])
                polled[key] -= took
                own -= took
            w.polled = polled  # replaced, never changed in place: the load order watches it
            # Only what this router did not send (its own queue is pending_s already).
            waiting = (int(polled["num_waiting_uncached_tokens"]) - w.pending_tokens
                       - gone_tokens)
            w.polled_wait_s = self.exec_time(waiting, 0) if waiting > 0 else 0.0

    def resync(self, wid: str) -> None:
        """Forget what the router mirrors of ``wid`` and take a fresh snapshot (after a flush)."""
        w = self.workers.get(wid)
        if w is None:
            return
        self.feed.remove(wid)
        tree = self.trees.get(w.role)
        if tree is not None:
            tree.remove_instance(wid)
            if w.info.events and w.info.control and w.healthy:
                self.feed.add(wid, tree, w.info.events, w.info.control)


def _pick_group(index: LoadIndex, g: HitGroup, exclude: Sequence[str], last: str | None
                ) -> list[tuple[str, tuple[int, int]]]:
    """The members of ``g`` the ``memserve`` policy can choose, per DRAM part (the policy
    tells them apart): ``[(id, (hit tokens, host tokens))]``."""
    members, host, hit = g.members, g.host, g.tokens
    out = []
    if host:
        by_part: dict[int, list[str]] = {}
        for wid, part in host.items():
            by_part.setdefault(part, []).append(wid)
        for part, ids in by_part.items():
            if len(ids) <= SMALL_GROUP:
                sel = index.pick_from(ids, exclude, last)
            else:
                sel = index.pick_where(lambda i, p=part: host.get(i) == p, exclude, last)
            out += [(wid, (hit, part)) for wid in sel]
    if len(members) - len(host) <= SMALL_GROUP:
        sel = index.pick_from([i for i in members if i not in host], exclude, last)
    elif host:
        sel = index.pick_where(lambda i: i in members and i not in host, exclude, last)
    else:
        sel = index.pick_where(members.__contains__, exclude, last)
    out += [(wid, (hit, 0)) for wid in sel]
    return out
