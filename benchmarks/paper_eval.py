"""The MemServe paper's evaluation in one command: configurations x workloads, a report with plots.

Every configuration is started from scratch (real SGLang servers, Mooncake, the routers),
serves the chosen workloads one after another with the same requests and arrival times as every
other configuration, and is torn down. Writes, under ``--out``: ``paper-eval.json`` (meta, per
configuration and workload: summary, work counters, per-request records without output ids),
``paper-eval.md`` (tables, ratios, provenance) and PNG plots (TTFT/JCT CDFs per workload, ratio
bars, hit rates)::

    .venv/bin/python benchmarks/paper_eval.py --quick            # ~10 min on 2 cores
    .venv/bin/python benchmarks/paper_eval.py --smoke            # tiny model, seconds
    .venv/bin/python benchmarks/paper_eval.py --quick --configs colo2-memserve-router,colo2-sglang-cache-aware
    .venv/bin/python benchmarks/paper_eval.py --render A.json B.json --report docs/results/x.md

``--render`` re-renders a report from earlier runs' JSON without running anything (two runs:
every ratio with its spread). A report file that already exists keeps everything outside its
``<!-- paper-eval:tables -->`` markers (the prose) and only the part between them is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sglang_memserve import compat

compat.apply_import_patches()

import profiling  # noqa: E402  (beside this script)

from sglang_memserve.bench import report  # noqa: E402
from sglang_memserve.bench.paper import (  # noqa: E402
    PRESETS,
    WORKLOADS,
    DataPaths,
    EvalSizes,
    build_workloads,
    run_config,
    with_overrides,
)
from sglang_memserve.bench.setups import SETUPS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("colo-nocache", "colo-cache", "colo-stock", "pd-basic", "pd-caching3",
                   "sglang-pd", "sglang-pd-dcache")
# The routing pair (two instances each) is not in the default set: it would take --quick past
# its 10 minutes; run it with --configs colo2-memserve-router,colo2-sglang-cache-aware.
# Interleaved so that, two at a time (--jobs), a one-instance and a routed start overlap.
SMOKE_CONFIGS = ("colo2-memserve-router", "colo-nocache", "colo2-sglang-cache-aware", "colo-cache")
BEGIN, END = "<!-- paper-eval:tables -->", "<!-- /paper-eval:tables -->"


def _commit() -> str:
    """The checkout's commit, else a ``git archive`` snapshot's directory name (snap.sh)."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{REPO.name} (snapshot directory; no git)"


def _machine() -> dict[str, Any]:
    mem = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "ram_gib": round(mem, 1),
            "python": platform.python_version()}


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of :class:`EvalSizes` fields, typed like the field's default."""
    out: dict[str, Any] = {}
    fields = EvalSizes.__dataclass_fields__
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {p!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        kind = type(getattr(EvalSizes(), key))
        try:
            out[key] = kind(value)
        except ValueError as exc:
            raise SystemExit(f"--set {p!r}: {key} takes a {kind.__name__} ({exc})") from exc
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small workloads (~10 min)")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny model, a handful of requests, two colocated configurations and "
                           "the routing pair")
    mode.add_argument("--render", nargs="+", type=Path, metavar="JSON",
                      help="only render the report from these runs' paper-eval.json")
    ap.add_argument("--out", type=Path, default=None, help="default: results/paper-eval-<time>")
    ap.add_argument("--report", type=Path, default=None, help="default: <out>/paper-eval.md")
    ap.add_argument("--configs", default=None,
                    help=f"comma-separated, from {', '.join(SETUPS)} (default: "
                         f"{','.join(DEFAULT_CONFIGS)}; --smoke: {','.join(SMOKE_CONFIGS)})")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, from {', '.join(WORKLOADS)}")
    ap.add_argument("--embedded-model", choices=("tiny", "bench"), default=None,
                    help="default: bench (--smoke: tiny)")
    ap.add_argument("--model-path", default=None, help="instead of the embedded model")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--cpus", default=None,
                    help="PD core split 'P/D' (behind a colocated router: instance 0's and 1's "
                         "cores), or 'shared'")
    ap.add_argument("--colo-omp-threads", type=int, default=1,
                    help="OMP_NUM_THREADS of a colocated server (PD instances get one core "
                         "each); 0: torch's default")
    ap.add_argument("--jobs", type=int, default=None,
                    help="configurations started at once (default 1; --smoke: 2). More than 1 "
                         "makes them share the cores: for checking the harness, not timings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override workload sizes (fields of EvalSizes, e.g. react_episodes=8)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--sharegpt", type=Path, default=None, help="ShareGPT JSON")
    ap.add_argument("--longdoc", type=Path, default=None, help="longdoc_qa.jsonl")
    ap.add_argument("--react-traces", type=Path, default=None, help="ReAct episodes JSONL")
    ap.add_argument("--react-prompts", type=Path, default=None, help="ReAct prompts JSON")
    ap.add_argument("--mooncake-trace", type=Path, default=None, help="Mooncake trace JSONL")
    args = ap.parse_args(argv)
    unknown = [c for c in (args.configs or "").split(",") if c and c not in SETUPS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(SETUPS)}")
    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs must be >= 1, not {args.jobs}")
    if (args.react_traces is None) != (args.react_prompts is None):
        ap.error("--react-traces and --react-prompts go together")
    return args


def _source(rnd: dict[str, Any]) -> str:
    """`` (`FILE`)`` for a round re-rendered from a JSON file (``meta["source"]``), else ""."""
    src = rnd["meta"].get("source")
    return f" (`{src}`)" if src else ""


def write_report(rounds: list[dict[str, Any]], path: Path, plots: bool) -> None:
    """Write (or update between the markers) the report at ``path`` and its plots beside it."""
    meta = rounds[0]["meta"]
    prov = ["### Provenance", "",
            *(f"* round {i + 1}{_source(r)}: `{r['meta']['command']}` at commit "
              f"`{r['meta']['commit']}`, "
              f"{r['meta']['started']} - {r['meta']['finished']} UTC, load average "
              f"{r['meta']['load_before']} before, {r['meta']['load_after']} after"
              for i, r in enumerate(rounds)),
            f"* machine: {meta['machine']['cores']} cores ({meta['machine']['cpu']}), "
            f"{meta['machine']['ram_gib']} GiB RAM, {meta['machine']['platform']}, "
            f"Python {meta['machine']['python']}",
            f"* model: `{meta['model']}`, page size {meta['page_size']}, colocated OMP threads "
            f"{meta['colo_omp_threads'] or 'default'}, PD: one core per instance",
            "* raw per-request records: the runs' `paper-eval.json` files"]
    body = report.tables_markdown(rounds)
    if plots:
        stem = path.stem
        files = report.plot(rounds, path.parent, stem)
        body += "\n### Plots\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in files) + "\n"
    block = f"{BEGIN}\n{body}\n" + "\n".join(prov) + f"\n{END}\n"
    if path.exists() and BEGIN in (old := path.read_text()) and END in old:
        text = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END) + 1:]
    else:
        text = "# MemServe paper evaluation\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        rounds = [json.loads(p.read_text()) for p in args.render]
        for rnd, p in zip(rounds, args.render, strict=True):  # provenance names the file
            rnd["meta"]["source"] = p.name
        dest = args.report or args.render[0].with_suffix(".md")
        write_report(rounds, dest, plots=not args.no_plots)
        print(f"[paper_eval] wrote {dest}")
        return 0
    from transformers import AutoTokenizer

    from sglang_memserve.model import ensure_model

    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = with_overrides(PRESETS[preset], _overrides(args.set))
    configs = (args.configs.split(",") if args.configs else
               list(SMOKE_CONFIGS if args.smoke else DEFAULT_CONFIGS))
    names = [w for w in args.workloads.split(",") if w]
    model = Path(args.model_path) if args.model_path else ensure_model(
        args.embedded_model or ("tiny" if args.smoke else "bench"))
    tok = AutoTokenizer.from_pretrained(str(model))
    paths = DataPaths(args.sharegpt, args.longdoc, args.react_traces, args.react_prompts,
                      args.mooncake_trace)
    workloads = build_workloads(names, sizes, paths, tok, seed=args.seed)
    out = args.out or REPO / "results" / f"paper-eval-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    model_args = ["--model-path", str(model), "--page-size", str(args.page_size)]
    colo_env = ({"OMP_NUM_THREADS": str(args.colo_omp_threads)}
                if args.colo_omp_threads else None)
    meta = {"command": shlex.join(["benchmarks/paper_eval.py", *(argv or sys.argv[1:])]),
            "commit": _commit(), "machine": _machine(), "mode": preset,
            "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}",
            "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "model": model.name, "page_size": args.page_size,
            "colo_omp_threads": args.colo_omp_threads, "configs": configs,
            "workloads": names, "workload_desc": {w.name: w.describe for w in workloads},
            "workload_requests": {w.name: w.requests for w in workloads},
            "sizes": sizes.__dict__, "seed": args.seed}
    jobs = args.jobs or (2 if args.smoke else 1)
    meta["jobs"] = jobs

    def one(name: str) -> dict[str, Any]:
        try:
            return run_config(name, workloads, model_args, out / "logs", cpus=args.cpus,
                              colo_env=colo_env, cpu_s=profiling.tree_cpu_s)
        except Exception as exc:  # a configuration that fails is reported; the others still run
            print(f"[paper_eval] {name} FAILED: {exc!r}", flush=True)
            return {"label": SETUPS[name].label, "error": repr(exc), "workloads": {}}

    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:  # one job: strictly one configuration after another
        for name, res in zip(configs, pool.map(one, configs), strict=True):
            results[name] = res
            (out / "paper-eval.json").write_text(json.dumps({"meta": meta, "results": results},
                                                            default=str))
    meta["finished"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    run = {"meta": meta, "results": results}
    (out / "paper-eval.json").write_text(json.dumps(run, default=str))
    write_report([run], args.report or out / "paper-eval.md", plots=not args.no_plots)
    print(f"[paper_eval] {len(configs)} configurations x {len(names)} workloads in "
          f"{meta['wall_s']:.0f} s -> {out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
