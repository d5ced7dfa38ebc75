"""An exact load order of one instance type's healthy members, and the few members of a group
that the ``memserve`` policy can choose.

Why it is enough: the ``memserve`` policy judges an instance only by its cached prefix (hit and
DRAM part) and its load score -- queue wait + requests x a small cost per request
(:func:`~memserve_router.workers.load_key`). Within a group of instances with the same hit and
DRAM part, a lower score is a lower estimate of every option on the instance (served locally,
as a migration target, as a migration source), and members with the same score and request
count are the same to the policy but for their id: its ties go to the smallest id (candidates
come in id order; the rotation wraps around to it) or to the smallest id after the last chosen
one (the rotation). So of a group only the members whose score is within the policy's tie
tolerance of the group's lowest can be picked, and of each ``(score, requests)`` class among
them only those two. The index keeps the members sorted by ``(score, requests, id)``, so they are
found from the least loaded on, jumping over each class, without visiting the rest of a large
group.

The order is exact at each decision: a worker marks itself when a load field is assigned
(``Worker.watcher``) and :meth:`LoadIndex.refresh` re-sorts the marked ones first.
Not thread-safe: the router's event loop is the only user.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Container, Iterable, KeysView

from memserve_router.workers import Worker, load_key

# Scores this close to a group's lowest are all kept: more than the memserve policy's tie
# tolerance (policies/memserve.py, 1e-9 s) plus float rounding (test_load_index checks it).
BAND_S = 1e-6
# A group up to this size is read from its member list (pick_from); a larger one from the load
# order (pick_where).
SMALL_GROUP = 16

Key = tuple[float, int, str]


class LoadIndex:
    """The healthy tracked workers of one instance type, sorted by ``load_key``.

    Args:
        per_request_s: the policy's cost per request on an instance (``load_per_request_s``).
    """

    def __init__(self, per_request_s: float) -> None:
        self.per_request_s = per_request_s
        self.version = 0  # changes when the sorted membership does (not on load changes)
        self._keys: list[Key] = []
        self._key_of: dict[str, Key] = {}
        self._workers: dict[str, Worker] = {}
        self._dirty: dict[str, Worker] = {}

    def __len__(self) -> int:
        """Sorted (healthy) members, as of the last :meth:`refresh`."""
        return len(self._key_of)

    def ids(self) -> KeysView[str]:
        """The sorted members' ids, as of the last :meth:`refresh` (a live view)."""
        return self._key_of.keys()

    def worker(self, wid: str) -> Worker:
        """A tracked worker by id; raises KeyError."""
        return self._workers[wid]

    # ---- upkeep ---------------------------------------------------------------------------

    def track(self, w: Worker) -> None:
        """Follow ``w`` (sorted in while healthy); sets ``w.watcher``."""
        self._workers[w.id] = w
        w.watcher = self.mark
        self.mark(w)

    def untrack(self, wid: str) -> None:
        """Stop following ``wid`` (no-op if unknown); clears its watcher."""
        w = self._workers.pop(wid, None)
        if w is not None and w.watcher == self.mark:
            w.watcher = None
        self._dirty.pop(wid, None)
        old = self._key_of.pop(wid, None)
        if old is not None:
            del self._keys[bisect_left(self._keys, old)]
            self.version += 1

    def mark(self, w: Worker) -> None:
        """``w``'s load changed: re-sort it at the next :meth:`refresh`. O(1)."""
        self._dirty[w.id] = w

    def rekey(self, per_request_s: float) -> None:
        """Sort by another cost per request (a policy with another setting). O(n log n)."""
        self.per_request_s = per_request_s
        self._dirty.update(self._workers)
        self.refresh()

    def refresh(self) -> None:
        """Re-sort the marked workers: O(marked x log n) comparisons plus list moves."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        keys, key_of, per = self._keys, self._key_of, self.per_request_s
        for wid, w in dirty.items():
            new = load_key(w, per) if w.healthy and self._workers.get(wid) is w else None
            old = key_of.get(wid)
            if old == new:
                continue
            if old is not None:
                del keys[bisect_left(keys, old)]
            if new is None:
                del key_of[wid]
                self.version += 1
                continue
            insort(keys, new)
            if old is None:
                self.version += 1
            key_of[wid] = new

    def check(self) -> None:
        """Raise AssertionError unless the order equals a fresh sort of the healthy tracked
        workers (for tests; call after :meth:`refresh`)."""
        fresh = sorted(load_key(w, self.per_request_s) for w in self._workers.values()
                       if w.healthy)
        assert self._keys == fresh, (self._keys, fresh)
        assert sorted(self._key_of.values()) == fresh

    # ---- what the policy can pick ---------------------------------------------------------

    def pick_from(self, ids: Iterable[str], exclude: Container[str],
                  last: str | None) -> list[str]:
        """Of the sorted members among ``ids`` (less ``exclude``), those the ``memserve``
        policy can choose (module docstring), for a small group. O(len(ids) log len(ids)).

        Args:
            last: the policy's last chosen instance (its rotation position), or None.
        """
        key_of = self._key_of
        keys = sorted(k for i in ids if i not in exclude and (k := key_of.get(i)) is not None)
        out: list[str] = []
        if not keys:
            return out
        limit = keys[0][0] + BAND_S
        cls: tuple[float, int] | None = None
        after = False
        for score, r, wid in keys:
            if score > limit:
                break
            if (score, r) != cls:
                cls = (score, r)
                out.append(wid)
                after = last is not None and wid <= last
            elif after and wid > last:  # type: ignore[operator]
                out.append(wid)
                after = False
        return out

    def pick_where(self, contains: Callable[[str], bool], exclude: Container[str],
                   last: str | None) -> list[str]:
        """The same as :meth:`pick_from` for a large group given by membership: walks the
        order from the least loaded, two bisections per ``(score, requests)`` class. Read-only.

        Returns:
            The ids, least loaded first.
        """
        keys = self._keys
        n, pos = len(keys), 0
        out: list[str] = []
        limit: float | None = None
        while pos < n:
            score, r, wid = keys[pos]
            if limit is not None and score > limit:
                break
            if wid in exclude or not contains(wid):
                pos += 1
                continue
            if limit is None:
                limit = score + BAND_S
            out.append(wid)  # the class's smallest id in the group
            end = bisect_left(keys, (score, r + 1), pos + 1)
            if last is not None and wid <= last:  # ... and its smallest id after ``last``
                p = bisect_right(keys, (score, r, last), pos + 1, end)
                while p < end:
                    other = keys[p][2]
                    if other not in exclude and contains(other):
                        out.append(other)
                        break
                    p += 1
            pos = end
        return out
