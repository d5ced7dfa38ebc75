"""Measure the cost model on CPU for the bench-size model and write ``tables/cpu-bench.json``.

exec(x, y): prefill of an ``x``-token prompt whose first ``y`` tokens are cached, with the
bench-size Llama (hidden 512, 8 layers, 8 query / 4 KV heads, intermediate 1408, vocab 8000,
float32), plain torch, SDPA over the cached KV prefix plus the new tokens, LM head on the last
token. Also one decode step per (batch, context), the per-page swap cost between two DRAM tiers
(MemPool's page stores, batched copy) and the per-page transfer cost over loopback TCP.

Usage::

    python benchmarks/gpu/cpu_costmodel.py [--out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_stack import BENCH, LlamaStack  # noqa: E402

from sglang_memserve.gpu.costmodel import CostTable  # noqa: E402
from sglang_memserve.gpu.kv_store import CudaPagedKVStore, KVShape, PinnedHostKVStore  # noqa: E402
from sglang_memserve.gpu.swap import SwapEngine  # noqa: E402

PAGE = 16
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python",
                           "sglang_memserve", "gpu", "tables", "cpu-bench.json")


def best_time(fn: Callable[[], object], reps: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Shortest time of ``fn`` over ``reps`` runs after ``warmup`` runs.

    The minimum, not the median: development machines are shared, and other processes only
    ever add time.

    Args:
        fn: the work.
        reps: timed runs.
        warmup: untimed runs first.
        clock: ``time.perf_counter`` (wall) or ``time.thread_time`` (this thread's CPU time:
            with one torch thread, the time the work takes on an idle core, whatever else
            the machine runs).

    Returns:
        Seconds.
    """
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return min(ts)


def prefix_attn(prefix_k: list[torch.Tensor], prefix_v: list[torch.Tensor]):
    """Attention over a cached prefix plus the new tokens (causal among the new ones).

    Args:
        prefix_k: per layer ``[y, KVH, D]`` cached keys.
        prefix_v: per layer ``[y, KVH, D]`` cached values.

    Returns:
        An attention callable for :meth:`LlamaStack.forward`.
    """

    def attn(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y, n = prefix_k[layer].shape[0], q.shape[0]
        kk = torch.cat([prefix_k[layer], k]).transpose(0, 1)[None]
        vv = torch.cat([prefix_v[layer], v]).transpose(0, 1)[None]
        qq = q.transpose(0, 1)[None]
        if y == 0:
            o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True,
                                                                 enable_gqa=True)
        else:
            mask = torch.arange(y + n)[None, :] <= torch.arange(y, y + n)[:, None]
            o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask,
                                                                 enable_gqa=True)
        return o[0].transpose(0, 1)

    return attn


def decode_attn(ctx: int, batch: int, kvh: int, hd: int):
    """Attention of one new token per sequence over its own ``ctx``-token context.

    Args:
        ctx: context tokens per sequence.
        batch: sequences.
        kvh: KV heads.
        hd: head dim.

    Returns:
        An attention callable (context K/V shared across layers; timing only).
    """
    ks = torch.randn(batch, kvh, ctx + 1, hd)
    vs = torch.randn(batch, kvh, ctx + 1, hd)

    def attn(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ks[:, :, ctx] = k  # append in place, as a KV cache does
        vs[:, :, ctx] = v
        o = torch.nn.functional.scaled_dot_product_attention(q[:, :, None, :], ks, vs,
                                                             enable_gqa=True)
        return o[:, :, 0, :]

    return attn


def loopback_transfer_per_page(host: PinnedHostKVStore, pages: int, reps: int) -> float:
    """Seconds per page to send page images over one loopback TCP connection.

    Args:
        host: the DRAM store the pages come from (gathered with ``read_pages``).
        pages: pages per transfer.
        reps: timed transfers.

    Returns:
        Shortest seconds per page.
    """
    nbytes = pages * host.shape.page_nbytes
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def sink() -> None:
        conn, _ = srv.accept()
        buf = bytearray(1 << 20)
        with conn:
            while conn.recv_into(buf):
                pass

    th = threading.Thread(target=sink, daemon=True)
    th.start()
    cli = socket.create_connection(("127.0.0.1", port))
    ids = list(range(pages))

    def send() -> None:
        cli.sendall(memoryview(host.read_pages(ids).numpy()).cast("B"))

    t = best_time(send, reps)
    cli.close()
    th.join(timeout=10)
    srv.close()
    assert nbytes > 0
    return t / pages


def main() -> None:
    """Measure and write the CPU table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="tiny grid (smoke test)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # One torch thread: this thread's CPU time is the work's time on an idle core.
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    shape = BENCH
    xs = [64, 256] if args.quick else [64, 256, 512, 1024, 2048]
    fracs = [0.0, 0.5] if args.quick else [0.0, 0.25, 0.5, 0.75, 0.9]
    model = LlamaStack(shape, shape.num_layers, dtype=torch.float32, device="cpu")
    hd, kvh = shape.head_dim, shape.num_kv_heads
    t_start = time.time()
    points = []
    with torch.inference_mode():
        for x in xs:
            for f in fracs:
                y = min(int(round(f * x / PAGE)) * PAGE, x - 1)
                pk = [torch.randn(y, kvh, hd) for _ in range(shape.num_layers)]
                pv = [torch.randn(y, kvh, hd) for _ in range(shape.num_layers)]
                ids = torch.randint(0, shape.vocab, (x - y,))
                pos = torch.arange(y, x)
                attn = prefix_attn(pk, pv)
                t = best_time(lambda ids=ids, pos=pos, attn=attn: model.forward(ids, pos, attn),
                              args.reps, clock=clock)
                points.append((x, y, t))
                print(f"exec x={x:5d} y={y:5d}: {t * 1e3:9.2f} ms", flush=True)
        decode = []
        for b in ([1, 8] if args.quick else [1, 8, 32]):
            for c in ([256] if args.quick else [256, 1024, 4096]):
                attn = decode_attn(c, b, kvh, hd)
                ids = torch.randint(0, shape.vocab, (b,))
                pos = torch.full((b,), c)
                t = best_time(lambda ids=ids, pos=pos, attn=attn: model.forward(
                    ids, pos, attn, last_token_logits=False), args.reps, clock=clock)
                decode.append((b, c, t))
                print(f"decode batch={b:3d} ctx={c:5d}: {t * 1e3:8.2f} ms", flush=True)

    kv = KVShape(shape.num_layers, kvh, hd, PAGE, torch.float32)
    npages = 64 if args.quick else 512
    dev = CudaPagedKVStore(2 * npages, kv, device="cpu")
    dev.buffer.normal_()
    host = PinnedHostKVStore(2 * npages, kv, pin=False)
    eng = SwapEngine(dev, host)
    g = torch.Generator().manual_seed(1)
    dp = torch.randperm(2 * npages, generator=g)[:npages].tolist()
    hp = torch.randperm(2 * npages, generator=g)[:npages].tolist()
    t_out = best_time(lambda: eng.swap_out(dp, hp), args.reps + 2, clock=clock)
    t_in = best_time(lambda: eng.swap_in(hp, dp), args.reps + 2, clock=clock)
    t_tx = loopback_transfer_per_page(host, npages, args.reps + 2)
    print(f"swap out {t_out / npages * 1e6:.1f} us/page, in {t_in / npages * 1e6:.1f} us/page, "
          f"loopback TCP {t_tx * 1e6:.1f} us/page ({kv.page_nbytes} B/page)")

    table = CostTable(
        device=f"cpu: {platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} torch threads",
        model_shape=dict(shape.to_json(), dtype="float32", measured_layers=shape.num_layers),
        exec_points=points,
        swap_out_per_page_s=t_out / npages,
        swap_in_per_page_s=t_in / npages,
        transfer_per_page_s=t_tx,
        page_size=PAGE,
        page_nbytes=kv.page_nbytes,
        decode_points=decode,
        transfer_basis="measured: page images gathered from the DRAM tier and sent over one "
                       "loopback TCP connection (the CPU bench's instances share a host)",
        meta={
            "script": "benchmarks/gpu/cpu_costmodel.py",
            "method": f"shortest of {args.reps} runs after 1 warm-up, "
                      f"{'thread CPU time' if clock is time.thread_time else 'wall time'} with "
                      f"{args.threads} torch thread(s) (the machine is shared: CPU time is what "
                      f"an idle core would take); torch {torch.__version__}; SDPA over the "
                      "cached prefix; LM head on the last token; y rounded to pages",
            "swap": f"SwapEngine (torch mode) between two DRAM page stores, {npages} scattered "
                    "pages per call",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(time.time() - t_start, 1),
        },
    )
    table.save(args.out)
    print(f"wrote {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
