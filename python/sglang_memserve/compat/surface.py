"""SGLang internals that MemServe code outside ``compat/`` hooks, replaces or reads.

The plugin's hooks (``plugin._HOOKS``), the tree core's event recorder that ``cache/index.py``
replaces, the tree-core backend ``cache/backend.py`` selects, and the pool and tree attributes
``cache/tiers.py`` reads. They apply on every host (CUDA too), so they are checked in every SGLang
process whether or not the CPU patches are needed. Declared here, as data, so their owners' files
need not change for the check; ``test_compat_targets.py`` keeps the hook list equal to the
plugin's.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_memserve.compat.targets import Target

_MGR = "sglang.srt.managers"
_MEM = "sglang.srt.mem_cache"


@dataclass(frozen=True)
class Use:
    """One thing MemServe relies on in SGLang from outside ``compat/``.

    Args:
        name: its name in the census.
        kind: ``hook`` (a HookRegistry hook; ``hook_target`` is what it wraps), ``replaced`` (an
            attribute MemServe sets to its own object) or ``reads`` (attributes it reads).
        user: the MemServe module relying on it.
        why: what it is for.
        targets: what is checked at start-up.
        hook_target: for hooks, the dotted name registered with SGLang's HookRegistry.
    """

    name: str
    kind: str
    user: str
    why: str
    targets: tuple[Target, ...]
    hook_target: str = ""


def _owner(module: str, cls: str, attrs: tuple[str, ...]) -> Target:
    """The class whose instances must get ``attrs`` (what MemServe reads off them)."""
    return Target(module, cls, instance_attrs=attrs)


HOOKS: tuple[Use, ...] = (
    Use("hook:validate-prompt-ids", "hook", "sglang_memserve.plugin",
        "empty prompts and token ids outside the vocabulary get a 400 instead of killing the "
        "scheduler",
        (Target(f"{_MGR}.tokenizer_manager", "TokenizerManager._validate_one_request",
                params=("self", "obj", "input_ids")),
         _owner(f"{_MGR}.tokenizer_manager", "TokenizerManager", ("model_config",))),
        hook_target=f"{_MGR}.tokenizer_manager.TokenizerManager._validate_one_request"),
    Use("hook:memserve-state", "hook", "sglang_memserve.plugin",
        "adds the 'memserve' section to /server_info's internal state",
        (Target(f"{_MGR}.scheduler_components.internal_state",
                "SchedulerInternalStateController.get_internal_state", params=("self",)),
         _owner(f"{_MGR}.scheduler_components.internal_state",
                "SchedulerInternalStateController", ("scheduler",)),
         Target(f"{_MGR}.io_struct", "GetInternalStateReqOutput", keywords=("internal_state",))),
        hook_target=(f"{_MGR}.scheduler_components.internal_state."
                     "SchedulerInternalStateController.get_internal_state")),
    Use("hook:memserve-tick", "hook", "sglang_memserve.plugin",
        "the MemServe cache's per-iteration work (control-channel jobs) on the scheduler thread",
        (Target(f"{_MGR}.scheduler", "Scheduler.ingest_requests", params=("self",)),),
        hook_target=f"{_MGR}.scheduler.Scheduler.ingest_requests"),
    Use("hook:hold-for-returns", "hook", "sglang_memserve.plugin",
        "prefill holds a bootstrapped request until a decode KV return covering it is indexed",
        (Target("sglang.srt.disaggregation.prefill", "PrefillBootstrapQueue.pop_bootstrapped",
                params=("self",)),
         _owner("sglang.srt.disaggregation.prefill", "PrefillBootstrapQueue", ("scheduler",))),
        hook_target="sglang.srt.disaggregation.prefill.PrefillBootstrapQueue.pop_bootstrapped"),
    Use("hook:request-timeline", "hook", "sglang_memserve.timeline",
        "keeps each finished request's stage timestamps (SGLang's request time stats) for "
        "/server_info when --enable-request-time-stats-logging is on",
        (Target(f"{_MGR}.schedule_batch", "Req.log_time_stats", params=("self",)),
         _owner(f"{_MGR}.schedule_batch", "Req",
                ("rid", "bootstrap_room", "origin_input_ids", "output_ids", "time_stats")),
         Target("sglang.srt.observability.req_time_stats", "convert_time_to_realtime",
                params=("time_value",)),
         Target("sglang.srt.observability.req_time_stats", "SchedulerReqTimeStats",
                attrs=("scheduler_recv_time", "bootstrap_done_time", "wait_queue_entry_time",
                       "forward_entry_time", "prefill_kv_transfer_finish_time",
                       "decode_prebuilt_finish_time", "completion_time", "disagg_mode_str"))),
        hook_target=f"{_MGR}.schedule_batch.Req.log_time_stats"),
)

REPLACED: tuple[Use, ...] = (
    Use("replaced:kv-event-recorder", "replaced", "sglang_memserve.cache.index",
        "IndexRecorder takes the place of the tree core's kv_events recorder (a subclass that "
        "keeps SGLang's queue) so MemPool's index follows every store/remove",
        (Target(f"{_MEM}.events", "KVCacheEventRecorder.__init__",
                keywords=("enabled", "page_size", "dynamo_format", "lora_names")),
         Target(f"{_MEM}.events", "KVCacheEventRecorder.record_store",
                params=("self", "node", "medium"), keywords=("session_id",)),
         Target(f"{_MEM}.events", "KVCacheEventRecorder.record_remove",
                params=("self", "node", "medium")),
         Target(f"{_MEM}.events", "KVCacheEventRecorder.record_all_cleared", params=("self",)),
         _owner(f"{_MEM}.events", "KVCacheEventRecorder",
                ("enabled", "page_size", "dynamo_format", "lora_names", "_queue")),
         _owner(f"{_MEM}.unified_cache.unified_tree_core", "UnifiedTreeCore",
                ("kv_events", "root_node")),
         Target("sglang.srt.disaggregation.kv_events", "StorageMedium", attrs=("GPU", "CPU")))),
    Use("replaced:tree-core-backend", "replaced", "sglang_memserve.cache.backend",
        "the factory sets CacheInitParams.tree_core_backend = 'python': the Rust core keeps its "
        "placement events inside the binding",
        (Target(f"{_MEM}.cache_init_params", "CacheInitParams", attrs=("tree_core_backend",)),
         Target(f"{_MEM}.unified_cache.tree_core_registry", "_python_tree_core_factory"),
         Target(f"{_MEM}.registry", "create_unified_radix_cache",
                params=("ctx",), keywords=("cache_class",)),
         Target(f"{_MEM}.registry", "register_radix_cache_backend", params=("name", "factory")))),
)

READS: tuple[Use, ...] = (
    Use("reads:device-pool", "reads", "sglang_memserve.cache.tiers",
        "MemPool's device tier is SGLang's allocator in pages over the MHA pool's K/V buffers",
        (Target(f"{_MEM}.allocator.base", "BaseTokenToKVPoolAllocator",
                attrs=("available_size", "alloc", "free", "get_kvcache", "get_all_free_pages")),
         _owner(f"{_MEM}.allocator.base", "BaseTokenToKVPoolAllocator",
                ("page_size", "size", "device")),
         _owner(f"{_MEM}.memory_pool", "MHATokenToKVPool", ("k_buffer", "v_buffer")))),
    Use("reads:hicache-host-pool", "reads", "sglang_memserve.cache.tiers",
        "MemPool's host tier is HiCache's host pool (layer-first kv_buffer, slot_used)",
        (Target(f"{_MEM}.pool_host.base", "HostKVCache",
                attrs=("available_size", "alloc", "free")),
         _owner(f"{_MEM}.pool_host.base", "HostKVCache",
                ("kv_buffer", "layout", "slot_used", "page_size", "size", "device")),
         _owner(f"{_MGR}.cache_controller", "HiCacheController", ("mem_pool_host",)),
         _owner(f"{_MEM}.pool_host.group", "HostPoolGroup", ("anchor_entry",)))),
    Use("reads:tree", "reads", "sglang_memserve.cache.tiers",
        "eviction and the cached-page census walk SGLang's unified tree",
        (Target(f"{_MEM}.unified_radix_cache", "UnifiedRadixCache",
                attrs=("evict", "evict_host", "evictable_size", "protected_size", "on_release")),
         _owner(f"{_MEM}.unified_cache.unified_tree_core", "UnifiedTreeNode",
                ("children", "parent", "key", "component_data")),
         Target(f"{_MEM}.unified_cache.components.base", "ComponentData",
                keywords=("value", "host_value")),
         Target(f"{_MEM}.unified_cache.component_type", "ComponentType", attrs=("FULL",)),
         Target(f"{_MEM}.base_prefix_cache", "EvictParams", keywords=("num_tokens",)))),
)

READS += (
    Use("reads:tree-api", "reads", "sglang_memserve.cache.peer",
        "KV movement matches, locks and inserts prefixes through SGLang's tree cache API and "
        "writes through SGLang's Mooncake engine (PD roles)",
        (Target(f"{_MEM}.unified_radix_cache", "UnifiedRadixCache",
                attrs=("match_prefix", "insert", "lock", "unlock", "path_device_indices")),
         Target(f"{_MEM}.base_prefix_cache", "MatchPrefixParams", keywords=("key",)),
         Target(f"{_MEM}.base_prefix_cache", "InsertParams", keywords=("key", "value")),
         Target(f"{_MEM}.base_prefix_cache", "MatchResult",
                attrs=("device_prefix_len", "last_device_node", "best_match_node",
                       "host_hit_length")),
         Target(f"{_MEM}.radix_cache", "RadixKey.__init__", params=("self", "token_ids")),
         Target("sglang.srt.distributed.parallel_state", "get_mooncake_transfer_engine"),
         Target("sglang.srt.distributed.device_communicators.mooncake_transfer_engine",
                "MooncakeTransferEngine.batch_transfer_sync",
                params=("self", "session_id", "buffers", "peer_buffer_addresses", "lengths")),
         Target("sglang.srt.distributed.device_communicators.mooncake_transfer_engine",
                "MooncakeTransferEngine", attrs=("get_session_id", "register")))),
)

READS += (
    Use("reads:mempool-api", "reads", "sglang_memserve.cache.api",
        "MemPool's delete / swap_out / swap_in on a running instance drive SGLang's own tree "
        "steps (demote, evict, back up, load back), so the tree and its pools stay consistent",
        (Target(f"{_MEM}.unified_radix_cache", "UnifiedRadixCache",
                attrs=("_apply_eviction_result", "_demote", "_drop_subtree_no_host",
                       "_evict_device_leaf", "_execute_and_commit_kv_backup", "evict_host",
                       "load_back", "loading_check", "ready_to_load_host_cache",
                       "writing_check")),
         Target(f"{_MEM}.unified_cache.unified_tree_core", "UnifiedTreeCore",
                attrs=("_evict_host_leaf", "node_by_id")),
         Target(f"{_MEM}.unified_cache.unified_tree_core", "UnifiedTreeCore._evict_host_leaf",
                params=("self", "node", "tracker", "device_frees", "host_frees"),
                keywords=("cache_actions",)),
         Target(f"{_MEM}.unified_cache.unified_tree_core_interface",
                "DriveHostEvictionResult"))),
)

USES: tuple[Use, ...] = HOOKS + REPLACED + READS
