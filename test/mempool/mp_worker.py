"""A MemPool in its own process, driven over a multiprocessing pipe (for multi-process tests).

Not a test module. The worker builds a pool with a layer-first tensor device tier and a Mooncake
agent, serves its control channel, sends its MemberInfo (JSON) to the parent and then answers
commands ``(name, *args)`` until ``("stop",)``. Errors come back as ``("err", type, message)``.
"""

from __future__ import annotations

import hashlib
import traceback

import torch

from sglang_memserve.mempool import (
    MemberInfo,
    MemPool,
    MemPoolConfig,
    TransferAgent,
    make_tensor_tier,
)

PS = 16  # tokens per page of the multi-process tests (here, not in conftest: several
# test folders have a conftest module, so "from conftest import" picks whichever came first)

LAYERS, HEADS, DIM = 2, 2, 64  # one 16-token page: 4 segments of 4 KiB


def make_pool(instance_id: str, num_pages: int, cfg: MemPoolConfig) -> MemPool:
    tier = make_tensor_tier(
        "device", num_pages, cfg.page_size, num_layers=LAYERS, heads=HEADS, head_dim=DIM
    )
    return MemPool(cfg, instance_id, {"device": tier}, transfer=TransferAgent(cfg))


def page_content(path_key: int, nbytes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(path_key & 0x7FFF_FFFF)
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)


def fill(pool: MemPool, tokens: list[int], pages: list[int] | None = None) -> list[int]:
    """Write deterministic content for every whole page of ``tokens`` and index it."""
    path = pool.tree.to_pages(tokens)
    if pages is None:
        pages = pool.alloc_mem(len(path))
    store = pool.tiers["device"].store
    nb = store.layout.page_nbytes
    data = torch.stack([page_content(hash(tuple(path[: i + 1])), nb) for i in range(len(path))])
    store.write_pages(pages, data)
    r = pool.insert(tokens, pages)
    if r.duplicates:
        pool.free_mem(r.duplicates)
    return pages


def checksums(pool: MemPool, pages: list[int], tier: str = "device") -> list[str]:
    data = pool.tiers[tier].store.read_pages(pages)
    return [hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16] for row in data]


def matched_checksums(pool: MemPool, tokens: list[int]) -> list[str]:
    return checksums(pool, pool.match(tokens).pages("device"))


def run_worker(conn, instance_id: str, num_pages: int, cfg_kwargs: dict) -> None:
    cfg = MemPoolConfig(**cfg_kwargs)
    pool = make_pool(instance_id, num_pages, cfg)
    conn.send(pool.serve().to_json())
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "stop":
                conn.send(("ok", None))
                break
            elif cmd == "fill":
                out = fill(pool, *args)
            elif cmd == "scattered_fill":  # every other page: no contiguous runs to merge
                (tokens,) = args
                n = len(tokens) // cfg.page_size
                got = pool.alloc_mem(2 * n)
                pool.free_mem(got[1::2])
                out = fill(pool, tokens, got[::2])
            elif cmd == "alloc":
                out = pool.alloc_mem(*args)
            elif cmd == "checksums":
                out = checksums(pool, *args)
            elif cmd == "matched_checksums":
                out = matched_checksums(pool, *args)
            elif cmd == "join":
                pool.join(MemberInfo.from_json(args[0]))
                out = None
            elif cmd == "send":
                dst, tokens, pages = args
                r = pool.transfer_with_insert(dst, tokens, pages)
                out = (r.pages_sent, r.pages_skipped, r.bytes_sent)
            elif cmd == "integrity":
                out = pool.check_integrity()
            elif cmd == "pending":
                out = pool.pending_transfers
            else:
                raise ValueError(f"unknown command {cmd}")
            conn.send(("ok", out))
        except Exception as e:  # noqa: BLE001 -- report every failure to the parent
            conn.send(("err", type(e).__name__, f"{e}\n{traceback.format_exc()}"))
    pool.close()
