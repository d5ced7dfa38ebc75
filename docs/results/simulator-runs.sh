#!/bin/bash
# Every simulator figure of docs/results/simulator.md, one run after another.
#   bash docs/results/simulator-runs.sh COMMIT OUT_DIR [H200_TABLE [RUN_DIR[=SLACK]...]]
# Runs from a snapshot of COMMIT (git archive) so that edits in the working tree during the runs
# cannot mix in. The H200 table defaults to ../shared/reference/gpu/nvidia-h200.costmodel.json.
# Each RUN_DIR is a `benchmarks/router_bench.py hits` output (Mooncake workload) that the
# simulator replays; SLACK is memserve-router's default --affinity-slack at the commit measured
# (0.5 before 9a21bd4, 0.95 since, except 2 at 08bfc50; without it, today's default).
set -u
COMMIT=${1:?commit}; O=$(mkdir -p "${2:?out dir}" && cd "$2" && pwd)
ROOT=$(git rev-parse --show-toplevel)
H200=$(realpath "${3:-$ROOT/../shared/reference/gpu/nvidia-h200.costmodel.json}")
RUNS=(); for r in "${@:4}"; do RUNS+=("$(realpath "${r%%=*}")$([[ $r == *=* ]] && echo "=${r#*=}")"); done
SNAP=$(mktemp -d)
trap 'rm -rf "$SNAP"' EXIT
git -C "$ROOT" archive "$COMMIT" | tar -x -C "$SNAP"
export PYTHONPATH=$SNAP/python:$SNAP/router MEMSERVE_DATA_DIR=${MEMSERVE_DATA_DIR:-$ROOT/../shared/data}
PY=$ROOT/.venv/bin/python
cd "$SNAP"
sim() { name=$1; shift; timeout 200 "$PY" -m sglang_memserve.sim --cost-table "$H200" "$@" \
    --json "$O/$name.json" > "$O/$name.txt" 2>&1; echo "$name rc=$?" >> "$O/progress"; }
"$PY" -m sglang_memserve.sim.sweep --instances 8 64 256 1024 \
    --policies round_robin session prefix memserve --speedup 1 --scale-rate \
    --out "$O/sweep.jsonl" --timeout-s 200 --workload mooncake --cost-table "$H200" > "$O/sweep.md" 2>&1
echo "sweep rc=$?" >> "$O/progress"
sim lp01-256 --instances 256 --policy memserve --speedup 32 --load-per-request-s 0.01
sim lp05-256 --instances 256 --policy memserve --speedup 32 --load-per-request-s 0.05
sim lp01-1024 --instances 1024 --policy memserve --speedup 128 --load-per-request-s 0.01
sim nomig-1024 --instances 1024 --policy memserve --speedup 128 --no-migrate
sim press-prefix-0 --instances 8 --policy prefix --hbm-tokens 200000
sim press-prefix-dram --instances 8 --policy prefix --hbm-tokens 200000 --dram-tokens 1600000
sim press-memserve-0 --instances 8 --policy memserve --hbm-tokens 200000
sim press-memserve-dram --instances 8 --policy memserve --hbm-tokens 200000 --dram-tokens 1600000
SG=(--instances 8 --policy memserve --workload sharegpt --requests 700 --rate 4 --think-s 3 --check)
sim sg-colocated "${SG[@]}"
sim sg-pd-basic "${SG[@]}" --pd --no-kv-return
sim sg-pd-caching3 "${SG[@]}" --pd
sim grow-r1 --instances 256 --policy memserve --replicas 1 --speedup 32
sim grow-r2 --instances 256 --policy memserve --replicas 2 --speedup 16
sim grow-r4 --instances 256 --policy memserve --replicas 4 --speedup 8
sim grow-r8 --instances 256 --policy memserve --replicas 8 --speedup 4
sim rate10k-1024 --instances 1024 --policy memserve --replicas 8 --speedup 368
"$PY" -m sglang_memserve.sim.plots policies "$O/sweep.jsonl" --out "$O/policies.png" \
    > /dev/null 2>&1; echo "policies plot rc=$?" >> "$O/progress"
# Against real router_bench.py hits runs (4 tiny instances on 2 cores): the tiny model's table.
for r in "${RUNS[@]}"; do
    dir=${r%%=*}; slack=(); [[ $r == *=* ]] && slack=(--memserve-slack "${r#*=}")
    timeout 600 "$PY" -m sglang_memserve.sim.validate "$dir" "${slack[@]}" --cpu-demand \
        > "$O/validate-$(basename "$dir").md" 2>&1
    echo "validate $(basename "$dir") rc=$?" >> "$O/progress"
done
if [ ${#RUNS[@]} -gt 0 ]; then
    "$PY" -m sglang_memserve.sim.plots validation "$O"/validate-*.md --out "$O/validation.png" \
        > /dev/null 2>&1; echo "validation plot rc=$?" >> "$O/progress"
fi
timeout 600 "$PY" -m sglang_memserve.sim.paper --cost-table "$H200" --json "$O/paper.json" --plot "$O/paper.png" \
    > "$O/paper.md" 2>&1; echo "paper rc=$?" >> "$O/progress"
timeout 600 "$PY" -m sglang_memserve.sim.paper --cost-table "$H200" --prefill-share 0.75 \
    --workloads mooncake --json "$O/paper-6p2d.json" > "$O/paper-6p2d.md" 2>&1
echo "paper-6p2d rc=$?" >> "$O/progress"
echo "all done" >> "$O/progress"
