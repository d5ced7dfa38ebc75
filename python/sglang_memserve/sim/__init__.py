"""A discrete-event simulator of a MemServe cluster that drives the project's own code.

The router's policies (``memserve_router.policies``), its global prompt trees
(``memserve_router.trees.GlobalTree``, fed by the events the instances would publish) and its
candidate selection (``memserve_router.cluster.Cluster.candidates``) make every routing
decision; each instance keeps MemPool's radix index (``sglang_memserve.mempool.radix``) with an
HBM and a DRAM tier and the tree's own LRU eviction; times come from a measured cost table
(``sglang_memserve.gpu.costmodel``). See ``docs/results/simulator.md``.

::

    python -m sglang_memserve.sim --instances 8 --policy memserve --workload mooncake
"""

from .config import InstanceSpec, SimConfig
from .loop import EventLoop
from .results import SimResult
from .simulator import Simulator
from .workload import SimRequest, mooncake, sharegpt

__all__ = ["EventLoop", "InstanceSpec", "SimConfig", "SimRequest", "SimResult", "Simulator",
           "mooncake", "sharegpt"]
