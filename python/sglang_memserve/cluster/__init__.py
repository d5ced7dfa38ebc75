"""Starting and stopping MemServe instances as real processes (demo, benchmarks, tests)."""

from sglang_memserve.cluster.process import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port"]
