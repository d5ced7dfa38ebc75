"""Starting and stopping MemServe instances and the router as real processes (demo, benchmarks,
tests)."""

from sglang_memserve.cluster.process import ServerProcess, ServerStartError, free_port
from sglang_memserve.cluster.router import MemServeRouterProcess

__all__ = ["MemServeRouterProcess", "ServerProcess", "ServerStartError", "free_port"]
