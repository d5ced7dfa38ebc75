"""A real MemServe server answers SGLang's HTTP API and OpenAI's, and keeps serving after bad input."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from sglang_memserve.cluster import ServerProcess

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


def generate(server: ServerProcess, **body: object) -> dict:
    r = requests.post(f"{server.url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_text_and_input_ids_agree(memserve_server: ServerProcess) -> None:
    by_text = generate(memserve_server, text="The sea is grey and", sampling_params=GREEDY)
    assert by_text["meta_info"]["completion_tokens"] == 8
    assert len(by_text["output_ids"]) == 8
    ids = requests.post(f"{memserve_server.url}/tokenize",
                        json={"prompt": "The sea is grey and"}, timeout=30).json()["tokens"]
    by_ids = generate(memserve_server, input_ids=ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == by_text["output_ids"]


def test_generate_streaming_matches_non_streaming(memserve_server: ServerProcess) -> None:
    full = generate(memserve_server, text="Tell me about octopuses", sampling_params=GREEDY)
    with requests.post(f"{memserve_server.url}/generate", stream=True, timeout=60, json={
        "text": "Tell me about octopuses", "sampling_params": GREEDY, "stream": True,
    }) as r:
        assert r.status_code == 200
        events = [line[len(b"data: "):] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    assert chunks[-1]["text"] == full["text"]


def test_openai_chat_and_completions(memserve_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{memserve_server.url}/v1", api_key="none")
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is a radix tree?"}],
        max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 6
    assert isinstance(chat.choices[0].message.content, str)
    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert comp.usage.completion_tokens == 5
    assert comp.choices[0].text


def test_info_flush_and_health(memserve_server: ServerProcess, tiny_model) -> None:
    info = requests.get(f"{memserve_server.url}/get_model_info", timeout=10).json()
    assert info["model_path"] == str(tiny_model)
    server_info = requests.get(f"{memserve_server.url}/server_info", timeout=10).json()
    assert server_info["internal_states"][0]["memserve"]["role"] == "colocated"
    assert requests.get(f"{memserve_server.url}/health", timeout=10).status_code == 200
    prompt = "Flushing the cache drops every cached prefix of this prompt"
    generate(memserve_server, text=prompt, sampling_params=GREEDY)
    assert generate(memserve_server, text=prompt,
                    sampling_params=GREEDY)["meta_info"]["cached_tokens"] > 0
    assert requests.post(f"{memserve_server.url}/flush_cache", timeout=30).status_code == 200
    assert generate(memserve_server, text=prompt,
                    sampling_params=GREEDY)["meta_info"]["cached_tokens"] == 0


def test_plugin_hook_installs_memserve_tree_cache(memserve_server: ServerProcess) -> None:
    state = requests.get(f"{memserve_server.url}/server_info",
                         timeout=10).json()["internal_states"][0]
    assert state["radix_cache_backend"] == "memserve"
    assert state["memserve"]["tree_cache_class"] == "MemServeRadixCache"
    prompt = "A repeated prompt must hit the MemServe cache on its second run, every time"
    first = generate(memserve_server, text=prompt, sampling_params=GREEDY)
    second = generate(memserve_server, text=prompt, sampling_params=GREEDY)
    assert second["meta_info"]["cached_tokens"] > 0
    assert second["output_ids"] == first["output_ids"]


@pytest.mark.parametrize("body, needle", [
    (b'{"text": "hi", "sampling_params": ', "JSON"),
    (json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": -1}}).encode(),
     "max_new_tokens"),
    (json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": 2, "bogus": 1}}).encode(),
     "bogus"),
    (json.dumps({"input_ids": [5] * 5000, "sampling_params": {"max_new_tokens": 2}}).encode(),
     "context length"),
])
def test_bad_input_gets_4xx_and_server_keeps_serving(memserve_server: ServerProcess, body: bytes,
                                                     needle: str) -> None:
    r = requests.post(f"{memserve_server.url}/generate", data=body, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    assert needle in r.text
    assert generate(memserve_server, text="still alive?",
                    sampling_params=GREEDY)["meta_info"]["completion_tokens"] == 8
