#!/usr/bin/env bash
# The index builders on one GPU, end to end: re-measure the cost model the runtime's gate reads,
# check the GPU tests, then time SmolLM2's whole prefill and each builder against the kernel.
# Results land in $R (JSON and printed tables).
#
#   steps (STEPS="..." picks and orders them):
#     cost_model  benchmarks/cost_model.py -> kernels/cost_model.json (what the gate reads, so
#                 the steps after it use it), copied to $R/cost_model_<gpu>.json
#     tests       every GPU-marked test, the launch counts printed
#     ttft        SmolLM2 at 8K, 32K, 128K under CUDA graphs: dense, the shipped database, the
#                 default plan
#     ttft_eager  the same eagerly at 32K and 128K (host time, peak memory)
#     patterns    index building against the sparse kernel, LLaMA-3-8B and SmolLM2 shapes
#     build_stages  the vertical-slash and SampleAttention builds' stages (scores, selection,
#                 index) and the vertical-slash selection's candidates per row
#     score_tilings the builders' score passes under each tiling against the shipped one (not
#                 in the default steps: run it when tuning for another GPU)
#     memory_peak what is live at SmolLM2's peak at 32K and 128K, dense against both plans (not
#                 in the default steps)
#
# SmolLM2's GGUF comes from $MCOMPILE_GGUF_SMOLLM2 or the chunks $CHUNKS/s.NN (split -d -b 50M);
# the rest as benchmarks/gpu_env.sh says.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-benchmarks/results}
WORK=${WORK:-$HOME/work}
CHUNKS=${CHUNKS:-$HOME/carry}
STEPS=${STEPS:-"cost_model tests ttft ttft_eager patterns build_stages"}
mkdir -p "$R" "$WORK"
. benchmarks/gpu_env.sh
join_gguf "$CHUNKS/s" "$WORK/smollm2.gguf" && [ -f "$WORK/smollm2.gguf" ] \
  && export MCOMPILE_GGUF_SMOLLM2=$WORK/smollm2.gguf
GPU=$($PYTHON -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")

step_cost_model() {
  $PYTHON benchmarks/cost_model.py
  cp kernels/cost_model.json "$R/cost_model_$GPU.json"
}

step_tests() {   # the builders' equalities first, then the rest (the long-prompt kernel tests: 256K, 1M)
  local first="tests/test_mixed_budgets.py tests/test_tail.py tests/test_patterns.py tests/test_gpu_backend.py" f ignore=""
  for f in $first; do ignore="$ignore --ignore=$f"; done
  for files in "$first" "tests $ignore"; do
    # shellcheck disable=SC2086  # word splitting wanted
    $PYTHON -m pytest -q -m gpu -s -p no:cacheprovider --durations=5 $files 2>&1 \
      | grep -E "kernels of|launches in|one sparse layer call|passed|failed|Error|^[0-9.]+s (call|setup)" || true
  done
}

step_ttft() {
  $PYTHON benchmarks/ttft.py --model smollm2 --lengths 8K,32K,128K --variants dense,database,default \
    --cuda-graphs on --out "$R/ttft_smollm2_$GPU.json"
}

step_ttft_eager() {
  $PYTHON benchmarks/ttft.py --model smollm2 --lengths 32K,128K --variants dense,database,default \
    --cuda-graphs off --out "$R/ttft_smollm2_${GPU}_eager.json"
}

step_patterns() {
  $PYTHON benchmarks/patterns.py --lengths 32768,131072 --out "$R/patterns_$GPU.json"
  $PYTHON benchmarks/patterns.py --patterns vertical_slash,block_sparse,sample_attention --heads 9 --kv-heads 3 \
    --head-dim 64 --lengths 32768,131072 --out "$R/patterns_smollm2_shape_$GPU.json"
}

step_build_stages() {
  $PYTHON benchmarks/build_stages.py --out "$R/build_stages_smollm2_shape_$GPU.json"
}

step_memory_peak() {
  $PYTHON benchmarks/memory_peak.py --model smollm2 --lengths 32K,128K --variants dense,database,default \
    --out "$R/memory_peak_smollm2_$GPU.json"
}

step_score_tilings() {
  $PYTHON benchmarks/score_tilings.py --out "$R/score_tilings_$GPU.json"
}

run_steps $STEPS
