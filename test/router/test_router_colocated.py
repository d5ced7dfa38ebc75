"""memserve-router in front of two colocated MemServe instances (real processes): prefix locality,
load balance, exact mirrors of the instances' trees, an instance killed and restarted, a migration
the router decides, and SGLang's / OpenAI's clients through it."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from router_helpers import generate, start_router, wait_for

from memserve_router.compare import instance_tree, router_tree
from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess

QUESTIONS = [
    "Explain why the sky is blue.", "Write a haiku about the sea.",
    "List three prime numbers.", "What is a radix tree?",
]
FOLLOW_UPS = ["Tell me more.", "Now shorter, please.", "And in other words?"]


class Colo:
    def __init__(self, a: ServerProcess, b: ServerProcess, router: MemServeRouterProcess) -> None:
        self.a, self.b, self.router = a, b, router

    def worker(self, server: ServerProcess) -> dict:
        workers = requests.get(f"{self.router.url}/workers", timeout=10).json()["workers"]
        return next(w for w in workers if w["url"] == server.url)


@pytest.fixture(scope="module")
def colo(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Colo]:
    logs = tmp_path_factory.mktemp("router-colo")
    # Instance a runs one request at a time, so a burst queues on it (the busy test).
    a = ServerProcess(["--model-path", str(tiny_model), "--instance-id", "colo-a",
                       "--max-running-requests", "1"], logs, name="colo-a")
    b = ServerProcess(["--model-path", str(tiny_model), "--instance-id", "colo-b"], logs,
                      name="colo-b")
    with a, b:
        # Migration costs pinned: a cost learned from earlier tests' migrations (on a busy
        # machine) would otherwise decide whether the migration test migrates at all.
        router = start_router(["--worker-urls", a.url, b.url, "--transfer-per-page-s", "1e-5",
                               "--min-migrate-gain-secs", "0", "--migration-overhead-secs", "0"],
                              logs)
        try:
            yield Colo(a, b, router)
        finally:
            router.stop()


def _mirror(router: str, wid: str) -> dict:
    return router_tree(router, wid, timeout_s=10)


def _own(server: ServerProcess, wid: str) -> dict:
    """The instance's own tree (its MemPool snapshot), in the router mirror's terms."""
    return instance_tree(server.url, wid, timeout_s=10)


def _assert_mirrors_exact(colo: Colo) -> None:
    for server, wid in ((colo.a, "colo-a"), (colo.b, "colo-b")):
        wait_for(lambda s=server, w=wid: _mirror(colo.router.url, w) == _own(s, w),
                 timeout=15, what=f"router mirror of {wid} == its own tree")


def test_later_turns_land_on_the_prefix_holder(colo: Colo, reference: ServerProcess,
                                               tiny_tokenizer: Any) -> None:
    prompts = [tiny_tokenizer.encode(q) for q in QUESTIONS]
    served: dict[int, str] = {}
    carried: dict[int, int] = {}  # prompt + answer of the previous turn, in tokens
    for turn in range(3):
        for i, ids in enumerate(prompts):  # conversations interleaved, turn by turn
            out, headers = generate(colo.router.url, ids)
            ref, _ = generate(reference.url, ids)
            assert out["output_ids"] == ref["output_ids"], f"conversation {i}, turn {turn}"
            where = headers["X-MemServe-Instance"]
            if turn:
                assert where == served[i], (f"conversation {i} moved at turn {turn}: "
                                            f"{headers.get('X-MemServe-Route')}")
                # The whole previous prompt and answer (but its last token) were cached.
                assert out["meta_info"]["cached_tokens"] >= carried[i] - 1, out["meta_info"]
            served[i] = where
            carried[i] = len(ids) + len(out["output_ids"])
            prompts[i] = ids + out["output_ids"] + tiny_tokenizer.encode(FOLLOW_UPS[turn])
    _assert_mirrors_exact(colo)


def test_new_conversations_avoid_a_busy_instance(colo: Colo, tiny_tokenizer: Any) -> None:
    # A burst sent straight to instance a (one request at a time) queues there; the router sees
    # it in a's polled load, not in its own counts.
    rng = random.Random(0)
    burst = [[rng.randrange(10, 900) for _ in range(1000)] for _ in range(6)]
    threads = [threading.Thread(target=generate, args=(colo.a.url, ids), kwargs={
        "sampling": {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True}})
        for ids in burst]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: colo.worker(colo.a)["load"].get("num_waiting_reqs", 0) >= 2,
                 what="a's queue in the router's polled load")
        for q in ("Name a color.", "Count to three.", "Say hello."):
            _out, headers = generate(colo.router.url, tiny_tokenizer.encode(q))
            assert headers["X-MemServe-Instance"] == "colo-b"
    finally:
        for t in threads:
            t.join(timeout=120)


def test_route_debug_explains_the_decision(colo: Colo, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode(QUESTIONS[0])
    r = requests.post(f"{colo.router.url}/route", json={"input_ids": ids}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == len(ids)
    explained = body["colocated"]
    assert {e["instance_id"] for e in explained["candidates"]} >= {"colo-a", "colo-b"}
    assert explained["choice"] in {"colo-a", "colo-b"}


def test_bad_requests_get_4xx_and_lose_nothing(colo: Colo) -> None:
    url = colo.router.url
    assert requests.post(f"{url}/generate", data=b"{not json", timeout=10).status_code == 400
    r = requests.post(f"{url}/generate", json={"input_ids": "abc"}, timeout=10)
    assert r.status_code == 400 and "input_ids" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/chat/completions", json={"messages": "hi"}, timeout=10)
    assert r.status_code == 400
    assert requests.delete(f"{url}/workers/nope", timeout=10).status_code == 404
    r = requests.post(f"{url}/workers", json={"url": colo.a.url}, timeout=30)
    assert r.status_code == 409  # already a member
    # Still serving.
    generate(url, [5, 6, 7, 8])


def test_openai_chat_ids_agree_with_the_instance(colo: Colo, tiny_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Why do cats purr?"}]
    body = {"model": "default", "messages": messages, "max_tokens": 6, "temperature": 0,
            "return_input_ids_in_sglext": True}
    r = requests.post(f"{colo.router.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    served = r.json()
    ids = tiny_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=False)
    assert served["usage"]["prompt_tokens"] == len(ids)
    sglext = served.get("sglext") or {}
    if sglext.get("input_ids") is not None:
        assert list(sglext["input_ids"]) == list(ids)
    # The router's own ids for the same request are the instance's (its tree walk used them).
    dbg = requests.post(f"{colo.router.url}/route?path=/v1/chat/completions", json=body,
                        timeout=10).json()
    assert dbg["tokens"] == len(ids)


def test_openai_client_streams_through_the_router(colo: Colo) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{colo.router.url}/v1", api_key="none")
    chunks = list(client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say something."}],
        max_tokens=6, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say something."}],
        max_tokens=6, temperature=0)
    assert text == full.choices[0].message.content


def test_frontend_dsl_through_the_router(colo: Colo) -> None:
    import sglang as sgl

    @sgl.function
    def qa(s, question: str):  # type: ignore[no-untyped-def]
        s += "Question: " + question + "\nAnswer:" + sgl.gen("answer", max_tokens=6,
                                                            temperature=0)
        s += "\nVerdict:" + sgl.select("verdict", choices=["good", "bad"])

    backend = sgl.RuntimeEndpoint(colo.router.url)
    state = qa.run(question="Why is the sky blue?", backend=backend)
    assert state["answer"] and state["verdict"] in {"good", "bad"}
    direct = qa.run(question="Why is the sky blue?", backend=sgl.RuntimeEndpoint(colo.b.url))
    assert direct["answer"] == state["answer"]


def test_router_migrates_a_hot_prefix_to_the_idle_instance(colo: Colo,
                                                           reference: ServerProcess) -> None:
    """A long prefix cached on b (a holds only its first half), then a burst of requests
    sharing it: once b's queue makes waiting there costlier than moving the KV, the router asks b
    to push the prefix to a (kv_push: only the pages a lacks move) and routes there; outputs are
    those of an uncached server."""
    # SGLang refuses a flush while requests still run (the busy test's burst may linger).
    wait_for(lambda: requests.post(f"{colo.router.url}/flush_cache", timeout=30).ok,
             timeout=60, what="an idle cluster to flush")
    rng = random.Random(1)
    shared = [rng.randrange(10, 900) for _ in range(1200)]
    generate(colo.b.url, shared)
    generate(colo.a.url, shared[:600])

    def hits() -> dict[str, int]:
        body = requests.post(f"{colo.router.url}/route", json={"input_ids": shared + [1]},
                             timeout=10).json()
        return {e["instance_id"]: e["hit_tokens"] for e in body["colocated"]["candidates"]
                if e.get("migrate_from") is None}

    wait_for(lambda: hits().get("colo-b", 0) >= 1100 and hits().get("colo-a", 0) >= 500,
             what="the router's trees to learn both prefixes")
    before = _peer(colo.a)
    ok = 'memserve_router_migrations_total{outcome="ok"}'
    migrated_before = _metric(requests.get(f"{colo.router.url}/metrics", timeout=10).text, ok)
    results: dict[int, tuple[dict, dict]] = {}

    def one(i: int) -> None:
        results[i] = generate(colo.router.url, shared + [10 + i, 11 + i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 6
    routes = [(h["X-MemServe-Instance"], h.get("X-MemServe-Route"), h.get("X-MemServe-Migration"))
              for _, h in results.values()]
    # A migration that moved pages (not a "noop": a target that already had the prefix).
    assert any((m or "").startswith("ok") for _, _, m in routes), "\n".join(map(str, routes))
    metrics = requests.get(f"{colo.router.url}/metrics", timeout=10).text
    assert _metric(metrics, ok) > migrated_before, metrics[-3000:]
    # The push returns once a has indexed the pages it received.
    peer = _peer(colo.a)
    assert peer["pages_received"] > before["pages_received"], (peer, routes)
    assert peer["pages_skipped"] > before["pages_skipped"]  # a's own half did not move
    on_a = [out for out, h in results.values() if h["X-MemServe-Instance"] == "colo-a"]
    assert on_a and max(o["meta_info"]["cached_tokens"] for o in on_a) >= len(shared) - 1
    for i in (0, 5):
        ref, _ = generate(reference.url, shared + [10 + i, 11 + i])
        assert results[i][0]["output_ids"] == ref["output_ids"]


def _metric(text: str, sample: str) -> float:
    """A Prometheus sample's value in ``text`` (0 when absent)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample))


def _peer(server: ServerProcess) -> dict:
    info = requests.get(f"{server.url}/server_info", timeout=10).json()
    return info["internal_states"][0]["memserve"]["peer"]


def test_requests_sharing_an_inflight_prefix_wait_for_it_and_hit(
        colo: Colo, reference: ServerProcess, tmp_path: Path) -> None:
    """A burst of requests sharing a new prefix, behind a busy instance: the first computes it,
    the router holds the others (they are routed to the same instance, predicted) until that
    instance's events confirm the prefix, and they hit it instead of recomputing it in the same
    batch. A router of its own in front of instance a alone, so the burst cannot spread; its
    hold bound is far above the blocker's run time, so only the prefix's events (or the first
    request's prefill ending) can end a hold, however slow the machine."""
    router = start_router(["--worker-urls", colo.a.url, "--prefill-hold-secs", "90"], tmp_path)
    try:
        rng = random.Random(7)
        shared = [rng.randrange(10, 900) for _ in range(800)]
        # a runs one request at a time: the first of the burst waits behind this one there
        # (long enough that the first cannot finish before the router has seen it in flight).
        blocker = threading.Thread(target=generate, args=(colo.a.url, [7, 8, 9]), kwargs={
            "sampling": {"temperature": 0, "max_new_tokens": 1500, "ignore_eos": True}})
        blocker.start()
        wait_for(lambda: requests.get(f"{router.url}/workers", timeout=10).json()["workers"][0]
                 ["load"].get("num_running_reqs", 0) >= 1, what="a busy in the router's load")
        results: dict[int, tuple[dict, dict]] = {}

        def one(i: int) -> None:
            results[i] = generate(router.url, shared + [10 + i, 11 + i])

        first = threading.Thread(target=one, args=(0,))
        first.start()
        wait_for(lambda: requests.get(f"{router.url}/workers", timeout=10).json()["workers"][0]
                 ["inflight"] >= 1, what="the first request routed")
        assert blocker.is_alive(), "the blocker ended before the burst: the test proves nothing"
        rest = [threading.Thread(target=one, args=(i,)) for i in (1, 2, 3)]
        for t in rest:
            t.start()
        for t in [blocker, first, *rest]:
            t.join(timeout=120)
        assert len(results) == 4
        for i in (1, 2, 3):
            out, headers = results[i]
            hold = headers.get("X-MemServe-Hold", "")
            assert hold.startswith("stored"), (i, headers)
            assert out["meta_info"]["cached_tokens"] >= len(shared) - 16, (i, out["meta_info"])
        for i in (0, 3):
            ref, _ = generate(reference.url, shared + [10 + i, 11 + i])
            assert results[i][0]["output_ids"] == ref["output_ids"]
        metrics = requests.get(f"{router.url}/metrics", timeout=10).text
        assert _metric(metrics, 'memserve_router_prefill_holds_total{outcome="stored"}') == 3
    finally:
        router.stop()


def test_killed_instance_leaves_and_rejoins_after_restart(colo: Colo) -> None:
    colo.a.kill()
    for i in range(4):  # every request still succeeds (retried on b if routed to dead a)
        _out, headers = generate(colo.router.url, [30 + i, 31, 32, 33, 34])
        assert headers["X-MemServe-Instance"] == "colo-b"
    wait_for(lambda: not colo.worker(colo.a)["healthy"], timeout=20, what="a out of rotation")
    assert _mirror(colo.router.url, "colo-a") == {}
    colo.a.start()  # same port, same instance id
    wait_for(lambda: colo.worker(colo.a)["healthy"], timeout=30, what="a back in rotation")
    generate(colo.a.url, [40, 41, 42, 43, 44, 45])
    _assert_mirrors_exact(colo)


def test_out_of_vocabulary_ids_are_refused_and_the_instance_lives(colo: Colo) -> None:
    # Straight to SGLang these kill the scheduler (its embedding lookup has no range check).
    for body in ({"input_ids": [1, 2, 10**6]}, {"input_ids": [[1, 2], [3, -1]]},
                 {"prompt": [5, 99999999]}):
        path = "/v1/completions" if "prompt" in body else "/generate"
        r = requests.post(f"{colo.router.url}{path}", json=body, timeout=10)
        assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"], r.text
    for server in (colo.a, colo.b):
        generate(server.url, [5, 6, 7])


def test_bench_serving_through_the_router(colo: Colo, tiny_model: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
           "--base-url", colo.router.url, "--tokenizer", str(tiny_model),
           "--model", str(tiny_model), "--dataset-name", "random-ids",
           "--random-input-len", "64", "--random-output-len", "8", "--random-range-ratio", "1",
           "--num-prompts", "12", "--request-rate", "inf", "--output-file", str(out),
           "--disable-tqdm", "--flush-cache"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == 12  # bench_serving counts only successful requests
    assert result["total_output_tokens"] == 12 * 8
