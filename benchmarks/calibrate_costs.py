"""Measure a cost table against a running instance: what the router's ``memserve`` policy needs.

The shipped tables time the model's forward pass alone (``benchmarks/gpu/``). On a CPU host a
small model's request costs far more than its forward pass (HTTP, tokenizer manager, scheduler
loop), and a table that misses that fixed cost makes queues look free. This script times real
requests instead, on an idle instance with a radix cache:

* ``exec(x, y)``: the latency of a one-token ``/generate`` of ``x`` prompt ids after a request
  of their first ``y`` ids cached them (cache flushed before each point; the shortest of
  ``--repeats``); a request's whole cost as the instance serves it;
* ``decode(batch, context)``: the time per streamed token after the first, ``batch`` streams at
  once of ``context``-token prompts;
* swap and transfer per page: copied from ``--base`` (a request cannot isolate them).

::

    .venv/bin/python benchmarks/calibrate_costs.py --embedded-model tiny --out table.json
    .venv/bin/python benchmarks/calibrate_costs.py --url http://127.0.0.1:30000 --out t.json

Then ``memserve-router --cost-table t.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import time
from pathlib import Path

import requests

from sglang_memserve.gpu.costmodel import CostTable, load_table


def _generate(url: str, ids: list[int], new_tokens: int = 1) -> float:
    body = {"input_ids": ids, "sampling_params": {"temperature": 0,
                                                   "max_new_tokens": new_tokens,
                                                   "ignore_eos": True}}
    t0 = time.perf_counter()
    r = requests.post(f"{url}/generate", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def _stream_step_s(url: str, ids: list[int], new_tokens: int) -> float:
    """Seconds per streamed token after the first."""
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}}
    first = last = None
    with requests.post(f"{url}/generate", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data:") and line != b"data: [DONE]":
                last = time.perf_counter()
                first = first or last
    if first is None or last is None or last == first:
        raise RuntimeError("the stream produced fewer than two tokens")
    return (last - first) / (new_tokens - 1)


def measure_exec(url: str, xs: list[int], fracs: list[float], page: int, vocab: tuple[int, int],
                 repeats: int) -> list[tuple[int, int, float]]:
    """``(x, y, seconds)`` points (module docstring); flushes the instance's cache."""
    rng = random.Random(0)
    points = []
    for x in xs:
        for f in fracs:
            y = min(int(round(f * x / page)) * page, x - 1)
            best = float("inf")
            for _ in range(repeats):
                ids = [rng.randrange(*vocab) for _ in range(x)]
                requests.post(f"{url}/flush_cache", timeout=60).raise_for_status()
                if y:
                    _generate(url, ids[:y + 1])  # caches the first y ids (whole pages)
                best = min(best, _generate(url, ids))
            points.append((x, y, best))
            print(f"exec x={x:5d} y={y:5d}: {best * 1e3:8.1f} ms", flush=True)
    return points


def measure_decode(url: str, batches: list[int], contexts: list[int], vocab: tuple[int, int],
                   tokens: int) -> list[tuple[int, int, float]]:
    """``(batch, context, seconds per step)`` points from concurrent streams."""
    rng = random.Random(1)
    out = []
    for b in batches:
        for c in contexts:
            prompts = [[rng.randrange(*vocab) for _ in range(c)] for _ in range(b)]
            with concurrent.futures.ThreadPoolExecutor(b) as pool:
                steps = list(pool.map(lambda p: _stream_step_s(url, p, tokens), prompts))
            out.append((b, c, max(steps)))
            print(f"decode batch={b:3d} ctx={c:5d}: {max(steps) * 1e3:8.2f} ms/step", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running instance (its cache is flushed)")
    src.add_argument("--embedded-model", help="start one instance of this embedded model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", default="cpu-bench", help="table to copy swap/transfer costs from")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=2000, help="longest x (model context)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, nargs=2, default=(10, 1000), metavar=("LO", "HI"))
    args = ap.parse_args()
    xs = sorted({min(x, args.max_prompt) for x in (64, 256, 512, 1024, 2048)})
    fracs = [0.0, 0.25, 0.5, 0.75, 0.9]
    server = None
    url = args.url
    if args.embedded_model:
        import tempfile

        from sglang_memserve.cluster import ServerProcess
        from sglang_memserve.model import ensure_model

        logs = Path(tempfile.mkdtemp(prefix="calibrate-"))
        server = ServerProcess(["--model-path", str(ensure_model(args.embedded_model)),
                                "--page-size", str(args.page_size)], logs, name="calibrate")
        server.start(timeout=300)
        url = server.url
    t0 = time.time()
    try:
        _generate(url, list(range(10, 100)))  # warm-up
        vocab = tuple(args.vocab)
        points = measure_exec(url, xs, fracs, args.page_size, vocab, args.repeats)
        decode = measure_decode(url, [1, 4], [256, 1024], vocab, 32)
        info = requests.get(f"{url}/get_model_info", timeout=30).json()
    finally:
        if server is not None:
            server.stop()
    base = load_table(args.base)
    table = CostTable(
        device=f"server at {url}", model_shape={"name": str(info.get("model_path", "?"))},
        exec_points=points, swap_out_per_page_s=base.swap_out_per_page_s,
        swap_in_per_page_s=base.swap_in_per_page_s,
        transfer_per_page_s=base.transfer_per_page_s, page_size=args.page_size,
        page_nbytes=base.page_nbytes, decode_points=decode,
        transfer_basis=f"copied from {args.base}: {base.transfer_basis}",
        meta={"script": "benchmarks/calibrate_costs.py",
              "method": f"whole requests on an idle instance, shortest of {args.repeats}; "
                        "exec = one-token /generate after the cached part was sent",
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wall_s": round(time.time() - t0, 1)})
    table.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
