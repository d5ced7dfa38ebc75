"""Cache-blind policies: ``round_robin``, ``least_load`` and ``session`` (affinity)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from .base import (
    Candidate,
    Decision,
    Policy,
    PolicyConfig,
    RouteRequest,
    least_loaded,
    register_policy,
    require_candidates,
)


@register_policy("round_robin")
class RoundRobinPolicy(Policy):
    """Each request to the next instance by id, whatever the load."""

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """See :meth:`Policy.select`; advances the rotation."""
        require_candidates(candidates)
        return Decision(self._rotate(candidates).instance_id, self.name, "next in rotation")


@register_policy("least_load")
class LeastLoadPolicy(Policy):
    """Fewest requests, then lowest KV usage; ties in rotation so equal instances alternate."""

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """See :meth:`Policy.select`; advances the rotation among ties."""
        require_candidates(candidates)
        pick = self._rotate(least_loaded(candidates))
        return Decision(pick.instance_id, self.name,
                        f"least loaded ({pick.load.requests} requests, "
                        f"kv {pick.load.kv_usage:.2f})")


@register_policy("session")
class SessionPolicy(Policy):
    """Session affinity: a session's first request goes to the least loaded instance, later
    ones to the same instance while it is a candidate (else the least loaded again, and the
    session moves there). No session id: ``least_load``. The table keeps the
    ``config.session_table_size`` most recently used sessions.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def select(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Decision:
        """See :meth:`Policy.select`; records or refreshes the session's instance (evicting the
        least recently used session past the bound) and advances the rotation among ties."""
        require_candidates(candidates)
        sid = request.session_id
        if sid is not None:
            bound = self._sessions.get(sid)
            if bound is not None:
                for c in candidates:
                    if c.instance_id == bound:
                        self._sessions.move_to_end(sid)
                        return Decision(bound, self.name, f"session {sid!r} bound here")
        pick = self._rotate(least_loaded(candidates))
        if sid is None:
            return Decision(pick.instance_id, self.name, "no session id: least loaded")
        self._sessions[sid] = pick.instance_id
        self._sessions.move_to_end(sid)
        while len(self._sessions) > self.config.session_table_size:
            self._sessions.popitem(last=False)
        why = "its instance left" if bound is not None else "new session"
        return Decision(pick.instance_id, self.name, f"session {sid!r}: {why}, least loaded")

    def session_instance(self, session_id: str) -> str | None:
        """The instance a session is bound to, or None (does not refresh its recency)."""
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)
