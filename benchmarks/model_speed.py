"""Prefill and decode speed of one model on one server (issue 15).

    .venv/bin/python benchmarks/model_speed.py --embedded-model smollm2 --repeats 3

Starts one colocated instance without a prefix cache (every prefill is computed), then, per
repeat: prefill = a prompt of ``--prompt-tokens`` ShareGPT tokens with one new token (prompt
tokens / latency); decode = a 16-token prompt generating ``--decode-tokens`` tokens, EOS ignored,
streamed (tokens after the first / time after the first). Prints each repeat and the medians;
``--question`` also prints the greedy chat answer to one question (a dtype sanity check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from sglang_memserve import compat

compat.apply_import_patches()

from transformers import AutoTokenizer  # noqa: E402

from sglang_memserve.cluster import ServerProcess  # noqa: E402
from sglang_memserve.model import MODELS, ensure_model  # noqa: E402
from sglang_memserve.workloads import load_sharegpt  # noqa: E402


def stream_generate(url: str, ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    """Greedy streamed ``/generate``; returns (time to first token, total time, tokens)."""
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}}
    start = time.perf_counter()
    first = None
    n = 0
    with requests.post(f"{url}/generate", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            first = first or time.perf_counter()
            n = json.loads(line[5:])["meta_info"]["completion_tokens"]
    return (first or start) - start, time.perf_counter() - start, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedded-model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--dtype", default=None, help="SGLang --dtype (default: the launcher's)")
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--question", default=None)
    args = p.parse_args()
    model = ensure_model(args.embedded_model)
    tok = AutoTokenizer.from_pretrained(model)
    text = "\n".join(t for c in load_sharegpt(limit=50) for t in c.user_turns)
    long_ids = list(tok(text).input_ids)[:args.prompt_tokens]
    if len(long_ids) < args.prompt_tokens:
        raise SystemExit(f"only {len(long_ids)} prompt tokens available")
    short_ids = long_ids[:16]
    argv = ["--embedded-model", args.embedded_model, "--memserve-cache", "off"]
    if args.dtype:
        argv += ["--dtype", args.dtype]
    log_dir = Path(tempfile.mkdtemp(prefix="memserve-speed-"))
    with ServerProcess(argv, log_dir, name="speed") as server:
        stream_generate(server.url, short_ids, 4)  # warm-up
        prefill, decode = [], []
        for i in range(args.repeats):
            ttft, _, _ = stream_generate(server.url, long_ids, 1)
            first, total, n = stream_generate(server.url, short_ids, args.decode_tokens)
            prefill.append(len(long_ids) / ttft)
            decode.append((n - 1) / (total - first))
            print(f"repeat {i + 1}: prefill {prefill[-1]:.0f} tok/s ({ttft:.2f} s for "
                  f"{len(long_ids)}), decode {decode[-1]:.1f} tok/s ({n} tokens)")
        print(f"{args.embedded_model} dtype={args.dtype or 'default'}: median prefill "
              f"{statistics.median(prefill):.0f} tok/s, median decode "
              f"{statistics.median(decode):.1f} tok/s")
        if args.question:
            r = requests.post(f"{server.url}/v1/chat/completions", timeout=300, json={
                "model": "default", "temperature": 0, "max_tokens": 32,
                "messages": [{"role": "user", "content": args.question}]})
            r.raise_for_status()
            print("answer:", r.json()["choices"][0]["message"]["content"])


if __name__ == "__main__":
    main()
