"""Every GPU benchmark of MemPool's device path, in one process (see ``run_device.sh``).

Sections (each guarded: a failure is recorded and the next section still runs):

* ``ceilings``: device copy bandwidth (bytes read + written), pinned host<->device copy.
* ``swap``: :class:`SwapEngine` over scattered Llama-3-8B pages (2 MiB each), every mode,
  both directions, against the pinned copy bandwidth; overlap with a matmul stream.
* ``attention``: FlashInfer paged prefill (append) and decode reading MemPool pages: error
  against an fp32 reference, speed against a freshly laid-out cache, decode bandwidth sweep.
* ``costmodel``: exec(x, y) on a Llama-3-8B layer shape (random weights, a few layers, scaled
  to 32), decode steps, and the cost table JSON.

Results go to ``<out>/results.json`` (rewritten after every section) and the table to
``<out>/costmodel.json``.

Usage::

    python benchmarks/gpu/gpu_bench.py --out DIR [--sections ceilings,swap,...] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_stack import LLAMA3_8B, LlamaStack  # noqa: E402

from sglang_memserve.gpu.attention import (  # noqa: E402
    PagedAttention,
    page_table,
    reference_attention,
    relative_error,
    token_slots,
)
from sglang_memserve.gpu.costmodel import CostTable, device_table_name  # noqa: E402
from sglang_memserve.gpu.kv_store import CudaPagedKVStore, KVShape, PinnedHostKVStore  # noqa: E402
from sglang_memserve.gpu.swap import SwapEngine  # noqa: E402

GiB = 1 << 30
PAGE = 16
LLAMA_KV = KVShape(LLAMA3_8B.num_layers, LLAMA3_8B.num_kv_heads, LLAMA3_8B.head_dim, PAGE,
                   torch.bfloat16)
ATTN_KV = KVShape(1, 8, 128, PAGE, torch.bfloat16)  # one layer of the 32/8/128 shape
NQ = 32
# Assumed inter-instance link for the transfer cost: one 200 Gb/s RDMA NIC (cannot be measured
# on a one-GPU machine).
NIC_BYTES_PER_S = 25e9


def log(msg: str) -> None:
    """Print with a timestamp, flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _median_s(fn: Callable[[], object], reps: int, warmup: int,
              once: Callable[[Callable[[], object]], float]) -> float:
    """Median of ``once(fn)`` over ``reps`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median(once(fn) for _ in range(reps))


def _cuda_once(fn: Callable[[], object]) -> float:
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e-3


def _wall_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_time(fn: Callable[[], object], reps: int = 10, warmup: int = 2) -> float:
    """Median seconds of ``fn`` on the current stream, timed with CUDA events per run.

    Args:
        fn: the work (enqueues GPU work).
        reps: timed runs.
        warmup: untimed runs first.

    Returns:
        Median seconds.
    """
    return _median_s(fn, reps, warmup, _cuda_once)


_CYCLES_PER_MS: list[float] = []


def _cycles_per_ms() -> float:
    """GPU clock cycles per millisecond, calibrated once with ``torch.cuda._sleep``."""
    if not _CYCLES_PER_MS:
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.cuda._sleep(20_000_000)
        b.record()
        b.synchronize()
        _CYCLES_PER_MS.append(2e7 / a.elapsed_time(b))
    return _CYCLES_PER_MS[0]


def gpu_time(fn: Callable[[], object], reps: int = 10, warmup: int = 2) -> float:
    """Median GPU seconds of ``fn`` with the host's launch overhead hidden.

    A sleep kernel holds the stream while the host enqueues ``fn``, so ``fn``'s kernels then
    run back to back, as they do when replayed from a CUDA graph (how SGLang runs decode). The
    sleep lasts twice the measured enqueue time plus 1 ms.

    Args:
        fn: the work (must not synchronize the host with the device).
        reps: timed runs.
        warmup: untimed runs first.

    Returns:
        Median seconds between events around ``fn``.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    enqueue_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    cycles = int(_cycles_per_ms() * min(2 * enqueue_ms + 1, 2000))
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(ts)


def bench_small(fn: Callable[[], object]) -> float:
    """Median seconds of a short kernel (Triton's ``do_bench``: L2 flushed between runs).

    Args:
        fn: the work.

    Returns:
        Median seconds.
    """
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median") * 1e-3


def wall_time(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    """Median host wall seconds of ``fn`` (which must block until its work is done).

    Args:
        fn: the work.
        reps: timed runs.
        warmup: untimed runs first.

    Returns:
        Median seconds.
    """
    return _median_s(fn, reps, warmup, _wall_once)


# --------------------------------------------------------------------------------------------
def sec_ceilings(res: dict[str, Any], quick: bool) -> None:
    """Copy ceilings: device copy (read+write counted), pinned H2D and D2H."""
    n = (256 << 20) if quick else 2 * GiB
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = cuda_time(lambda a=a, b=b: b.copy_(a), reps=20)
    res["d2d_copy_GBps"] = 2 * n / t / 1e9
    del a, b
    n = (256 << 20) if quick else GiB
    h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    d = torch.empty(n, dtype=torch.uint8, device="cuda")
    res["h2d_pinned_GBps"] = n / cuda_time(lambda: d.copy_(h, non_blocking=True)) / 1e9
    res["d2h_pinned_GBps"] = n / cuda_time(lambda: h.copy_(d, non_blocking=True)) / 1e9
    res["copy_bytes"] = n
    log(f"ceilings: D2D {res['d2d_copy_GBps']:.0f} GB/s (r+w), H2D {res['h2d_pinned_GBps']:.1f}"
        f", D2H {res['d2h_pinned_GBps']:.1f} GB/s")


# --------------------------------------------------------------------------------------------
def sec_swap(res: dict[str, Any], ceil: dict[str, Any], quick: bool) -> None:
    """Swap of scattered pages, every mode and direction, plus overlap with compute."""
    dev_pages, host_pages = (512, 384) if quick else (3072, 2048)
    dev = CudaPagedKVStore(dev_pages, LLAMA_KV, zero=False)
    dev.buffer.normal_()
    host = PinnedHostKVStore(host_pages, LLAMA_KV)
    res["page_nbytes"] = LLAMA_KV.page_nbytes
    res["device_pool_GiB"] = dev_pages * LLAMA_KV.page_nbytes / GiB
    res["host_pool_GiB"] = host_pages * LLAMA_KV.page_nbytes / GiB
    g = torch.Generator().manual_seed(0)
    h2d, d2h = ceil.get("h2d_pinned_GBps"), ceil.get("d2h_pinned_GBps")
    engines = {}
    for mode in ("staged", "direct", "torch"):
        try:
            engines[mode] = SwapEngine(dev, host, mode=mode, chunk_pages=32)
        except Exception as e:  # noqa: BLE001
            res[f"{mode}_error"] = repr(e)
    rows = []
    sizes = [32, 256] if quick else [32, 256, 1024]
    for n in sizes:
        dp = torch.randperm(dev_pages, generator=g)[:n].tolist()
        hp_scattered = torch.randperm(host_pages, generator=g)[:n].tolist()
        hp_runs = list(range(n))
        for mode, eng in engines.items():
            if mode == "torch" and n > 256:
                continue
            for hosts, hname in ((hp_scattered, "scattered"), (hp_runs, "consecutive")):
                if hname == "consecutive" and n != sizes[-1]:
                    continue
                try:
                    t_out = wall_time(lambda eng=eng, dp=dp, hp=hosts: eng.swap_out(dp, hp)
                                      .synchronize())
                    # Spot check: the host pages hold the device pages' images.
                    chk = [0, n // 2, n - 1]
                    ok = torch.equal(host.read_pages([hosts[i] for i in chk]),
                                     dev.read_pages([dp[i] for i in chk]))
                    t_in = wall_time(lambda eng=eng, dp=dp, hp=hosts: eng.swap_in(hp, dp)
                                     .synchronize())
                except Exception as e:  # noqa: BLE001
                    rows.append({"mode": mode, "pages": n, "host": hname, "error": repr(e)})
                    log(f"swap {mode} n={n} failed: {e!r}")
                    continue
                nb = n * LLAMA_KV.page_nbytes
                row = {"mode": mode, "pages": n, "host": hname, "bytes": nb,
                       "out_s": t_out, "in_s": t_in, "out_GBps": nb / t_out / 1e9,
                       "in_GBps": nb / t_in / 1e9, "spot_check_ok": ok}
                if d2h and h2d:
                    row["out_frac_of_copy"] = row["out_GBps"] / d2h
                    row["in_frac_of_copy"] = row["in_GBps"] / h2d
                rows.append(row)
                log(f"swap {mode:6s} {hname:11s} n={n:5d}: out {row['out_GBps']:6.1f} GB/s "
                    f"({row.get('out_frac_of_copy', 0):.0%}), in {row['in_GBps']:6.1f} GB/s "
                    f"({row.get('in_frac_of_copy', 0):.0%}) check={ok}")
    res["rows"] = rows

    # Overlap: matmuls on the current stream while a swap runs on the side streams.
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(m)
    n = sizes[-1]
    dp = torch.randperm(dev_pages, generator=g)[:n].tolist()
    hp = torch.randperm(host_pages, generator=g)[:n].tolist()
    t_mm = cuda_time(lambda: torch.mm(m, m, out=out), reps=5)
    swap_s = next((r["out_s"] for r in rows if r.get("mode") == "staged" and r["pages"] == n
                   and "out_s" in r), 0.04)
    k = max(1, int(swap_s / t_mm))
    ov = {}
    variants = [(m_, e_) for m_, e_ in engines.items() if m_ != "torch"]
    variants.append(("staged-issued-by-caller",
                     SwapEngine(dev, host, mode="staged", async_enqueue=False)))
    for mode, eng in variants:
        for direction in ("out", "in"):
            def swap(eng=eng, direction=direction):
                return eng.swap_out(dp, hp) if direction == "out" else eng.swap_in(hp, dp)

            def compute():
                for _ in range(k):
                    torch.mm(m, m, out=out)

            def both(swap=swap):
                h = swap()
                compute()
                torch.cuda.synchronize()
                h.synchronize()

            def issue(swap=swap):
                t0 = time.perf_counter()
                h = swap()
                dt = time.perf_counter() - t0
                h.synchronize()
                return dt

            t_c = wall_time(lambda: (compute(), torch.cuda.synchronize()), reps=3)
            t_s = wall_time(lambda swap=swap: swap().synchronize(), reps=3)
            t_b = wall_time(both, reps=3)
            t_i = statistics.median(issue() for _ in range(3))
            hidden = (t_c + t_s - t_b) / min(t_c, t_s)
            ov[f"{mode}_{direction}"] = {"compute_s": t_c, "swap_s": t_s, "both_s": t_b,
                                         "hidden_frac": hidden, "call_returns_after_s": t_i,
                                         "swap_slowdown_in_overlap": t_b / t_s}
            log(f"overlap {mode} {direction}: compute {t_c * 1e3:.1f} ms, swap {t_s * 1e3:.1f} "
                f"ms, both {t_b * 1e3:.1f} ms -> {hidden:.0%} of the shorter hidden; call "
                f"returns after {t_i * 1e3:.2f} ms")
    res["overlap"] = ov


# --------------------------------------------------------------------------------------------
def sec_attention(res: dict[str, Any], ceil: dict[str, Any], quick: bool) -> None:
    """FlashInfer over MemPool pages: correctness, MemPool vs fresh layout, decode sweep."""
    import flashinfer

    res["flashinfer"] = flashinfer.__version__
    max_tokens = (1 << 17) if quick else (1 << 20)
    pool_pages = max_tokens // PAGE + 2048
    pool = CudaPagedKVStore(pool_pages, ATTN_KV, zero=False)
    pool.buffer.normal_()
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(pool_pages, generator=g)

    def mempool_pages(kv_lens: list[int]) -> list[list[int]]:
        """Scattered pool pages (a pool after churn), distinct across requests."""
        out, off = [], 0
        for n in kv_lens:
            k = -(-n // PAGE)
            out.append(perm[off:off + k].tolist())
            off += k
        return out

    def fresh_copy(pages: list[list[int]]) -> tuple[CudaPagedKVStore, list[list[int]]]:
        """A freshly laid-out store holding the same KV, requests' pages contiguous."""
        total = sum(len(p) for p in pages)
        fresh = CudaPagedKVStore(total, ATTN_KV, zero=False)
        flat = [p for ps in pages for p in ps]
        pool.copy_pages(flat, fresh, list(range(total)))
        out, off = [], 0
        for ps in pages:
            out.append(list(range(off, off + len(ps))))
            off += len(ps)
        return fresh, out

    attn_pool = {tc: PagedAttention(pool, NQ, decode_tensor_cores=tc) for tc in (False, True)}

    # Correctness: prefill (append) and decode against fp32, MemPool == fresh bit for bit.
    corr = {}
    kv_lens = [512, 1100, 2047, 3333]
    qo_lens = [512, 100, 1, 333]  # first request: no cached prefix
    pages = mempool_pages(kv_lens)
    q = torch.randn(sum(qo_lens), NQ, 128, device="cuda", dtype=torch.bfloat16)
    tab = page_table(pages, kv_lens, qo_lens, PAGE, device="cuda")
    ap = attn_pool[False]
    ap.plan_prefill(tab)
    out = ap.run_prefill(0, q)
    ref = reference_attention(q, pool, 0, pages, kv_lens, qo_lens)
    corr["prefill_rel_err"] = relative_error(out, ref)
    fresh, fpages = fresh_copy(pages)
    af = PagedAttention(fresh, NQ)
    af.plan_prefill(page_table(fpages, kv_lens, qo_lens, PAGE, device="cuda"))
    corr["prefill_equal_to_fresh"] = bool(torch.equal(af.run_prefill(0, q), out))
    qd = torch.randn(len(kv_lens), NQ, 128, device="cuda", dtype=torch.bfloat16)
    for tc, a in attn_pool.items():
        a.plan_decode(tab)
        o = a.run_decode(0, qd)
        r = reference_attention(qd, pool, 0, pages, kv_lens, [1] * len(kv_lens))
        corr[f"decode_rel_err_tc{int(tc)}"] = relative_error(o, r)
    af.plan_decode(page_table(fpages, kv_lens, [1] * 4, PAGE, device="cuda"))
    attn_pool[False].plan_decode(tab)
    corr["decode_equal_to_fresh"] = bool(torch.equal(af.run_decode(0, qd),
                                                     attn_pool[False].run_decode(0, qd)))
    res["correctness"] = corr
    log(f"attention correctness: {corr}")
    del fresh, af

    # MemPool vs fresh layout, interleaved rounds.
    cmp = []
    cases = [("prefill", [4096] * 1, [2048] * 1), ("prefill", [1280] * 16, [256] * 16),
             ("decode", [4096] * 64, [1] * 64), ("decode", [16384] * 8, [1] * 8)]
    if quick:
        cases = [("prefill", [1280] * 4, [256] * 4), ("decode", [2048] * 16, [1] * 16)]
    for kind, kvl, qol in cases:
        pages = mempool_pages(kvl)
        fresh, fpages = fresh_copy(pages)
        af = PagedAttention(fresh, NQ)
        ap = attn_pool[False]
        qq = torch.randn(sum(qol), NQ, 128, device="cuda", dtype=torch.bfloat16)
        t_pool, t_fresh = [], []
        for _ in range(3):
            for a, pg, acc in ((ap, pages, t_pool), (af, fpages, t_fresh)):
                tb = page_table(pg, kvl, qol, PAGE, device="cuda")
                if kind == "prefill":
                    a.plan_prefill(tb)
                    acc.append(bench_small(lambda a=a, qq=qq: a.run_prefill(0, qq)))
                else:
                    a.plan_decode(tb)
                    acc.append(bench_small(lambda a=a, qq=qq: a.run_decode(0, qq)))
        row = {"kind": kind, "batch": len(kvl), "kv_len": kvl[0], "qo_len": qol[0],
               "mempool_s": statistics.median(t_pool), "fresh_s": statistics.median(t_fresh),
               "mempool_runs_s": t_pool, "fresh_runs_s": t_fresh}
        row["mempool_over_fresh"] = row["mempool_s"] / row["fresh_s"]
        cmp.append(row)
        log(f"{kind} {len(kvl)}x{kvl[0]} (+{qol[0]}): mempool {row['mempool_s'] * 1e3:.3f} ms, "
            f"fresh {row['fresh_s'] * 1e3:.3f} ms, ratio {row['mempool_over_fresh']:.3f}")
        del fresh, af
    res["mempool_vs_fresh"] = cmp

    # Decode bandwidth sweep over MemPool pages.
    d2d = ceil.get("d2d_copy_GBps")
    sweep = []
    batches = [1, 8, 32, 64, 128] if not quick else [8, 64]
    ctxs = [512, 2048, 4096, 8192, 16384] if not quick else [1024, 2048]
    for tc, a in attn_pool.items():
        for b in batches:
            for c in ctxs:
                if b * c > max_tokens:
                    continue
                kvl = [c] * b
                a.plan_decode(page_table(mempool_pages(kvl), kvl, [1] * b, PAGE, device="cuda"))
                qq = torch.randn(b, NQ, 128, device="cuda", dtype=torch.bfloat16)
                t = bench_small(lambda a=a, qq=qq: a.run_decode(0, qq))
                nbytes = b * c * ATTN_KV.seg_nbytes * 2 // PAGE
                row = {"tensor_cores": tc, "batch": b, "ctx": c, "s": t,
                       "kv_GBps": nbytes / t / 1e9}
                if d2d:
                    row["frac_of_copy"] = row["kv_GBps"] / d2d
                sweep.append(row)
                log(f"decode tc={int(tc)} {b:4d} x {c:6d}: {t * 1e3:7.3f} ms "
                    f"{row['kv_GBps']:7.0f} GB/s ({row.get('frac_of_copy', 0):.0%} of copy)")
    res["decode_sweep"] = sweep
    best = max(sweep, key=lambda r: r["kv_GBps"])
    res["decode_best"] = best


# --------------------------------------------------------------------------------------------
def sec_costmodel(res: dict[str, Any], swap_res: dict[str, Any], ceil: dict[str, Any],
                  out_dir: str, quick: bool) -> None:
    """exec(x, y) and decode steps on a Llama-3-8B layer shape; writes the cost table."""
    shape = LLAMA3_8B
    layers = 2 if quick else 4
    kv = KVShape(layers, shape.num_kv_heads, shape.head_dim, PAGE, torch.bfloat16)
    xs = [256, 1024, 4096] if quick else [64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    fracs = [0.0, 0.5, 0.9] if quick else [0.0, 0.25, 0.5, 0.75, 0.9]
    dec_b = [1, 16] if quick else [1, 8, 32, 64, 128]
    dec_c = [1024] if quick else [1024, 4096]
    pages_needed = max(max(xs), max(dec_b) * (max(dec_c) + 1)) // PAGE + max(dec_b) + 16
    store = CudaPagedKVStore(pages_needed, kv, zero=False)
    store.buffer.normal_()
    model = LlamaStack(shape, layers, dtype=torch.bfloat16, device="cuda")
    pa = PagedAttention(store, shape.num_heads, workspace_mb=512)
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(pages_needed, generator=g)

    points, detail = [], []
    for x in xs:
        for f in fracs:
            y = min(int(round(f * x / PAGE)) * PAGE, x - 1)
            pages = [perm[: -(-x // PAGE)].tolist()]
            pa.plan_prefill(page_table(pages, [x], [x - y], PAGE, device="cuda"))
            slots = token_slots(pages, [y], [x], PAGE, device="cuda")
            ids = torch.randint(0, shape.vocab, (x - y,), device="cuda")
            pos = torch.arange(y, x, device="cuda")

            def attn(layer, q, k, v, slots=slots):
                store.write_kv(layer, slots, k, v)
                return pa.run_prefill(layer, q)

            reps = 3 if x >= 16384 else 5
            with torch.inference_mode():
                fwd = functools.partial(model.forward, ids, pos, attn)
                fwd0 = functools.partial(model.forward, ids, pos, attn, layers=0)
                t_l, t_0 = gpu_time(fwd, reps=reps), gpu_time(fwd0, reps=reps)
                e_l, e_0 = cuda_time(fwd, reps=reps), cuda_time(fwd0, reps=reps)
            t = t_0 + (t_l - t_0) * shape.num_layers / layers
            te = e_0 + (e_l - e_0) * shape.num_layers / layers
            points.append((x, y, t))
            detail.append({"x": x, "y": y, "measured_layers_s": t_l, "no_layers_s": t_0,
                           "scaled_s": t, "eager_measured_layers_s": e_l, "eager_no_layers_s": e_0,
                           "eager_scaled_s": te})
            log(f"exec x={x:6d} y={y:6d}: {t * 1e3:9.2f} ms GPU, {te * 1e3:9.2f} ms eager "
                f"(32 layers; {layers} measured {t_l * 1e3:.2f} ms, head {t_0 * 1e3:.2f} ms)")
    res["exec_detail"] = detail

    decode, dec_detail = [], []
    for b in dec_b:
        for c in dec_c:
            kvl = [c + 1] * b
            pages, off = [], 0
            for n in kvl:
                k = -(-n // PAGE)
                pages.append(perm[off:off + k].tolist())
                off += k
            pa.plan_decode(page_table(pages, kvl, [1] * b, PAGE, device="cuda"))
            slots = token_slots(pages, [c] * b, [c + 1] * b, PAGE, device="cuda")
            ids = torch.randint(0, shape.vocab, (b,), device="cuda")
            pos = torch.full((b,), c, device="cuda")

            def dattn(layer, q, k, v, slots=slots):
                store.write_kv(layer, slots, k, v)
                return pa.run_decode(layer, q)

            with torch.inference_mode():
                fwd = functools.partial(model.forward, ids, pos, dattn)
                fwd0 = functools.partial(model.forward, ids, pos, dattn, layers=0)
                t_l, t_0 = gpu_time(fwd, reps=10), gpu_time(fwd0, reps=10)
                e_l, e_0 = cuda_time(fwd, reps=10), cuda_time(fwd0, reps=10)
            t = t_0 + (t_l - t_0) * shape.num_layers / layers
            te = e_0 + (e_l - e_0) * shape.num_layers / layers
            decode.append((b, c, t))
            dec_detail.append({"batch": b, "ctx": c, "scaled_s": t, "eager_scaled_s": te})
            log(f"decode step batch={b:4d} ctx={c:5d}: {t * 1e3:8.2f} ms GPU, "
                f"{te * 1e3:8.2f} ms eager")
    res["decode_points"] = decode
    res["decode_detail"] = dec_detail

    rows = swap_res.get("rows", [])
    big = [r for r in rows if r.get("mode") == "staged" and r.get("host") == "scattered"
           and "out_s" in r]
    page_nb = LLAMA_KV.page_nbytes
    if big:
        r = max(big, key=lambda r: r["pages"])
        s_out, s_in = r["out_s"] / r["pages"], r["in_s"] / r["pages"]
        swap_basis = f"measured: SwapEngine staged, {r['pages']} scattered pages per call"
    else:
        s_out = page_nb / (ceil.get("d2h_pinned_GBps", 50) * 1e9)
        s_in = page_nb / (ceil.get("h2d_pinned_GBps", 50) * 1e9)
        swap_basis = "pinned copy bandwidth (swap section missing)"
    transfer = max(page_nb / NIC_BYTES_PER_S, s_out)
    name = torch.cuda.get_device_name()
    table = CostTable(
        device=name,
        model_shape=dict(shape.to_json(), dtype="bfloat16", measured_layers=layers,
                         attention="flashinfer paged append (page 16)"),
        exec_points=points,
        swap_out_per_page_s=s_out,
        swap_in_per_page_s=s_in,
        transfer_per_page_s=transfer,
        page_size=PAGE,
        page_nbytes=page_nb,
        decode_points=decode,
        transfer_basis="estimated: max(page bytes / 25 GB/s (one 200 Gb/s RDMA NIC, assumed), "
                       "measured swap-out per page); not measurable on a one-GPU machine",
        meta={
            "script": "benchmarks/gpu/gpu_bench.py",
            "method": f"Llama-3-8B shape, random bf16 weights, {layers} layers timed with CUDA "
                      f"events (median), scaled to {shape.num_layers} layers plus embedding and "
                      "LM head on the last token; FlashInfer append attention over MemPool pages;"
                      " GPU time with the host's launch overhead hidden (a sleep kernel holds "
                      "the stream while the work is enqueued, as under CUDA-graph replay); the "
                      "eager times with launch gaps are in the bench results; y rounded to pages",
            "swap_basis": swap_basis,
            "ceilings": ceil,
            "torch": torch.__version__,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    path = os.path.join(out_dir, "costmodel.json")
    table.save(path)
    res["table_name"] = device_table_name(name)
    log(f"wrote {path} (ship as tables/{res['table_name']}.json)")


def main() -> None:
    """Run the selected sections and write results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sections", default="ceilings,swap,attention,costmodel")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    assert torch.cuda.is_available(), "gpu_bench needs CUDA"
    props = torch.cuda.get_device_properties(0)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "sms": props.multi_processor_count,
        "memory_GiB": props.total_memory / GiB,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
    }
    path = os.path.join(args.out, "results.json")

    def dump() -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)

    wanted = args.sections.split(",")
    for name in ("ceilings", "swap", "attention", "costmodel"):
        if name not in wanted:
            continue
        sec: dict[str, Any] = {}
        results[name] = sec
        t0 = time.time()
        log(f"== {name}")
        try:
            if name == "ceilings":
                sec_ceilings(sec, args.quick)
            elif name == "swap":
                sec_swap(sec, results.get("ceilings", {}), args.quick)
            elif name == "attention":
                sec_attention(sec, results.get("ceilings", {}), args.quick)
            else:
                sec_costmodel(sec, results.get("swap", {}), results.get("ceilings", {}),
                              args.out, args.quick)
        except Exception as e:  # noqa: BLE001
            sec["error"] = repr(e)
            sec["traceback"] = traceback.format_exc()
            log(f"section {name} failed: {e!r}\n{traceback.format_exc()}")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        sec["wall_s"] = round(time.time() - t0, 1)
        dump()
    log("done")


if __name__ == "__main__":
    main()
