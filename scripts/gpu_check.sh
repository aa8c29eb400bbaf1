#!/usr/bin/env bash
# oodbench's GPU check: everything that needs a GPU, prepared as one run that ends within 8 minutes on
# one GPU (an H200) and writes its figures as JSON.
#
#   scripts/gpu_check.sh [--dry-run] [--pack] OUT
#
#   OUT        folder for gpu_check.json (the summary), gpu_check.log and steps/ (each step's log and output)
#   --dry-run  print the plan (each step, its command, its time limit) and exit; runs nothing, imports nothing
#   --pack     keep OUT to three files: gpu_check.json, gpu_check.log and steps.tar.gz (the steps folder,
#              packed after every step), for a runner that brings back few files
#
# The steps, each under its own `timeout` (a hung step cannot eat the budget; a failed one is recorded,
# its exit code and log tail in the JSON, and the others still run):
#   env         pick a Python that imports oodbench and its dependencies: .venv/bin/python, else python3
#               (a GPU image's own PyTorch: nothing to download), else `make install` (needs the network: 2-4 min)
#   info        nvidia-smi's name, memory and driver; torch, its CUDA, cuDNN and Lightning versions
#   pytest_gpu  the tests marked gpu (tests/test_gpu.py): passed / failed counts
#   bench_*     scripts/bench.py --device cuda at the bench and paper sizes, in 32-true and bf16-mixed:
#               images/s and peak GPU memory, training and evaluation
#   train       oodbench train of the paper-size Glow (benchmarks.yaml's paper profile) on the staged CIFAR-10,
#               --max-minutes 3 --accelerator gpu --devices all
#   evaluate    oodbench evaluate --pair cifar10:svhn of that run (the likelihood score: AUROC, bits/dim)
#   import      a randomised y0ast/Glow-PyTorch checkpoint at the paper profile's Glow size (scripts/random_release.py:
#               the released file's layout), `oodbench import`ed and evaluated on cifar10:svhn (--limit 2000, the
#               likelihood and typicality): an imported published-size model end to end on the GPU
#   summary     scripts/gpu_summary.py: OUT/gpu_check.json, with the projected time for 250 epochs of the
#               paper's Glow on CIFAR-10's 50,000 training images (only 8,068 are staged)
# The whole run is held to GPU_CHECK_BUDGET_S: each step's limit is cut to what is left, the training's
# minutes too, so that evaluate and summary still fit; a step with under 10 s left is skipped.
#
# Settings (environment):
#   GPU_CHECK_DEVICE         cuda (default), or cpu: the smoke mode, every step on the CPU at tiny sizes
#                            (with GPU_CHECK_CONFIG pointing at a tiny paper profile; tests/test_gpu_check.py)
#   GPU_CHECK_DATA           the staged data (default ../shared/data beside the repository, else ./shared/data);
#                            train and evaluate read cifar10/train.npz, cifar10/test.npz and svhn/test.npz (52 MB)
#   GPU_CHECK_CONFIG         benchmarks.yaml whose paper profile sets the sizes (default: the repository's)
#   GPU_CHECK_BUDGET_S       seconds for everything (default 470: 8 minutes less a margin)
#   GPU_CHECK_TRAIN_MINUTES  the training's --max-minutes (default 3)
#   GPU_CHECK_WORK           scratch: runs (a paper-size Glow's checkpoints are ~0.5 GB each) and the
#                            dataset cache (default: a new temporary folder, removed at the end; never inside OUT)
#   GPU_CHECK_ONLY           comma-separated steps to run, e.g. train,evaluate (env and summary always run;
#                            the others are recorded as skipped): to rerun what failed
#   GPU_CHECK_PYTHON         the interpreter to use instead of the env step's choice
#
# Exit code: 0 when every step passed, 1 when one failed (gpu_check.json says which), 2 on bad usage.
set -euo pipefail
export LC_ALL=C  # decimal points, not commas, in the seconds the status files record

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

DRY_RUN=0
PACK=0
OUT=""
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --pack) PACK=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [[ -z $OUT ]] || { echo "gpu_check.sh: one OUT folder, got $OUT and $1" >&2; exit 2; }; OUT=$1 ;;
    esac
    shift
done
[[ -n $OUT ]] || { echo "gpu_check.sh: give the output folder: scripts/gpu_check.sh [--dry-run] [--pack] OUT" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
case $DEVICE in cuda | cpu) ;; *) echo "gpu_check.sh: GPU_CHECK_DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac
if [[ -n ${GPU_CHECK_DATA:-} ]]; then DATA=$GPU_CHECK_DATA
elif [[ -d ../shared/data ]]; then DATA=../shared/data
else DATA=shared/data; fi
CONFIG=${GPU_CHECK_CONFIG:-benchmarks.yaml}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
TRAIN_MINUTES_MAX=${GPU_CHECK_TRAIN_MINUTES:-3}
VENV=.venv
PAIR=cifar10:svhn
MIN_STEP_S=10         # a step with less left than this is skipped, not started
SUMMARY_RESERVE_S=20  # kept back from every step for the summary
EVALUATE_RESERVE_S=120  # kept back from the training for evaluate (~35 s expected on an H200), import and summary
TRAIN_OVERHEAD_S=40   # the training step's time outside --max-minutes: imports, data, actnorm's init, last checkpoint

q() { printf '%q' "$1"; }
PYREF='"$PY"'  # the env step picks the interpreter; commands name it and it is expanded when they run

if ((DRY_RUN)); then
    WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/gpu_check.XXXXXX}  # made when it runs
    STEPS="$OUT/steps"
    ((PACK)) && STEPS=$WORK/steps
else
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    if [[ -n ${GPU_CHECK_WORK:-} ]]; then WORK=$GPU_CHECK_WORK
    else
        WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
        trap 'rm -rf "$WORK"' EXIT  # its checkpoints are scratch: the figures are in OUT
    fi
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd)
    STEPS=$OUT/steps
    ((PACK)) && STEPS=$WORK/steps
    rm -rf "$STEPS"
    mkdir -p "$STEPS"
fi
RUNS=$WORK/runs
RUN=$RUNS/glow-cifar10-seed0  # runner/layout.run_name(glow, cifar10, seed 0)
IMPORTED=$RUNS/glow-cifar10-y0ast-glow  # the import step's run

# ---- the plan -----------------------------------------------------------------------------------------
if [[ $DEVICE == cuda ]]; then
    ACCELERATOR=gpu
    BENCH_SPEED=(--steps 3 --warmup 2 --eval-batches 256 --threads 8)
    BENCH_FAMILIES=glow,cv-glow,pixelcnn,vae,vae-iwae16  # the bench size's 3-channel families
    LIMITS=(env=60 info=45 pytest_gpu=150 bench_bench=75 bench_paper=120 train=300 evaluate=150 import=120 summary=30)
else  # smoke mode: the same steps on the CPU, at tiny sizes
    ACCELERATOR=cpu
    BENCH_SPEED=(--steps 1 --warmup 0 --train-batch 4 --eval-batches 4 --threads 1)
    BENCH_FAMILIES=glow,vae
    LIMITS=(env=60 info=45 pytest_gpu=120 bench_bench=60 bench_paper=60 train=120 evaluate=90 import=90 summary=30)
fi
limit() { local pair; for pair in "${LIMITS[@]}"; do [[ ${pair%%=*} == "$1" ]] && { echo "${pair#*=}"; return; }; done; echo 60; }

NAMES=()
STEP_LIMITS=()
COMMANDS=()
add_step() { NAMES+=("$1"); STEP_LIMITS+=("$2"); COMMANDS+=("$3"); }

add_step env "$(limit env)" "pick the first of $VENV/bin/python, python3 that imports oodbench and its dependencies (PYTHONPATH=$REPO); else make install (pip install -e '.[dev]': needs the network, up to 300 s)"
add_step info "$(limit info)" "{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits > $(q "$STEPS/nvidia-smi.csv") || echo 'nvidia-smi failed or is absent'; } && $PYREF scripts/gpu_summary.py info --device $DEVICE --out $(q "$STEPS/info.json")"
add_step pytest_gpu "$(limit pytest_gpu)" "OODBENCH_TEST_DEVICE=$DEVICE $PYREF -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors --junitxml=$(q "$STEPS/pytest_gpu.xml") tests"
for size in bench paper; do
    for precision in 32-true bf16-mixed; do
        args=(--precision "$precision")
        [[ $size == bench ]] && args+=(--families "$BENCH_FAMILIES")
        add_step "bench_${size}_${precision}" "$(limit "bench_$size")" "$PYREF scripts/bench.py --device $DEVICE --size $size --config $(q "$CONFIG") ${args[*]} ${BENCH_SPEED[*]} --out $(q "$STEPS/bench_${size}_${precision}.json")"
    done
done
add_step train "$(limit train)" "$PYREF -m oodbench train --model glow --dataset cifar10 --profile paper --config $(q "$CONFIG") --data-root $(q "$DATA") --runs-dir $(q "$RUNS") --overwrite --max-minutes \"\$TRAIN_MINUTES\" --accelerator $ACCELERATOR --devices all --quiet"
add_step evaluate "$(limit evaluate)" "$PYREF -m oodbench evaluate --pair $PAIR --model glow --runs-dir $(q "$RUNS") --profile paper --config $(q "$CONFIG") --data-root $(q "$DATA") --scores likelihood --accelerator $ACCELERATOR --devices 1 --quiet"
add_step import "$(limit import)" "$PYREF scripts/random_release.py $(q "$WORK/release.pt") --config $(q "$CONFIG") && $PYREF -m oodbench import y0ast-glow $(q "$WORK/release.pt") --dataset cifar10 --run-dir $(q "$IMPORTED") --data-root $(q "$DATA") --overwrite && $PYREF -m oodbench evaluate --pair $PAIR --run $(q "$IMPORTED") --profile paper --config $(q "$CONFIG") --data-root $(q "$DATA") --scores likelihood,typicality --limit 2000 --train-sample 1000 --accelerator $ACCELERATOR --devices 1 --quiet"
add_step summary "$(limit summary)" "$PYREF scripts/gpu_summary.py summarize --steps $(q "$STEPS") --run $(q "$RUN") --imported-run $(q "$IMPORTED") --pair $PAIR --out $(q "$OUT/gpu_check.json") --meta device=$DEVICE --meta budget_s=$BUDGET_S --meta train_minutes=$TRAIN_MINUTES_MAX --meta data_root=$(q "$DATA") --meta config=$(q "$CONFIG")"

print_plan() {
    echo "oodbench GPU check: $((${#NAMES[@]})) steps on $DEVICE, within $BUDGET_S s in all"
    echo "  output: $OUT (gpu_check.json, gpu_check.log, $( ((PACK)) && echo steps.tar.gz || echo steps/))"
    echo "  data: $DATA   config: $CONFIG (its paper profile)   scratch: $WORK"
    echo "  train: --max-minutes $TRAIN_MINUTES_MAX (fewer if the budget is short); each step's limit is cut to what is left"
    local i
    for i in "${!NAMES[@]}"; do
        printf '%2d. %s (%s s): %s\n' "$((i + 1))" "${NAMES[i]}" "${STEP_LIMITS[i]}" "${COMMANDS[i]}"
    done
}

if ((DRY_RUN)); then
    echo "dry run: nothing runs"
    print_plan
    exit 0
fi

# ---- running it ---------------------------------------------------------------------------------------
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$EPOCHSECONDS
DEADLINE=$((START + BUDGET_S))
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=150 MPLBACKEND=Agg
export OODBENCH_CACHE="$WORK/cache"  # decoded datasets, kept out of ~/.cache and OUT
export PY="" TRAIN_MINUTES=$TRAIN_MINUTES_MAX
for i in "${!NAMES[@]}"; do printf '%s\t%s\t%s\n' "${NAMES[i]}" "${STEP_LIMITS[i]}" "${COMMANDS[i]}"; done > "$STEPS/plan.tsv"
print_plan

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
record() {  # name rc seconds limit [reason]: the step's status, read by gpu_summary.py
    local state=done
    [[ -n ${5:-} ]] && state=skipped
    printf '{"rc": %s, "seconds": %s, "limit_s": %s, "state": "%s", "reason": "%s"}\n' "$2" "$3" "$4" "$state" "${5:-}" \
        > "$STEPS/$1.status"
}
refresh() {  # the summary and the pack, after every step: a run killed from outside still leaves them
    "${PY:-python3}" scripts/gpu_summary.py summarize --steps "$STEPS" --run "$RUN" --imported-run "$IMPORTED" --pair "$PAIR" \
        --out "$OUT/gpu_check.json" --meta device="$DEVICE" --meta budget_s="$BUDGET_S" \
        --meta train_minutes="$TRAIN_MINUTES_MAX" --meta data_root="$DATA" --meta config="$CONFIG" \
        >/dev/null 2>&1 || true
    if ((PACK)); then tar -czf "$OUT/steps.tar.gz.tmp" -C "$(dirname "$STEPS")" steps && mv "$OUT/steps.tar.gz.tmp" "$OUT/steps.tar.gz"; fi
}
left() { echo $((DEADLINE - EPOCHSECONDS - SUMMARY_RESERVE_S)); }

FAILED=0
run_step() {  # index
    local i=$1 name=${NAMES[$1]} limit=${STEP_LIMITS[$1]} budget rc start
    if [[ -n ${GPU_CHECK_ONLY:-} && $name != summary && ,$GPU_CHECK_ONLY, != *,$name,* ]]; then
        echo "== $name: skipped (not in GPU_CHECK_ONLY)"
        record "$name" null 0 "$limit" "not in GPU_CHECK_ONLY=$GPU_CHECK_ONLY"
        return
    fi
    budget=$(left)
    [[ $name == summary ]] && budget=$((budget > 0 ? budget + SUMMARY_RESERVE_S : SUMMARY_RESERVE_S))  # always runs
    ((budget < limit)) && limit=$budget
    if ((limit < MIN_STEP_S)); then
        echo "== $name: skipped (${budget} s of the budget left)"
        record "$name" null 0 "$limit" "the ${BUDGET_S} s budget was spent"
        FAILED=1
        return
    fi
    echo "== $name (limit ${limit} s, $((EPOCHSECONDS - START)) s in)"
    [[ $name == train ]] && echo "   --max-minutes $TRAIN_MINUTES"
    start=$EPOCHREALTIME
    timeout --kill-after=15 "$limit" bash -c "${COMMANDS[i]}" > "$STEPS/$name.log" 2>&1 < /dev/null && rc=0 || rc=$?
    record "$name" "$rc" "$(seconds_since "$start")" "$limit"
    echo "   rc $rc in $(seconds_since "$start") s; log: steps/$name.log$( ((PACK)) && echo " (in steps.tar.gz)")"
    if ((rc != 0)); then
        FAILED=1
        tail -n 15 "$STEPS/$name.log" | sed 's/^/   | /'
    fi
}

python_ok() {  # interpreter: imports oodbench's dependencies and oodbench itself
    timeout 60 "$1" -c 'import torch, torchvision, pytorch_lightning, typer, rich, pandas, sklearn, yaml, matplotlib, scipy, PIL, numpy, tabulate, jinja2, pytest; import oodbench.cli; print(torch.__version__)'
}
env_step() {  # the env step runs in this shell: it sets PY for the others
    local start=$EPOCHREALTIME rc=1 candidate candidates log="$STEPS/env.log"
    echo "== env (limit $(limit env) s; 300 s more if it must install)"
    if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then candidates=("$GPU_CHECK_PYTHON"); else candidates=("$VENV/bin/python" python3); fi
    {
        for candidate in "${candidates[@]}"; do
            if command -v "$candidate" > /dev/null && python_ok "$candidate"; then
                PY=$(command -v "$candidate"); rc=0; echo "python: $PY"; break
            fi
            echo "python: $candidate does not import oodbench's dependencies"
        done
        if ((rc != 0)) && [[ -z ${GPU_CHECK_PYTHON:-} ]]; then
            echo "installing: make install (creates $VENV, pip install -e '.[dev]'; needs the network)"
            if timeout 300 make install && python_ok "$VENV/bin/python"; then PY=$REPO/$VENV/bin/python; rc=0; fi
        fi
        for file in cifar10/train.npz cifar10/test.npz svhn/test.npz; do
            [[ -f $DATA/$file ]] && echo "data: $DATA/$file" || echo "data: MISSING $DATA/$file (train and evaluate need it)"
        done
    } > "$log" 2>&1 < /dev/null
    export PY
    record env "$rc" "$(seconds_since "$start")" "$(limit env)"
    echo "   rc $rc in $(seconds_since "$start") s: ${PY:-no python}"
    ((rc == 0)) || { FAILED=1; tail -n 15 "$log" | sed 's/^/   | /'; }
}

env_step
refresh
for i in "${!NAMES[@]}"; do
    [[ ${NAMES[i]} == env ]] && continue
    if [[ ${NAMES[i]} == train ]]; then  # what is left after keeping evaluate's and summary's share
        TRAIN_MINUTES=$(awk -v most="$TRAIN_MINUTES_MAX" -v s="$(($(left) - EVALUATE_RESERVE_S - TRAIN_OVERHEAD_S))" \
            'BEGIN { m = s / 60; if (m > most) m = most; if (m < 0.1) m = 0.1; printf "%.2f", m }')
        export TRAIN_MINUTES
    fi
    run_step "$i"
    refresh
done
echo "== done in $((EPOCHSECONDS - START)) s: $OUT/gpu_check.json$( ((PACK)) && echo " and $OUT/steps.tar.gz")"
exit "$FAILED"
