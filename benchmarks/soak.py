"""Soak and fault driver: N concurrent clients against memserve-router for a duration, with faults.

Starts a cluster on loopback -- memserve-router in front of 1P1D (PD-Caching-3), or of
``--colocated N`` colocated instances -- and a reference instance without a prefix cache. Each
client loops until the duration is over (and at most ``--max-requests-per-client`` times),
mixing SGLang's ``/generate`` and OpenAI chat, streaming and not, multi-turn chat sessions
(each turn carries the previous answers) and malformed requests. Every answer is classified:

* ``ok``: a well-formed success (JSON with the fields the API promises; a stream of parseable
  ``data:`` events ending in ``[DONE]``); for a malformed request, a 4xx with a message;
* ``failed``: a clear error -- a non-200 answer with a message, a stream's error event, or a
  connection the client sees refused or reset;
* ``lost``: no answer and no error -- a 200 whose body is truncated or malformed, a stream that
  ends without ``[DONE]`` or an error, an error status without a message;
* ``hung``: no end within ``--deadline-s``;
* ``accepted``: a malformed request answered 2xx (served instead of refused).

A sampled share of the successful greedy ``/generate`` answers is replayed on the reference
instance afterwards; their output tokens must match (``mismatched`` counts those that do not).

``--faults kill,sigstop,events,router`` (or ``all``) injects, at fixed fractions of the
duration: kill the decode instance (PD; colocated: the first instance) and restart it on the same
address; SIGSTOP the prefill instance (colocated: the last) for longer than the router's health
timeout, then SIGCONT; cut the router's KV-event connection to prefill (colocated: the first)
again and again for ``--events-cut-s``, so it misses messages, sees a seq gap and resyncs from a
snapshot (time from the last cut to the resync); kill the router and restart it on the same port
(it rebuilds its trees from the instances' snapshots). Per fault: time to the first clear error
and to the first success of a request sent after it, failures and losses while it lasted.
Afterwards every instance must pass its MemPool integrity check and the router's tree of each
must equal the instance's own.

``--stack stock`` runs the same load and faults against stock SGLang (its own radix cache) behind
stock sglang-router (``soak_cluster.py``); the events fault and the MemPool checks do not apply
there. ``--stack both`` runs MemServe's, then stock's, in one command (``<out>/memserve``,
``<out>/stock``).

Writes ``<out>/soak.json`` and prints a summary::

    .venv/bin/python benchmarks/soak.py --clients 32 --duration 240 --faults all --out results/soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sglang_memserve import compat

compat.apply_import_patches()

import aiohttp  # noqa: E402
import requests  # noqa: E402

from memserve_router.compare import instance_tree, router_tree  # noqa: E402
from sglang_memserve.cluster import ServerProcess  # noqa: E402
from sglang_memserve.pd.client import memserve_integrity  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_cluster import STACKS, Cluster  # noqa: E402

FAULTS = ("kill", "sigstop", "events", "router")
# When each fault starts, as a fraction of the duration (they run one after another).
FAULT_AT = {"kill": 0.15, "sigstop": 0.4, "events": 0.6, "router": 0.75}
MALFORMED: tuple[tuple[str, bytes], ...] = (
    ("/generate", b"{not json"),
    ("/generate", b"[1, 2]"),
    ("/generate", b'{"text": ""}'),
    ("/generate", b'{"input_ids": [1, 2, 99999999]}'),
    ("/generate", b'{"text": "a", "sampling_params": {"n": 100000}}'),
    ("/generate", b'{"text": "a", "bogus_field": 1}'),
    ("/v1/chat/completions", b'{"model": "m", "messages": "hi"}'),
    ("/v1/chat/completions", b'{"model": "m", "messages": [], "n": -1}'),
    ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "a"}],'
                             b' "temperature": -3}'),
    ("/v1/completions", b'{"model": "m", "prompt": "a", "max_tokens": -5}'),
)
WORDS = ("cache", "memory", "prefill", "decode", "token", "page", "router", "pool", "tree",
         "hit", "swap", "tier")


@dataclass(frozen=True)
class SoakOptions:
    """One soak run.

    Attributes:
        clients: concurrent clients. duration_s: how long they send.
        colocated: number of colocated instances (0: 1P1D).
        faults: which faults to inject (:data:`FAULTS`).
        model: embedded model (``tiny``, ``bench``, ``smollm2``) or a model folder.
        deadline_s: a request not finished after this is hung.
        max_new_tokens: upper bound of each request's output length.
        malformed_share, verify_share: shares of malformed requests and of verified answers.
        max_requests_per_client: bound on each client's loop.
        seed: of the request mix. out: where soak.json and the logs go.
        sigstop_s: how long the frozen instance stays stopped (> the health timeout, 3 s; the
            default outlasts two failed checks, so the router takes it out of rotation).
        events_cut_s: how long the router's event connection is cut (``events`` fault).
        stack: ``memserve`` or ``stock`` (SGLang's own cache behind sglang-router:
            ``soak_cluster``).
    """

    clients: int = 64
    duration_s: float = 600.0
    colocated: int = 0
    faults: tuple[str, ...] = ()
    model: str = "tiny"
    deadline_s: float = 120.0
    max_new_tokens: int = 16
    malformed_share: float = 0.05
    verify_share: float = 0.1
    max_requests_per_client: int = 100_000
    seed: int = 0
    out: Path = Path("soak-out")
    sigstop_s: float = 10.0
    events_cut_s: float = 3.0
    stack: str = "memserve"

    def __post_init__(self) -> None:
        if self.clients < 1 or self.duration_s <= 0 or self.deadline_s <= 0:
            raise ValueError("clients >= 1, duration_s > 0 and deadline_s > 0 are required")
        if self.colocated < 0 or self.colocated == 1 and "sigstop" in self.faults:
            raise ValueError("--colocated must be 0 (PD) or >= 2 to freeze one instance")
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        if self.stack not in STACKS:
            raise ValueError(f"stack must be one of {STACKS}, got {self.stack!r}")
        if self.stack == "stock" and self.colocated:
            raise ValueError("the stock stack is 1P1D only (--colocated 0)")

    def model_args(self) -> list[str]:
        if Path(self.model).is_dir():
            return ["--model-path", self.model]
        return ["--embedded-model", self.model]


@dataclass
class Record:
    kind: str
    outcome: str = ""
    status: int | str = 0
    start: float = 0.0
    end: float = 0.0
    detail: str = ""


@dataclass
class FaultReport:
    name: str
    start: float
    end: float = 0.0
    first_error_s: float | None = None
    first_success_s: float | None = None
    failed: int = 0
    lost: int = 0
    hung: int = 0
    note: str = ""
    # events: seconds from the last cut to the router's resync, and its feed counters' change.
    resync_s: float | None = None
    feed: dict[str, float] = field(default_factory=dict)


@dataclass
class Soak:
    """What the clients see: every record, the verification samples, the faults."""

    options: SoakOptions
    records: list[Record] = field(default_factory=list)
    samples: list[tuple[list[int], dict, list[int]]] = field(default_factory=list)
    faults: list[FaultReport] = field(default_factory=list)
    t0: float = 0.0


# ---- clients ---------------------------------------------------------------------------------


def _sse_events(body: bytes) -> tuple[list[Any], bool]:
    """(parsed data events, whether ``[DONE]`` ended them); raises ValueError on bad JSON."""
    events, done = [], False
    for line in body.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        events.append(json.loads(payload))
    return events, done


def _message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("message", obj.get("detail")))
        if isinstance(err, dict):
            err = err.get("message")
        return str(err or "")[:200]
    return ""


def _judge_ok(kind: str, body: bytes) -> tuple[bool, str, Any]:
    """Whether a 200 answer is well formed: (ok, why not / clear error marker, parsed)."""
    if kind.endswith("stream"):
        events, done = _sse_events(body)
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        if errors:
            return False, "error-event", errors[0]
        if not done or not events:
            return False, "stream ended without [DONE]", None
        if kind.startswith("chat"):
            text = "".join((e["choices"][0].get("delta") or {}).get("content") or ""
                           for e in events if e.get("choices"))
        else:
            text = events[-1]["text"]
        return isinstance(text, str), "", text
    obj = json.loads(body)
    if kind.startswith("chat"):
        text = obj["choices"][0]["message"]["content"]
        return isinstance(text, str), "", text
    ok = isinstance(obj.get("text"), str) and isinstance(obj.get("output_ids"), list)
    return ok, "", obj


async def _request(session: aiohttp.ClientSession, url: str, kind: str, path: str,
                   body: bytes, deadline_s: float) -> tuple[Record, Any]:
    """Send one request and classify its answer (see the module docstring). After a clear
    error the client backs off as a real one would (``Retry-After``, else 0.25 s), so a router
    that is down is not hammered with thousands of refused connections."""
    rec = Record(kind, start=time.monotonic())
    parsed: Any = None
    retry_after = 0.0
    try:
        async with asyncio.timeout(deadline_s):
            async with session.post(url + path, data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                rec.status = r.status
                data = await r.read()
                if r.status in (429, 503):
                    retry_after = min(2.0, float(r.headers.get("Retry-After", "0.25")))
        if kind == "malformed":
            ok = 400 <= r.status < 500 and bool(_message(data))
            # A 2xx to a malformed request is a real answer, just not the refusal it deserved.
            rec.outcome = "ok" if ok else ("failed" if r.status >= 500 else
                                           "accepted" if r.status < 300 else "lost")
            rec.detail = "" if ok else f"{path} {body[:80]!r} -> HTTP {r.status}: {data[:80]!r}"
        elif r.status != 200:
            rec.outcome = "failed" if _message(data) else "lost"
            rec.detail = f"HTTP {r.status}: {_message(data) or data[:160]!r}"
        else:
            try:
                ok, why, parsed = _judge_ok(kind, data)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                ok, why = False, f"malformed 200 body: {exc!r}"
            rec.outcome = "ok" if ok else ("failed" if why == "error-event" else "lost")
            rec.detail = "" if ok else (why if why != "error-event" else str(parsed)[:200])
    except TimeoutError:
        rec.outcome, rec.detail = "hung", f"no end within {deadline_s:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        # Refused or reset: the client sees the error at once.
        rec.outcome, rec.status, rec.detail = "failed", type(exc).__name__, repr(exc)[:200]
    rec.end = time.monotonic()
    if rec.outcome == "failed":
        await asyncio.sleep(retry_after or 0.25)
    return rec, parsed


async def _client(i: int, soak: Soak, router: Any, stop_at: float) -> None:
    opts = soak.options
    rng = random.Random(opts.seed * 1000 + i)
    history: list[dict[str, str]] = []
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(opts.max_requests_per_client):
            if time.monotonic() >= stop_at:
                return
            url = router.url  # read each time: the router may have been restarted
            new = rng.randint(2, opts.max_new_tokens)
            roll = rng.random()
            if roll < opts.malformed_share:
                path, body = rng.choice(MALFORMED)
                rec, _ = await _request(session, url, "malformed", path, body, opts.deadline_s)
                soak.records.append(rec)
                continue
            stream = rng.random() < 0.4
            if roll < 0.5:
                ids = [rng.randrange(5, 1000) for _ in range(rng.randint(4, 64))]
                sp = {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}
                payload = {"input_ids": ids, "sampling_params": sp, "stream": stream}
                kind = "generate-stream" if stream else "generate"
                rec, parsed = await _request(session, url, kind, "/generate",
                                             json.dumps(payload).encode(), opts.deadline_s)
                if rec.outcome == "ok" and not stream and rng.random() < opts.verify_share:
                    soak.samples.append((ids, sp, parsed["output_ids"]))
            else:
                if len(history) >= 8 or rng.random() < 0.2:
                    history = []  # a new session
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                history.append({"role": "user", "content": words})
                payload = {"model": "default", "messages": history, "max_tokens": new,
                           "temperature": 0, "stream": stream}
                kind = "chat-stream" if stream else "chat"
                rec, text = await _request(session, url, kind, "/v1/chat/completions",
                                           json.dumps(payload).encode(), opts.deadline_s)
                if rec.outcome == "ok":
                    history.append({"role": "assistant", "content": text})
                else:
                    history = []
            soak.records.append(rec)


# ---- faults, checks, report ------------------------------------------------------------------


def _fault_thread(soak: Soak, cluster: Cluster, stop: threading.Event) -> None:
    opts = soak.options
    for name in sorted(opts.faults, key=FAULT_AT.__getitem__):
        if not cluster.applies(name):
            continue
        at = soak.t0 + FAULT_AT[name] * opts.duration_s
        while time.monotonic() < at:
            if stop.wait(0.1):
                return
        rep = FaultReport(name, time.monotonic())
        soak.faults.append(rep)
        try:
            if name == "kill":
                rep.note = cluster.kill_and_restart(cluster.victim("kill"))
            elif name == "sigstop":
                rep.note = cluster.freeze(cluster.victim("sigstop"), opts.sigstop_s)
            elif name == "events":
                rep.note, rep.resync_s, rep.feed = cluster.drop_events(
                    cluster.victim("events"), opts.events_cut_s)
                if rep.resync_s is None:
                    rep.note += "; failed: no resync within the timeout"
            else:
                rep.note = cluster.restart_router()
        except Exception as exc:  # noqa: BLE001 -- reported; the soak goes on
            rep.note = f"fault failed: {exc!r}"[:500]
        rep.end = time.monotonic()


def _score_faults(soak: Soak) -> None:
    for rep in soak.faults:
        during = [r for r in soak.records if r.end >= rep.start and r.start <= rep.end]
        rep.failed = sum(r.outcome == "failed" for r in during)
        rep.lost = sum(r.outcome == "lost" for r in during)
        rep.hung = sum(r.outcome == "hung" for r in during)
        errs = [r.end for r in soak.records if r.outcome == "failed" and r.end >= rep.start]
        oks = [r.end for r in soak.records if r.outcome == "ok" and r.kind != "malformed"
               and r.start >= rep.start]
        rep.first_error_s = round(min(errs) - rep.start, 3) if errs else None
        rep.first_success_s = round(min(oks) - rep.start, 3) if oks else None


def _checks(cluster: Cluster, wait_s: float = 30.0) -> dict[str, Any]:
    """Integrity of every instance and router tree == instance tree (polled until equal)."""
    out: dict[str, Any] = {}
    if cluster.stock:
        return {"note": "stock SGLang: no MemPool integrity check and no router trees"}
    for wid, server in cluster.instances.items():
        try:
            counts = memserve_integrity(server.url, timeout=60)
            out[f"integrity/{wid}"] = {"ok": True, "device": counts.get("device")}
        except Exception as exc:  # noqa: BLE001 -- reported as a failed check
            out[f"integrity/{wid}"] = {"ok": False, "error": repr(exc)[:300]}
        deadline = time.monotonic() + wait_s
        while True:
            try:
                own, mirror = instance_tree(server.url, wid), router_tree(cluster.router.url, wid)
                equal = own == mirror
            except Exception as exc:  # noqa: BLE001
                own, mirror, equal = {}, {}, False
                out[f"tree/{wid}/error"] = repr(exc)[:300]
            if equal or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        out[f"tree/{wid}"] = {"equal": equal, "pages": len(own), "router_pages": len(mirror)}
    return out


def _verify(soak: Soak, reference: ServerProcess) -> tuple[int, int]:
    """Replay the samples on the reference: (checked, mismatched)."""
    bad = 0
    for ids, sp, got in soak.samples:
        r = requests.post(f"{reference.url}/generate", timeout=120,
                          json={"input_ids": ids, "sampling_params": sp})
        r.raise_for_status()
        bad += r.json()["output_ids"] != got
    return len(soak.samples), bad


def run(opts: SoakOptions) -> dict[str, Any]:
    """Start the cluster, soak it (with faults), check it, stop it; returns the report."""
    opts.out.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(opts)
    soak = Soak(opts)
    t_start = time.monotonic()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()  # what did start (the reference, an instance) must not outlive the run
        raise
    startup_s = time.monotonic() - t_start
    stop = threading.Event()
    try:
        soak.t0 = time.monotonic()
        faults = threading.Thread(target=_fault_thread, args=(soak, cluster, stop), daemon=True)
        faults.start()

        async def clients() -> None:
            stop_at = soak.t0 + opts.duration_s
            await asyncio.gather(*(_client(i, soak, cluster.router, stop_at)
                                   for i in range(opts.clients)))

        asyncio.run(clients())
        elapsed = time.monotonic() - soak.t0
        stop.set()
        faults.join(timeout=300)
        time.sleep(2.0)  # in-flight work drains on the instances
        checks = _checks(cluster)
        checked, mismatched = _verify(soak, cluster.reference)
    finally:
        stop.set()
        cluster.stop()
    _score_faults(soak)
    outcomes = Counter(r.outcome for r in soak.records)
    by_kind = {k: dict(Counter(r.outcome for r in soak.records if r.kind == k))
               for k in sorted({r.kind for r in soak.records})}
    oks = sorted(r.end - r.start for r in soak.records if r.outcome == "ok")
    report = {
        "options": {**asdict(opts), "out": str(opts.out)},
        "startup_s": round(startup_s, 1), "elapsed_s": round(elapsed, 1),
        "requests": len(soak.records), "ok": outcomes["ok"], "failed": outcomes["failed"],
        "lost": outcomes["lost"], "hung": outcomes["hung"], "by_kind": by_kind,
        # Malformed requests answered 2xx (not refused; neither lost nor failed).
        "malformed_accepted": outcomes["accepted"],
        "latency_s": {"p50": _pct(oks, 0.5), "p99": _pct(oks, 0.99), "max": _pct(oks, 1.0)},
        "verified": checked, "mismatched": mismatched,
        # Malformed requests answered with a 5xx (a clear error, but not the 4xx they deserve).
        "malformed_5xx": sum(r.kind == "malformed" and isinstance(r.status, int)
                             and r.status >= 500 for r in soak.records),
        "malformed_status": dict(Counter(str(r.status) for r in soak.records
                                         if r.kind == "malformed")),
        # How the well-formed requests were answered (a 500 is no clear error: SGLang's own).
        "status": dict(Counter(str(r.status) for r in soak.records if r.kind != "malformed")),
        # Failed because decode's KV transfer from prefill failed (SGLang's "Decode transfer
        # failed"; the router turns it into a retry or a 503).
        "transfer_failed": sum(r.outcome == "failed" and "transfer failed" in r.detail
                               for r in soak.records),
        "faults": [asdict(f) | {"start": round(f.start - soak.t0, 2),
                                "end": round(f.end - soak.t0, 2)} for f in soak.faults],
        "skipped_faults": [f for f in opts.faults if not cluster.applies(f)],
        "checks": checks,
        "failures": [asdict(r) | {"start": round(r.start - soak.t0, 2),
                                  "end": round(r.end - soak.t0, 2)}
                     for r in soak.records if r.outcome in ("lost", "hung")][:50],
        "failed_examples": sorted({f"{r.kind} {r.status} {r.detail[:120]}"
                                   for r in soak.records if r.outcome == "failed"})[:20],
    }
    (opts.out / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _pct(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None


def parse(argv: list[str]) -> list[SoakOptions]:
    """The command line as one run per stack (``--stack both``: memserve, then stock, each
    under ``<out>/<stack>``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=600.0, help="seconds")
    p.add_argument("--colocated", type=int, default=0,
                   help="colocated instances behind the router (0: 1P1D)")
    p.add_argument("--faults", default="", help=f"comma-separated {FAULTS}, or 'all'")
    p.add_argument("--stack", choices=(*STACKS, "both"), default="memserve",
                   help="memserve (memserve-router, MemServe's cache), stock (sglang-router, "
                        "SGLang's own cache; faults that need MemServe are skipped) or both, "
                        "one after the other")
    p.add_argument("--model", default="tiny", help="embedded model name or a model folder")
    p.add_argument("--deadline-s", type=float, default=SoakOptions.deadline_s)
    p.add_argument("--max-new-tokens", type=int, default=SoakOptions.max_new_tokens)
    p.add_argument("--malformed-share", type=float, default=SoakOptions.malformed_share)
    p.add_argument("--verify-share", type=float, default=SoakOptions.verify_share)
    p.add_argument("--max-requests-per-client", type=int,
                   default=SoakOptions.max_requests_per_client)
    p.add_argument("--sigstop-s", type=float, default=SoakOptions.sigstop_s)
    p.add_argument("--events-cut-s", type=float, default=SoakOptions.events_cut_s,
                   help="how long the router's event connection stays cut (events fault)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=SoakOptions.out)
    a = p.parse_args(argv)
    faults = FAULTS if a.faults == "all" else tuple(f for f in a.faults.split(",") if f)
    stacks = STACKS if a.stack == "both" else (a.stack,)
    try:
        return [SoakOptions(clients=a.clients, duration_s=a.duration, colocated=a.colocated,
                            faults=faults, model=a.model, deadline_s=a.deadline_s,
                            max_new_tokens=a.max_new_tokens, malformed_share=a.malformed_share,
                            verify_share=a.verify_share,
                            max_requests_per_client=a.max_requests_per_client,
                            seed=a.seed, out=a.out / stack if len(stacks) > 1 else a.out,
                            sigstop_s=a.sigstop_s, events_cut_s=a.events_cut_s, stack=stack)
                for stack in stacks]
    except ValueError as exc:
        p.error(str(exc))
    raise AssertionError("unreachable")


def _print(report: dict[str, Any]) -> None:
    short = {k: report[k] for k in ("requests", "ok", "failed", "lost", "hung", "verified",
                                    "mismatched", "malformed_5xx", "malformed_accepted",
                                    "latency_s", "by_kind")}
    print(f"== stack {report['options']['stack']}")
    print(json.dumps(short, indent=1))
    for f in report["faults"]:
        resync = f" resync {f['resync_s']}s," if f["name"] == "events" else ""
        print(f"fault {f['name']} at {f['start']}s: {f['note']};{resync} first error "
              f"{f['first_error_s']}s, first success {f['first_success_s']}s, failed "
              f"{f['failed']}, lost {f['lost']}, hung {f['hung']}")
    print(json.dumps(report["checks"], indent=1))


def _bad(report: dict[str, Any]) -> bool:
    return bool(report["lost"] or report["hung"] or not all(
        v.get("ok", v.get("equal", True)) for v in report["checks"].values()
        if isinstance(v, dict)))


def main(argv: list[str] | None = None) -> int:
    """Run each stack's soak; exit 1 when one lost or hung a request or failed a check."""
    reports = [run(opts) for opts in parse(sys.argv[1:] if argv is None else argv)]
    for report in reports:
        _print(report)
    return 1 if any(_bad(r) for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
