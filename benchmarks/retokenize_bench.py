"""What re-tokenizing an answer costs a multi-turn conversation's cache hits (issue 5).

    .venv/bin/python benchmarks/retokenize_bench.py --out results/retokenize

Two replays of the same ShareGPT conversations against one MemServe instance each: one carries
token ids end to end (prompt ids + generated ids + the new turn), one renders the whole chat as
text with the chat template every turn and lets the server tokenize it. Where the re-tokenized
answer differs from the generated ids, the cached prefix ends there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sglang_memserve import compat

compat.apply_import_patches()

from transformers import AutoTokenizer  # noqa: E402

from sglang_memserve.bench.replay import ReplayConfig  # noqa: E402
from sglang_memserve.bench.runner import markdown_table, run_server_config  # noqa: E402
from sglang_memserve.model import ensure_model  # noqa: E402
from sglang_memserve.workloads import load_sharegpt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/retokenize"))
    p.add_argument("--model", choices=("tiny", "bench"), default="tiny")
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()
    model = ensure_model(args.model)
    tok = AutoTokenizer.from_pretrained(model)
    convs = load_sharegpt(limit=args.conversations, min_turns=2, max_turns=args.turns,
                          max_chars=800)
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for name, retok in (("token-ids", False), ("re-tokenized", True)):
        cfg = ReplayConfig(rate=1.0, max_new_tokens=args.max_new_tokens, retokenize=retok)
        rows.append(run_server_config(name, ["--model-path", str(model)], convs, tok, cfg, out))
    later = {r["name"]: r for r in rows}
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    table = markdown_table(rows, baseline="token-ids")
    (out / "table.md").write_text(table + "\n")
    print(table)
    lost = later["token-ids"]["cached_tokens"] - later["re-tokenized"]["cached_tokens"]
    print(f"cache hits lost to re-tokenization: {lost} tokens "
          f"({lost / max(1, later['token-ids']['cached_tokens']):.1%} of the token-id hits)")


if __name__ == "__main__":
    main()
