"""ReAct agent traces as sequences of LLM calls (the MemServe paper's third workload).

An episode file is JSONL, one episode a line::

    {"episode_id": "fever/3687", "task": "fever", "prompt_id": "fever_webthink_simple3",
     "question": "Claim: ...", "steps": [{"thought"?: str, "action": str, "observation": str}]}

and a prompts file maps ``prompt_id`` to the few-shot prompt text. Call ``i`` of an episode sends
the few-shot prompt + the question + the first ``i - 1`` steps of the trace and generates step
``i``; so every call of a task shares the few-shot prompt and an episode's calls share a growing
prefix. Calls are kept as text *segments* (prompt, question, one per earlier step, the cue) so a
replay can tokenize each segment once and every call's ids start exactly with the previous
call's. ``ReactCall.followup`` is what a live agent appends after a call's output (the
observation and the next cue), for replays whose history carries the server's own output.

Pure Python (no torch, no SGLang): the simulator reuses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sglang_memserve.workloads.data import data_dir

TRACES_FILE = "react_traces.jsonl"
PROMPTS_FILE = "react_prompts.json"
SAMPLE_TRACES = "sample_react_traces.jsonl"
SAMPLE_PROMPTS = "sample_react_prompts.json"


class ReactFormatError(ValueError):
    """A ReAct trace or prompts file that does not have the documented format."""


@dataclass(frozen=True)
class ReactStep:
    """One step of an episode: the model's thought (optional) and action, the tool's answer."""

    action: str
    observation: str
    thought: str | None = None


@dataclass(frozen=True)
class ReactEpisode:
    episode_id: str
    task: str
    prompt_id: str
    question: str
    steps: tuple[ReactStep, ...]


@dataclass(frozen=True)
class ReactCall:
    """One LLM call of an episode.

    Attributes:
        episode_id / index: the episode and the call's 0-based position in it.
        segments: the prompt as text pieces; call ``i + 1``'s segments start with call ``i``'s
            minus its last piece (the cue), then the step call ``i`` generated, then a new cue.
        expected_output: the text the trace's model generated for this call (its length sets
            how many tokens a replay generates).
        followup: what a live agent appends after this call's output to make its next prompt
            (the tool's observation and the next cue); ``""`` for an episode's last call.
    """

    episode_id: str
    index: int
    segments: tuple[str, ...]
    expected_output: str
    followup: str = ""

    @property
    def text(self) -> str:
        return "".join(self.segments)


@dataclass(frozen=True)
class _Format:
    """How a task renders its history: the text after the question, one step, the cue of call
    ``i`` (1-based), what call ``i`` generates and the observation that follows it (``step`` is
    ``cue + output + after``)."""

    head: Callable[[str], str]
    step: Callable[[int, ReactStep], str]
    cue: Callable[[int], str]
    output: Callable[[int, ReactStep], str]
    after: Callable[[int, str], str]


def _numbered_step(i: int, s: ReactStep) -> str:
    return f"Thought {i}: {s.thought or ''}\nAction {i}: {s.action}\nObservation {i}: " \
           f"{s.observation}\n"


# The ReAct notebooks' formats (see ../shared/data/SOURCES.md): FEVER / HotpotQA number
# Thought/Action/Observation; WebShop alternates Action/Observation.
NUMBERED = _Format(head=lambda q: q + "\n", step=_numbered_step,
                   cue=lambda i: f"Thought {i}:",
                   output=lambda i, s: f" {s.thought or ''}\nAction {i}: {s.action}",
                   after=lambda i, obs: f"\nObservation {i}: {obs}\n")
ACTIONS = _Format(head=lambda q: q + "\n\nAction:",
                  step=lambda i, s: f" {s.action}\nObservation: {s.observation}\n\nAction:",
                  cue=lambda i: "", output=lambda i, s: f" {s.action}",
                  after=lambda i, obs: f"\nObservation: {obs}\n\nAction:")
FORMATS: dict[str, _Format] = {"fever": NUMBERED, "hotpotqa": NUMBERED, "webshop": ACTIONS}


def format_for(episode: ReactEpisode) -> _Format:
    """The task's format; an unknown task: numbered when its steps have thoughts, else actions."""
    fmt = FORMATS.get(episode.task)
    if fmt is not None:
        return fmt
    return NUMBERED if any(s.thought for s in episode.steps) else ACTIONS


def episode_calls(episode: ReactEpisode, prompts: dict[str, str],
                  max_observation_chars: int | None = None) -> list[ReactCall]:
    """The calls of one episode, in order (one per step).

    Args:
        episode: the episode.
        prompts: ``prompt_id`` -> few-shot prompt text.
        max_observation_chars: cut each observation to this many characters (a small model's
            context; WebShop's search pages run to several thousand characters).
    Returns:
        ``len(episode.steps)`` calls.
    Raises:
        ReactFormatError: the episode's ``prompt_id`` is not in ``prompts``.
    """
    if episode.prompt_id not in prompts:
        raise ReactFormatError(f"episode {episode.episode_id}: prompt_id "
                               f"{episode.prompt_id!r} not in the prompts file "
                               f"(has {sorted(prompts)})")
    fmt = format_for(episode)
    history: list[str] = [prompts[episode.prompt_id], fmt.head(episode.question)]
    calls: list[ReactCall] = []
    n = len(episode.steps)
    for i, step in enumerate(episode.steps, 1):
        cue = fmt.cue(i)
        segments = (*history, cue) if cue else tuple(history)
        obs = step.observation
        if max_observation_chars is not None:
            obs = obs[:max_observation_chars]
        followup = fmt.after(i, obs) + fmt.cue(i + 1) if i < n else ""
        calls.append(ReactCall(episode.episode_id, i - 1, segments, fmt.output(i, step),
                               followup))
        history.append(fmt.step(i, ReactStep(step.action, obs, step.thought)))
    return calls


def _parse_episode(raw: dict, where: str) -> ReactEpisode:
    try:
        steps = tuple(ReactStep(str(s["action"]), str(s.get("observation", "")),
                                None if s.get("thought") is None else str(s["thought"]))
                      for s in raw["steps"])
        return ReactEpisode(str(raw["episode_id"]), str(raw["task"]), str(raw["prompt_id"]),
                            str(raw["question"]), steps)
    except (KeyError, TypeError) as exc:
        raise ReactFormatError(f"{where}: not a ReAct episode (missing or bad {exc})") from exc


def _default_paths() -> tuple[Path, Path]:
    shared = data_dir()
    if shared and (shared / TRACES_FILE).exists() and (shared / PROMPTS_FILE).exists():
        return shared / TRACES_FILE, shared / PROMPTS_FILE
    pkg = resources.files("sglang_memserve") / "data"
    return Path(str(pkg / SAMPLE_TRACES)), Path(str(pkg / SAMPLE_PROMPTS))


def load_react(traces: Path | None = None, prompts: Path | None = None, *,
               limit: int | None = None, tasks: Sequence[str] | None = None,
               max_steps: int | None = None) -> tuple[list[ReactEpisode], dict[str, str]]:
    """Load ReAct episodes and their few-shot prompts.

    Args:
        traces / prompts: the two files; default: ``react_traces.jsonl`` and
            ``react_prompts.json`` in the data directory when both exist (``$MEMSERVE_DATA_DIR``,
            see :func:`~sglang_memserve.workloads.data.data_dir`), else the shipped sample.
            Give both or neither.
        limit: keep at most this many episodes, taken in turn from each task (file order within
            a task), so a small limit still mixes the tasks.
        tasks: keep only these tasks.
        max_steps: keep at most this many steps per episode.
    Returns:
        ``(episodes, prompts)``; every episode's ``prompt_id`` is in ``prompts``.
    Raises:
        ValueError: only one of the two paths given.
        ReactFormatError: a line that is not an episode, a prompts file that is not a JSON
            object of strings, an episode whose prompt is missing.
    """
    if (traces is None) != (prompts is None):
        raise ValueError("give both the traces and the prompts file, or neither")
    if traces is None or prompts is None:
        traces, prompts = _default_paths()
    table = json.loads(Path(prompts).read_text())
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ReactFormatError(f"{prompts}: expected a JSON object prompt_id -> prompt text")
    by_task: dict[str, list[ReactEpisode]] = {}
    with open(traces) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReactFormatError(f"{traces}:{n}: not JSON ({exc})") from exc
            ep = _parse_episode(raw, f"{traces}:{n}")
            if tasks is not None and ep.task not in tasks:
                continue
            if ep.prompt_id not in table:
                raise ReactFormatError(f"{traces}:{n}: prompt_id {ep.prompt_id!r} not in "
                                       f"{prompts}")
            if max_steps is not None:
                ep = ReactEpisode(ep.episode_id, ep.task, ep.prompt_id, ep.question,
                                  ep.steps[:max_steps])
            if ep.steps:
                by_task.setdefault(ep.task, []).append(ep)
    return _interleave(list(by_task.values()), limit), table


def _interleave(groups: list[list[ReactEpisode]], limit: int | None) -> list[ReactEpisode]:
    out: list[ReactEpisode] = []
    for i in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if i < len(g):
                out.append(g[i])
                if limit is not None and len(out) >= limit:
                    return out
    return out
