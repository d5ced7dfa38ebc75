"""Authentication of the control channel: an HMAC-SHA256 over every message, with a shared secret.

When a secret is configured, each request carries one extra ZMQ frame before its body::

    b"MSV1" | nonce (16 random bytes) | timestamp (uint64 ms since the epoch, big-endian) | mac (32)

with ``mac = HMAC-SHA256(secret, b"memserve-rpc-req\\0" + nonce + timestamp + body)``. The server
refuses (typed :class:`AuthError` reply, nothing executed) a missing or wrong MAC, a timestamp more
than ``max_skew_s`` away from its clock, and a nonce it has already accepted within that window
(a replay). Its reply carries ``HMAC(secret, b"memserve-rpc-rep\\0" + request nonce + body)``, so a
caller also knows that the answer comes from a holder of the secret and belongs to its request.
The distinct labels keep a reply from being replayed as a request.

The KV event stream (``events.EventPublisher``) is signed with the same secret: each ZMQ PUB
message ``[topic, payload]`` gets a third frame ``b"MSE1" + HMAC-SHA256(secret,
b"memserve-evt\0" + len(topic) (2 bytes) + topic + payload)``. Replays need no nonce there: a
payload carries its publisher's epoch and seq, and a mirror applies each seq once.

The secret is read from a file (``--mempool-secret-file PATH`` on the launcher and the router, or
``MEMSERVE_SECRET_FILE``) or from ``MEMSERVE_SECRET``; never from a command-line value, which
``ps`` shows to every user of the host.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .errors import MemPoolError

SECRET_ENV = "MEMSERVE_SECRET"
SECRET_FILE_ENV = "MEMSERVE_SECRET_FILE"
MAGIC = b"MSV1"
NONCE_LEN = 16
MAC_LEN = 32
HEADER_LEN = len(MAGIC) + NONCE_LEN + 8 + MAC_LEN
_REQ = b"memserve-rpc-req\0"
_REP = b"memserve-rpc-rep\0"
MIN_SECRET_LEN = 16
EVENT_MAGIC = b"MSE1"
EVENT_MAC_LEN = len(EVENT_MAGIC) + MAC_LEN
_EVT = b"memserve-evt\0"


class AuthError(MemPoolError):
    """A control message was not authenticated: no or a wrong MAC, a stale timestamp, a
    replayed nonce, or a secret that cannot be loaded. Nothing was executed."""


@dataclass(frozen=True)
class ControlAuth:
    """A shared secret and the window within which a signed message is accepted.

    Attributes:
        secret: the shared key (at least 16 bytes).
        max_skew_s: a request whose timestamp differs from the receiver's clock by more is
            stale; nonces are remembered for this long to catch replays.
    """

    secret: bytes
    max_skew_s: float = 30.0

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_LEN:
            raise AuthError(f"the control-channel secret must have at least {MIN_SECRET_LEN} "
                            f"bytes, got {len(self.secret)}")
        if self.max_skew_s <= 0:
            raise AuthError(f"max_skew_s must be > 0, got {self.max_skew_s}")

    def __repr__(self) -> str:  # never print the secret
        return f"ControlAuth(secret=<{len(self.secret)} bytes>, max_skew_s={self.max_skew_s})"

    def sign_request(self, body: bytes) -> tuple[bytes, bytes]:
        """Returns (header frame, nonce) for ``body``; changes nothing."""
        nonce = secrets.token_bytes(NONCE_LEN)
        ts = int(time.time() * 1000).to_bytes(8, "big")
        mac = hmac.new(self.secret, _REQ + nonce + ts + body, hashlib.sha256).digest()
        return MAGIC + nonce + ts + mac, nonce

    def reply_mac(self, nonce: bytes, body: bytes) -> bytes:
        """The MAC a reply to the request with ``nonce`` carries."""
        return hmac.new(self.secret, _REP + nonce + body, hashlib.sha256).digest()

    def event_mac(self, topic: bytes, payload: bytes) -> bytes:
        """The third frame of a signed KV event message (see the module docstring)."""
        msg = _EVT + len(topic).to_bytes(2, "big") + topic + payload
        return EVENT_MAGIC + hmac.new(self.secret, msg, hashlib.sha256).digest()

    def verify_event(self, topic: bytes, payload: bytes, mac: bytes | None) -> None:
        """Check a KV event message's MAC frame; changes nothing.

        Raises:
            AuthError: no MAC frame (unsigned), a malformed one, or a MAC that does not verify
                (another secret, or an altered topic or payload).
        """
        if mac is None:
            raise AuthError("unsigned event message (this feed needs signed events)")
        if len(mac) != EVENT_MAC_LEN or not mac.startswith(EVENT_MAGIC):
            raise AuthError(f"malformed event MAC frame ({len(mac)} bytes)")
        if len(topic) >= 1 << 16 or not hmac.compare_digest(mac, self.event_mac(topic, payload)):
            raise AuthError("bad event MAC: wrong secret or altered message")


class NonceCache:
    """Nonces accepted within the skew window (thread-safe); what makes a replay detectable.

    Args:
        window_s: how long a nonce is remembered after its timestamp.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, nonce: bytes, ts: float, now: float) -> bool:
        """Record ``nonce``; returns False (and records nothing) if it was already seen.

        Entries whose timestamp left the window are dropped first (their messages are stale
        anyway), so the cache holds at most the window's worth of requests."""
        with self._lock:
            while self._seen:
                first, expiry = next(iter(self._seen.items()))
                if expiry >= now:
                    break
                del self._seen[first]
            if nonce in self._seen:
                return False
            self._seen[nonce] = ts + self.window_s
            return True

    def __len__(self) -> int:
        return len(self._seen)


class RequestVerifier:
    """The server side: checks a request's header frame against its body.

    Args:
        auth: the shared secret and window.
    """

    def __init__(self, auth: ControlAuth) -> None:
        self.auth = auth
        self._nonces = NonceCache(2 * auth.max_skew_s)

    def verify(self, header: bytes | None, body: bytes) -> bytes:
        """Returns the request's nonce (for the reply's MAC); records it as seen.

        Raises:
            AuthError: missing/malformed header, wrong MAC, stale timestamp, replayed nonce.
        """
        if header is None:
            raise AuthError("unauthenticated request: this control channel needs a signed "
                            "message (configure the shared secret)")
        if len(header) != HEADER_LEN or not header.startswith(MAGIC):
            raise AuthError(f"malformed auth header ({len(header)} bytes)")
        nonce = header[4:4 + NONCE_LEN]
        ts_raw = header[4 + NONCE_LEN:12 + NONCE_LEN]
        mac = header[12 + NONCE_LEN:]
        want = hmac.new(self.auth.secret, _REQ + nonce + ts_raw + body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise AuthError("bad MAC: wrong secret or altered message")
        now = time.time()
        ts = int.from_bytes(ts_raw, "big") / 1000
        if abs(now - ts) > self.auth.max_skew_s:
            raise AuthError(f"stale request: timestamp {now - ts:+.1f}s off "
                            f"(window {self.auth.max_skew_s:.0f}s)")
        if not self._nonces.add(nonce, ts, now):
            raise AuthError("replayed request: nonce already used")
        return nonce


@functools.lru_cache(maxsize=8)
def _read_secret(path: str) -> bytes:
    # Cached: rpc_call resolves the environment's secret on every call. A rotated file takes
    # effect after a restart.
    try:
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise AuthError(f"cannot read the control-channel secret file {path!r}: {e}") from e
    if not data:
        raise AuthError(f"the control-channel secret file {path!r} is empty")
    return data


def load_auth(secret_file: str | None = None, *, max_skew_s: float = 30.0) -> ControlAuth | None:
    """The configured secret: ``secret_file``, else ``$MEMSERVE_SECRET_FILE``, else
    ``$MEMSERVE_SECRET``; None when none is set (the channel is then unauthenticated).

    Raises:
        AuthError: the file cannot be read, is empty, or the secret is too short.
    """
    path = secret_file or os.environ.get(SECRET_FILE_ENV)
    if path:
        return ControlAuth(_read_secret(os.path.abspath(path)), max_skew_s)
    raw = os.environ.get(SECRET_ENV)
    return ControlAuth(raw.encode(), max_skew_s) if raw else None
