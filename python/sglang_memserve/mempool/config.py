"""MemPool configuration (frozen; derived values are properties)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MemPoolConfig:
    """Settings of one MemPool instance.

    Attributes:
        page_size: tokens per page (every tier of the pool uses it).
        host: address every endpoint (Mooncake, control, events) binds to. Loopback by default:
            Mooncake has no authentication, anyone reaching its port can write registered memory.
        protocol: Mooncake protocol: ``"tcp"`` on CPU machines, ``"rdma"``/``"nvlink"`` elsewhere.
        device_name: Mooncake device (NIC) list for rdma; empty for tcp.
        transfer_timeout_s: bound on one transfer or control request; a failed or stuck transfer
            raises within about this long (Mooncake's own default is 30 s).
        max_batch_entries: segments per Mooncake batch call (it fails, and then stays broken for
            that peer, on batches of a few thousand entries).
        min_transfer_rate_bps: slowest rate a healthy transfer is assumed to reach; an incoming
            transfer's lease grows by its size at this rate.
        control_port / event_port: 0 picks a free port.
        heartbeat_s: an idle publisher repeats its last seq this often (from the control
            channel's thread), so that mirrors notice a lost last message.
    """

    page_size: int = 16
    host: str = "127.0.0.1"
    protocol: str = "tcp"
    device_name: str = ""
    transfer_timeout_s: float = 5.0
    max_batch_entries: int = 1024
    min_transfer_rate_bps: float = 50e6
    control_port: int = 0
    event_port: int = 0
    heartbeat_s: float = 1.0

    def __post_init__(self) -> None:
        if self.page_size <= 0:
            raise ValueError(f"page_size must be positive, got {self.page_size}")
        if self.transfer_timeout_s <= 0:
            raise ValueError("transfer_timeout_s must be positive")
        if self.max_batch_entries <= 0:
            raise ValueError("max_batch_entries must be positive")

    @property
    def mooncake_timeout_s(self) -> int:
        """MC_TRANSFER_TIMEOUT takes whole seconds."""
        return max(1, math.ceil(self.transfer_timeout_s))

    @property
    def txn_lease_s(self) -> float:
        """How long a destination keeps pages allocated for an incoming transfer whose source
        went silent. Longer than any write the source can still have in flight (its transfer is
        bounded by ``mooncake_timeout_s``), so reaped pages are never written after reuse."""
        return 2.0 * self.mooncake_timeout_s + 1.0
