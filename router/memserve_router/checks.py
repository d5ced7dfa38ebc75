"""The router's own judgement of a request, so that a malformed one gets its 4xx even when no
instance could be asked (all of them down or frozen).

``prompts.parse`` checks the shape (JSON object, prompt, ``n``, ``top_k``, token ids); this adds
what the instances used to be the only ones to check: fields the route's SGLang schema does not
have, and sampling parameters outside the ranges SGLang's ``SamplingParams.verify`` enforces.
The field lists come from SGLang's schemas (``sglang_memserve.guard.schema_fields``) computed
once in a child process -- importing SGLang costs ~10 s of CPU, which a router restart must not
spend -- and cached per SGLang version under the MemServe cache folder. Pure Python here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from memserve_router.prompts import BadRequest

logger = logging.getLogger("memserve_router")

Fields = Mapping[str, frozenset[str]]

# (field, lowest, highest, lowest included, highest included), as SGLang's verify has them.
RANGES: tuple[tuple[str, float, float, bool, bool], ...] = (
    ("temperature", 0.0, math.inf, True, False),
    ("top_p", 0.0, 1.0, False, True),
    ("min_p", 0.0, 1.0, True, True),
    ("frequency_penalty", -2.0, 2.0, True, True),
    ("presence_penalty", -2.0, 2.0, True, True),
    ("repetition_penalty", 0.0, 2.0, False, True),
)
# Token counts: each must be an integer >= 0 (the OpenAI names and SGLang's).
COUNTS = ("max_new_tokens", "min_new_tokens", "max_tokens", "max_completion_tokens",
          "min_tokens")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_sampling(params: Mapping[str, Any], where: str) -> None:
    """Refuse sampling values SGLang would refuse (or choke on); changes nothing.

    Args:
        params: ``/generate``'s ``sampling_params`` or an OpenAI request's body.
        where: how the message names their place (``sampling_params`` or ``request``).
    Raises:
        BadRequest: the first value out of range or of the wrong type.
    """
    for name, lo, hi, lo_in, hi_in in RANGES:
        v = params.get(name)
        if v is None:
            continue
        if not _number(v) or not math.isfinite(v):
            raise BadRequest(f"{where}.{name} must be a finite number, got {v!r}")
        if v < lo or v > hi or (v == lo and not lo_in) or (v == hi and not hi_in):
            lb, hb = "[" if lo_in else "(", "]" if hi_in else ")"
            raise BadRequest(f"{where}.{name} must be in {lb}{lo:g}, {hi:g}{hb}, got {v}")
    for name in COUNTS:
        v = params.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BadRequest(f"{where}.{name} must be an integer >= 0, got {v!r}")


def check(path: str, body: Mapping[str, Any], fields: Fields | None) -> None:
    """Refuse unknown fields (when ``fields`` is known) and out-of-range sampling values of a
    request whose shape ``prompts.parse`` accepted; changes nothing.

    Raises:
        BadRequest: the first problem, with a message for the client.
    """
    known = fields.get(path) if fields is not None else None
    if known is not None:
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadRequest(f"unknown field(s) for {path}: {', '.join(unknown[:8])}")
    if path == "/generate":
        sp = body.get("sampling_params")
        for one in sp if isinstance(sp, list) else [sp] if isinstance(sp, dict) else []:
            if isinstance(one, dict):
                check_sampling(one, "sampling_params")
    else:
        check_sampling(body, "request")


def _cache_file() -> Path:
    try:
        version = metadata.version("sglang")
    except metadata.PackageNotFoundError:
        version = "none"
    env = os.environ.get("MEMSERVE_CACHE_DIR")
    root = Path(env) if env else Path.home() / ".cache" / "sglang-memserve"
    return root / f"schema-fields-sglang-{version}.json"


_CHILD = ("import json, sys; from sglang_memserve.guard import schema_fields; "
          "json.dump({k: sorted(v) for k, v in schema_fields().items()}, sys.stdout)")


def load_fields(timeout_s: float = 120.0) -> Fields | None:
    """SGLang's request-schema field names per route, from the cache or a child process
    (which writes the cache). Blocking: run it off the event loop. Returns None (unknown
    fields then pass to the instances, which refuse them) when SGLang cannot be imported.
    """
    path = _cache_file()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        try:
            out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                                 timeout=timeout_s, check=True).stdout
            raw = json.loads(out)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            logger.warning("no request schema from SGLang (%r): unknown fields are left to "
                           "the instances", exc)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(raw))
            tmp.replace(path)
        except OSError as exc:
            logger.info("schema fields not cached (%r)", exc)
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        return None
    return {k: frozenset(v) for k, v in raw.items()}
