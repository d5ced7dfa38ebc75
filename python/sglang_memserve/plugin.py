"""SGLang plugin (entry point group ``sglang.srt.plugins``): runs in every SGLang process.

It applies the CPU compatibility layer where needed, registers the MemServe tree-cache backend
with SGLang's radix-cache registry, hooks MemServe's state into ``/server_info`` (with each
finished request's stage timestamps when SGLang logs request time stats: :mod:`.timeline`), and
checks each prompt's token ids in SGLang's tokenizer manager (empty prompts and ids outside the
vocabulary get a 400 instead of killing the scheduler).
"""

from __future__ import annotations

from typing import Any

from sglang_memserve import compat, timeline

_INTERNAL_STATE = (
    "sglang.srt.managers.scheduler_components.internal_state."
    "SchedulerInternalStateController.get_internal_state"
)


def load() -> None:
    """Idempotent: SGLang may call it more than once per process."""
    compat.apply_runtime_patches()
    _register_cache_backend()
    _register_hooks()


def _register_cache_backend() -> None:
    from sglang.srt.mem_cache.registry import (
        get_radix_cache_factory,
        register_radix_cache_backend,
    )

    from sglang_memserve.cache import BACKEND_NAME

    if get_radix_cache_factory(BACKEND_NAME) is None:
        from sglang_memserve.cache.backend import factory

        register_radix_cache_backend(BACKEND_NAME, factory)


def _add_memserve_state(output: Any, controller: Any, *_args: Any, **_kwargs: Any) -> None:
    """AFTER hook on the scheduler's internal-state readback: adds ``memserve``."""
    tree_cache = getattr(controller.scheduler, "tree_cache", None)
    state_fn = getattr(tree_cache, "memserve_state", None)
    state: dict[str, Any] = {"tree_cache_class": type(tree_cache).__name__,
                             "compat_patches": compat.applied(), "compat_census": compat.census()}
    if state_fn is not None:
        state.update(state_fn())
    records = timeline.snapshot()
    if records:  # only with --enable-request-time-stats-logging
        state["timeline"] = records
    output.internal_state["memserve"] = state


def _memserve_tick(_result: Any, scheduler: Any, *_args: Any, **_kwargs: Any) -> None:
    """AFTER hook on ``Scheduler.ingest_requests``: the MemServe cache's per-iteration work."""
    tick = getattr(getattr(scheduler, "tree_cache", None), "memserve_tick", None)
    if tick is not None:
        tick(scheduler)


def _hold_for_returns(result: Any, queue: Any, *_args: Any, **_kwargs: Any) -> Any:
    """AFTER hook on prefill's ``PrefillBootstrapQueue.pop_bootstrapped``: requests whose prompt
    a decode KV return is about to cover wait for it (``PeerService.gate``)."""
    peer = getattr(getattr(queue.scheduler, "tree_cache", None), "memserve_peer", None)
    if peer is None:
        return result
    return peer.gate(result, len(getattr(queue.scheduler, "waiting_queue", ())))


def _check_prompt_ids(manager: Any, obj: Any, input_ids: Any, *_args: Any, **_kwargs: Any
                      ) -> None:
    """BEFORE hook on ``TokenizerManager._validate_one_request`` (SGLang's own per-request check,
    whose ValueError SGLang answers with a 400): a text-only request needs at least one token id,
    and every id inside the vocabulary -- stock SGLang's scheduler dies on an empty prompt and
    on an id outside the vocabulary (in the embedding lookup), taking the server down."""
    if input_ids is None or any(getattr(obj, k, None) is not None for k in _MULTIMODAL):
        return
    if len(input_ids) == 0:
        raise ValueError("the prompt is empty: it needs at least one token")
    vocab = int(manager.model_config.vocab_size)
    lo, hi = min(input_ids), max(input_ids)
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the model's vocabulary [0, {vocab})")


_MULTIMODAL = ("image_data", "video_data", "audio_data", "input_embeds")

# target -> (hook, kind); the kind's name is SGLang's HookType member.
_HOOKS: dict[str, tuple[Any, str]] = {
    "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request":
        (_check_prompt_ids, "BEFORE"),
    _INTERNAL_STATE: (_add_memserve_state, "AFTER"),
    "sglang.srt.managers.scheduler.Scheduler.ingest_requests": (_memserve_tick, "AFTER"),
    "sglang.srt.disaggregation.prefill.PrefillBootstrapQueue.pop_bootstrapped":
        (_hold_for_returns, "AFTER"),
    "sglang.srt.managers.schedule_batch.Req.log_time_stats": (timeline.record, "AFTER"),
}


def _register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, (hook, kind) in _HOOKS.items():
        if not any(h[1] is hook for h in HookRegistry._hooks.get(target, [])):
            HookRegistry.register(target, hook, HookType[kind])
