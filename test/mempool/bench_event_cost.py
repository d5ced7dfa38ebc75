"""Micro-benchmark: microseconds per stored KV event, by the length of the path above it.

The whole serving path of one ``record_store``: :class:`~sglang_memserve.cache.index.IndexRecorder`
over SGLang-shaped nodes, :class:`~sglang_memserve.mempool.EngineMemPool`'s radix update, the
v2 event's build and a real ZMQ PUB send (no subscriber). Each stored event adds one new page
under a node ending a path of ``L`` pages. Not a test (pytest does not collect it)::

    .venv/bin/python test/mempool/bench_event_cost.py [--events N]
"""

from __future__ import annotations

import argparse
import itertools
import time
from array import array
from types import SimpleNamespace

from sglang.srt.mem_cache.events import KVCacheEventRecorder

from sglang_memserve.cache.index import IndexRecorder
from sglang_memserve.mempool import DetachedEngine, EngineMemPool, EventPublisher, MemPoolConfig
from sglang_memserve.mempool.tensor_tier import make_tensor_tier

PS = 16


class _Key:
    def __init__(self, tokens: list[int]) -> None:
        self.token_ids = array("q", tokens)

    def __len__(self) -> int:
        return len(self.token_ids)



def us_per_event(path_pages: int, events: int) -> float:
    """Mean over ``events`` stores of one new page each below a ``path_pages``
    path (the path itself stored once, untimed)."""
    pub = EventPublisher("bench", auth=None)
    pool = EngineMemPool(MemPoolConfig(page_size=PS), "bench",
                         {"device": make_tensor_tier("device", 8, PS, page_nbytes=8)},
                         DetachedEngine(), events=pub)
    ids = itertools.count()
    rec = IndexRecorder(KVCacheEventRecorder(enabled=False, page_size=PS), pool,
                        lambda node, tier: [next(ids) for _ in range(len(node.key) // PS)])
    root = SimpleNamespace(parent=None, key=_Key([]))
    base = SimpleNamespace(parent=root, key=_Key(list(range(path_pages * PS))))
    rec.record_store(base)
    leaves = [SimpleNamespace(parent=base, key=_Key([10**6 + i] * PS)) for i in range(events)]
    t0 = time.perf_counter()
    for leaf in leaves:
        rec.record_store(leaf)
    dt = time.perf_counter() - t0
    pub.close()
    return dt / events * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"| path pages | us per stored event (best of {args.repeats}) |")
    print("|---|---|")
    for n in args.lengths:
        best = min(us_per_event(n, args.events) for _ in range(args.repeats))
        print(f"| {n} | {best:.1f} |")


if __name__ == "__main__":
    main()
