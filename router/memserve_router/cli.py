"""``memserve-router`` / ``python -m memserve_router``: the global scheduler's command line.

Flags follow sglang-router's (``--worker-urls``, ``--pd-disaggregation --prefill URL [PORT]
--decode URL``, ``--policy``, ``--host``, ``--port``, ...), so one can stand in for the other.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from memserve_router.config import RouterConfig, WorkerSpec
from memserve_router.policies import POLICIES
from sglang_memserve.mempool.auth import AuthError, load_auth
from sglang_memserve.validate import RequestLimits

# sglang-router flags that have no meaning here (exact trees need no eviction timer; metrics are
# served on the router's own port): accepted so its command lines work, and said so.
IGNORED: dict[str, int] = {"--eviction-interval-secs": 1, "--max-tree-size": 1,
                           "--prometheus-host": 1, "--prometheus-port": 1}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve-router", description=__doc__.split("\n\n")[0])
    names = sorted(POLICIES)
    p.add_argument("--worker-urls", nargs="*", default=[], help="colocated instances")
    p.add_argument("--pd-disaggregation", action="store_true",
                   help="route each request to one prefill and one decode instance")
    p.add_argument("--prefill", nargs="+", action="append", default=[],
                   metavar=("URL", "BOOTSTRAP_PORT"),
                   help="a prefill instance and (optionally) its bootstrap port; repeatable")
    p.add_argument("--decode", nargs=1, action="append", default=[], metavar="URL",
                   help="a decode instance; repeatable")
    p.add_argument("--policy", choices=names, default="memserve")
    p.add_argument("--prefill-policy", choices=names, default=None)
    p.add_argument("--decode-policy", choices=names, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warn", "warning", "error"))
    p.add_argument("--tokenizer-path", default=None,
                   help="the model's tokenizer (default: the instances' model path)")
    p.add_argument("--cost-table", default="cpu-bench",
                   help="cost table of the memserve policy (a shipped name or a JSON path)")
    p.add_argument("--transfer-per-page-s", type=float, default=None,
                   help="KV transfer cost per page over the link in use (default: the table's)")
    p.add_argument("--no-migrate", action="store_true",
                   help="never move KV between instances (recompute instead)")
    p.add_argument("--min-migrate-gain-secs", type=float, default=0.05,
                   help="a migration must beat serving locally by this much (its fixed cost)")
    p.add_argument("--affinity-slack", type=float, default=RouterConfig.affinity_slack,
                   help="memserve policy: the holder of the longest cached prefix keeps a "
                        "request unless another instance's estimate is lower by more than this "
                        "fraction (0: lowest estimate always), scaled down as the holder's "
                        "queue would rewrite its KV")
    p.add_argument("--affinity-ignore-pressure", action="store_true",
                   help="memserve policy: keep the affinity slack flat, whatever the holder's "
                        "queue against its KV capacity")
    p.add_argument("--prefill-hold-secs", type=float, default=RouterConfig.prefill_hold_s,
                   help="longest a request waits for an earlier request's prefill of its "
                        "prefix on the same instance, so that it hits instead of recomputing "
                        "the prefix in the same batch (0: never waits)")
    p.add_argument("--migration-overhead-secs", type=float, default=None,
                   help="memserve policy: pin a migration's fixed cost (default: learned from "
                        "the migrations the router awaited)")
    p.add_argument("--load-per-request-secs", type=float,
                   default=RouterConfig.load_per_request_s,
                   help="memserve policy: cost of each request already on an instance (raise "
                        "it for long decodes: a crowded decode batch slows every request on it)")
    p.add_argument("--load-per-request-steps", type=float, default=None,
                   help="memserve policy: that cost as this many of the cost table's decode "
                        "steps (overrides --load-per-request-secs)")
    p.add_argument("--hit-survival", action=argparse.BooleanOptionalAction,
                   default=RouterConfig.hit_survival,
                   help="memserve policy: price each cached prefix by the chance it survives "
                        "the holder's queue inside the estimate (default on; "
                        "--no-hit-survival counts every cached prefix in full)")
    p.add_argument("--cache-threshold", type=float, default=0.3)
    p.add_argument("--balance-abs-threshold", type=int, default=64)
    p.add_argument("--balance-rel-threshold", type=float, default=1.5)
    p.add_argument("--health-check-interval-secs", type=float, default=2.0)
    p.add_argument("--health-check-timeout-secs", type=float, default=10.0)
    p.add_argument("--health-failure-threshold", type=int, default=3)
    p.add_argument("--liveness-interval-secs", type=float,
                   default=RouterConfig.liveness_interval_s,
                   help="how often each instance's HTTP process is probed (GET /ping; 0: never)")
    p.add_argument("--liveness-timeout-secs", type=float,
                   default=RouterConfig.liveness_timeout_s,
                   help="a liveness probe not answered within this failed")
    p.add_argument("--liveness-failure-threshold", type=int,
                   default=RouterConfig.liveness_failure_threshold,
                   help="failed liveness probes in a row that take an instance out of rotation "
                        "and end its requests that have not sent a byte (retried elsewhere)")
    p.add_argument("--load-interval-secs", type=float, default=0.5)
    p.add_argument("--predict-ttl-secs", type=float, default=5.0)
    p.add_argument("--request-timeout-secs", type=float, default=600.0)
    p.add_argument("--disable-retries", action="store_true")
    p.add_argument("--max-payload-size", type=int, default=RequestLimits.max_body_bytes,
                   metavar="BYTES", help="largest request body (413 beyond)")
    p.add_argument("--max-n", type=int, default=RequestLimits.max_n,
                   help="largest n (parallel samples) a generation request may ask for")
    p.add_argument("--max-concurrent-requests", type=int, default=0,
                   help="generation requests forwarded at once (0 or -1: unlimited); beyond, "
                        "up to --queue-size wait, the rest get 429 with Retry-After")
    p.add_argument("--queue-size", type=int, default=RouterConfig.queue_size,
                   help="requests that may wait for a slot")
    p.add_argument("--queue-timeout-secs", type=float, default=RouterConfig.queue_timeout_s,
                   help="longest wait for a slot (503 with Retry-After after it)")
    p.add_argument("--request-read-timeout-secs", type=float,
                   default=RouterConfig.request_read_timeout_s,
                   help="a generation request's body must arrive within this (408; 0: none)")
    p.add_argument("--header-read-timeout-secs", type=float,
                   default=RouterConfig.header_read_timeout_s,
                   help="a request's headers must arrive within this of its first byte (408 "
                        "and the connection closed: slow-loris clients; 0: none)")
    p.add_argument("--mempool-secret-file", default=None, metavar="PATH",
                   help="the instances' control-channel secret (signs snapshot and kv_push "
                        "requests); default: $MEMSERVE_SECRET_FILE or $MEMSERVE_SECRET, else "
                        "unsigned")
    return p


def _strip_ignored(argv: list[str]) -> tuple[list[str], list[str]]:
    out, ignored, skip = [], [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        flag = a.split("=", 1)[0]
        if flag in IGNORED:
            ignored.append(flag)
            skip = 0 if "=" in a else IGNORED[flag]
            continue
        out.append(a)
    return out, ignored


def config_from_args(argv: Sequence[str]) -> RouterConfig:
    """Parse a command line into a RouterConfig (argparse exits with a message on bad flags)."""
    return parse_args(argv)[0]


def parse_args(argv: Sequence[str]) -> tuple[RouterConfig, str]:
    """Parse a command line: (config, log level name). argparse exits on bad flags."""
    argv, ignored = _strip_ignored(list(argv))
    p = parser()
    a = p.parse_args(argv)
    if ignored:
        logging.getLogger("memserve_router").warning("ignoring sglang-router flags %s", ignored)
    workers: list[WorkerSpec] = []
    try:
        workers += [WorkerSpec(u) for u in a.worker_urls]
        for item in a.prefill:
            if len(item) > 2:
                p.error(f"--prefill takes URL [BOOTSTRAP_PORT], got {item}")
            port = int(item[1]) if len(item) == 2 and item[1].lower() != "none" else None
            workers.append(WorkerSpec(item[0], "prefill", port))
        workers += [WorkerSpec(d[0], "decode") for d in a.decode]
        if not a.pd_disaggregation and (a.prefill or a.decode):
            p.error("--prefill/--decode need --pd-disaggregation")
        config = RouterConfig(
            workers=tuple(workers), pd=a.pd_disaggregation, policy=a.policy,
            prefill_policy=a.prefill_policy, decode_policy=a.decode_policy,
            host=a.host, port=a.port, api_key=a.api_key, tokenizer_path=a.tokenizer_path,
            cost_table=a.cost_table, transfer_per_page_s=a.transfer_per_page_s,
            migrate=not a.no_migrate, min_migrate_gain_s=a.min_migrate_gain_secs,
            affinity_slack=a.affinity_slack, affinity_pressure=not a.affinity_ignore_pressure,
            migration_overhead_s=a.migration_overhead_secs,
            load_per_request_s=a.load_per_request_secs,
            load_per_request_steps=a.load_per_request_steps, hit_survival=a.hit_survival,
            prefill_hold_s=a.prefill_hold_secs,
            cache_threshold=a.cache_threshold,
            balance_abs_threshold=a.balance_abs_threshold,
            balance_rel_threshold=a.balance_rel_threshold,
            health_interval_s=a.health_check_interval_secs,
            health_timeout_s=a.health_check_timeout_secs,
            health_failure_threshold=a.health_failure_threshold,
            liveness_interval_s=a.liveness_interval_secs,
            liveness_timeout_s=a.liveness_timeout_secs,
            liveness_failure_threshold=a.liveness_failure_threshold,
            load_interval_s=a.load_interval_secs, predict_ttl_s=a.predict_ttl_secs,
            request_timeout_s=a.request_timeout_secs,
            retries=0 if a.disable_retries else 1,
            control_auth=load_auth(a.mempool_secret_file),
            max_body_bytes=a.max_payload_size, max_n=a.max_n,
            max_concurrent_requests=max(0, a.max_concurrent_requests),
            queue_size=a.queue_size, queue_timeout_s=a.queue_timeout_secs,
            request_read_timeout_s=a.request_read_timeout_secs,
            header_read_timeout_s=a.header_read_timeout_secs)
        return config, a.log_level
    except (ValueError, AuthError) as exc:
        p.error(str(exc))
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> None:
    config, level = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING if level == "warn" else level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from memserve_router.server import run

    run(config)


if __name__ == "__main__":
    main()
