"""``python -m sglang_memserve.launch_server``: SGLang's server with MemServe's arguments on top.

Every SGLang argument is accepted unchanged. MemServe adds its own (role, cache mode, MemPool
sizing, KV events) and fills in defaults SGLang lacks on this kind of host: the embedded model when
no ``--model-path`` is given, and the CPU settings on a host without CUDA.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sglang_memserve import compat
from sglang_memserve.bind import DIST_OVERRIDE_ENV, local_bind_env, shim_env
from sglang_memserve.config import CACHE_MODES, ENV_VAR, ROLES, MemServeConfig
from sglang_memserve.model.registry import MODELS, folder_cpu_dtype
from sglang_memserve.overload import OverloadLimits
from sglang_memserve.validate import RequestLimits

# NOTE: runs again as ``__mp_main__`` in every process SGLang spawns, before the child unpickles
# its target (which imports sglang.srt) -- so import-time CPU patches reach the scheduler too.
compat.apply_import_patches()

logger = logging.getLogger("sglang_memserve.launch_server")

# SGLang flags that MemServe sets when the user did not: flag -> value (None: a switch).
CPU_DEFAULTS: dict[str, str | None] = {
    "--device": "cpu",
    "--attention-backend": "torch_native",
    "--disable-cuda-graph": None,
    "--dtype": "float32",
    "--max-total-tokens": "16384",
    "--sleep-on-idle": None,  # an idle scheduler otherwise busy-polls a whole core
}
ROLE_FLAGS: dict[str, list[str]] = {
    "colocated": [],
    "prefill": ["--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "mooncake"],
    "decode": ["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "mooncake"],
}
# On CPU: prefill's cached-prefix send path uses torch.cuda.Event (overlap schedule), and decode's
# default host-pool retraction backup pins memory through CUDA.
CPU_ROLE_DEFAULTS: dict[str, dict[str, str | None]] = {
    "colocated": {},
    "prefill": {"--disable-overlap-schedule": None},
    "decode": {"--disaggregation-decode-retraction-backup": "cpu_tensor"},
}
CACHE_FLAGS: dict[str, list[str]] = {
    "memserve": ["--radix-cache-backend", "memserve"],
    "stock": [],
    "off": ["--disable-radix-cache"],
}


def memserve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("MemServe")
    g.add_argument("--role", choices=ROLES, default="colocated",
                   help="instance role: colocated, prefill or decode")
    g.add_argument("--memserve-cache", choices=CACHE_MODES, default="memserve",
                   help="tree cache: memserve (MemPool-backed), stock (SGLang's) or off")
    g.add_argument("--instance-id", default=None, help="name in the pool and in KV events")
    g.add_argument("--mempool-host-ratio", type=float, default=0.0,
                   help="DRAM tier size as a multiple of the device KV pool (0: no DRAM tier)")
    g.add_argument("--kv-events-port", type=int, default=0,
                   help="ZMQ PUB port of MemServe's KV events (0: a free port; -1: none)")
    g.add_argument("--mempool-control-port", type=int, default=None,
                   help="ZMQ port of the control channel (default: a free port; prefill: "
                        "its bootstrap port + 1, where decode instances look for it)")
    g.add_argument("--kv-return", action="store_true",
                   help="decode: send each finished request's KV back to its prefill instance "
                        "(PD-Caching-3; needs --disaggregation-decode-enable-radix-cache)")
    g.add_argument("--kv-return-peer", default=None,
                   help="decode: control endpoint to return KV to (default: from the request)")
    g.add_argument("--mempool-peers", default=None, metavar="HOST:PORT,...",
                   help="the control endpoints this instance may push KV to (decode's KV "
                        "return, the router's migrations); a push to any other address is "
                        "refused with UnknownPeer and nothing is sent. --kv-return-peer counts "
                        "as one. Hosts are compared as written. Default: any address (with a "
                        "secret, a destination must still sign its replies)")
    g.add_argument("--no-sleep-on-idle", action="store_true",
                   help="CPU hosts: do not add SGLang's --sleep-on-idle (idle schedulers then "
                        "busy-poll a core)")
    g.add_argument("--mempool-secret-file", default=None, metavar="PATH",
                   help="shared secret of the control channel (HMAC-signed requests; unsigned, "
                        "stale and replayed ones are refused); default: $MEMSERVE_SECRET_FILE or "
                        "$MEMSERVE_SECRET, else none. A file, never a command-line value: ps "
                        "shows those to every user")
    g.add_argument("--max-payload-size", type=int, default=RequestLimits.max_body_bytes,
                   metavar="BYTES", help="largest generation request body (413 beyond)")
    g.add_argument("--max-n", type=int, default=RequestLimits.max_n,
                   help="largest n (parallel samples) a generation request may ask for")
    g.add_argument("--max-concurrent-requests", type=int, default=0, metavar="N",
                   help="generation requests served at once (0: unlimited); beyond, up to "
                        "--queue-size wait, the rest get 429 with Retry-After")
    g.add_argument("--queue-size", type=int, default=0, metavar="N",
                   help="requests that may wait for a slot (a bounded queue; SGLang's own "
                        "--max-queued-requests bounds its scheduler's queue)")
    g.add_argument("--queue-timeout-secs", type=float, default=OverloadLimits.queue_timeout_s,
                   help="longest wait for a slot (503 with Retry-After after it)")
    g.add_argument("--request-read-timeout-secs", type=float,
                   default=OverloadLimits.read_timeout_s,
                   help="a client must send a whole request (headers and body) within this "
                        "(slow clients are cut off; 0: no deadline)")
    g.add_argument("--embedded-model", choices=sorted(MODELS), default="tiny",
                   help="embedded model served when --model-path is absent (smollm2: a real "
                        "instruct model; tiny, bench: random weights for tests and benchmarks)")
    return p


def _has(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _value(argv: Sequence[str], flag: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


def _with_defaults(argv: list[str], defaults: dict[str, str | None]) -> list[str]:
    for flag, value in defaults.items():
        if not _has(argv, flag):
            argv += [flag] if value is None else [flag, value]
    return argv


def build(argv: Sequence[str], cpu: bool) -> tuple[MemServeConfig, list[str], dict[str, str]]:
    """Split the command line into MemServe's config, SGLang's argv and environment defaults.

    Args:
        argv: the command line (without the program name).
        cpu: whether to apply the CPU defaults.
    Returns:
        (config, argv for SGLang's ``prepare_server_args``, environment variables to set if unset).
    """
    ms, rest = memserve_parser().parse_known_args(list(argv))
    sg = list(rest)
    # CPU dtype: the embedded model's own (also when its folder is given as --model-path),
    # else float32 (CPU_DEFAULTS).
    if not _has(sg, "--model-path"):
        from sglang_memserve.model import ensure_model

        sg += ["--model-path", str(ensure_model(ms.embedded_model))]
        model_dtype: str | None = MODELS[ms.embedded_model].cpu_dtype
    else:
        model_dtype = folder_cpu_dtype(Path(_value(sg, "--model-path", "")))
    cpu_dtype: dict[str, str | None] = {"--dtype": model_dtype} if model_dtype else {}
    host = _value(sg, "--host", "127.0.0.1")
    sg = _with_defaults(sg, {"--host": host})
    if not _has(sg, "--disaggregation-mode"):
        sg += ROLE_FLAGS[ms.role]
    if not (_has(sg, "--radix-cache-backend") or _has(sg, "--disable-radix-cache")):
        sg += CACHE_FLAGS[ms.memserve_cache]
    if ms.mempool_host_ratio > 0 and ms.memserve_cache == "memserve":
        # The DRAM tier is SGLang's HiCache host pool, written back on eviction (write_back):
        # device and host hold disjoint pages, so the two tiers add up instead of overlapping.
        sg = _with_defaults(sg, {
            "--enable-hierarchical-cache": None,
            "--hicache-ratio": str(ms.mempool_host_ratio),
            "--hicache-write-policy": "write_back",
            "--hicache-io-backend": "direct",
            "--hicache-mem-layout": "layer_first",
        })
    # OpenAI usage reports cached prompt tokens: the figure MemServe exists to raise.
    sg = _with_defaults(sg, {"--enable-cache-report": None})
    env = {"HF_HUB_OFFLINE": "1"}
    if cpu:
        defaults = {**CPU_DEFAULTS, **cpu_dtype, **CPU_ROLE_DEFAULTS[ms.role]}
        if ms.no_sleep_on_idle:
            defaults.pop("--sleep-on-idle")
        sg = _with_defaults(sg, defaults)
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    if ms.role != "colocated":
        env.update({
            "SGLANG_HOST_IP": host,  # else SGLang advertises the NIC's address to Mooncake
            "MC_TCP_BIND_ADDRESS": host,
            "MC_TRANSFER_TIMEOUT": "5",
            "MC_LOG_LEVEL": "ERROR",
            # Prefill blacklists a decode's Mooncake session after one failed send (a frozen
            # and thawed instance: the transfer timed out meanwhile) and probes it every 30 s
            # by default; until then every request to that decode fails (13 s seen). Probe
            # every second instead (docs/reliability.md).
            "SGLANG_FAILED_SESSION_PROBE_INTERVAL_S": "1",
            "SGLANG_FAILED_SESSION_PROBE_MAX_INTERVAL_S": "5",
            **({"MOONCAKE_PROTOCOL": "tcp", "MC_FORCE_TCP": "1"} if cpu else {}),
        })
    secret_file = None
    if ms.mempool_secret_file:
        from sglang_memserve.mempool.auth import load_auth

        # Checked here so a bad path fails at once, not in the scheduler process.
        load_auth(ms.mempool_secret_file)
        secret_file = os.path.abspath(ms.mempool_secret_file)
    control_port = ms.mempool_control_port
    if control_port is None:
        control_port = (int(_value(sg, "--disaggregation-bootstrap-port", "8998")) + 1
                        if ms.role == "prefill" else 0)
    if ms.kv_return and ms.role == "decode":
        sg = _with_defaults(sg, {"--disaggregation-decode-enable-radix-cache": None})
    config = MemServeConfig(
        role=ms.role,
        cache=ms.memserve_cache,
        instance_id=ms.instance_id or f"{ms.role}@{host}:{_value(sg, '--port', '30000')}",
        host_pool_ratio=ms.mempool_host_ratio,
        events_port=ms.kv_events_port,
        host=host,
        control_port=control_port,
        kv_return=ms.kv_return and ms.role == "decode",
        kv_return_peer=ms.kv_return_peer,
        secret_file=secret_file,
        max_body_bytes=ms.max_payload_size,
        max_n=ms.max_n,
        peers=None if ms.mempool_peers is None else tuple(
            p for p in ms.mempool_peers.split(",") if p.strip()),
    )
    return config, sg, env


def overload_limits(argv: Sequence[str]) -> OverloadLimits:
    """The guard's admission bounds and read deadline from the command line (ValueError when
    bad)."""
    ms, _ = memserve_parser().parse_known_args(list(argv))
    return OverloadLimits(max_concurrent=ms.max_concurrent_requests,
                          max_queued=ms.queue_size,
                          queue_timeout_s=ms.queue_timeout_secs,
                          read_timeout_s=ms.request_read_timeout_secs)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        memserve_parser().print_help()
        print("\nAll SGLang server arguments are accepted as well (python -m sglang.launch_server -h).")
        return
    config, sg_argv, env = build(argv, cpu=compat.needed())
    overload = overload_limits(argv)  # bad bounds fail here, before SGLang starts
    store_dir = tempfile.mkdtemp(prefix="memserve-dist-")
    env.update(local_bind_env(config.host, store_dir,
                              nnodes=int(_value(sg_argv, "--nnodes", "1")),
                              dist_init_addr=_value(sg_argv, "--dist-init-addr", "") or None))
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # Mooncake's wildcard listeners onto the host (the SGLang processes inherit this).
    os.environ.update(shim_env(config.host))
    os.environ[ENV_VAR] = config.to_env()
    if config.secret_file:
        from sglang_memserve.mempool.auth import SECRET_FILE_ENV

        # The SGLang processes (control channel, peer calls) read the secret from this file
        # through the environment they inherit; the flag wins over an inherited value.
        os.environ[SECRET_FILE_ENV] = config.secret_file

    from sglang.launch_server import run_server
    from sglang.srt.environ import envs
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    if DIST_OVERRIDE_ENV in env and not hasattr(envs, DIST_OVERRIDE_ENV):
        # Start-up check: an SGLang that no longer reads it starts a TCPStore on every interface.
        logger.warning("this SGLang ignores %s: its scheduler's rendezvous store will listen on "
                       "all interfaces", DIST_OVERRIDE_ENV)
    load_plugins()  # runs sglang_memserve.plugin.load through SGLang's entry point
    server_args = prepare_server_args(sg_argv)
    from sglang_memserve import guard

    # The guard lives in this process's copy of SGLang's app: SGLang's extra tokenizer workers
    # (--tokenizer-worker-num > 1) re-import the app without it.
    if not guard.install(config.limits, overload):
        logger.warning("SGLang's HTTP app is already started: no request guard")
    if int(_value(sg_argv, "--tokenizer-worker-num", "1")) > 1:
        logger.warning("--tokenizer-worker-num > 1: those workers serve without MemServe's "
                       "request guard")
    logger.info("MemServe %s instance %s (cache=%s)", config.role, config.instance_id, config.cache)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
        shutil.rmtree(store_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
