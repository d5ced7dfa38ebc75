"""The recorder's cached page paths equal a walk to the root, through SGLang-style node splits."""

from __future__ import annotations

import random
from array import array
from types import SimpleNamespace

import pytest

from sglang_memserve.cache.index import node_page_path


class _Key:
    """The part of SGLang's RadixKey the recorder reads."""

    def __init__(self, tokens: list[int]) -> None:
        self.token_ids = array("q", tokens)

    def __len__(self) -> int:
        return len(self.token_ids)


def _node(parent, tokens: list[int]) -> SimpleNamespace:
    return SimpleNamespace(parent=parent, key=_Key(tokens))


def _walk(node, page_size: int) -> tuple[list[tuple[int, ...]], int]:
    chain = []
    while node.parent is not None:
        chain.append(node)
        node = node.parent
    tokens: list[int] = []
    start = 0
    for m in reversed(chain):
        start = len(tokens)
        tokens.extend(int(t) for t in m.key.token_ids)
    full = len(tokens) // page_size
    return [tuple(tokens[i * page_size:(i + 1) * page_size]) for i in range(full)], \
        start // page_size


def _split(node, at: int) -> SimpleNamespace:
    """What SGLang's ``_split_node`` does to the child: a new parent holds the key's head."""
    head = _node(node.parent, list(node.key.token_ids[:at]))
    node.parent, node.key = head, _Key(list(node.key.token_ids[at:]))
    return head


@pytest.mark.parametrize("page_size", [1, 16])
def test_cached_paths_equal_root_walks_across_splits(page_size: int) -> None:
    rng = random.Random(page_size)
    root = SimpleNamespace(parent=None, key=_Key([]))
    nodes = [root]
    for step in range(200):
        parent = rng.choice(nodes)
        tail = rng.randrange(page_size) if rng.random() < 0.2 else 0  # a partial last page
        nodes.append(_node(parent, [rng.randrange(50) for _ in range(
            rng.randint(1, 6) * page_size + tail)]))
        for n in rng.sample(nodes[1:], min(4, len(nodes) - 1)):
            assert node_page_path(n, page_size) == _walk(n, page_size), step
        child = rng.choice(nodes[1:])
        if len(child.key) >= 2 * page_size and len(child.key) % page_size == 0:
            nodes.append(_split(child, page_size * rng.randint(1, len(child.key) // page_size - 1)))
    for n in nodes[1:]:
        assert node_page_path(n, page_size) == _walk(n, page_size)


def test_split_child_keeps_its_pages_and_moves_its_start() -> None:
    root = SimpleNamespace(parent=None, key=_Key([]))
    a = _node(root, list(range(8)))
    b = _node(a, list(range(100, 108)))
    assert node_page_path(b, 4) == ([(0, 1, 2, 3), (4, 5, 6, 7), (100, 101, 102, 103),
                                     (104, 105, 106, 107)], 2)
    head = _split(b, 4)
    assert node_page_path(b, 4)[1] == 3
    assert node_page_path(head, 4) == (node_page_path(b, 4)[0][:3], 2)
