"""The router's HTTP front: SGLang's native and OpenAI APIs, routed by policy, plus admin routes.

Per generation request: token ids (:mod:`.prompts`) -> candidates with their cached prefix from one
walk of the role's global tree and their load (:mod:`.cluster`) -> the policy's decision -> a KV
migration if the decision says so (``kv_push`` on the holder) -> the request forwarded (PD: to one
prefill and one decode, with SGLang's bootstrap fields) and its pages predicted in the chosen
instance's tree until the instance's events confirm them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from memserve_router.checks import Fields, check, load_fields
from memserve_router.cluster import Cluster
from memserve_router.config import ROLES, RouterConfig, WorkerSpec
from memserve_router.inflight import InFlight, Prefilling
from memserve_router.limits import Limits, header_deadline_middleware, install_header_deadline
from memserve_router.metrics import RouterMetrics
from memserve_router.policies import (
    Decision,
    NoCandidate,
    RouteRequest,
    make_policy,
)
from memserve_router.prompts import BadRequest, Prompt, Tokenizer, parse
from memserve_router.workers import Worker, WorkerError

logger = logging.getLogger("memserve_router")

GENERATE_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
INFO_ROUTES = ("/v1/models", "/get_model_info", "/model_info", "/server_info",
               "/get_server_info")
# An idle keep-alive connection must close on our side before uvicorn (SGLang, 5 s) closes it.
KEEPALIVE_S = 4.0


# Seconds a client is told to wait after a 503 (no instance can take the request now).
RETRY_AFTER_S = 1


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if status == 503 and headers is None:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return web.json_response({"error": {"message": message, "code": status}}, status=status,
                             headers=headers)


def _header(text: str) -> str:
    """``text`` as a header value: one line of printable ASCII (reasons quote instance ids,
    which a user names; an exception text may hold anything)."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:300]


class UpstreamError(RuntimeError):
    """An instance failed before the router sent the client a byte (the request may be retried).

    ``status`` is the client's answer when no retry is left: 502, or 503 (with ``Retry-After``)
    when the instance was found dead by the liveness probe."""

    status: int = 502


class InstanceDown(UpstreamError):
    """The liveness probe found an instance dead while a request waited on it."""

    status = 503


class TransferFailed(UpstreamError):
    """Decode answered that the request's KV transfer from prefill failed (SGLang's 500
    ``Decode transfer failed``): nothing was generated, so it is retried like a failed
    instance, and with none left the client gets 503 with ``Retry-After``, not a 500."""

    status = 503


# What SGLang's decode says when the KV of a request did not arrive (decode.py), and what its
# prefill answers when it could not send it (prefill.py).
TRANSFER_FAILED = b"Decode transfer failed"
PREFILL_TRANSFER_FAILED = b"Prefill transfer failed"


class Router:
    """One router process's state and handlers.

    Args:
        config: see :class:`~memserve_router.config.RouterConfig`.
    """

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        pc = config.policy_config
        self.policies = {role: make_policy(config.policy_for(role), pc) for role in ROLES}
        from sglang_memserve.gpu.costmodel import load_table

        self.costs = load_table(config.cost_table)
        self.tokenizer: Tokenizer | None = None
        self.metrics = RouterMetrics(self._gauges)
        self.session: aiohttp.ClientSession | None = None
        self.cluster: Cluster | None = None
        self._pending: list[WorkerSpec] = []
        self._join_task: asyncio.Task | None = None
        self._tokenizer_lock = asyncio.Lock()
        # SGLang's request-schema field names per route (None until loaded, or unknown).
        self.fields: Fields | None = None
        self._fields_task: asyncio.Task | None = None
        # Migrations in flight, per target: (the prefix moving, tokens it held, the push).
        self._moving: dict[str, list[tuple[Sequence[int], int, asyncio.Task]]] = {}
        self.inflight = InFlight(config.prefill_hold_s)

    # ---- lifecycle ------------------------------------------------------------------------

    def app(self) -> web.Application:
        # Admission after the API key: an unauthenticated burst takes no slots.
        self.limits = Limits(self.config.overload, GENERATE_ROUTES)
        app = web.Application(client_max_size=self.config.max_body_bytes,
                              middlewares=[header_deadline_middleware, self._auth,
                                           self.limits.middleware])
        for path in GENERATE_ROUTES:
            app.router.add_post(path, self._generation_handler(path))
        for path in INFO_ROUTES:
            app.router.add_get(path, self._info)
        app.router.add_get("/health", self._health)
        app.router.add_get("/readiness", self._readiness)
        app.router.add_route("*", "/flush_cache", self._flush_cache)
        app.router.add_post("/route", self._route_debug)
        app.router.add_get("/workers", self._list_workers)
        app.router.add_post("/workers", self._add_worker)
        app.router.add_delete("/workers/{wid}", self._remove_worker)
        app.router.add_get("/workers/{wid}/tree", self._worker_tree)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
        self.session = aiohttp.ClientSession(connector=connector, json_serialize=_dumps)
        self.cluster = Cluster(self.config, self.session, self.costs.exec_time)
        self.cluster.start()
        self._fields_task = asyncio.create_task(self._load_fields())
        self._pending = list(self.config.workers)
        await self._join_pending()
        self._join_task = asyncio.create_task(self._join_loop())

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._join_task is not None:
            self._join_task.cancel()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.session is not None:
            await self.session.close()

    async def _load_fields(self) -> None:
        loop = asyncio.get_running_loop()
        self.fields = await loop.run_in_executor(None, load_fields)

    async def _join_pending(self) -> None:
        """Join every configured instance that answers; the rest are retried (still starting)."""
        specs, self._pending = self._pending, []
        results = await asyncio.gather(*(self._join(s) for s in specs), return_exceptions=True)
        for spec, res in zip(specs, results, strict=True):
            if isinstance(res, BaseException):
                logger.info("%s not joined yet: %s", spec.url, res)
                self._pending.append(spec)

    async def _join_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(self.config.health_interval_s)
            await self._join_pending()

    async def _join(self, spec: WorkerSpec) -> Worker:
        assert self.cluster is not None
        worker = await self.cluster.join(spec)
        # NOTE: one load at a time: instances join concurrently, and importing transformers
        # from several executor threads at once fails ("cannot import name ...").
        async with self._tokenizer_lock:
            path = self.config.tokenizer_path or self.cluster.model_path
            if self.tokenizer is None and path:
                loop = asyncio.get_running_loop()
                try:
                    self.tokenizer = await loop.run_in_executor(None, Tokenizer, path)
                except Exception as exc:  # noqa: BLE001 -- route by load until one loads
                    logger.warning("no tokenizer from %s (%r): routing by load only", path, exc)
        return worker

    # ---- middleware -----------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        key = self.config.api_key
        if key and request.path != "/health":
            if request.headers.get("Authorization", "") != f"Bearer {key}":
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return await handler(request)

    # ---- routing --------------------------------------------------------------------------

    def _decide(self, role: str, prompt: Prompt, session_id: str | None,
                exclude: Sequence[str] = (), explain: bool = False
                ) -> tuple[Decision, Worker, int]:
        """Pick an instance of ``role``: (decision, its worker, its cached prefix in tokens)."""
        assert self.cluster is not None
        t0 = time.perf_counter()
        tree = self.cluster.trees.get(role)
        policy = self.policies[role]
        explain = explain or logger.isEnabledFor(logging.DEBUG)
        # memserve judges an instance by its hit and load alone: the cluster passes only the
        # instances it can choose (the least loaded per hit, and their ties for its rotation,
        # policy._last); an explained decision shows every instance.
        few = policy.name == "memserve" and not explain
        cands = self.cluster.candidates(
            role, prompt.tokens, exclude,
            per_request_s=policy.config.load_per_request_s if few else None,
            last=policy._last)
        req = RouteRequest(num_tokens=max(1, len(prompt.tokens)), session_id=session_id,
                           page_size=tree.page_size if tree else 1, explain=explain)
        decision = policy.select(req, cands)
        self.metrics.decision.observe(time.perf_counter() - t0)
        if explain:
            logger.debug("route %s %d tokens: %s", role, len(prompt.tokens), decision.explain())
        hit = next(c.hit_tokens for c in cands if c.instance_id == decision.instance_id)
        if decision.migrate_from:
            hit = max(hit, decision.migrate_tokens)
        return decision, self.cluster.workers[decision.instance_id], hit

    def _account(self, role: str, worker: Worker, hit: int, prompt: Prompt
                 ) -> tuple[float, int]:
        """Count the request on ``worker``; returns the prefill seconds queued there for it
        and uncached tokens (0 on decode instances, which receive the KV instead)."""
        assert self.cluster is not None
        x = max(1, len(prompt.tokens))
        est = 0.0 if role == "decode" else self.costs.exec_time(x, min(hit, x - 1))
        uncached = 0 if role == "decode" else max(0, len(prompt.tokens) - hit)
        self.cluster.routed(worker, prompt.tokens, est, uncached)
        self.metrics.prompt_tokens.labels(role).inc(len(prompt.tokens))
        self.metrics.predicted_hit.labels(role).inc(hit)
        return est, uncached

    async def _arrive(self, decision: Decision, prompt: Prompt, dst: Worker,
                      headers: dict[str, str]) -> None:
        """Before forwarding to ``dst``: run the decision's migration, or wait for one already
        moving a prefix this prompt extends into. Sets ``X-MemServe-Migration`` in ``headers``.

        NOTE: the router counts a migrating prefix as ``dst``'s as soon as it is decided, so
        later requests sharing it are routed there at once; sent before the pages land, they
        would recompute them (and turn the push into a no-op).
        """
        if decision.migrate_from:
            moving = self._moving.setdefault(dst.id, [])
            task = asyncio.ensure_future(self._migrate(decision, prompt, dst))
            entry = (prompt.tokens[:decision.migrate_tokens], decision.migrate_cached_tokens,
                     task)
            moving.append(entry)
            try:
                headers["X-MemServe-Migration"] = _header(await asyncio.shield(task))
            finally:
                moving.remove(entry)
            return
        for prefix, held, task in list(self._moving.get(dst.id, ())):
            # Only a prompt that reaches past what dst held before the push gains from it.
            k = min(len(prefix), len(prompt.tokens), held + dst.info.page_size)
            if k > held and prompt.tokens[:k] == prefix[:k]:
                outcome = await asyncio.shield(task)
                headers["X-MemServe-Migration"] = _header(f"waited for {outcome}")

    async def _enter(self, dst: Worker, prompt: Prompt, hit: int, headers: dict[str, str]
                     ) -> Prefilling:
        """Register the request's prefill on ``dst`` after holding it for earlier ones there
        that are about to store its prefix (:class:`~memserve_router.inflight.InFlight`); sets
        ``X-MemServe-Hold`` when it waited. Instances without KV events are never held for
        (nothing would confirm the pages)."""
        assert self.cluster is not None
        tree = self.cluster.trees.get(dst.role)
        if tree is None or not dst.info.events or not prompt.tokens:
            return (await self.inflight.enter(dst.id, (), 0, dst.info.page_size,
                                              lambda k: 0))[0]
        entry, held = await self.inflight.enter(
            dst.id, prompt.tokens, hit, dst.info.page_size,
            lambda k: tree.held_tokens(dst.id, prompt.tokens[:k]))
        if held is not None:
            self.metrics.holds.labels(held.outcome).inc()
            self.metrics.hold_seconds.observe(held.seconds)
            headers["X-MemServe-Hold"] = _header(held.describe())
        return entry

    async def _migrate(self, decision: Decision, prompt: Prompt, dst: Worker) -> str:
        """Ask the holder to push the prefix to ``dst`` (MemPool transfer_with_insert); on any
        failure the request is still served, recomputing what did not arrive.

        Returns:
            One line on the outcome (the ``X-MemServe-Migration`` header): ``ok`` with the pages
            moved, ``noop`` (``dst`` had the prefix by then: an earlier request put it there
            before the router's mirror learnt it), ``failed`` or ``skipped`` with the cause.
        """
        assert self.cluster is not None
        src = self.cluster.workers.get(decision.migrate_from or "")
        if src is None or not src.info.control or not dst.info.control:
            self.metrics.migrations.labels("skipped").inc()
            return f"skipped: {decision.migrate_from} or {dst.id} has no control channel"
        from sglang_memserve.mempool.rpc import rpc_call

        msg = {"op": "kv_push", "tokens": prompt.tokens[:decision.migrate_tokens],
               "dst": dst.info.control}
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        # The policy learns what a migration costs here (failed ones cost the wait too).
        observe = getattr(self.policies[dst.role], "observe_migration", None)
        try:
            out = await loop.run_in_executor(None, lambda: rpc_call(
                src.info.control, msg, timeout_s=self.config.migrate_timeout_s,
                expect_instance=src.info.instance_id, auth=self.config.control_auth))
        except Exception as exc:  # noqa: BLE001 -- MemPoolError and friends: recompute instead
            logger.warning("migration %s -> %s failed: %s", src.id, dst.id, exc)
            self.metrics.migrations.labels("failed").inc()
            if observe is not None:
                observe(decision.migrate_tokens - decision.migrate_cached_tokens,
                        time.perf_counter() - t0)
            return f"failed: {exc}"[:200]
        seconds = time.perf_counter() - t0
        if observe is not None:
            observe(decision.migrate_tokens - decision.migrate_cached_tokens, seconds)
        self.metrics.migration_seconds.observe(seconds)
        pages = int(out.get("sent_pages", 0))
        outcome = "ok" if pages else "noop"
        self.metrics.migrations.labels(outcome).inc()
        self.metrics.migration_bytes.inc(int(out.get("bytes", 0)))
        # The send's own time (prepare, write, commit) against the whole: the rest is the wait
        # for the holder's scheduler thread and the control round trips.
        send_ms = float(out.get("seconds", 0.0)) * 1e3
        return (f"{outcome}: {pages} pages from {src.id}, skipped {int(out.get('skip', 0))} "
                f"tokens, {seconds * 1e3:.1f} ms (send {send_ms:.1f} ms)")

    def _generation_handler(self, path: str
                            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            status = 500
            try:
                resp = await self._generate(request, path)
                status = resp.status
                return resp
            finally:
                self.metrics.requests.labels(path, str(status)).inc()
        return handler

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
            prompt = parse(path, body, self.tokenizer, self.config.limits)
            # Judged in full before any instance is looked for: a malformed request gets its
            # 4xx even while no instance is healthy.
            check(path, body, self.fields)
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, f"{exc.text} (--max-payload-size)")
        except (orjson.JSONDecodeError, BadRequest) as exc:
            return _error(400, f"bad request: {exc}")
        session_id = request.headers.get(self.config.session_header)
        route = self._pd if self.config.pd else self._colocated
        tried: list[str] = []
        attempts = 1 + self.config.retries  # retried only before any byte was sent
        for attempt in range(attempts):
            try:
                return await route(request, path, prompt, session_id, tried)
            except NoCandidate:
                role = "prefill/decode" if self.config.pd else "colocated"
                again = " left after a failed attempt" if attempt else ""
                return _error(503, f"no healthy {role} instance{again}")
            except UpstreamError as exc:
                logger.warning("attempt %d of %s failed: %s", attempt + 1, path, exc)
                if attempt + 1 < attempts:
                    self.metrics.retries.inc()
                    continue
                return _error(exc.status, f"upstream failed: {exc}")
        raise AssertionError("unreachable")

    async def _colocated(self, request: web.Request, path: str, prompt: Prompt,
                         session_id: str | None, tried: list[str]) -> web.StreamResponse:
        decision, worker, hit = self._decide("colocated", prompt, session_id, tried)
        tried.append(worker.id)
        # Accounted before a migration runs, so concurrent decisions see the pages coming.
        est, uncached = self._account("colocated", worker, hit, prompt)
        headers = {"X-MemServe-Route": _header(decision.reason)}
        await self._arrive(decision, prompt, worker, headers)
        entry = await self._enter(worker, prompt, hit, headers)
        done = _Once(lambda: (worker.prefilled(est, uncached), self.inflight.ended(entry)))
        abort = worker.watch(asyncio.get_running_loop().create_future())
        try:
            return await self._proxy(request, worker, path, prompt.body, prompt.stream,
                                     headers=headers, first_byte=done, abort=abort)
        finally:
            done()  # a failed request's queued prefill is not waiting there any more
            worker.unwatch(abort)
            worker.finished()

    async def _pd(self, request: web.Request, path: str, prompt: Prompt,
                  session_id: str | None, tried: list[str]) -> web.StreamResponse:
        pdec, prefill, phit = self._decide("prefill", prompt, session_id, tried)
        _ddec, decode, dhit = self._decide("decode", prompt, session_id, tried)
        tried += [prefill.id, decode.id]
        est, uncached = self._account("prefill", prefill, phit, prompt)
        self._account("decode", decode, dhit, prompt)
        headers = {"X-MemServe-Prefill": prefill.id, "X-MemServe-Route": _header(pdec.reason)}
        await self._arrive(pdec, prompt, prefill, headers)
        entry = await self._enter(prefill, prompt, phit, headers)
        body = prompt.body | {"bootstrap_host": prefill.host,
                              "bootstrap_port": prefill.bootstrap_port,
                              "bootstrap_room": random.getrandbits(63)}
        prefill_done = asyncio.create_task(self._prefill(prefill, path, body))
        prefill_done.add_done_callback(lambda _t: (prefill.prefilled(est, uncached),
                                                   self.inflight.ended(entry)))
        # Either instance found dead ends the request while it waits (prefill: until its half
        # is done; decode: until the first byte).
        abort = decode.watch(prefill.watch(asyncio.get_running_loop().create_future()))
        prefill_done.add_done_callback(lambda _t: prefill.unwatch(abort))
        try:
            return await self._proxy(request, decode, path, body, prompt.stream, prefill_done,
                                     headers, abort=abort)
        except InstanceDown:
            prefill_done.cancel()  # its connection closes: SGLang aborts the request on thaw
            raise
        finally:
            prefill.unwatch(abort)
            decode.unwatch(abort)
            decode.finished()
            if not prefill_done.done():
                # Decode answered; prefill's own response (discarded) ends on its own.
                prefill_done.add_done_callback(lambda _t: prefill.finished())
            else:
                prefill.finished()

    async def _prefill(self, worker: Worker, path: str, body: dict) -> str | None:
        """Send the prefill half; returns an error message, or None when prefill succeeded."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        try:
            async with self.session.post(f"{worker.url}{path}", json=body,
                                         timeout=timeout) as r:
                data = await r.read()
                if r.status != 200:
                    err = _PrefillError(f"prefill {worker.id} answered HTTP {r.status}: "
                                        f"{data[:300]!r}")
                    if 400 <= r.status < 500:
                        err.status = r.status  # it refused the request: the client's error
                    elif PREFILL_TRANSFER_FAILED in data:
                        err.transfer = True  # nothing was generated: retried, else 503
                    return err
                return None
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"prefill {worker.id} failed: {exc!r}"

    # ---- forwarding -----------------------------------------------------------------------

    async def _proxy(self, request: web.Request, worker: Worker, path: str, body: dict,
                     stream: bool, prefill: asyncio.Task | None = None,
                     headers: dict[str, str] | None = None,
                     first_byte: Callable[[], None] | None = None,
                     abort: asyncio.Future[str] | None = None) -> web.StreamResponse:
        """Forward to ``worker``; a failure before the first byte raises UpstreamError
        (:class:`InstanceDown` when ``abort`` is set first: the liveness probe found an
        instance of the request dead), one after ends the stream with an error event (never a
        hang). In PD, a prefill that fails first aborts the decode request."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        role = worker.role
        # Which instance served it: a debugging aid, and what the tests assert on.
        served = {"X-MemServe-Instance": worker.id, **(headers or {})}
        try:
            upstream_cm = self.session.post(f"{worker.url}{path}", json=body, timeout=timeout)
            upstream = await _race(upstream_cm.__aenter__(), prefill, abort)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"{worker.id}: {exc!r}") from exc
        except _PrefillFailed as exc:
            return _prefill_failed(exc)
        try:
            if not stream or upstream.status != 200:
                try:
                    data = await _race(upstream.read(), prefill, abort)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise UpstreamError(f"{worker.id}: {exc!r}") from exc
                except _PrefillFailed as exc:
                    return _prefill_failed(exc)
                if role == "decode" and upstream.status >= 500 and TRANSFER_FAILED in data:
                    raise TransferFailed(f"{worker.id}: {data[:300]!r}")
                if first_byte is not None:
                    first_byte()
                if upstream.status == 200:
                    self._actual_hit(role, data)
                return web.Response(body=data, status=upstream.status, headers=served,
                                    content_type=upstream.content_type or "application/json")
            # The first chunk is awaited before the client gets the status line: until then a
            # failure can still be retried elsewhere or answered with a plain error.
            try:
                chunk = await _race(upstream.content.readany(), prefill, abort)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise UpstreamError(f"{worker.id}: {exc!r}") from exc
            except _PrefillFailed as exc:
                return _prefill_failed(exc)
            if role == "decode" and TRANSFER_FAILED in chunk:
                raise TransferFailed(f"{worker.id}: {chunk[:300]!r}")
            resp = web.StreamResponse(status=200, headers={
                "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
                "Cache-Control": "no-cache", **served})
            await resp.prepare(request)
            last = b""
            try:
                while chunk:
                    if first_byte is not None:
                        first_byte()  # the prefill is done once the first token streams
                        first_byte = None
                    last = _last_event(last, chunk)
                    await resp.write(chunk)
                    chunk = await _race(upstream.content.readany(), prefill)
            except (TimeoutError, aiohttp.ClientError, _PrefillFailed) as exc:
                msg = orjson.dumps({"error": {"message": f"{worker.id} failed mid-stream: {exc}",
                                              "code": 502}})
                await resp.write(b"data: " + msg + b"\n\ndata: [DONE]\n\n")
            else:
                self._actual_hit(role, last)
            await resp.write_eof()
            return resp
        finally:
            await upstream_cm.__aexit__(None, None, None)

    def _actual_hit(self, role: str, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, list):
            obj = obj[0] if obj else {}
        if not isinstance(obj, dict):
            return
        cached = (obj.get("meta_info") or {}).get("cached_tokens")
        if cached is None:
            cached = ((obj.get("usage") or {}).get("prompt_tokens_details") or {}).get(
                "cached_tokens")
        if isinstance(cached, int):
            self.metrics.actual_hit.labels("decode" if role == "decode" else role).inc(cached)

    # ---- other routes ---------------------------------------------------------------------

    def _any_worker(self) -> Worker | None:
        assert self.cluster is not None
        for role in ("colocated", "prefill", "decode"):
            members = self.cluster.members(role)
            if members:
                return members[0]
        return None

    async def _info(self, request: web.Request) -> web.StreamResponse:
        worker = self._any_worker()
        if worker is None:
            return _error(503, "no healthy instance")
        assert self.session is not None
        try:
            async with self.session.get(f"{worker.url}{request.path_qs}") as r:
                return web.Response(body=await r.read(), status=r.status,
                                    content_type=r.content_type or "application/json")
        except aiohttp.ClientError as exc:
            return _error(502, f"{worker.id}: {exc!r}")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readiness(self, _request: web.Request) -> web.Response:
        assert self.cluster is not None
        need = ("prefill", "decode") if self.config.pd else ("colocated",)
        counts = {role: len(self.cluster.members(role)) for role in need}
        ready = all(counts.values())
        return web.json_response({"ready": ready, "healthy_workers": sum(counts.values()),
                                  "by_role": counts, "pending": [s.url for s in self._pending]},
                                 status=200 if ready else 503)

    async def _flush_cache(self, _request: web.Request) -> web.Response:
        """Flush every instance's cache; their trees are resynced from fresh snapshots."""
        assert self.cluster is not None and self.session is not None
        workers = [w for w in self.cluster.workers.values() if w.healthy]

        async def flush(w: Worker) -> int:
            try:
                async with self.session.post(f"{w.url}/flush_cache") as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 502

        statuses = await asyncio.gather(*(flush(w) for w in workers))
        for w in workers:
            self.cluster.resync(w.id)
        failed = {w.id: s for w, s in zip(workers, statuses, strict=True) if s != 200}
        if failed:
            return _error(502, f"flush failed on {failed}")
        return web.json_response({"flushed": [w.id for w in workers]})

    async def _route_debug(self, request: web.Request) -> web.Response:
        """``POST /route?path=/generate`` with a request body: the decision, explained, without
        forwarding anything (and without predicting its pages)."""
        path = request.query.get("path", "/generate")
        if path not in GENERATE_ROUTES:
            return _error(400, f"path must be one of {GENERATE_ROUTES}")
        try:
            prompt = parse(path, orjson.loads(await request.read()), self.tokenizer,
                           self.config.limits)
        except (orjson.JSONDecodeError, BadRequest) as exc:
            return _error(400, f"bad request: {exc}")
        roles = ("prefill", "decode") if self.config.pd else ("colocated",)
        session_id = request.headers.get(self.config.session_header)
        out: dict[str, Any] = {"tokens": len(prompt.tokens)}
        try:
            for role in roles:
                out[role] = self._decide(role, prompt, session_id, explain=True)[0].explain()
        except NoCandidate:
            return _error(503, "no healthy instance")
        return web.json_response(out, dumps=lambda o: orjson.dumps(o).decode())

    async def _list_workers(self, _request: web.Request) -> web.Response:
        assert self.cluster is not None
        return web.json_response({"workers": [w.describe() for w in self.cluster.workers.values()],
                                  "pending": [s.url for s in self._pending]})

    async def _add_worker(self, request: web.Request) -> web.Response:
        try:
            obj = orjson.loads(await request.read())
            spec = WorkerSpec(url=obj["url"], role=obj.get("role", "colocated"),
                              bootstrap_port=obj.get("bootstrap_port"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _error(400, f"need {{url, role?, bootstrap_port?}}: {exc}")
        if (spec.role == "colocated") == self.config.pd:
            return _error(400, f"a {'PD' if self.config.pd else 'colocated'} router does not "
                               f"take {spec.role} instances")
        try:
            worker = await self._join(spec)
        except WorkerError as exc:
            return _error(409 if "already" in str(exc) else 400, str(exc))
        return web.json_response(worker.describe(), status=201)

    async def _remove_worker(self, request: web.Request) -> web.Response:
        assert self.cluster is not None
        wid = request.match_info["wid"]
        try:
            worker = self.cluster.leave(wid)
        except KeyError:
            return _error(404, f"no worker {wid!r}")
        return web.json_response({"removed": worker.id})

    async def _worker_tree(self, request: web.Request) -> web.Response:
        """The router's mirror of one instance's tree: ``{"entries": [[page path tokens, tier,
        page id], ...]}`` (split-independent; what tests compare with the instance's snapshot)."""
        assert self.cluster is not None
        wid = request.match_info["wid"]
        worker = self.cluster.workers.get(wid)
        if worker is None:
            return _error(404, f"no worker {wid!r}")
        tree = self.cluster.trees.get(worker.role)
        view = tree.snapshot_of(wid) if tree is not None else {}
        entries = [[[t for page in path for t in page], tier, pid]
                   for path, tiers in view.items() for tier, pid in tiers.items()]
        return web.json_response({"entries": entries}, dumps=_dumps)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    def _gauges(self) -> dict[str, tuple[tuple[str, ...], dict]]:
        cluster = self.cluster
        if cluster is None:
            return {}
        wl = ("instance", "role")
        load, inflight, pages = {}, {}, {}
        for w in cluster.workers.values():
            key = (w.id, w.role)
            load[key] = w.load().requests
            inflight[key] = w.inflight
            tree = cluster.trees.get(w.role)
            pages[key] = tree.pages_of(w.id) if tree else 0
        feed = {}
        for wid, st in cluster.feed.stats().items():
            for name in ("messages", "events", "pages", "gaps", "resyncs", "bytes",
                         "malformed", "forged"):
                feed.setdefault(f"memserve_router_event_{name}", {})[(wid,)] = getattr(st, name)
        return {"memserve_router_instance_load": (wl, load),
                "memserve_router_instance_inflight": (wl, inflight),
                "memserve_router_tree_pages": (wl, pages),
                **{k: (("instance",), v) for k, v in feed.items()}}


class _Once:
    """Calls ``fn`` the first time it is called, never again."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


class _PrefillError(str):
    """A prefill failure's message; ``status`` is what the client gets: prefill's own 4xx when
    it refused the request (a 502 there made a malformed request look like a server fault),
    else 502. ``transfer``: prefill could not send the KV (``Prefill transfer failed``)."""

    status: int = 502
    transfer: bool = False


class _PrefillFailed(RuntimeError):
    """The prefill half of a PD request failed (its decode half is then abandoned)."""

    @property
    def status(self) -> int:
        return getattr(self.args[0], "status", 502)


def _prefill_failed(exc: _PrefillFailed) -> web.Response:
    """The answer to a request whose prefill half failed before any byte; a failed KV send
    raises :class:`TransferFailed` instead (retried, else 503 with ``Retry-After``)."""
    if getattr(exc.args[0], "transfer", False):
        raise TransferFailed(str(exc)) from exc
    return _error(exc.status, str(exc))


async def _race(coro: Awaitable[Any], prefill: asyncio.Task | None,
                abort: asyncio.Future[str] | None = None) -> Any:
    """Await ``coro``; if ``prefill`` ends first with an error message, raise _PrefillFailed;
    if ``abort`` is set first, raise :class:`InstanceDown` with its message.

    NOTE: ``abort`` cancels the awaiting task itself rather than racing another task: a
    stream's first chunk is then read exactly as without it (a task would let the connection's
    end overtake the chunk already buffered)."""
    if abort is None:
        return await _race_prefill(coro, prefill)
    if abort.done():
        if asyncio.iscoroutine(coro):
            coro.close()
        raise InstanceDown(abort.result())
    task = asyncio.current_task()
    assert task is not None
    waiting = [True]  # a callback already scheduled when this returns must not cancel later

    def cancel(_f: asyncio.Future[str]) -> None:
        if waiting[0]:
            task.cancel()

    abort.add_done_callback(cancel)
    try:
        return await _race_prefill(coro, prefill)
    except asyncio.CancelledError:
        if abort.done() and task.uncancel() == 0:
            raise InstanceDown(abort.result()) from None
        raise
    finally:
        waiting[0] = False
        abort.remove_done_callback(cancel)


async def _race_prefill(coro: Awaitable[Any], prefill: asyncio.Task | None) -> Any:
    """Await ``coro``; if ``prefill`` ends first with an error message, raise _PrefillFailed."""
    if prefill is None or prefill.done() and prefill.result() is None:
        return await coro
    if prefill.done():
        if asyncio.iscoroutine(coro):
            coro.close()  # never started: no "never awaited" warning
        raise _PrefillFailed(prefill.result())
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task, prefill}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    err = prefill.result()
    if err is None:
        return await task
    task.cancel()
    raise _PrefillFailed(err)


def _last_event(prev: bytes, chunk: bytes) -> bytes:
    """The last complete SSE ``data:`` payload seen so far (it carries meta_info / usage)."""
    for line in reversed(chunk.split(b"\n")):
        line = line.strip()
        if line.startswith(b"data:") and line != b"data: [DONE]":
            return line[5:].strip()
    return prev


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def run(config: RouterConfig) -> None:
    """Serve until interrupted (on uvloop when it is installed)."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    install_header_deadline(config.header_read_timeout_s)
    web.run_app(Router(config).app(), host=config.host, port=config.port, access_log=None,
                loop=loop, print=lambda *_a: logger.info(
                    "memserve-router listening on http://%s:%d", config.host, config.port))
