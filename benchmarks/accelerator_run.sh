#!/usr/bin/env bash
# A prepared accelerator run: every speed figure of the project from one command, into one log.
#
#   bash benchmarks/accelerator_run.sh prepare          # here: copy faces, link weights, fetch wheels, sizes
#   bash benchmarks/accelerator_run.sh run [STEP ...]   # on the GPU machine (the call `prepare` prints)
#   bash benchmarks/accelerator_run.sh run --smoke      # here, on the CPU: tiny batches, 8 photos
#   bash benchmarks/accelerator_run.sh sizes | clean    # what would travel | delete .accel
#
# prepare fills .accel/ (ignored through .git/info/exclude; never commit it: it holds the photos):
#   faces/ a copy of ../shared/faces (the folder beside the repo does not travel), checkpoints/
#   hard links to the converted weights the steps load (the four default recognizers, blazeface,
#   facemesh), whl/ Python 3.12 wheels of flax and orbax-checkpoint (installed there only if the
#   machine's own packages cannot load a model). It prints what travels (tracked and untracked,
#   not ignored files plus .accel: at most 64 MiB) and the device call: carry [".accel"].
# run sets LEAM_JAX_CHECKPOINTS=.accel/checkpoints, LEAM_JAX_FACES=.accel/faces, PYTHONPATH=<repo>,
#   installs the wheels if needed, then runs these steps in this
#   order, each under `timeout` (its cap, or what is left of DEADLINE_S, default 420 s):
#     dlib_resnet   leam_throughput.py --model dlib_resnet --batches 32,256,1024 --no_naive   150 s
#     sweep         sweep_throughput.py --images 256 (pipeline_over_kernel)                    120 s
#     mobileface, faceres, faceres_deep   leam_throughput.py as dlib_resnet        90, 90, 90 s
#     pipeline      face_pipeline_throughput.py, its defaults (skipped if absent)               90 s
#     study         study_throughput.py --manifest .accel/faces/manifest.csv --no_report      560 s
#   The first call (DEADLINE_S 420) gets through the pipeline step; the study needs a call of its own:
#   `DEADLINE_S=570 bash benchmarks/accelerator_run.sh run study` (timeout_s=600; on a still-warm
#   machine its compiles come from /tmp's JAX cache). On the H200 (2026-12-04) its passes over the 466
#   photos took ~200 s and the tables did not finish within 300 s.
#   Everything is teed into $OUT/accelerator.log (/tmp/leam_accel_out here), which ends with each
#   step's exit status and last name=value line. Environment: DEADLINE_S, BATCHES, REPEATS (5),
#   PY (python3). --smoke: batches 2, 1 repeat, 4 sweep photos, 8 study photos (4 people),
#   DEADLINE_S 300 (the study's compiles alone take ~4 min on 2 CPU cores; ~10 min to finish).
# GPU targets: dlib_resnet images_per_s >= 10000 at the best batch; sweep pipeline_over_kernel >= 0.7.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ACCEL=$ROOT/.accel
MODELS=(dlib_resnet faceres faceres_deep mobileface)
CHECKPOINTS=("${MODELS[@]}" blazeface facemesh)
WHEELS=(flax==0.12.12 orbax-checkpoint==0.12.8)  # jax 0.11 needs flax >= 0.12.9; orbax as converted here
LIMIT=$((64 * 1024 * 1024))

say() { printf '%s\n' "$*" >&2; }

prepare() {
    local exclude=.git/info/exclude
    mkdir -p .git/info && touch "$exclude"
    grep -qxF '/.accel/' "$exclude" || echo '/.accel/' >>"$exclude"
    rm -rf "$ACCEL" && mkdir -p "$ACCEL/checkpoints" "$ACCEL/whl" || return 1
    git check-ignore -q .accel/ || { say "error: .accel is not ignored"; return 1; }
    [ -f ../shared/faces/manifest.csv ] || { say "error: no ../shared/faces/manifest.csv"; return 1; }
    cp -a ../shared/faces "$ACCEL/faces" || return 1
    local name
    for name in "${CHECKPOINTS[@]}"; do
        [ -d "checkpoints/$name" ] || { say "error: checkpoints/$name missing: python -m converters $name"; return 1; }
        cp -al "checkpoints/$name" "$ACCEL/checkpoints/" 2>/dev/null || cp -a "checkpoints/$name" "$ACCEL/checkpoints/"
    done
    local py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$ACCEL/whl" "${WHEELS[@]}" \
        || say "warning: wheels not downloaded; the run will use the machine's own flax and orbax"
    sizes
}

bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

sizes() {
    local tracked untracked part total=0
    tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk 'END {print $1 + 0}')
    untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk 'END {print $1 + 0}')
    printf '%-32s %10s\n' "what travels" "bytes"
    printf '%-32s %10d\n' "tracked files" "$tracked" "untracked, not ignored" "$untracked"
    total=$((tracked + untracked))
    for part in faces whl checkpoints/{dlib_resnet,faceres,faceres_deep,mobileface,blazeface,facemesh}; do
        printf '%-32s %10d\n' ".accel/$part" "$(bytes "$ACCEL/$part")"
    done
    total=$((total + $(bytes "$ACCEL")))
    printf '%-32s %10d  (%s MiB of 64)\n' "total" "$total" "$(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}')"
    if [ "$total" -gt "$LIMIT" ]; then
        say "error: over 64 MiB: drop photos from .accel/faces (orl_att is 5 MB) or a model's checkpoint"
        return 1
    fi
    echo
    echo "device tool call (timeout leaves room for the machine's start and one rerun of what did not fit):"
    echo "  run(command=\"bash benchmarks/accelerator_run.sh run\", carry=[\".accel\"], timeout_s=480)"
}

# ---------------------------------------------------------------------------- run

SMOKE=0
STEPS=()
START=$SECONDS

setup_env() {
    export PYTHONUNBUFFERED=1 LEAM_JAX_CHECKPOINTS=$ACCEL/checkpoints LEAM_JAX_FACES=$ACCEL/faces
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    PY=${PY:-python3}
    [ "$SMOKE" = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
    echo "== $(date -u '+%F %T') UTC, $(hostname), $(nproc) cpus, python $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    if ! stack_ok; then
        if ls "$ACCEL"/whl/*.whl >/dev/null 2>&1; then
            echo "== the machine's packages cannot load a model: installing the carried wheels"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                "$ACCEL"/whl/*.whl || return 1
            export PYTHONPATH=/tmp/site:$PYTHONPATH
        fi
        stack_ok || return 1
    fi
}

stack_ok() {
    "$PY" - <<'EOF'
import importlib.metadata as md
import jax, jax.numpy as jnp
def version(p):
    try:
        return md.version(p)
    except md.PackageNotFoundError:
        return "absent"
print("==", " ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "orbax-checkpoint", "optax", "numpy",
      "opencv-python-headless", "matplotlib")), "| devices:", jax.devices())
from leam_jax import weights
m = weights.load("mobileface")
print("== stack ok: mobileface embeds", m.apply(m.params, jnp.zeros((1, 112, 112, 3)))[0].shape)
EOF
}

selected() { [ ${#STEPS[@]} -eq 0 ] || [[ " ${STEPS[*]} " == *" $1 "* ]]; }

# step NAME CAP_S COMMAND...: run it under timeout min(CAP_S, what is left of DEADLINE_S).
step() {
    local name=$1 cap=$2 left rc
    shift 2
    selected "$name" || return 0
    left=$((DEADLINE_S - (SECONDS - START) - 5))
    [ "$left" -lt "$cap" ] || [ "$SMOKE" = 1 ] && cap=$left  # the CPU smoke run: only the deadline
    if [ "$cap" -lt 20 ]; then
        echo "== $name: skipped, ${left}s left" | tee "$LOGS/$name.log"
        echo "$name skipped" >>"$LOGS/status"
        return 0
    fi
    echo "== $name (timeout ${cap}s, at $((SECONDS - START))s): $*"
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=$?
    echo "$name rc=$rc$([ "$rc" = 124 ] && echo ' (timed out)') $((SECONDS - START))s" >>"$LOGS/status"
    echo "== $name: rc=$rc"
}

leam() {  # leam MODEL CAP
    step "$1" "$2" "$PY" benchmarks/leam_throughput.py --model "$1" --batches "$BATCHES" --repeats "$REPEATS" --no_naive
}

smoke_manifest() {  # a few photos of 4 people (2 needing detection), absolute paths
    local out=/tmp/leam_accel_smoke/manifest.csv
    mkdir -p "$(dirname "$out")"
    awk -F, -v OFS=, -v dir="$ACCEL/faces" 'NR == 1 {print; next}
        {split($1, p, "/"); id = p[1] "/" p[2]}
        p[1] != "wild_small" && p[1] != "orl_att" {next}
        !(id in n) {if (people[p[1]] >= 2) next; people[p[1]]++}
        n[id]++ < 2 {$1 = dir "/" $1; print}' "$ACCEL/faces/manifest.csv" >"$out"
    echo "$out"
}

run() {
    OUT=${OUT:-/tmp/leam_accel_out}
    LOGS=/tmp/leam_accel_logs
    rm -rf "$LOGS" && mkdir -p "$OUT" "$LOGS"
    if [ "$SMOKE" = 1 ]; then
        BATCHES=${BATCHES:-2} REPEATS=${REPEATS:-1} DEADLINE_S=${DEADLINE_S:-300}
        SWEEP=(--images 4 --batch 4) MANIFEST=$(smoke_manifest) STUDY=(--max_images_per_person 2)
    else
        BATCHES=${BATCHES:-32,256,1024} REPEATS=${REPEATS:-5} DEADLINE_S=${DEADLINE_S:-420}
        SWEEP=(--images 256) MANIFEST=$ACCEL/faces/manifest.csv STUDY=()
    fi
    {
        setup_env || { echo "== setup failed"; return 1; }
        leam dlib_resnet 150
        step sweep 120 "$PY" benchmarks/sweep_throughput.py "${SWEEP[@]}"
        leam mobileface 90
        leam faceres 90
        leam faceres_deep 90
        if [ -f benchmarks/face_pipeline_throughput.py ]; then
            step pipeline 90 "$PY" benchmarks/face_pipeline_throughput.py
        elif selected pipeline; then
            echo "== pipeline: benchmarks/face_pipeline_throughput.py absent, skipped" | tee "$LOGS/pipeline.log"
            echo "pipeline skipped (no benchmarks/face_pipeline_throughput.py)" >>"$LOGS/status"
        fi
        # A compile cache in /tmp: a rerun of a cut-off study on the same (warm) machine skips what was compiled.
        step study 560 env JAX_COMPILATION_CACHE_DIR=/tmp/leam_accel_jax_cache \
            "$PY" benchmarks/study_throughput.py --manifest "$MANIFEST" --no_report "${STUDY[@]}"
        summary
    } 2>&1 | tee "$OUT/accelerator.log"
}

summary() {
    echo
    echo "== summary after $((SECONDS - START))s (each step's status and last name=value line)"
    local name line
    for name in dlib_resnet sweep mobileface faceres faceres_deep pipeline study; do
        [ -f "$LOGS/$name.log" ] || continue
        line=$(grep -E '^(batch_result )?[A-Za-z_][A-Za-z0-9_]*=[^ ]' "$LOGS/$name.log" | tail -1)
        printf '%-13s %s\n    %s\n' "$name" "$(grep "^$name " "$LOGS/status" 2>/dev/null | cut -d' ' -f2-)" \
            "${line:-no figures}"
    done
}

main() {
    case ${1:-} in
        prepare) prepare ;;
        sizes) sizes ;;
        clean) rm -rf "$ACCEL" /tmp/leam_accel_smoke && echo "removed .accel" ;;
        run)
            shift
            for a in "$@"; do
                if [ "$a" = --smoke ]; then SMOKE=1; else STEPS+=("$a"); fi
            done
            [ -d "$ACCEL/checkpoints" ] || { say "error: no .accel: run 'prepare' first (here), then carry .accel"; return 1; }
            run
            ;;
        *) sed -n '2,30p' "$0"; return 2 ;;
    esac
}

main "$@"; exit  # one line: bash has parsed the whole file before any step runs, so editing it mid-run is safe
