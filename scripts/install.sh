#!/usr/bin/env bash
# Idempotent CPU install: creates .venv (reused when its inputs did not change).
# torch is pinned to the CPU build through a constraints file so pip never pulls CUDA wheels;
# sglang itself is installed --no-deps because its declared dependency tree is the CUDA one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${MEMSERVE_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

# Mooncake's non-CUDA wheel links against libibverbs (no RDMA card is needed, only the library).
if ! ldconfig -p 2>/dev/null | grep -q libibverbs.so.1; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libibverbs1 >/dev/null
  else
    echo "install.sh: libibverbs1 is missing and apt-get is not available; install it by hand" >&2
    exit 1
  fi
fi

# The soak driver's events fault (and its miniature in the default tests) cuts a connection with
# `ss -K` (iproute2; it also needs root and a kernel with socket destroy).
if ! command -v ss >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iproute2 >/dev/null \
    || echo "install.sh: could not install iproute2 (ss); the soak's events fault needs it" >&2
fi

stamp_inputs=(requirements/*.txt pyproject.toml scripts/install.sh)
want="$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.memserve-install-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --no-warn-script-location)
"${pip[@]}" -U pip
"${pip[@]}" torch==2.13.0
"${pip[@]}" -c requirements/cpu-constraints.txt -r requirements/sglang-cpu.txt
"${pip[@]}" --no-deps sglang==0.5.23
"${pip[@]}" -c requirements/cpu-constraints.txt -r requirements/extra.txt
"${pip[@]}" --no-deps -r requirements/no-deps.txt
"${pip[@]}" --no-deps -e .
# This install is the CPU one: let every Python process in the venv (stock sglang tools too)
# load the lazy import-compat finder (docs/cpu-compat.md).
"$venv/bin/python" -m sglang_memserve.compat.startup install
echo "$want" > "$stamp"
echo "install.sh: $venv ready"
