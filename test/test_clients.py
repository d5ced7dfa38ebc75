"""SGLang's own clients against a MemServe server: the frontend DSL and bench_serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sglang as sgl

from sglang_memserve.cluster import ServerProcess


@sgl.function
def _qa(s, question: str):  # type: ignore[no-untyped-def]
    s += "Question: " + question + "\n"
    s += "Answer:" + sgl.gen("answer", max_tokens=6, temperature=0)
    s += "\nVerdict:" + sgl.select("verdict", choices=["good", "bad", "unsure"])
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"\nIdea {i}:" + sgl.gen("idea", max_tokens=4, temperature=0)
    forks.join()
    s["ideas"] = [f["idea"] for f in forks]


def test_frontend_dsl_gen_select_fork(memserve_server: ServerProcess) -> None:
    backend = sgl.RuntimeEndpoint(memserve_server.url)
    try:
        state = _qa.run(question="Why is the sky blue?", backend=backend)
        assert isinstance(state["answer"], str) and state["answer"]
        assert state["verdict"] in {"good", "bad", "unsure"}
        assert len(state["ideas"]) == 2 and all(isinstance(x, str) for x in state["ideas"])
        # Greedy: the same program gives the same answer.
        again = _qa.run(question="Why is the sky blue?", backend=backend)
        assert again["answer"] == state["answer"]
    finally:
        backend.shutdown() if hasattr(backend, "shutdown") else None


def test_bench_serving_random_ids(memserve_server: ServerProcess, tiny_model: Path,
                                  tmp_path: Path) -> None:
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
           "--base-url", memserve_server.url, "--tokenizer", str(tiny_model),
           "--model", str(tiny_model), "--dataset-name", "random-ids",
           "--random-input-len", "64", "--random-output-len", "8", "--random-range-ratio", "1",
           "--num-prompts", "12", "--request-rate", "inf", "--output-file", str(out),
           "--disable-tqdm"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    # bench_serving counts only successful requests as completed: 12 of 12 means none failed.
    assert result["completed"] == 12
    assert result["total_output_tokens"] == 12 * 8
    assert result["total_input_tokens"] == 12 * 64
