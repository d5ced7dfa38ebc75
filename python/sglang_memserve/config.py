"""MemServe's own instance configuration (on top of SGLang's ``ServerArgs``).

The launcher serializes it into the environment of the SGLang processes it starts
(``MEMSERVE_CONFIG``), so the cache backend built in the scheduler process reads the same values.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal

from sglang_memserve.validate import RequestLimits

Role = Literal["colocated", "prefill", "decode"]
CacheMode = Literal["memserve", "stock", "off"]
ROLES: tuple[str, ...] = ("colocated", "prefill", "decode")
CACHE_MODES: tuple[str, ...] = ("memserve", "stock", "off")
ENV_VAR = "MEMSERVE_CONFIG"


def control_endpoint(spec: str) -> str:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` as the control endpoint ``tcp://HOST:PORT``.

    Raises:
        ValueError: not that shape, or the port is not in 1..65535.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a peer is a HOST:PORT string, not {spec!r}")
    rest = spec.strip().removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad peer {spec!r}: expected HOST:PORT or tcp://HOST:PORT")
    return f"tcp://{host}:{int(port)}"


@dataclass(frozen=True)
class MemServeConfig:
    """Per-instance MemServe settings.

    Attributes:
        role: colocated (prefill and decode in one instance), prefill or decode.
        cache: ``memserve`` (MemPool-backed tree cache), ``stock`` (SGLang's own) or ``off``.
        instance_id: name of this instance in the pool and in KV events.
        host_pool_ratio: DRAM tier size as a multiple of the device KV pool (0 disables the tier).
        events_port: ZMQ PUB port of the KV-event publisher (0: a free port; -1: none).
        host: address every MemServe endpoint binds to.
        control_port: ZMQ port of the instance's control channel (snapshots, KV movement);
            0 picks a free port (the launcher gives a prefill instance its bootstrap port + 1,
            where decode instances find it).
        kv_return: decode only: when a request ends, push the KV of its prompt and generated
            tokens to the prefill instance that served it (PD-Caching-3).
        kv_return_peer: control endpoint to return KV to (default: from the request's
            bootstrap address, port + 1).
        peer_timeout_s: bound on each control request, lease and transfer step.
        secret_file: file holding the control channel's shared secret (the path only; the
            launcher exports it as ``MEMSERVE_SECRET_FILE`` to the SGLang processes); None:
            the environment's setting, if any.
        max_body_bytes, max_n: the launcher's request guard's bounds (``--max-payload-size``,
            ``--max-n``; :class:`~sglang_memserve.validate.RequestLimits`).
        peers: control endpoints (``tcp://HOST:PORT``) this instance may push KV to
            (``--mempool-peers``; ``kv_return_peer`` is one implicitly); None: any.
    """

    role: Role = "colocated"
    cache: CacheMode = "memserve"
    instance_id: str = "instance-0"
    host_pool_ratio: float = 0.0
    events_port: int = 0
    host: str = "127.0.0.1"
    control_port: int = 0
    kv_return: bool = False
    kv_return_peer: str | None = None
    peer_timeout_s: float = 10.0
    secret_file: str | None = None
    max_body_bytes: int = RequestLimits.max_body_bytes
    max_n: int = RequestLimits.max_n
    peers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.host_pool_ratio < 0:
            raise ValueError(f"host_pool_ratio must be >= 0, got {self.host_pool_ratio}")
        self.limits  # noqa: B018 -- validates them
        if self.peers is not None:  # normalized here: from_env hands a JSON list back
            extra = (self.kv_return_peer,) if self.kv_return_peer else ()
            object.__setattr__(self, "peers", tuple(dict.fromkeys(
                control_endpoint(p) for p in (*self.peers, *extra))))

    @property
    def limits(self) -> RequestLimits:
        """The request guard's bounds (raises ValueError on bad values)."""
        return RequestLimits(self.max_body_bytes, self.max_n)

    @property
    def dram_tier(self) -> bool:
        return self.host_pool_ratio > 0

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> MemServeConfig:
        """The launcher's config, or the defaults when SGLang was started by another launcher."""
        raw = os.environ.get(ENV_VAR)
        return cls(**json.loads(raw)) if raw else cls()
