"""Prefixes on their way to an instance, and the requests that should wait for them.

Two things put a prefix on an instance after the router decided: the prefill of a request it
sent there, and a migration (``kv_push``) it asked for. The router counts such pages as the
instance's at once (predicted), so a later request that shares them is routed there too. Sent at
once, that request would often recompute them anyway: SGLang batches the requests waiting in its
queue together, and a request batched with the one computing its prefix does not see that
prefix's KV. Holding it until the pages land costs it little, since it would have waited behind
that prefill in the same queue, and saves the instance the recomputation.

:class:`InFlight` keeps, per instance, the prefills the router sent that have not stored their
prefix yet; :meth:`InFlight.hold` waits (bounded) until a request's pages are confirmed by the
instance's KV events, or the prefill ended, or the bound passed.

Not thread-safe: the router's event loop is the only user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# How often a held request looks whether the instance's events confirmed its prefix.
_POLL_S = 0.005


def extends(tokens: Sequence[int], prefix: Sequence[int], held: int, page_size: int) -> int:
    """How far ``tokens`` reaches into ``prefix`` past ``held`` tokens, when it reaches at
    least one whole page past it (``tokens[:k] == prefix[:k]`` for the returned ``k``).

    Args:
        tokens: a prompt being routed.
        prefix: tokens on their way to the instance.
        held: tokens of ``prefix`` the instance held before they were sent.
        page_size: the instance's page size.

    Returns:
        ``k`` > ``held`` whole-page-aligned past ``held`` (at most ``held + page_size``: the
        cheap test of one page beyond, which is all a hold needs), or 0 when ``tokens`` does
        not extend ``prefix`` beyond ``held``. Reads only.
    """
    k = min(len(prefix), len(tokens), held + page_size)
    if k - held < page_size:
        return 0
    if tokens[held:k] != prefix[held:k] or tokens[:held] != prefix[:held]:
        return 0
    return k


def _common(a: Sequence[int], b: Sequence[int], start: int, page_size: int) -> int:
    """Whole-page common prefix of ``a`` and ``b``, known to reach at least ``start``."""
    n = start
    end = min(len(a), len(b))
    while n + page_size <= end and a[n:n + page_size] == b[n:n + page_size]:
        n += page_size
    return n


@dataclass(eq=False)
class Prefilling:
    """A request the router sent to ``instance`` whose prefill has not ended.

    Attributes:
        tokens: its prompt.
        held: tokens of it the instance held (or was predicted to hold) when it was routed: the
            rest is what its prefill computes.
        done: set when its prefill ended (its first byte, its prefill response, or a failure).
    """

    instance: str
    tokens: Sequence[int]
    held: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Hold:
    """What :meth:`InFlight.hold` did (for the ``X-MemServe-Hold`` header and the metrics).

    Attributes:
        seconds: how long the request waited.
        tokens: the prompt tokens it waited for (the pages past what the instance held).
        outcome: ``"stored"`` (the instance's events confirmed the prefix), ``"ended"`` (the
            prefill ended first, e.g. failed or without events yet) or ``"timeout"``.
    """

    seconds: float
    tokens: int
    outcome: str

    def describe(self) -> str:
        return (f"{self.outcome} after {self.seconds * 1e3:.1f} ms: waited for {self.tokens} "
                "tokens an earlier request was prefilling")


class InFlight:
    """Prefills in flight per instance (module docstring).

    Args:
        hold_s: longest a request waits for another's prefill (0: never waits).
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._by: dict[str, list[Prefilling]] = {}

    def ended(self, p: Prefilling) -> None:
        """``p``'s prefill ended (any way): wake whoever waits for it; idempotent."""
        if p.done.is_set():
            return
        p.done.set()
        entries = self._by.get(p.instance)
        if entries is not None:
            entries.remove(p)
            if not entries:
                del self._by[p.instance]

    def waiting_on(self, instance: str, tokens: Sequence[int], page_size: int
                   ) -> list[tuple[Prefilling, int]]:
        """The prefills in flight on ``instance`` that ``tokens`` extends past what the
        instance held, each with how far (:func:`extends`), oldest first. Reads only."""
        out = []
        for p in self._by.get(instance, ()):
            k = extends(tokens, p.tokens, p.held, page_size)
            if k:
                out.append((p, k))
        return out

    async def enter(self, instance: str, tokens: Sequence[int], held: int, page_size: int,
                    confirmed: Callable[[int], int]) -> tuple[Prefilling, Hold | None]:
        """Record a request about to be sent to ``instance``, after waiting until none of the
        prefills in flight there before it is about to store a prefix of ``tokens`` beyond what
        ``confirmed`` says the instance holds: each has ended or been confirmed by the
        instance's KV events, or ``hold_s`` passed in all.

        Args:
            held: tokens of ``tokens`` the instance holds or was predicted to hold (what this
                request's own prefill does not compute).
            confirmed: ``confirmed(k)``: tokens of ``tokens[:k]`` the instance's events say it
                holds (exact tiers only, not predictions); called every few milliseconds while
                waiting.

        Returns:
            The request's entry (registered at once, so later requests wait for it in turn:
            pass it to :meth:`ended` when its prefill ends) and what it waited for (None: it
            did not wait).
        """
        found = [(p, _common(tokens, p.tokens, k, page_size))
                 for p, k in (self.waiting_on(instance, tokens, page_size)
                              if self.hold_s > 0 else ())]
        me = Prefilling(instance, tokens, held)
        self._by.setdefault(instance, []).append(me)
        if not found:
            return me, None
        t0 = time.monotonic()
        deadline = t0 + self.hold_s
        waited = max(k - p.held for p, k in found)
        reach = max(k for _, k in found)
        for p, k in found:
            while not p.done.is_set() and confirmed(k) < k:
                left = deadline - time.monotonic()
                if left <= 0:
                    return me, Hold(time.monotonic() - t0, waited, "timeout")
                try:
                    await asyncio.wait_for(p.done.wait(), min(_POLL_S, left))
                except TimeoutError:
                    pass
        outcome = "stored" if confirmed(reach) >= reach else "ended"
        return me, Hold(time.monotonic() - t0, waited, outcome)
