"""Routing policies, registered by name: ``make_policy(name, config)``.

``round_robin``, ``least_load``, ``session``, ``prefix`` (sglang-router's cache_aware rule) and
``memserve`` (the default: estimated TTFT from the cost model, with prefix migration).
"""

from . import memserve, prefix, simple  # noqa: F401  (fill the registry)
from .base import (
    POLICIES,
    Candidate,
    Decision,
    Estimate,
    Load,
    NoCandidate,
    Policy,
    PolicyConfig,
    RouteRequest,
    make_policy,
    register_policy,
)

DEFAULT_POLICY = "memserve"

__all__ = [
    "DEFAULT_POLICY", "POLICIES", "Candidate", "Decision", "Estimate", "Load", "NoCandidate",
    "Policy", "PolicyConfig", "RouteRequest", "make_policy", "register_policy",
]
