"""Time to first token of a PD replay, per request, in stages (SGLang's own timestamps).

Each instance started with ``--enable-request-time-stats-logging`` keeps its finished requests'
scheduler timestamps in ``/server_info`` (``memserve.timeline``, :mod:`sglang_memserve.timeline`;
wall-clock seconds, comparable across the processes of one host). Prefill's and decode's records
of one request share SGLang's ``bootstrap_room``; a client record (``sent_at`` from the replay's
start, ``ttft``) is matched to prefill's by prompt length and the nearest arrival. The stages
(:data:`STAGES`) follow one another, so per request they add up to the client's TTFT exactly:

* ``to prefill``: client -> router -> prefill's HTTP server and tokenizer -> its scheduler,
  which reads new requests between iterations (so this includes the rest of a forward pass
  that was running when the request arrived);
* ``prefill bootstrap``: until decode has pre-allocated and told prefill where to write
  (SGLang stamps the waiting queue's entry in the same ``pop_bootstrapped``);
* ``prefill queued``: waiting queue -> forward; MemServe's hold for a KV return on its way
  (``PeerService.gate``, after that pop) falls here;
* ``prefill forward``: -> prefill done;
* ``KV send``: prefill done -> prefill's scheduler sees the Mooncake transfer finished;
* ``decode admits``: that -> decode's scheduler moves the request to its waiting queue (its own
  poll of the transfer; can be negative: the two schedulers poll independently);
* ``decode queued`` / ``decode first step``: -> decode's first-token step ends;
* ``to client``: decode's detokenizer, HTTP server, the router, the client's read.

The client's send time is the replay's start (wall clock taken just before it) plus
``sent_at``; the replay takes its own start a few ms later, so ``to prefill`` is high and
``to client`` low by that much (their sum is exact).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# (stage, start stamp, end stamp); "P." prefill's record, "D." decode's, "C." the client's.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("to prefill", "C.sent", "P.scheduler_recv"),
    ("prefill bootstrap", "P.scheduler_recv", "P.wait_queue_entry"),
    ("prefill queued", "P.wait_queue_entry", "P.forward_entry"),
    ("prefill forward", "P.forward_entry", "P.prefill_finished"),
    ("KV send", "P.prefill_finished", "P.prefill_kv_transfer_finish"),
    ("decode admits", "P.prefill_kv_transfer_finish", "D.wait_queue_entry"),
    ("decode queued", "D.wait_queue_entry", "D.forward_entry"),
    ("decode first step", "D.forward_entry", "D.decode_prebuilt_finish"),
    ("to client", "D.decode_prebuilt_finish", "C.first_token"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s for s, _, _ in STAGES)


def _stamp(ref: str, client: dict[str, float], p: dict[str, Any], d: dict[str, Any]
           ) -> float | None:
    side, key = ref.split(".", 1)
    value = {"C": client, "P": p, "D": d}[side].get(key)
    return None if value is None else float(value)


def request_stages(client: dict[str, float], p: dict[str, Any], d: dict[str, Any]
                   ) -> dict[str, float] | None:
    """Seconds per stage of one request, or None when a stamp is missing.

    Args:
        client: ``{"sent": wall s, "first_token": wall s}``.
        p / d: prefill's and decode's timeline records of the request.
    """
    out: dict[str, float] = {}
    for name, start, end in STAGES:
        a, b = _stamp(start, client, p, d), _stamp(end, client, p, d)
        if a is None or b is None:
            return None
        out[name] = b - a
    return out


def join(records: Sequence[dict[str, Any]], wall0: float, prefill: Sequence[dict[str, Any]],
         decode: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per client request (in ``records``' order, errors skipped): its stages and turn.

    Args:
        records: the replay's request records (``sent_at``, ``ttft``, ``prompt_tokens``,
            ``turn``, ``error``), as ``to_jsonable`` writes them.
        wall0: ``time.time()`` taken just before the replay started.
        prefill / decode: the instances' timeline records (``memserve.timeline``).

    Returns:
        ``[{"turn", "ttft", "stages": {stage: s}}]`` for every request whose three records were
        found with every stamp; each prefill record is used once.
    """
    by_room = {r["bootstrap_room"]: r for r in decode if r.get("bootstrap_room") is not None}
    free = [r for r in prefill if r.get("bootstrap_room") in by_room
            and r.get("scheduler_recv", 0.0) >= wall0 - 1.0]
    out: list[dict[str, Any]] = []
    for rec in records:
        if rec.get("error"):
            continue
        sent = wall0 + float(rec["sent_at"])
        same = [r for r in free if r["input_len"] == rec["prompt_tokens"]]
        if not same:
            continue
        p = min(same, key=lambda r: abs(r["scheduler_recv"] - sent))
        free.remove(p)
        client = {"sent": sent, "first_token": sent + float(rec["ttft"])}
        stages = request_stages(client, p, by_room[p["bootstrap_room"]])
        if stages is not None:
            out.append({"turn": rec["turn"], "ttft": float(rec["ttft"]), "stages": stages})
    return out


def summary(joined: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ms per stage over the requests (all, and later turns only), with their count."""
    def means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        if not rows:
            return {}
        per = {n: statistics.fmean(r["stages"][n] for r in rows) * 1e3 for n in STAGE_NAMES}
        per["TTFT"] = statistics.fmean(r["ttft"] for r in rows) * 1e3
        return per

    later = [r for r in joined if r["turn"] > 0]
    return {"requests": len(joined), "mean_ms": means(joined),
            "later_turns": len(later), "later_mean_ms": means(later)}
