#!/usr/bin/env bash
# The GPU path (issue 6) in one script.
#
#   benchmarks/gpu/run_device.sh pack        # here (with network): wheels into .whl/
#   benchmarks/gpu/run_device.sh run [ARGS]  # on the GPU machine: install the wheels, run the
#                                            # CUDA tests and every benchmark, write $OUT
#
# `run` writes to $OUT (or a new temporary folder): pytest.log, bench.log, results.json,
# costmodel.json, and fi_aot.tar.gz.partNN (FlashInfer's JIT-compiled kernels; put them in
# .whl/ and the next run loads them instead of compiling for a minute). ARGS go to gpu_bench.py
# (e.g. --quick, --sections swap,attention).
set -uo pipefail
cd "$(dirname "$0")/../.."
WHL=.whl

case "${1:-}" in
pack)
  mkdir -p "$WHL"
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHL" \
    flashinfer-python==0.6.0 apache-tvm-ffi==0.1.15.post2 orjson==3.13.0 pyzmq==27.3.0
  # flashinfer's other requirements (click, einops, ninja, numpy, nvidia-ml-py, packaging,
  # requests, tabulate, torch, tqdm) are in the device image; nvidia-cudnn-frontend and
  # nvidia-cutlass-dsl are only imported by kernels this path does not use. orjson and pyzmq:
  # sglang_memserve.mempool imports them (its package __init__ runs before mempool.tier).
  ls -la "$WHL"
  ;;
run)
  shift
  OUT="${OUT:-$(mktemp -d)}"
  mkdir -p "$OUT"
  WORK="$(mktemp -d)"
  SITE="$WORK/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL"/*.whl || exit 1
  if ls "$WHL"/fi_aot.tar.gz* >/dev/null 2>&1; then
    # Kernels compiled by an earlier run: FlashInfer loads data/aot/<name>/<name>.so as is.
    mkdir -p "$SITE/flashinfer/data/aot"
    cat "$WHL"/fi_aot.tar.gz* | tar -xzf - -C "$SITE/flashinfer/data/aot" \
      && echo "loaded precompiled FlashInfer kernels: $(ls "$SITE/flashinfer/data/aot")"
  fi
  export PYTHONPATH="$SITE:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
  export FLASHINFER_WORKSPACE_BASE="$WORK"
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    | tee "$OUT/bench.log"
  python3 -c 'import flashinfer, torch, triton; print("flashinfer", flashinfer.__version__,
    "torch", torch.__version__, "triton", triton.__version__)' 2>&1 | tee -a "$OUT/bench.log"
  python3 -m pytest test/gpu -q -o addopts="" -p no:cacheprovider -rs 2>&1 \
    | tee "$OUT/pytest.log" | tail -25
  python3 benchmarks/gpu/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/bench.log"
  # Pack the JIT-compiled kernels as <name>/<name>.so for the next run.
  JIT="$WORK/.cache/flashinfer"
  if [ -d "$JIT" ]; then
    (cd "$WORK" && find .cache/flashinfer -name '*.so' | while read -r so; do
       n="$(basename "$so" .so)"; mkdir -p "aot/$n"; cp "$so" "aot/$n/"; done
     [ -d aot ] && tar -czf "$OUT/fi_aot.tar.gz" -C aot . \
       && split -b 15m -d "$OUT/fi_aot.tar.gz" "$OUT/fi_aot.tar.gz.part" \
       && rm "$OUT/fi_aot.tar.gz" && ls -la "$OUT"/fi_aot.tar.gz.part*)
  fi
  ;;
*)
  sed -n '2,12p' "$0"; exit 2 ;;
esac
