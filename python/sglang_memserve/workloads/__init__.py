"""Workload loaders: ShareGPT multi-turn chats, long-document QA, ReAct agent traces, Mooncake
request traces."""

from sglang_memserve.workloads.data import Conversation, data_dir, load_longdoc, load_sharegpt
from sglang_memserve.workloads.react import ReactCall, ReactEpisode, episode_calls, load_react

__all__ = ["Conversation", "ReactCall", "ReactEpisode", "data_dir", "episode_calls",
           "load_longdoc", "load_react", "load_sharegpt"]
