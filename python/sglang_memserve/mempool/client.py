"""A Python client of MemPool's API on a running instance (its control channel).

Every method is one request answered by the instance's scheduler thread (see
:mod:`sglang_memserve.cache.api`); a refusal comes back as the typed error the instance raised
(``InvalidRequest``, ``UnknownPrefix``, ``PageLocked``, ``OutOfPages``, ``UnknownTier``,
``UnknownPeer``, ``TransferError``...).

>>> pool = MemPoolClient.from_url("http://127.0.0.1:30000")
>>> pool.match(tokens).tiers            # {"device": 288, "host": 0}
>>> pool.swap_out(tokens); pool.swap_in(tokens); pool.delete(tokens)
>>> pool.transfer_with_insert(tokens, MemPoolClient.from_url(other_url))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .rpc import FROM_ENV, AuthArg, rpc_call


@dataclass(frozen=True)
class TierMatch:
    """``match``'s answer: whole-page tokens asked, longest cached prefix, and per tier the
    prefix held there."""

    tokens: int
    matched: int
    tiers: dict[str, int]


@dataclass(frozen=True)
class MemPoolClient:
    """Args: control: the instance's control endpoint (``tcp://HOST:PORT``); instance: its id,
    checked on every reply when given; timeout_s: bound per request; auth: the control
    channel's secret (default: the environment's)."""

    control: str
    instance: str | None = None
    timeout_s: float = 60.0
    auth: AuthArg = FROM_ENV

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 60.0, auth: AuthArg = FROM_ENV
                 ) -> MemPoolClient:
        """The client of the MemServe instance serving HTTP at ``url`` (reads its
        ``/server_info``).

        Raises:
            RuntimeError: the server has no MemServe control channel.
        """
        from sglang_memserve.pd.client import memserve_state

        state = memserve_state(url)
        control = (state.get("endpoints") or {}).get("control")
        if not control:
            raise RuntimeError(f"{url} has no MemServe control channel")
        return cls(control, state.get("instance_id"), timeout_s, auth)

    def _call(self, op: str, **fields: Any) -> dict:
        return rpc_call(self.control, {"op": op, **fields}, timeout_s=self.timeout_s,
                        expect_instance=self.instance, auth=self.auth)

    def match(self, tokens: Sequence[int]) -> TierMatch:
        """Cached length of ``tokens`` (whole pages) per tier. Changes nothing."""
        r = self._call("match", tokens=list(tokens))
        return TierMatch(int(r["tokens"]), int(r["matched"]),
                         {k: int(v) for k, v in r["tiers"].items()})

    def delete(self, tokens: Sequence[int]) -> dict[str, int]:
        """Drop the last whole page of ``tokens`` and everything below it (every tier).

        Returns:
            Pages freed per tier.
        """
        return {k: int(v) for k, v in self._call("delete", tokens=list(tokens))["pages"].items()}

    def swap_out(self, tokens: Sequence[int]) -> int:
        """Move the cached prefix of ``tokens`` (and what extends it) HBM -> DRAM.

        Returns:
            Device pages released (their DRAM copy is now the only one).
        """
        return int(self._call("swap_out", tokens=list(tokens))["pages"])

    def swap_in(self, tokens: Sequence[int]) -> int:
        """Load the DRAM-only pages of the cached prefix of ``tokens`` back into HBM.

        Returns:
            Pages loaded.
        """
        return int(self._call("swap_in", tokens=list(tokens))["pages"])

    def transfer_with_insert(self, tokens: Sequence[int], peer: MemPoolClient | str
                             ) -> dict[str, Any]:
        """Send the cached KV of ``tokens`` to ``peer`` and index it there (only the pages the
        peer lacks move; nothing is indexed on failure).

        Returns:
            ``{"sent_pages", "skip", "bytes", "seconds"}``.
        """
        endpoint = peer.control if isinstance(peer, MemPoolClient) else peer
        instance = peer.instance if isinstance(peer, MemPoolClient) else None
        r = self._call("transfer_with_insert", tokens=list(tokens), peer=endpoint,
                       peer_instance=instance)
        return {k: r[k] for k in ("sent_pages", "skip", "bytes", "seconds") if k in r}

    def integrity(self) -> dict[str, dict[str, int]]:
        """The instance's integrity check (per tier free / cached / in use / engine-held)."""
        return self._call("integrity")["counts"]
