#!/usr/bin/env bash
# The GPU check of issue 16: on a machine with one NVIDIA GPU and no network, with that machine's own torch and
# transformers (rlvr is not installed: PYTHONPATH=src), in well under 10 minutes:
#   1. the CUDA tests (tests/test_cuda.py: greedy sampler, log-probs and gradients, one training step on cuda equal
#      the CPU's; FSDP2 over NCCL at world size 1), then a few CPU test files under this machine's torch;
#   2. a short GRPO run on tiny-arith on cuda (configs/tiny_arith/grpo.yaml, GPU_CHECK_STEPS steps, default 10);
#   3. python -m benchmarks utilisation --model qwen2-0.5b-random --device cuda --dtype bfloat16 (and once more,
#      training only, with --tf32 for the fp32 log-prob head);
# and writes $OUT/gpu_summary.md (versions, test results, the run's metrics, the utilisation table) beside the
# whole log, the pytest reports, the run's metrics.jsonl and the benchmark's JSON. $OUT defaults to gpu_out/.
#
# Usage, from the repository root (see docs/benchmarks.md, "GPU"):
#   scripts/fetch_gpu_wheels.sh                      # here, once: the wheels the machine lacks, into .whl/
#   bash scripts/gpu_check.sh                        # there: with the device tool, carry [".whl"]
#   GPU_CHECK_ALLOW_CPU=1 PYTHON=.venv/bin/python bash scripts/gpu_check.sh   # a dry run on a CPU machine:
#                          the CUDA tests skip, the run and the benchmark run on the CPU at tiny sizes
# Variables: PYTHON (default python3), OUT, GPU_CHECK_SITE (where the wheels go, default /tmp/site),
# GPU_CHECK_STEPS, GPU_CHECK_ALLOW_CPU. Every step runs under a timeout and a failed step does not stop the
# others; the exit status is 1 when any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu_out}
SITE=${GPU_CHECK_SITE:-/tmp/site}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
: > "$WORK/steps.tsv"
FAILED=()

say() { echo "$*" | tee -a "$LOG"; }
die() { say "gpu_check: $*"; exit 2; }

# step NAME SECONDS CMD...: run CMD under a timeout, its output to the terminal and the log; record rc and time.
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  say "=== $name: $*"
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$WORK/steps.tsv"
  if [[ $rc != 0 ]]; then FAILED+=("$name"); say "=== $name: exit status $rc"; fi
}

# --- the wheels the machine lacks (scripts/gpu_wheels.txt), then rlvr from the tree -------------------------------
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || die "installing .whl/*.whl into $SITE failed"
  say "installed into $SITE: $(cd .whl && ls *.whl | tr '\n' ' ')"
fi
export PYTHONPATH="$SITE:src:.${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import math_verify, rlvr.trainer" 2>> "$LOG" \
  || die "rlvr does not import (see $LOG); bring the wheels: scripts/fetch_gpu_wheels.sh here, carry .whl there"

# --- the machine ---------------------------------------------------------------------------------------------------
if command -v nvidia-smi > /dev/null; then
  nvidia-smi 2>&1 | tee "$WORK/nvidia-smi.txt" | tee -a "$LOG"
elif [[ $ALLOW_CPU != 1 ]]; then
  die "no nvidia-smi: not a GPU machine (GPU_CHECK_ALLOW_CPU=1 runs the check on the CPU)"
fi
"$PY" scripts/gpu_summary.py versions "$WORK/versions.json" | tee -a "$LOG"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
elif [[ $ALLOW_CPU == 1 ]]; then
  DEVICE=cpu
  say "no CUDA device: GPU_CHECK_ALLOW_CPU=1, so the CUDA tests skip and the run and the benchmark use the CPU"
else
  die "torch sees no CUDA device"
fi

# --- 1. tests ------------------------------------------------------------------------------------------------------
step cuda_tests 180 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py --junitxml "$OUT_DIR/cuda_tests.xml"
XDIST=()
if "$PY" -c "import xdist" 2> /dev/null && [[ $(nproc) -ge 8 ]]; then XDIST=(-n 8); fi
step cpu_tests 90 "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not e2e" "${XDIST[@]}" \
  tests/test_logprobs.py tests/test_rollout.py tests/test_trainer_step.py tests/test_models.py \
  tests/test_gradient_checkpointing.py tests/test_export.py --junitxml "$OUT_DIR/cpu_tests.xml"

# --- 2. a short GRPO run on tiny-arith ------------------------------------------------------------------------------
RUN_ARGS=(configs/tiny_arith/grpo.yaml "model.device=$DEVICE" "steps=${GPU_CHECK_STEPS:-10}" log.progress=false
          log.tensorboard=false log.completions_every=0)
if [[ $DEVICE == cpu ]]; then RUN_ARGS+=(rollout.prompts_per_step=4 data.eval_size=16 "steps=${GPU_CHECK_STEPS:-2}"); fi
step grpo_run 120 "$PY" -m rlvr train "${RUN_ARGS[@]}" --run-dir "$WORK/grpo"
[[ -f $WORK/grpo/metrics.jsonl ]] && cp "$WORK/grpo/metrics.jsonl" "$OUT_DIR/grpo_metrics.jsonl"

# --- 3. utilisation -------------------------------------------------------------------------------------------------
if [[ $DEVICE == cuda ]]; then
  BENCH=(--model qwen2-0.5b-random --device cuda --dtype bfloat16)
else
  BENCH=(--model tiny-random --device cpu --sizes 128,256 --repeats 1)
fi
step utilisation 120 "$PY" -m benchmarks utilisation "${BENCH[@]}" --json "$OUT_DIR/utilisation.json"
step utilisation_tf32 60 "$PY" -m benchmarks utilisation "${BENCH[@]}" --tf32 --skip-generation \
  --json "$OUT_DIR/utilisation_tf32.json"

# --- summary --------------------------------------------------------------------------------------------------------
"$PY" scripts/gpu_summary.py summary "$OUT_DIR" "$WORK" | tee -a "$LOG"
rm -rf "$WORK"
if (( ${#FAILED[@]} )); then
  say "gpu_check: failed steps: ${FAILED[*]}"
  exit 1
fi
say "gpu_check: every step passed; summary in $OUT_DIR/gpu_summary.md"
