#!/usr/bin/env bash
# Plans whose budgets are laws of the length, on one GPU: calibrated at short lengths, checked on
# held-out text at a longer length, timed end to end. Results land in $R (JSON and printed tables).
#
#   steps (STEPS="..." picks and orders them):
#     smollm2_search SmolLM2 searched at 2K+4K -> $SMOLLM2_DB
#     smollm2_eval   SmolLM2 at 8K, 4 held-out windows: $SMOLLM2_DB against a plan searched at
#                    8K for the same density (blocks), the default plan and $DEFAULT_CANDIDATE
#     smollm2_ttft   SmolLM2 time to first token at 8K, 32K, 128K: dense, $SMOLLM2_DB, default
#     gemma_search   Gemma 3 270M searched at 8K+16K -> $GEMMA_DB
#     gemma_eval     Gemma 3 at 32K, 4 held-out windows (perplexity, top-1) and NIAH at 8K-32K
#     gemma_default  Gemma 3 at 32K: the default plan and $DEFAULT_CANDIDATE on every head
#     gemma_ttft     Gemma 3 time to first token at 32K: dense, $GEMMA_DB, default
#
# The GGUF files come from $MCOMPILE_GGUF_SMOLLM2 / $MCOMPILE_GGUF_GEMMA3_270M, or from chunks
# $CHUNKS/s.NN and $CHUNKS/g.NN (split -d -b 50M); the rest as benchmarks/gpu_env.sh says.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-benchmarks/results}
WORK=${WORK:-$HOME/work}              # joined GGUF files, scratch databases
CHUNKS=${CHUNKS:-$HOME/carry}
SMOLLM2_DB=${SMOLLM2_DB:-pattern_db/databases/smollm2-135m.json}
SMOLLM2_BUDGET=${SMOLLM2_BUDGET:-0.3}  # mean GPU time of the searched heads at 32K, of dense attention's
GEMMA_DB=${GEMMA_DB:-pattern_db/databases/gemma3-270m.json}
GEMMA_BUDGET=${GEMMA_BUDGET:-0.3}     # mean GPU time of the searched heads at 32K, of dense attention's
SAMPLES=${SAMPLES:-4}
WINDOWS=${WINDOWS:-4}
STEPS=${STEPS:-"smollm2_search smollm2_eval smollm2_ttft gemma_search gemma_eval gemma_ttft"}
mkdir -p "$R" "$WORK"
. benchmarks/gpu_env.sh
join_gguf "$CHUNKS/s" "$WORK/smollm2.gguf" && [ -f "$WORK/smollm2.gguf" ] \
  && export MCOMPILE_GGUF_SMOLLM2=$WORK/smollm2.gguf
join_gguf "$CHUNKS/g" "$WORK/gemma3-270m.gguf" && [ -f "$WORK/gemma3-270m.gguf" ] \
  && export MCOMPILE_GGUF_GEMMA3_270M=$WORK/gemma3-270m.gguf

uniform_db() {   # uniform_db SHIPPED_KEY OUT PARAMS_JSON: the shipped database's layers, every searched head one plan
  $PYTHON - "$@" <<'PY'
import json, sys
from mcompile.pattern_db import HeadEntry, LayerEntry, PatternDB, Provenance, load_db, save_db, shipped_databases
from mcompile.pattern_db.schema import params_from_json
key, out, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
db = load_db(shipped_databases()[key])
head = HeadEntry(params.pop("pattern"), params_from_json(params))
layers = [LayerEntry.searched([head] * db.model.num_heads) if l.kind == "searched" else l for l in db.layers]
save_db(PatternDB.build(db.model, layers, Provenance(source="uniform " + sys.argv[3])), out)
PY
}
DEFAULT_CANDIDATE=${DEFAULT_CANDIDATE:-'{"pattern": "vertical_slash", "vertical_size": 1000, "slash_size": 3072}'}

step_smollm2_search() {
  $SEARCH --model smollm2 --lengths 2048,4096 --samples "$SAMPLES" --budget "$SMOLLM2_BUDGET" --overwrite \
    --out "$SMOLLM2_DB" --details "$WORK/smollm2_laws.details.json" --quiet
  $MCOMPILE db cost "$SMOLLM2_DB" --lengths 2K,8K,32K,128K,1M --json > "$R/laws_smollm2_cost.json"
  cat "$R/laws_smollm2_cost.json"
}

step_smollm2_eval() {
  $MCOMPILE eval --model smollm2 --length 8192 --windows "$WINDOWS" --db "$SMOLLM2_DB" --out "$R/laws_smollm2_8192_eval.json"
  local density
  density=$($PYTHON -c "import json; print(round(json.load(open('$R/laws_smollm2_8192_eval.json'))['perplexity']['density'], 4))")
  $SEARCH --model smollm2 --length 8192 --samples "$SAMPLES" --cost blocks --budget "$density" --overwrite \
    --out "$WORK/smollm2_at_8192.json" --quiet
  cp "$WORK/smollm2_at_8192.json" "$R/laws_smollm2_8192_calibrated.db.json"
  $MCOMPILE eval --model smollm2 --length 8192 --windows "$WINDOWS" --db "$WORK/smollm2_at_8192.json" \
    --out "$R/laws_smollm2_8192_eval_calibrated8k.json"
  $MCOMPILE eval --model smollm2 --length 8192 --windows "$WINDOWS" --db default --out "$R/laws_smollm2_8192_eval_default.json"
  uniform_db smollm2-135m "$WORK/smollm2_default_candidate.json" "$DEFAULT_CANDIDATE"
  $MCOMPILE eval --model smollm2 --length 8192 --windows "$WINDOWS" --db "$WORK/smollm2_default_candidate.json" \
    --out "$R/laws_smollm2_8192_eval_default_candidate.json"
}

step_smollm2_ttft() {
  $PYTHON benchmarks/ttft.py --model smollm2 --lengths 8K,32K,128K --variants dense,database,default --db "$SMOLLM2_DB" \
    --cuda-graphs on --out "$R/ttft_smollm2_h200.json"
}

step_gemma_search() {
  $SEARCH --model gemma3-270m --lengths 8192,16384 --samples "$SAMPLES" --budget "$GEMMA_BUDGET" --overwrite \
    --out "$GEMMA_DB" --details "$WORK/gemma_laws.details.json" --quiet
  $MCOMPILE db cost "$GEMMA_DB" --lengths 32K,128K,1M --json > "$R/laws_gemma3-270m_cost.json"
  cat "$R/laws_gemma3-270m_cost.json"
}

step_gemma_eval() {
  $MCOMPILE eval --model gemma3-270m --length 32768 --windows "$WINDOWS" --db "$GEMMA_DB" \
    --niah-lengths 8192,16384,32768 --out "$R/laws_gemma3-270m_32768_eval.json"
}

step_gemma_default() {
  $MCOMPILE eval --model gemma3-270m --length 32768 --windows "$WINDOWS" --db default \
    --out "$R/laws_gemma3-270m_32768_eval_default.json"
  uniform_db gemma3-270m "$WORK/gemma_default_candidate.json" "$DEFAULT_CANDIDATE"
  $MCOMPILE eval --model gemma3-270m --length 32768 --windows "$WINDOWS" --db "$WORK/gemma_default_candidate.json" \
    --out "$R/laws_gemma3-270m_32768_eval_default_candidate.json"
}

step_gemma_ttft() {
  $PYTHON benchmarks/ttft.py --model gemma3-270m --lengths 32K --variants dense,database,default --db "$GEMMA_DB" \
    --cuda-graphs on --out "$R/ttft_gemma3-270m_h200.json"
}

run_steps $STEPS
