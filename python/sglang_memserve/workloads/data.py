"""Finding and loading workload data.

Benchmarks read the data sets in ``../shared/data`` (or ``$MEMSERVE_DATA_DIR``) when present; a
user without them gets the small sample shipped in the package, so every entry point works from
the project alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SHAREGPT_FILE = "sharegpt_v3_en_sample.json"
LONGDOC_FILE = "longdoc_qa.jsonl"


@dataclass(frozen=True)
class Conversation:
    """A multi-turn chat: the user turns in order (answers are generated at replay time).

    ``reference_answers[i]`` is the data set's answer to turn ``i`` (``""`` when it has none);
    replays use only its length, to generate answers as long as real ones.
    """

    id: str
    user_turns: tuple[str, ...]
    reference_answers: tuple[str, ...] = ()


def data_dir() -> Path | None:
    """``$MEMSERVE_DATA_DIR``, else ``shared/data`` beside the checkout, else None."""
    env = os.environ.get("MEMSERVE_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    candidate = repo.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def shipped_sample() -> Path:
    return Path(str(resources.files("sglang_memserve") / "data" / "sample_conversations.json"))


def load_sharegpt(path: Path | None = None, *, limit: int | None = None, min_turns: int = 1,
                  max_turns: int | None = None, max_chars: int | None = None) -> list[Conversation]:
    """Load ShareGPT-format conversations (``[{id, conversations: [{from, value}]}]``).

    Args:
        path: the file; default: the shared data set if present, else the shipped sample.
        limit: keep at most this many conversations (in file order, so runs are reproducible).
        min_turns: skip conversations with fewer user turns.
        max_turns: truncate to this many user turns.
        max_chars: truncate each user turn to this many characters.
    Returns:
        The conversations, user turns only.
    """
    if path is None:
        shared = data_dir()
        path = shared / SHAREGPT_FILE if shared and (shared / SHAREGPT_FILE).exists() \
            else shipped_sample()
    out: list[Conversation] = []
    for item in json.loads(Path(path).read_text()):
        turns, answers = _user_turns(item.get("conversations", []))
        if max_chars:
            turns = [t[:max_chars] for t in turns]
        if max_turns:
            turns, answers = turns[:max_turns], answers[:max_turns]
        if len(turns) < min_turns:
            continue
        out.append(Conversation(str(item.get("id", len(out))), tuple(turns), tuple(answers)))
        if limit and len(out) >= limit:
            break
    return out


def _user_turns(messages: list[dict]) -> tuple[list[str], list[str]]:
    """Non-empty user turns, each with the answer that follows it (``""`` if none does)."""
    turns: list[str] = []
    answers: list[str] = []
    for m in messages:
        value = m.get("value", "")
        if m.get("from") == "human" and value.strip():
            turns.append(value)
            answers.append("")
        elif m.get("from") == "gpt" and turns and not answers[-1]:
            answers[-1] = value
    return turns, answers


def load_longdoc(path: Path | None = None, *, docs: int = 4, questions_per_doc: int = 4,
                 max_context_chars: int = 4000) -> list[Conversation]:
    """Long-document QA (LooGLE / L-Eval style): one single-turn request per question, the
    document first, so the questions on one document share a long prefix.

    Args:
        path: a ``longdoc_qa.jsonl`` file; default: the shared data set if present, else a
            document made of the shipped sample's turns with generic questions.
        docs: how many documents (in file order). questions_per_doc: questions kept per document.
        max_context_chars: truncate each document to this many characters.
    Returns:
        Conversations of one turn each, ordered question-major (doc 0 q 0, doc 1 q 0, ...), so
        the questions on one document are spread over the replay.
    """
    shared = data_dir()
    if path is None and shared and (shared / LONGDOC_FILE).exists():
        path = shared / LONGDOC_FILE
    if path is None:
        text = "\n".join(json.loads(shipped_sample().read_text())[i]["conversations"][j]["value"]
                         for i in range(20) for j in range(2))
        items = [{"doc_id": f"sample-{d}", "context": text[d * 500:] + text[:d * 500],
                  "questions": [{"question": q, "answer": ""} for q in (
                      "Summarize the document.", "What is the main topic?",
                      "List three facts it states.", "Which part is about caching?")]}
                 for d in range(docs)]
    else:
        items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    items = items[:docs]
    out: list[Conversation] = []
    for q in range(questions_per_doc):
        for d in items:
            if q < len(d["questions"]):
                prompt = (f"Read the document and answer the question.\n\n"
                          f"{d['context'][:max_context_chars]}\n\n"
                          f"Question: {d['questions'][q]['question']}")
                answer = str(d["questions"][q].get("answer") or "")
                out.append(Conversation(f"{d['doc_id']}#q{q}", (prompt,), (answer,)))
    return out
