"""Radix prompt tree over whole pages, with per-location page ids, lock references and LRU.

Keys are pages of token ids (``tuple[int, ...]`` of length ``page_size``): children are keyed
by the full token tuple of their first page, never by a hash, so a match can never return the
KV of different tokens. A node holds a run of pages and, per *location* (a tier name in a
MemPool; ``(instance, tier)`` in a router mirror), the page ids holding that run.

Invariants (:meth:`RadixTree.check`): every non-root node has >= 1 page and, unless the tree
was made with ``allow_empty=True`` (mirrors), >= 1 location; each location's page list has one
id per page; a page id appears at most once per location; ``lock_ref`` of a node >= the sum
over its children; eviction never touches a node with ``lock_ref > 0``.

Only :meth:`RadixTree.match` is read-only; everything else may split nodes (which preserves
what a handle protects: the split-off prefix becomes the handle's new parent).

A tree made with ``hashed=True`` (a pool that publishes KV events) keeps, per node, the chained
hash (:mod:`.chainhash`) of each of its pages, computed once when the page enters the tree, so
that every :class:`Change` names its run by hash without walking to the root to hash, and
finds a page by its hash (:meth:`RadixTree.locate`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

from .chainhash import SEED, chain
from .errors import IntegrityError, PageLocked

PageKey = tuple[int, ...]
Loc = Hashable


class Node:
    """One run of pages. Treat as an opaque handle outside this module."""

    __slots__ = ("parent", "children", "pages", "locs", "lock_ref", "last_access", "hashes",
                 "memo", "__weakref__")

    def __init__(self, parent: Node | None, pages: list[PageKey]) -> None:
        self.parent = parent
        self.children: dict[PageKey, Node] = {}
        self.pages = pages
        self.locs: dict[Loc, list[int]] = {}
        self.lock_ref = 0
        self.last_access = 0
        self.hashes: list[int] | None = None  # chain hash per page (hashed trees only)
        # Derived data a user of the tree caches (the router's matcher): the tree resets it to
        # None whenever the node's pages or locations change.
        self.memo: object = None

    def __repr__(self) -> str:
        return f"Node(pages={len(self.pages)}, locs={list(self.locs)}, lock={self.lock_ref})"


@dataclass
class Change:
    """One index change, in page-path terms (independent of node splits).

    ``path`` is the full page path from the root to the end of the changed run; the run is
    ``path[start:]``. ``kind`` is ``"stored"`` (``pages`` = ids now holding it in ``loc``) or
    ``"removed"`` (``pages`` = ids that held it and are no longer indexed).

    A hashed tree also fills ``anchor`` (``path[:anchor]`` was in the tree before the change;
    ``anchor <= start``, less only when a stored run created location-less ancestors),
    ``parent_hash`` (chain hash of ``path[:anchor]``) and ``end_hash`` (of ``path``).

    A change made relative to a page named by its hash (:meth:`RadixTree.set_loc_after`,
    :meth:`RadixTree.drop_loc_after`) has ``prefix_hash`` set: ``path`` then holds only the
    pages after that page (whose chain hash is ``prefix_hash``), so building it costs the pages
    it changes, not the depth; ``start`` and ``anchor`` index that ``path``.
    """

    kind: str
    loc: Loc
    path: list[PageKey]
    start: int
    pages: list[int]
    anchor: int | None = None
    parent_hash: int | None = None
    end_hash: int | None = None
    prefix_hash: int | None = None


@dataclass
class TreeMatch:
    """Result of :meth:`RadixTree.match`: ``(node, pages matched in it)`` from the root down."""

    steps: list[tuple[Node, int]] = field(default_factory=list)

    @property
    def num_pages(self) -> int:
        return sum(k for _, k in self.steps)

    @property
    def last(self) -> Node | None:
        return self.steps[-1][0] if self.steps else None


class RadixTree:
    """See the module docstring."""

    def __init__(self, page_size: int, *, allow_empty: bool = False, hashed: bool = False) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.page_size = page_size
        self.allow_empty = allow_empty
        self.hashed = hashed
        self.root = Node(None, [])
        self.root.lock_ref = 1  # the root is never evicted
        self.root.hashes = [] if hashed else None
        self._clock = itertools.count(1)
        self._created_at = 0  # set by _cover
        self._by_hash: dict[int, Node | None] = {}  # page hash -> node (None: ambiguous)

    # ---- helpers -------------------------------------------------------------------------

    def to_pages(self, tokens: Sequence[int]) -> list[PageKey]:
        """Whole pages of ``tokens`` (a trailing partial page is ignored)."""
        # zip over one iterator taken ps at a time: the page tuples are built in C.
        return list(zip(*[iter(tokens)] * self.page_size, strict=False))

    def nodes(self) -> Iterator[Node]:
        """Every non-root node, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def path_of(self, node: Node) -> list[PageKey]:
        """Full page path from the root to the end of ``node``."""
        parts = []
        while node is not self.root and node is not None:
            parts.append(node.pages)
            node = node.parent
        return [p for part in reversed(parts) for p in part]

    def end_hash(self, node: Node) -> int:
        """Chain hash of the path ending at ``node`` (``SEED`` for the root). Hashed trees."""
        return node.hashes[-1] if node.hashes else SEED

    def _new_node(self, parent: Node, pages: list[PageKey]) -> Node:
        n = Node(parent, pages)
        if self.hashed:
            n.hashes = chain(self.end_hash(parent), pages)
            by = self._by_hash
            for h in n.hashes:
                by[h] = None if h in by else n  # a collision: that hash names no page
        parent.children[pages[0]] = n
        return n

    def _forget(self, n: Node) -> None:
        """``n`` left the tree: its page hashes no longer name pages."""
        if n.hashes:
            by = self._by_hash
            for h in n.hashes:
                if by.get(h, n) is n:
                    by.pop(h, None)

    def locate(self, h: int) -> tuple[Node, int] | None:
        """The page whose path hashes to ``h`` in a hashed tree: ``(node, index in it)``
        (``(root, -1)`` for ``SEED``), or ``None`` if no page (or several) hash to it."""
        if h == SEED:
            return self.root, -1
        n = self._by_hash.get(h)
        if n is None:
            return None
        # A run most often hangs below the end of a node: found without scanning its hashes.
        return n, (len(n.hashes) - 1 if n.hashes[-1] == h else n.hashes.index(h))

    def _change(self, kind: str, loc: Loc, node: Node, ids: list[int],
                path: list[PageKey] | None = None) -> Change:
        """The change of ``loc`` on exactly ``node``'s pages (``path``: its full path)."""
        p = self.path_of(node) if path is None else path
        start = len(p) - len(node.pages)
        if not self.hashed:
            return Change(kind, loc, p, start, ids)
        return Change(kind, loc, p, start, ids, start, self.end_hash(node.parent),
                      node.hashes[-1])

    def _split(self, node: Node, k: int) -> Node:
        """Split ``node`` after ``k`` pages; return the new upper node (``node`` keeps the rest,
        so handles to it keep protecting everything they protected)."""
        assert 0 < k < len(node.pages)
        parent = node.parent
        upper = Node(parent, node.pages[:k])
        upper.locs = {loc: ids[:k] for loc, ids in node.locs.items()}
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        if node.hashes is not None:
            upper.hashes, node.hashes = node.hashes[:k], node.hashes[k:]
            by = self._by_hash
            for h in upper.hashes:
                if by.get(h) is node:
                    by[h] = upper
        parent.children[upper.pages[0]] = upper
        node.pages = node.pages[k:]
        node.locs = {loc: ids[k:] for loc, ids in node.locs.items()}
        node.memo = None
        node.parent = upper
        upper.children[node.pages[0]] = node
        return upper

    def _cover(self, path: list[PageKey], *, create: bool, cut: int = 0,
               base: Node | None = None) -> list[Node] | None:
        """Nodes that exactly cover ``path`` below the end of ``base`` (the root if ``None``),
        splitting at its end and at page index ``cut``.

        Missing pages become one new node (with no locations) if ``create``; otherwise
        ``None`` is returned when the path is not fully present. Splits happen only once the
        path is known to be present (or ``create``), so a miss changes nothing.
        ``self._created_at`` is set to the index of the first page that was missing
        (``len(path)`` if none).
        """
        base = self.root if base is None else base
        self._created_at = len(path)
        if not create and self._present_after(base, len(base.pages), path) < len(path):
            return None
        out: list[Node] = []
        node, i = base, 0
        while i < len(path):
            child = node.children.get(path[i])
            if child is None:
                self._created_at = i
                new = self._new_node(node, list(path[i:]))
                if i < cut < len(path):
                    out.append(self._split(new, cut - i))
                out.append(new)
                break
            k = 0
            while k < len(child.pages) and i + k < len(path) and child.pages[k] == path[i + k]:
                k += 1
            if k < len(child.pages):
                child = self._split(child, k)
            if i < cut < i + k:
                upper = self._split(child, cut - i)
                out.append(upper)
            out.append(child)
            node, i = child, i + k
        return out

    def _present_after(self, node: Node, k: int, path: Sequence[PageKey]) -> int:
        """How many pages of ``path`` follow page ``k - 1`` of ``node`` in the tree (``k =
        len(node.pages)``: its end). Changes nothing; visits only those pages."""
        i = 0
        while i < len(path):
            if k == len(node.pages):
                child = node.children.get(path[i])
                if child is None:
                    break
                node, k = child, 0
            if node.pages[k] != path[i]:
                break
            i, k = i + 1, k + 1
        return i

    def _node_ending_at(self, h: int, then: Sequence[PageKey] | None = None) -> Node | None:
        """The node ending at the page that hashes to ``h`` in a hashed tree (the root for
        ``SEED``), splitting the page's node after it if it is inside one. With ``then``: only
        if all of ``then`` follows that page in the tree, else ``None`` and nothing split.

        Raises:
            KeyError: no page hashes to ``h``, or several do (a collision).
        """
        if not self.hashed:
            raise KeyError("this tree is not hashed: name the path by its pages")
        where = self.locate(h)
        if where is None:
            raise KeyError(f"no page (or several) of the index hashes to {h:#x}")
        n, idx = where
        if then is not None and self._present_after(n, idx + 1, then) < len(then):
            return None
        if idx + 1 < len(n.pages):
            n = self._split(n, idx + 1)
        return n

    # ---- read-only -----------------------------------------------------------------------

    def match_pages(self, path: Sequence[PageKey]) -> TreeMatch:
        """Longest prefix of ``path`` present as nodes. Changes nothing."""
        m = TreeMatch()
        node, i = self.root, 0
        while i < len(path):
            child = node.children.get(path[i])
            if child is None:
                break
            k = 0
            while k < len(child.pages) and i + k < len(path) and child.pages[k] == path[i + k]:
                k += 1
            m.steps.append((child, k))
            if k < len(child.pages):
                break
            node, i = child, i + k
        return m

    def match(self, tokens: Sequence[int]) -> TreeMatch:
        """Longest cached prefix of ``tokens`` in whole pages. Changes nothing (not even LRU)."""
        return self.match_pages(self.to_pages(tokens))

    # ---- locking -------------------------------------------------------------------------

    def lock(self, node: Node) -> None:
        """Protect ``node`` and its ancestors from eviction/deletion; marks them used (LRU)."""
        t = next(self._clock)
        while node is not None:
            node.lock_ref += 1
            node.last_access = t
            node = node.parent

    def unlock(self, node: Node) -> None:
        """Undo one :meth:`lock` of ``node``."""
        n = node
        while n is not None:
            if n.lock_ref <= 0 or (n is self.root and n.lock_ref <= 1):
                raise IntegrityError(f"unlock without lock on {node}")
            n = n.parent
        while node is not None:
            node.lock_ref -= 1
            node = node.parent

    def touch(self, node: Node) -> None:
        """Mark ``node`` and its ancestors as just used."""
        t = next(self._clock)
        while node is not None:
            node.last_access = t
            node = node.parent

    # ---- changes -------------------------------------------------------------------------

    def insert(
        self, path: list[PageKey], loc: Loc, page_ids: Sequence[int]
    ) -> tuple[list[int], list[Change], Node | None]:
        """Index ``path`` in ``loc`` with one page id per page.

        Returns:
            ``(duplicates, changes, last_node)``: indices into ``page_ids`` of pages that were
            already indexed in ``loc`` (their ids are *not* taken: the caller still owns them),
            the ``stored`` changes, and the node ending the path.
        """
        if len(page_ids) != len(path):
            raise ValueError(f"{len(page_ids)} page ids for {len(path)} pages")
        if not path:
            return [], [], None
        nodes = self._cover(path, create=True)
        dups: list[int] = []
        changes: list[Change] = []
        t = next(self._clock)
        i = 0
        for n in nodes:
            k = len(n.pages)
            if loc in n.locs:
                dups.extend(range(i, i + k))
            else:
                n.locs[loc] = list(page_ids[i : i + k])
                n.memo = None
                changes.append(self._change("stored", loc, n, n.locs[loc][:], list(path[: i + k])))
            n.last_access = t
            i += k
        self.touch(nodes[-1])
        return dups, changes, nodes[-1]

    def set_loc(self, path: list[PageKey], start: int, loc: Loc, page_ids: Sequence[int]
                ) -> tuple[Change, list[Node]]:
        """Mirror primitive: ``path[start:]`` is now held by ``page_ids`` in ``loc`` (creating
        location-less nodes for a missing ``path[:start]`` when ``allow_empty``).

        Returns:
            ``(change, nodes)``: the ``stored`` change (hashes filled in a hashed tree) and the
            nodes now covering ``path[start:]``.
        """
        if not 0 <= start < len(path) or len(page_ids) != len(path) - start:
            raise ValueError(f"{len(page_ids)} page ids for pages [{start}:{len(path)}]")
        nodes = self._cover(path, create=True, cut=start)
        return self._placed(nodes, path, start, loc, page_ids, SEED)

    def set_loc_after(self, parent_hash: int, pages: list[PageKey], start: int, loc: Loc,
                      page_ids: Sequence[int]) -> tuple[Change, list[Node]]:
        """:meth:`set_loc` for the path ``P + pages``, ``P`` being the tree's path that hashes
        to ``parent_hash`` (hashed trees): ``pages[start:]`` are now held by ``page_ids`` in
        ``loc``. Costs O(len(pages)) whatever the depth of ``P`` (plus splitting the node that
        ``P`` ends inside, if it does).

        Returns:
            As :meth:`set_loc`; the change's ``path`` is ``pages`` (``prefix_hash`` set).

        Raises:
            KeyError: no page (or several) hashes to ``parent_hash``; nothing changed.
            ValueError: ``start`` or the number of ids does not fit ``pages``.
        """
        if not 0 <= start < len(pages) or len(page_ids) != len(pages) - start:
            raise ValueError(f"{len(page_ids)} page ids for pages [{start}:{len(pages)}]")
        base = self._node_ending_at(parent_hash)
        nodes = self._cover(pages, create=True, cut=start, base=base)
        c, run = self._placed(nodes, pages, start, loc, page_ids, parent_hash)
        c.prefix_hash = parent_hash
        return c, run

    def _placed(self, nodes: list[Node], path: list[PageKey], start: int, loc: Loc,
                page_ids: Sequence[int], base_hash: int) -> tuple[Change, list[Node]]:
        """Set ``loc`` on the ``nodes`` covering ``path[start:]`` (``path`` follows the page
        hashing to ``base_hash``); the ``stored`` change and those nodes."""
        anchor = min(start, self._created_at)
        run: list[Node] = []
        i, parent_hash = 0, base_hash
        for n in nodes:
            k = len(n.pages)
            if i >= start:
                n.locs[loc] = list(page_ids[i - start : i - start + k])
                n.memo = None
                run.append(n)
            i += k
            if self.hashed and i == anchor:
                parent_hash = n.hashes[-1]
        c = Change("stored", loc, path, start, list(page_ids))
        if self.hashed:
            c.anchor, c.parent_hash, c.end_hash = anchor, parent_hash, nodes[-1].hashes[-1]
        return c, run

    def drop_loc(self, path: list[PageKey], start: int, loc: Loc) -> Change | None:
        """Mirror primitive: ``path[start:]`` is no longer held in ``loc``; location-less
        leaves are pruned. A path that is not present is ignored.

        Returns:
            The ``removed`` change (no page ids; hashes filled in a hashed tree), or ``None``
            when the path was not present (nothing changed).
        """
        nodes = self._cover(path, create=False, cut=start)
        if nodes is None or start >= len(path):
            return None
        return self._dropped(nodes, path, start, loc)

    def drop_loc_after(self, parent_hash: int, pages: list[PageKey], loc: Loc
                       ) -> Change | None:
        """:meth:`drop_loc` of ``P + pages`` from ``len(P)`` on, ``P`` being the tree's path
        that hashes to ``parent_hash`` (hashed trees). Costs O(len(pages)) whatever the depth.

        Returns:
            As :meth:`drop_loc`; the change's ``path`` is ``pages`` (``prefix_hash`` set).

        Raises:
            KeyError: no page (or several) hashes to ``parent_hash``; nothing changed.
        """
        if not pages:
            return None
        base = self._node_ending_at(parent_hash, then=pages)
        if base is None:
            return None
        nodes = self._cover(pages, create=False, base=base)
        c = self._dropped(nodes, pages, 0, loc)
        c.prefix_hash = parent_hash
        return c

    def _dropped(self, nodes: list[Node], path: list[PageKey], start: int, loc: Loc) -> Change:
        """Drop ``loc`` from the ``nodes`` covering ``path[start:]`` and prune; the change."""
        c = Change("removed", loc, path, start, [])
        i = 0
        for n in nodes:
            if self.hashed and i == start:
                c.anchor, c.parent_hash = start, self.end_hash(n.parent)
            if i >= start and n.locs.pop(loc, None) is not None:
                n.memo = None
            i += len(n.pages)
        if self.hashed:
            c.end_hash = nodes[-1].hashes[-1]
        for n in reversed(nodes):
            self.prune(n)
        return c

    def prune(self, n: Node) -> None:
        """Detach ``n`` and then its ancestors while they are location-less leaves."""
        while n is not self.root and not n.locs and not n.children and _is_attached(n):
            parent = n.parent
            del parent.children[n.pages[0]]
            n.parent = None
            self._forget(n)
            n = parent

    _prune = prune

    def delete(self, path: list[PageKey]) -> list[Change]:
        """Remove the last page of ``path`` and everything indexed below it (all locations).

        Returns:
            the ``removed`` changes (leaves first), whose page ids the caller frees.

        Raises:
            PageLocked: a page that would go is locked; nothing was changed.
        """
        if not path:
            return []
        m = self.match_pages(path)
        if m.num_pages < len(path):
            return []
        node, _ = m.steps[-1]
        if node.lock_ref > 0:
            raise PageLocked(f"delete would remove locked pages ({node})")
        nodes = self._cover(path, create=False, cut=len(path) - 1)
        top = nodes[-1]
        changes: list[Change] = []
        stack = [(top, False)]
        order = []
        while stack:  # post-order: leaves first, so every removed change leaves a valid tree
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            stack.append((n, True))
            stack.extend((c, False) for c in n.children.values())
        for n in order:
            p = self.path_of(n)
            for loc, ids in n.locs.items():
                changes.append(self._change("removed", loc, n, ids, p))
            n.locs = {}
            n.memo = None
        for n in order:
            self._forget(n)
        del top.parent.children[top.pages[0]]
        top.parent = None
        return changes

    def _evictable(self, n: Node, loc: Loc) -> bool:
        return (
            n.lock_ref == 0
            and loc in n.locs
            and (len(n.locs) > 1 or not n.children)
            and not any(loc in c.locs for c in n.children.values())
        )

    def evict(self, num_pages: int, loc: Loc) -> list[Change]:
        """Drop ``loc`` from least recently used unlocked nodes until >= ``num_pages`` pages of
        ``loc`` were dropped or nothing more is evictable. A node loses ``loc`` only when no
        child holds ``loc`` (no holes in a tier's prefix) and it either keeps another location
        or has no children (no location-less nodes).

        Returns:
            the ``removed`` changes, whose page ids the caller frees.
        """
        heap = [(n.last_access, id(n), n) for n in self.nodes() if self._evictable(n, loc)]
        heapq.heapify(heap)
        changes: list[Change] = []
        freed = 0
        while heap and freed < num_pages:
            _, _, n = heapq.heappop(heap)
            if not _is_attached(n) or not self._evictable(n, loc):
                continue
            ids = n.locs.pop(loc)
            n.memo = None
            changes.append(self._change("removed", loc, n, ids))
            freed += len(ids)
            parent = n.parent
            if not n.locs:
                del parent.children[n.pages[0]]
                n.parent = None
                self._forget(n)
            if parent is not self.root and self._evictable(parent, loc):
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return changes

    def evictable_pages(self, loc: Loc) -> int:
        """Upper bound of pages :meth:`evict` could drop in ``loc`` (unlocked nodes holding it
        whose removal never needs a locked one gone first). Exact for single-location trees."""
        total = 0
        for n in self.nodes():
            if loc in n.locs and n.lock_ref == 0:
                total += len(n.pages)
        return total

    def relabel(self, loc: Loc, mapping: dict[int, int]) -> list[Change]:
        """Replace page ids of ``loc`` by ``mapping`` (pages moved in memory).

        Returns:
            ``removed`` + ``stored`` changes per affected node, so mirrors follow.
        """
        changes = []
        for n in self.nodes():
            ids = n.locs.get(loc)
            if ids and any(i in mapping for i in ids):
                p = self.path_of(n)
                changes.append(self._change("removed", loc, n, ids[:], p))
                n.locs[loc] = [mapping.get(i, i) for i in ids]
                n.memo = None
                changes.append(self._change("stored", loc, n, n.locs[loc][:], p))
        return changes

    def clear(self) -> list[Change]:
        """Remove every node.

        Returns:
            the ``removed`` changes, whose page ids the caller frees.

        Raises:
            PageLocked: some node is locked; nothing was changed.
        """
        if any(n.lock_ref > 0 for n in self.root.children.values()):
            raise PageLocked("clear() with locked pages")
        changes = []
        for n in self.nodes():
            for loc, ids in n.locs.items():
                changes.append(self._change("removed", loc, n, ids))
        self.root.children = {}
        self._by_hash = {}
        return changes

    # ---- inspection ----------------------------------------------------------------------

    def pages_by_loc(self) -> dict[Loc, list[int]]:
        """All indexed page ids per location (with repeats if the tree is corrupt)."""
        out: dict[Loc, list[int]] = {}
        for n in self.nodes():
            for loc, ids in n.locs.items():
                out.setdefault(loc, []).extend(ids)
        return out

    def flatten(self) -> dict[tuple[PageKey, ...], dict[Loc, int]]:
        """Split-independent view: full page path -> ``{loc: page id}``, for comparisons."""
        out: dict[tuple[PageKey, ...], dict[Loc, int]] = {}
        for n in self.nodes():
            base = self.path_of(n)[: -len(n.pages)]
            for k, page in enumerate(n.pages):
                base.append(page)
                entry = {loc: ids[k] for loc, ids in n.locs.items()}
                if entry:
                    out[tuple(base)] = entry
        return out

    def check(self) -> None:
        """Raise :class:`IntegrityError` on any broken invariant (see the module docstring)."""
        for h, n in self._by_hash.items():
            if n is not None and not (_is_attached(n) and h in n.hashes):
                raise IntegrityError(f"page hash {h:#x} indexes a page not in the tree")
        seen: dict[Loc, set[int]] = {}
        stack = [self.root]
        while stack:
            n = stack.pop()
            kids = sum(c.lock_ref for c in n.children.values())
            if n.lock_ref < kids:
                raise IntegrityError(f"lock_ref {n.lock_ref} < children's {kids} at {n}")
            for key, c in n.children.items():
                if c.parent is not n or not c.pages or c.pages[0] != key:
                    raise IntegrityError(f"bad child link at {c}")
                if any(len(p) != self.page_size for p in c.pages):
                    raise IntegrityError(f"partial page in {c}")
                if not c.locs and not self.allow_empty:
                    raise IntegrityError(f"location-less node {c}")
                if self.hashed and c.hashes != chain(self.end_hash(n), c.pages):
                    raise IntegrityError(f"stale chain hashes in {c}")
                if self.hashed and any(self._by_hash.get(h, c) not in (c, None)
                                       for h in c.hashes):
                    raise IntegrityError(f"page hash index points elsewhere for {c}")
                for loc, ids in c.locs.items():
                    if len(ids) != len(c.pages):
                        raise IntegrityError(f"{loc}: {len(ids)} ids for {len(c.pages)} pages")
                    s = seen.setdefault(loc, set())
                    if s.intersection(ids) or len(set(ids)) != len(ids):
                        raise IntegrityError(f"{loc}: page id indexed twice in {c}")
                    s.update(ids)
                stack.append(c)


def _is_attached(n: Node) -> bool:
    return n.parent is not None and n.parent.children.get(n.pages[0]) is n
