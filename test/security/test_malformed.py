"""The malformed-input corpus (test/security/corpus.py, 245 cases in 12 classes) against a real
MemServe instance and a real memserve-router in front of it: every case gets a 4xx with a
message, none a 5xx, a hang or a crash, and both still serve a good request afterwards with the
instance's pool intact. The same pair's sockets: all on loopback."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from corpus import CHAT, COMPLETIONS, GENERATE, Case, corpus, valid
from socket_audit import listeners, outside, tree_pids

from sglang_memserve.cluster import MemServeRouterProcess, ServerProcess

MAX_BODY = 1 << 20  # both get --max-payload-size 1 MiB, so an oversized case stays small
DEADLINE_S = 30.0
VOCAB, CONTEXT = 1024, 2048  # the tiny embedded model's


@dataclass(frozen=True)
class Target:
    name: str
    url: str


@dataclass(frozen=True)
class Fuzzed:
    server: ServerProcess
    router: MemServeRouterProcess

    def target(self, which: str) -> Target:
        return Target(which, self.server.url if which == "instance" else self.router.url)


@pytest.fixture(scope="module")
def fuzzed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    logs = tmp_path_factory.mktemp("malformed")
    limit = ["--max-payload-size", str(MAX_BODY)]
    server = ServerProcess(["--model-path", str(tiny_model), "--instance-id", "fuzz", *limit],
                           logs, name="fuzz")
    with server:
        router = MemServeRouterProcess(["--worker-urls", server.url, *limit,
                                        "--log-level", "warning"], logs)
        with router:
            yield Fuzzed(server, router)


def _send(target: Target, case: Case) -> tuple[int | str, str]:
    try:
        r = requests.post(target.url + case.path, data=case.body, timeout=DEADLINE_S,
                          headers={"Content-Type": "application/json"})
    except requests.RequestException as e:
        return type(e).__name__, repr(e)[:200]
    return r.status_code, r.text


def _message(text: str) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text.strip()
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or "")
    return str(err or (obj.get("message") if isinstance(obj, dict) else "") or "")


def _good(target: Target) -> None:
    for path in (GENERATE, COMPLETIONS, CHAT):
        r = requests.post(target.url + path, json=valid(path), timeout=60)
        assert r.status_code == 200, (target.name, path, r.text[:300])


@pytest.mark.parametrize("which", ["instance", "router"])
def test_corpus_gets_4xx_with_a_message(fuzzed: Fuzzed, which: str,
                                        settled: Callable[[str], dict[str, int]]) -> None:
    target, server = fuzzed.target(which), fuzzed.server
    cases = corpus(VOCAB, CONTEXT, MAX_BODY)
    assert len(cases) >= 200
    _good(target)
    failures: list[str] = []
    answers: Counter[tuple[str, int | str]] = Counter()
    for case in cases:
        status, text = _send(target, case)
        answers[(case.cls, status)] += 1
        if not (isinstance(status, int) and 400 <= status < 500 and _message(text)):
            failures.append(f"{case}: {status} {text[:160]!r}")
            if server.proc is None or server.proc.poll() is not None:
                pytest.fail(f"the instance died at {case}:\n{server.log_tail()}")
    print(f"\n{which}: {len(cases)} cases;",
          ", ".join(f"{c} {s}: {n}" for (c, s), n in sorted(answers.items(), key=str)))
    assert not failures, f"{len(failures)} of {len(cases)} not answered 4xx:\n" + \
        "\n".join(failures)
    assert server.proc is not None and server.proc.poll() is None
    _good(target)
    settled(server.url)


def test_colocated_instance_and_router_listen_only_on_loopback(fuzzed: Fuzzed) -> None:
    """The socket audit for the colocated case (no Mooncake): nothing to excuse at all."""
    found = []
    for proc in (fuzzed.server.proc, fuzzed.router.proc):
        assert proc is not None and proc.poll() is None
        found += listeners(tree_pids(proc.pid))
    assert not outside(found, "127.0.0.1"), "\n".join(map(str, outside(found, "127.0.0.1")))
    ports = {s.port for s in found}
    state = requests.get(f"{fuzzed.server.url}/server_info", timeout=30).json()
    ends = state["internal_states"][0]["memserve"]["endpoints"]
    expected = {fuzzed.server.port, fuzzed.router.port,
                *(int(ends[k].rsplit(":", 1)[1]) for k in ("control", "events"))}
    assert expected <= ports, f"missing {expected - ports} among {sorted(ports)}"
