"""A deterministic corpus of malformed requests for SGLang's native and OpenAI APIs.

Every case is invalid by the API's own rules, so a server must answer it with a 4xx and a
message. ``corpus(vocab_size, context_len, max_body)`` returns the cases of eleven classes (one
list per class, built from the schemas' fields) plus seeded random one-field mutations of valid
requests, at least 200 in all. Importable as ``corpus`` (test/security is on sys.path).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GENERATE, COMPLETIONS, CHAT = "/generate", "/v1/completions", "/v1/chat/completions"
ROUTES = (GENERATE, COMPLETIONS, CHAT)


@dataclass(frozen=True)
class Case:
    """One malformed request.

    Attributes:
        cls: its class (``bad_json``, ``wrong_type``, ...). name: what is wrong.
        path: the route. body: the raw body bytes.
    """

    cls: str
    name: str
    path: str
    body: bytes

    def __str__(self) -> str:
        return f"{self.cls}/{self.name} {self.path}"


def valid(path: str) -> dict[str, Any]:
    """A valid, small request to ``path`` (greedy, 4 new tokens)."""
    if path == GENERATE:
        return {"text": "Hello there", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    if path == COMPLETIONS:
        return {"model": "default", "prompt": "Hello there", "max_tokens": 4, "temperature": 0}
    return {"model": "default", "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 4, "temperature": 0}


def _enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _with_sampling(path: str, **fields: Any) -> dict[str, Any]:
    """``path``'s valid request with sampling fields set (inside ``sampling_params`` for
    /generate; OpenAI names them at the top level, ``max_tokens`` for ``max_new_tokens``)."""
    body = valid(path)
    if path == GENERATE:
        body["sampling_params"] = {**body["sampling_params"], **fields}
    else:
        if "max_new_tokens" in fields:
            fields["max_tokens"] = fields.pop("max_new_tokens")
        body.update(fields)
    return body


def _bad_json() -> Iterator[tuple[str, bytes]]:
    raws = [b"", b"{", b'{"text": "a"', b"not json", b'{"text": "a"} trailing', b"[1, 2",
            b"\x00\x01\x02", b'{"text": NaN}', b"{'text': 'single quotes'}", b'{"text": "a",}']
    for i, raw in enumerate(raws):
        yield f"raw{i}", raw


def _not_object() -> Iterator[tuple[str, bytes]]:
    for raw in (b"[]", b"[1]", b'"a string"', b"42", b"null", b"true"):
        yield raw.decode(), raw


WRONG_TYPES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    GENERATE: [
        ("text=int", {"text": 5}), ("text=dict", {"text": {"a": 1}}),
        ("text=list[int]", {"text": [1, 2]}), ("input_ids=str", {"input_ids": "1 2 3"}),
        ("sampling_params=str", {"text": "a", "sampling_params": "greedy"}),
        ("sampling_params=list", {"text": "a", "sampling_params": [1]}),
        ("max_new_tokens=str", {"text": "a", "sampling_params": {"max_new_tokens": "many"}}),
        ("temperature=str", {"text": "a", "sampling_params": {"temperature": "hot"}}),
        ("stop=int", {"text": "a", "sampling_params": {"stop": 5}}),
        ("no prompt", {"sampling_params": {"max_new_tokens": 4}}),
    ],
    COMPLETIONS: [
        ("prompt=int", {"prompt": 5}), ("prompt=dict", {"prompt": {"a": 1}}),
        ("prompt=null", {"prompt": None}), ("max_tokens=str", {"max_tokens": "many"}),
        ("temperature=list", {"temperature": [1]}), ("n=str", {"n": "two"}),
        ("stop=int", {"stop": 5}), ("no prompt", {"prompt": ...}),
    ],
    CHAT: [
        ("messages=str", {"messages": "hi"}), ("messages=dict", {"messages": {"role": "user"}}),
        ("message=str", {"messages": ["hi"]}), ("role=int", {"messages": [{"role": 5}]}),
        ("max_tokens=str", {"max_tokens": "many"}), ("temperature=dict", {"temperature": {}}),
        ("n=str", {"n": "two"}), ("no messages", {"messages": ...}),
    ],
}

OUT_OF_RANGE: list[tuple[str, dict[str, Any]]] = [
    ("temperature<0", {"temperature": -1.0}), ("top_p=0", {"top_p": 0.0}),
    ("top_p>1", {"top_p": 1.5}), ("top_k=-2", {"top_k": -2}), ("min_p>1", {"min_p": 2.0}),
    ("max_new_tokens<0", {"max_new_tokens": -1}),
    ("max_new_tokens huge", {"max_new_tokens": 10**12}),
    ("frequency_penalty>2", {"frequency_penalty": 5.0}),
    ("presence_penalty<-2", {"presence_penalty": -5.0}),
    ("repetition_penalty=0", {"repetition_penalty": 0.0}),
    ("repetition_penalty<0", {"repetition_penalty": -1.0}),
    ("min_new_tokens<0", {"min_new_tokens": -3}),
]


def _path_body(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    """/generate cases are whole bodies; OpenAI cases change a valid request (``...``: drop)."""
    body = dict(fields) if path == GENERATE else valid(path) | fields
    return {k: v for k, v in body.items() if v is not ...}


def _classes(vocab: int, context: int, max_body: int) -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {}

    def add(cls: str, name: str, path: str, body: bytes) -> None:
        out.setdefault(cls, []).append(Case(cls, name, path, body))

    for path in ROUTES:
        for name, raw in _bad_json():
            add("bad_json", name, path, raw)
        for name, raw in _not_object():
            add("not_object", name, path, raw)
        for name, fields in WRONG_TYPES[path]:
            add("wrong_type", name, path, _enc(_path_body(path, fields)))
        for name, fields in OUT_OF_RANGE:
            if path != GENERATE and name.startswith("min_new_tokens"):
                fields = {"min_tokens": -3}
            add("out_of_range", name, path, _enc(_with_sampling(path, **fields)))
        for name in ("bogus_field", "__proto__", "textt"):
            add("unknown_field", name, path, _enc(valid(path) | {name: 1}))
        # Invalid UTF-8 inside a JSON string, and escapes that decode to lone surrogates.
        prompt_key = {GENERATE: "text", COMPLETIONS: "prompt", CHAT: None}[path]
        for name, bad in (("xff", b"\xff\xfe"), ("overlong", b"\xc0\xaf"),
                          ("truncated", b"\xe2\x82"), ("surrogate", b"\\ud800"),
                          ("low surrogate", b"\\udfff")):
            if prompt_key:
                raw = b'{"' + prompt_key.encode() + b'": "a' + bad + b'b"'
                raw += b', "max_tokens": 4}' if path != GENERATE else b"}"
            else:
                raw = b'{"model": "default", "max_tokens": 4, "messages": [{"role": "user", ' \
                      b'"content": "a' + bad + b'b"}]}'
            add("invalid_utf8", name, path, raw)
        pad = "x" * (max_body + 1024)
        add("oversized", "body > limit", path, _enc(valid(path) | {"user": pad}))
    for name, fields in (("sampling_params unknown", {"text": "a", "sampling_params":
                                                          {"max_new_tokens": 4, "nope": 1}}),
                         ("sampling_params unknown 2", {"text": "a", "sampling_params":
                                                            {"temprature": 0}})):
        add("unknown_field", name, GENERATE, _enc(fields))
    for name, fields in (("text=''", {"text": ""}), ("input_ids=[]", {"input_ids": []}),
                         ("text=[]", {"text": []}), ("input_ids=[[]]", {"input_ids": [[]]})):
        add("empty_prompt", name, GENERATE, _enc(fields | {"sampling_params":
                                                           {"max_new_tokens": 4}}))
    for name, prompt in (("prompt=''", ""), ("prompt=[]", [])):
        add("empty_prompt", name, COMPLETIONS, _enc(valid(COMPLETIONS) | {"prompt": prompt}))
    add("empty_prompt", "messages=[]", CHAT, _enc(valid(CHAT) | {"messages": []}))
    long_ids = [7] * (context + 16)
    long_text = "hello world " * (context + 16)
    add("over_context", "input_ids", GENERATE, _enc({"input_ids": long_ids}))
    add("over_context", "text", GENERATE, _enc({"text": long_text}))
    add("over_context", "prompt ids", COMPLETIONS, _enc(valid(COMPLETIONS) | {"prompt": long_ids}))
    add("over_context", "prompt text", COMPLETIONS,
        _enc(valid(COMPLETIONS) | {"prompt": long_text}))
    add("over_context", "chat", CHAT, _enc(valid(CHAT) | {
        "messages": [{"role": "user", "content": long_text}]}))
    add("over_context", "huge ids", GENERATE, _enc({"input_ids": [7] * (context * 16)}))
    for n in (10**6, 10**9, 2**31, 100_000):
        add("huge_n", f"n={n}", COMPLETIONS, _enc(valid(COMPLETIONS) | {"n": n}))
        add("huge_n", f"n={n}", CHAT, _enc(valid(CHAT) | {"n": n}))
        add("huge_n", f"n={n}", GENERATE, _enc(_with_sampling(GENERATE, n=n)))
    for n in (0, -1):
        add("out_of_range", f"n={n}", COMPLETIONS, _enc(valid(COMPLETIONS) | {"n": n}))
    bad_ids: list[tuple[str, Any]] = [
        ("= vocab", [1, vocab]), ("> vocab", [1, vocab * 1000]), ("negative", [1, -1]),
        ("2**63", [1, 2**63]), ("2**70", [1, 2**70]), ("float", [1, 1.5]), ("bool", [1, True]),
        ("str", [1, "5"]), ("null", [1, None]), ("batch with str", [[1, 2], [3, "a"]]),
        ("batch > vocab", [[1, 2], [3, vocab]]), ("3 levels", [[[1]]]),
    ]
    for name, ids in bad_ids:
        add("bad_input_ids", name, GENERATE, _enc({"input_ids": ids, "sampling_params":
                                                   {"max_new_tokens": 4}}))
    for name, ids in bad_ids[:7]:
        add("bad_input_ids", name, COMPLETIONS, _enc(valid(COMPLETIONS) | {"prompt": ids}))
    return out


# Fields a random mutation may set, with values invalid for every route.
_MUTATIONS: list[tuple[str, Callable[[random.Random, int], Any]]] = [
    ("temperature", lambda r, v: -r.uniform(0.01, 100)),
    ("top_p", lambda r, v: r.choice([r.uniform(1.01, 10), -r.uniform(0, 1), 0.0])),
    ("top_k", lambda r, v: -r.randint(2, 10**6)),
    ("max_new_tokens", lambda r, v: r.choice([-r.randint(1, 10**9), r.randint(10**10, 10**15)])),
    ("frequency_penalty", lambda r, v: r.choice([r.uniform(2.01, 100), -r.uniform(2.01, 100)])),
    ("presence_penalty", lambda r, v: r.choice([r.uniform(2.01, 100), -r.uniform(2.01, 100)])),
    ("n", lambda r, v: r.randint(10**5, 10**12)),
    ("input_ids", lambda r, v: [r.randint(0, v - 1), r.choice([v + r.randint(0, 10**6),
                                                                -r.randint(1, 10**6)])]),
]


def _random(rng: random.Random, vocab: int, count: int) -> list[Case]:
    cases = []
    for i in range(count):
        path = rng.choice(ROUTES)
        field, make = rng.choice(_MUTATIONS)
        value = make(rng, vocab)
        if field == "input_ids":
            if path == CHAT:
                continue
            body = ({"input_ids": value} if path == GENERATE
                    else valid(COMPLETIONS) | {"prompt": value})
        else:
            body = _with_sampling(path, **{field: value})
        cases.append(Case("random_mutation", f"{i}:{field}={value!r:.40}", path, _enc(body)))
    return cases


def corpus(vocab_size: int, context_len: int, max_body: int, *, seed: int = 13,
           random_cases: int = 60) -> list[Case]:
    """Every case: the eleven classes, then ``random_cases`` seeded random mutations (those
    that do not apply to their route are dropped)."""
    classes = _classes(vocab_size, context_len, max_body)
    fixed = [c for cases in classes.values() for c in cases]
    return fixed + _random(random.Random(seed), vocab_size, random_cases)
