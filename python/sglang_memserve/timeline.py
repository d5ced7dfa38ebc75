"""Per-request stage timestamps from SGLang's own request timers, kept for ``/server_info``.

SGLang's scheduler stamps every request as it moves through its queues
(``SchedulerReqTimeStats``: received, bootstrap queue, bootstrap done, waiting queue, forward,
prefill done, KV sent; on decode: pre-allocation queue, transfer queue, waiting queue, the
first-token step). With ``--enable-request-time-stats-logging`` it logs a summary line per
finished request (``Req.log_time_stats``) but never the timestamps themselves. The plugin hooks
that method (AFTER): :func:`record` keeps the finished request's timestamps, as wall-clock
seconds (``time.time()`` scale, comparable across the processes of one host), in a bounded
buffer of this scheduler process; the ``memserve`` section of ``/server_info`` carries
:func:`snapshot` as ``timeline``. Without that SGLang flag the hook is never called and the
buffer stays empty.

``benchmarks/ttft_stages.py`` joins prefill's and decode's records (by ``bootstrap_room``) with
the client's to break time to first token into stages.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

# SchedulerReqTimeStats fields kept (perf_counter seconds in the scheduler, 0.0 when unset).
STAMPS: tuple[str, ...] = (
    "scheduler_recv_time",
    "prefill_bootstrap_queue_entry_time",
    "bootstrap_done_time",
    "wait_queue_entry_time",
    "forward_entry_time",
    "prefill_finished_time",
    "prefill_transfer_queue_entry_time",
    "prefill_kv_transfer_finish_time",
    "decode_prealloc_queue_entry_time",
    "decode_transfer_queue_entry_time",
    "decode_prebuilt_finish_time",
    "completion_time",
)
# Requests kept per process (the oldest are dropped first).
CAPACITY = 4096

_lock = threading.Lock()
_records: deque[dict[str, Any]] = deque(maxlen=CAPACITY)


def stamps_of(req: Any) -> dict[str, Any]:
    """One finished request as a record: ids, lengths, and each set stamp in wall-clock seconds.

    Reads ``req`` (an SGLang ``Req``) only; unset stamps (0.0) are left out.
    """
    from sglang.srt.observability.req_time_stats import convert_time_to_realtime

    ts = req.time_stats
    rec: dict[str, Any] = {
        "rid": str(req.rid),
        "bootstrap_room": getattr(req, "bootstrap_room", None),
        "mode": ts.disagg_mode_str(),
        "input_len": len(req.origin_input_ids),
        "cached_tokens": int(getattr(req, "cached_tokens", 0) or 0),
        "output_len": len(req.output_ids),
    }
    for name in STAMPS:
        value = float(getattr(ts, name, 0.0) or 0.0)
        if value > 0.0:
            rec[name.removesuffix("_time")] = convert_time_to_realtime(value)
    return rec


def record(_result: Any, req: Any, *_args: Any, **_kwargs: Any) -> None:
    """AFTER hook on ``Req.log_time_stats`` (scheduler thread): keeps ``req``'s stamps once.

    Changes the process's buffer; marks ``req`` so a second call (the overlap schedule logs
    twice) adds nothing.
    """
    if getattr(req, "_memserve_timeline", False):
        return
    req._memserve_timeline = True
    rec = stamps_of(req)
    with _lock:
        _records.append(rec)


def snapshot() -> list[dict[str, Any]]:
    """The kept records, oldest first (a copy; the buffer is unchanged)."""
    with _lock:
        return list(_records)


def clear() -> None:
    """Empties the buffer (tests)."""
    with _lock:
        _records.clear()
