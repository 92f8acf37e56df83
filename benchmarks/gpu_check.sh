#!/usr/bin/env bash
# Run: bash benchmarks/gpu_check.sh [OUTDIR]     (one CUDA GPU, this project's dependencies importable)
#
# Every GPU check of the project in one go, most important first, each capped in time so that a short lease
# of a GPU machine still brings back the first ones. Logs go to OUTDIR (default gpu_check/):
#   steps.log       what ran, its exit code and when (seconds from the start)
#   env.txt         nvidia-smi, Python, torch / CUDA / cuDNN and the library versions
#   gpu_tests.log   pytest -m gpu: fp16 autocast + GradScaler, skipped overflow steps, DDP over NCCL, resume
#   bench_gpu.log   benchmarks/bench_gpu_train.py: fp32 (TF32) / strict fp32 / fp16 step throughput, our
#   bench_gpu.json  step against a bare PyTorch loop (the table in benchmarks/RESULTS.md, "GPU")
#   pipeline.log    the demo pipeline on Ray Train with one GPU worker (precision auto: fp16 + GradScaler)
#   suite.log       the whole suite with the GPU visible, in the time left (use_gpu and precision `auto`
#                   take the CUDA paths there)
# PYTHON (default python3) runs it all; GPU_CHECK_BUDGET (seconds, default 430) bounds the whole script;
# GPU_CHECK_WORKERS (default 4) the suite's pytest processes. Ray and MLflow are needed by the last two steps only.
set -u
OUT_DIR=${1:-gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-430}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT_DIR/steps.log"; }
capped() { # capped SECONDS LOG CMD...: run CMD for at most SECONDS (and never past the budget), output to LOG
    local want=$1 logf=$2 left
    shift 2
    left=$((BUDGET - $(elapsed)))
    if [ "$left" -lt 20 ]; then
        log "skipped (budget spent): $*"
        return
    fi
    timeout $((want < left ? want : left)) "$@" >"$OUT_DIR/$logf" 2>&1
    log "rc $? in $logf: $*"
}

{
    nvidia-smi
    "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0))"
    "$PY" -c "import ray, mlflow, pandas, numpy, pyarrow; print('ray', ray.__version__, 'mlflow', mlflow.__version__, \
'pandas', pandas.__version__, 'numpy', numpy.__version__, 'pyarrow', pyarrow.__version__)"
    echo "cpus $(nproc)"
} >"$OUT_DIR/env.txt" 2>&1
log "env.txt written"
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    log "no CUDA GPU visible to $PY: nothing to check (env.txt says what is there)"
    exit 1
fi
capped 150 gpu_tests.log "$PY" -m pytest -p no:cacheprovider -m gpu -q -rs tests/test_gpu_train.py tests/test_models.py
capped 170 bench_gpu.log "$PY" benchmarks/bench_gpu_train.py --iters 30 --repeats 3 --json "$OUT_DIR/bench_gpu.json"
capped 170 pipeline.log "$PY" -m lstm_dist -v run conf/demo.yaml train.backend=ray train.num_workers=1 train.use_gpu=yes
capped 600 suite.log "$PY" -m pytest -p no:cacheprovider -q -rfE -n "${GPU_CHECK_WORKERS:-4}" --dist loadfile tests
