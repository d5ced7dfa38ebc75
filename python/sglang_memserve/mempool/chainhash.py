"""Chained page hashes: the name of a page path in KV events (format v2).

``h_0 = SEED`` and ``h_i = H(h_{i-1}, tokens of page i)``, a stable 64-bit hash (xxh3_64 seeded
by the parent's hash when xxhash is installed, else blake2b with an 8-byte digest over the parent
hash and the packed tokens). A hash only *names* a path on the wire: trees stay keyed by tokens,
and a mirror recomputes every hash from the tokens it receives.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

SEED = 0x6D656D7365727665  # "memserve": the hash of the empty path (the root)

try:
    import xxhash

    def _digest(parent: int, data: bytes) -> int:
        return xxhash.xxh3_64_intdigest(data, parent)

    HASH_NAME = "xxh3_64"
except ImportError:  # pragma: no cover -- xxhash is pinned in requirements/
    import hashlib

    def _digest(parent: int, data: bytes) -> int:
        return int.from_bytes(
            hashlib.blake2b(parent.to_bytes(8, "little") + data, digest_size=8).digest(), "little")

    HASH_NAME = "blake2b-64"


@lru_cache(maxsize=64)
def _packer(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}q")


def page_hash(parent: int, page: Sequence[int]) -> int:
    """Chain hash of a page whose parent path hashes to ``parent``."""
    return _digest(parent, _packer(len(page)).pack(*page))


def chain(parent: int, pages: Sequence[Sequence[int]]) -> list[int]:
    """Hashes of ``pages`` appended, one by one, to a path hashing to ``parent``."""
    out = []
    for p in pages:
        parent = page_hash(parent, p)
        out.append(parent)
    return out
