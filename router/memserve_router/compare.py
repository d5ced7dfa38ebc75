"""Is the router's mirror of an instance's tree that instance's own tree? (tests, the soak driver)

Both sides are put in one shape -- ``{(token ids of the page path, tier): page id}`` -- so a user
or a test can compare them with ``==`` over HTTP and the control channel alone.
"""

from __future__ import annotations

import requests

from memserve_router.trees import GlobalTree
from sglang_memserve.mempool.events import EventApplier
from sglang_memserve.mempool.rpc import rpc_call


def router_tree(router_url: str, wid: str, timeout_s: float = 30.0) -> dict:
    """The router's mirror of instance ``wid`` (``GET /workers/{wid}/tree``); reads only."""
    body = requests.get(f"{router_url}/workers/{wid}/tree", timeout=timeout_s).json()
    return {(tuple(path), tier): pid for path, tier, pid in body["entries"]}


def instance_tree(url: str, wid: str, timeout_s: float = 30.0) -> dict:
    """The instance's own tree (its MemPool ``snapshot``), in :func:`router_tree`'s shape."""
    info = requests.get(f"{url}/server_info", timeout=timeout_s).json()
    state = info["internal_states"][0]["memserve"]
    snap = rpc_call(state["endpoints"]["control"], {"op": "snapshot"}, timeout_s=timeout_s)
    tree = GlobalTree(int(state["page_size"]))
    EventApplier(wid, tree).load_snapshot(snap)
    return {(tuple(t for page in path for t in page), tier): pid
            for path, tiers in tree.snapshot_of(wid).items() for tier, pid in tiers.items()}
