"""The recorder's per-node runs equal a walk to the root, through SGLang-style node splits; the
index and the event stream it drives follow SGLang's tree; a report costs the node's pages,
not the depth of the path above it (counted, not timed)."""

from __future__ import annotations

import itertools
import os
import random
import sys
from array import array
from types import SimpleNamespace

import pytest
from sglang.srt.disaggregation.kv_events import StorageMedium
from sglang.srt.mem_cache.events import KVCacheEventRecorder

import sglang_memserve
from sglang_memserve.cache.index import IndexRecorder, node_page_path, node_run
from sglang_memserve.mempool import (
    DetachedEngine,
    EngineMemPool,
    EventApplier,
    MemPoolConfig,
    RadixTree,
    chainhash,
    make_tensor_tier,
)
from sglang_memserve.mempool.capture import CapturingPublisher
from sglang_memserve.mempool.chainhash import SEED, chain
from sglang_memserve.mempool.events import RadixSink


class _Key:
    """The part of SGLang's RadixKey the recorder reads; counts the tokens read."""

    read = 0

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = array("q", tokens)

    @property
    def token_ids(self) -> array:
        _Key.read += len(self._tokens)
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)


def _node(parent, tokens: list[int]) -> SimpleNamespace:
    return SimpleNamespace(parent=parent, key=_Key(tokens), children=[], tiers=set())


def _walk(node, page_size: int) -> tuple[list[tuple[int, ...]], int]:
    chain_ = []
    while node.parent is not None:
        chain_.append(node)
        node = node.parent
    tokens: list[int] = []
    start = 0
    for m in reversed(chain_):
        start = len(tokens)
        tokens.extend(int(t) for t in m.key._tokens)
    full = len(tokens) // page_size
    return [tuple(tokens[i * page_size:(i + 1) * page_size]) for i in range(full)], \
        start // page_size


def _split(node, at: int) -> SimpleNamespace:
    """What SGLang's ``_split_node`` does to the child: a new parent holds the key's head."""
    head = _node(node.parent, list(node.key._tokens[:at]))
    head.tiers = set(node.tiers)
    if hasattr(node, "ids"):
        head.ids, node.ids = node.ids[:at // PS], node.ids[at // PS:]
    node.parent.children = [head if c is node else c for c in node.parent.children]
    head.children = [node]
    node.parent, node.key = head, _Key(list(node.key._tokens[at:]))
    return head


def _hash_of(pages: list[tuple[int, ...]]) -> int:
    return chain(SEED, pages)[-1] if pages else SEED


@pytest.mark.parametrize("page_size", [1, 16])
def test_node_runs_equal_root_walks_across_splits(page_size: int) -> None:
    rng = random.Random(page_size)
    root = _node(None, [])
    nodes = [root]
    for step in range(200):
        parent = rng.choice(nodes)
        tail = rng.randrange(page_size) if rng.random() < 0.2 else 0  # a partial last page
        nodes.append(_node(parent, [rng.randrange(50) for _ in range(
            rng.randint(1, 6) * page_size + tail)]))
        for n in rng.sample(nodes[1:], min(4, len(nodes) - 1)):
            path, start = _walk(n, page_size)
            assert node_page_path(n, page_size) == (path, start), step
            run = node_run(n, page_size)
            assert (run.start, run.pages) == (start, path[start:]), step
            assert run.parent_hash == _hash_of(path[:start])
            assert run.end_hash == _hash_of(path)
        child = rng.choice(nodes[1:])
        if len(child.key) >= 2 * page_size and len(child.key) % page_size == 0:
            nodes.append(_split(child, page_size * rng.randint(1, len(child.key) // page_size - 1)))
    for n in nodes[1:]:
        path, start = _walk(n, page_size)
        assert node_run(n, page_size) == (_hash_of(path[:start]), start, path[start:],
                                         _hash_of(path))


def test_split_child_keeps_its_pages_and_moves_its_start() -> None:
    root = _node(None, [])
    a = _node(root, list(range(8)))
    b = _node(a, list(range(100, 108)))
    pages = [(0, 1, 2, 3), (4, 5, 6, 7), (100, 101, 102, 103), (104, 105, 106, 107)]
    assert node_run(b, 4) == (_hash_of(pages[:2]), 2, pages[2:], _hash_of(pages))
    head = _split(b, 4)
    assert node_run(b, 4) == (_hash_of(pages[:3]), 3, pages[3:], _hash_of(pages))
    assert node_run(head, 4) == (_hash_of(pages[:2]), 2, pages[2:3], _hash_of(pages[:3]))
    assert node_run(root, 4) == (SEED, 0, [], SEED)


# ---- the recorder driving an EngineMemPool ---------------------------------------------------

PS = 16
MEDIUM = {"device": StorageMedium.GPU, "host": StorageMedium.CPU}



def _recorder(events: CapturingPublisher | None = None) -> IndexRecorder:
    pool = EngineMemPool(MemPoolConfig(page_size=PS), "i0",
                         {"device": make_tensor_tier("device", 8, PS, page_nbytes=8),
                          "host": make_tensor_tier("host", 8, PS, page_nbytes=8)},
                         DetachedEngine(), events=events)
    return IndexRecorder(KVCacheEventRecorder(enabled=False, page_size=PS), pool,
                         lambda node, tier: list(node.ids))


def _expected(root) -> dict:
    out: dict = {}
    stack = list(root.children)
    while stack:
        n = stack.pop()
        path, start = _walk(n, PS)
        for k in range(start, len(path)):
            if n.tiers:
                out[tuple(path[:k + 1])] = {t: n.ids[k - start] for t in n.tiers}
        stack.extend(n.children)
    return out


def test_index_and_events_follow_sglang_tree_through_splits() -> None:
    """Stores (device, host), removals leaf-first and splits, as SGLang makes them: the pool's
    index equals the tree, a mirror fed by the events equals the index, and every report was
    placed by its parent's hash (none needed the full path)."""
    rng = random.Random(5)
    rec = _recorder(CapturingPublisher("i0"))
    pool = rec.pool
    mirror = RadixTree(PS, allow_empty=True)
    applier = EventApplier("i0", RadixSink(mirror))
    applier.load_snapshot(pool.snapshot())
    ids = itertools.count()
    root = _node(None, [])
    live = [root]
    for step in range(400):
        op = rng.random()
        if op < 0.45:
            parent = rng.choice([n for n in live if n is root or n.tiers])
            n = _node(parent, [rng.randrange(3) for _ in range(PS * rng.randint(1, 4))])
            n.ids = [next(ids) for _ in range(len(n.key) // PS)]
            parent.children.append(n)
            live.append(n)
            n.tiers.add("device")
            rec.record_store(n, MEDIUM["device"])
        elif op < 0.65:
            n = rng.choice(live)
            if n is not root and "host" not in n.tiers:
                n.tiers.add("host")
                rec.record_store(n, MEDIUM["host"])
        elif op < 0.85:
            leaves = [n for n in live if n is not root and not any(c.tiers for c in n.children)
                      and n.tiers]
            if leaves:
                n = rng.choice(leaves)
                t = rng.choice(sorted(n.tiers))
                n.tiers.discard(t)
                rec.record_remove(n, MEDIUM[t])
                if not n.tiers and not n.children:  # SGLang deletes the node
                    n.parent.children.remove(n)
                    live.remove(n)
        else:
            n = rng.choice(live)
            if n is not root and len(n.key) >= 2 * PS:
                live.append(_split(n, PS * rng.randint(1, len(n.key) // PS - 1)))
        for msg in pool.events.messages:
            applier.apply_message(msg)
        pool.events.messages.clear()
        assert pool.tree.flatten() == _expected(root), step
        assert mirror.flatten() == {p: {("i0", t): i for t, i in locs.items()}
                                    for p, locs in pool.tree.flatten().items()}, step
    pool.tree.check()
    assert rec.full_path_reports == 0


def test_report_with_unknown_parent_falls_back_to_the_full_path() -> None:
    rec = _recorder(CapturingPublisher("i0"))
    root = _node(None, [])
    a = _node(root, list(range(2 * PS)))  # never stored: the index does not know it
    a.ids = [0, 1]
    b = _node(a, list(range(100, 100 + PS)))
    b.ids = [7]
    b.tiers = {"device"}
    root.children, a.children = [a], [b]
    rec.record_store(b)
    assert rec.full_path_reports == 1
    assert rec.pool.tree.flatten() == _expected(root)
    rec.record_remove(b)
    assert rec.pool.tree.flatten() == {}


# ---- cost: counted, not timed -----------------------------------------------------------------

_PKG = os.path.dirname(sglang_memserve.__file__)


class _Probe:
    """Counts, over a call: Python lines run in sglang_memserve (radix nodes and pages visited,
    paths walked), pages hashed, and SGLang key tokens read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines = self.hashed = 0
        inner = chainhash._digest

        def digest(parent: int, data: bytes) -> int:
            self.hashed += 1
            return inner(parent, data)

        monkeypatch.setattr(chainhash, "_digest", digest)

    def _trace(self, frame, event, arg):
        if not frame.f_code.co_filename.startswith(_PKG):
            return None
        if event == "line":
            self.lines += 1
        return self._trace

    def run(self, fn) -> tuple[int, int, int]:
        self.lines = self.hashed = 0
        read0 = _Key.read
        sys.settrace(self._trace)
        try:
            fn()
        finally:
            sys.settrace(None)
        return self.lines, self.hashed, _Key.read - read0


def _store_one_page_below(path_pages: int, probe: _Probe) -> dict:
    rec = _recorder(CapturingPublisher("i0"))
    root = _node(None, [])
    base = _node(root, list(range(path_pages * PS)))
    base.ids = list(range(path_pages))
    rec.record_store(base)
    rec.record_store(base, MEDIUM["host"])
    leaf = _node(base, [-1] * PS)
    leaf.ids = [10**6]
    rec.pool.events.messages.clear()
    cost = {"store": probe.run(lambda: rec.record_store(leaf)),
            "host store": probe.run(lambda: rec.record_store(leaf, MEDIUM["host"])),
            "remove": probe.run(lambda: rec.record_remove(leaf))}
    events = [e for m in rec.pool.events.messages for e in m["events"]]
    assert [len(e.get("pages", ())) or e["n"] for e in events] == [1, 1, 1]
    assert rec.full_path_reports == 0
    # The full-path report the recorder used to make, under the same probe: it sees the depth.
    path, start = node_page_path(leaf, PS)
    cost["full path"] = probe.run(lambda: rec.pool.placed(node_page_path(leaf, PS)[0], start,
                                                          "device", [10**6]))
    return cost


def test_store_of_one_page_costs_the_same_below_1_and_1000_pages(monkeypatch) -> None:
    probe = _Probe(monkeypatch)
    short, long = _store_one_page_below(1, probe), _store_one_page_below(1000, probe)
    for what in ("store", "host store", "remove"):
        assert short[what] == long[what], (what, short[what], long[what])
        assert short[what][1] <= 2 and short[what][2] <= PS  # 1 page hashed twice at most
    # The probe is not blind: the root-walking report it replaces grows with the depth.
    assert long["full path"][0] > 100 * short["full path"][0]
    assert long["full path"][2] >= 1000 * PS
