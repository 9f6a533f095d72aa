#!/usr/bin/env bash
# Train tiny-arith asynchronously with every stale-data objective on both rollout backends (thread, ray),
# then compare the runs. Used for the "Asynchronous training" table in docs/results.md.
# Usage: scripts/async_objectives.sh [OUT_DIR] [extra key=value overrides...]   (about 15 min on 2 CPU cores)
set -euo pipefail
out=${1:-runs/async_objectives}
shift || true
rlvr=${RLVR:-.venv/bin/rlvr}
export HF_HUB_OFFLINE=1
for backend in thread ray; do
  for obj in asympo spo current_policy decoupled_ppo grpo_behavior; do
    dir="$out/$backend-$obj"
    [ -f "$dir/checkpoints/step_000060/state.json" ] && continue
    rm -rf "$dir"
    "$rlvr" train "configs/tiny_arith/async_$obj.yaml" rollout.backend=$backend log.progress=false "$@" --run-dir "$dir"
  done
done
"$rlvr" compare "$out"/* --metrics eval/accuracy,reward/mean,async/staleness,async/dropped_frac,policy/nll_neg_over_pos \
  --label-keys rollout.backend,algo.loss,algo.old_logprobs --out "$out/compare"
