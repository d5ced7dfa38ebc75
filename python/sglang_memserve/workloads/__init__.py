"""Workload loaders: ShareGPT multi-turn chats, long-document QA, agent traces."""

from sglang_memserve.workloads.data import Conversation, data_dir, load_longdoc, load_sharegpt

__all__ = ["Conversation", "data_dir", "load_longdoc", "load_sharegpt"]
