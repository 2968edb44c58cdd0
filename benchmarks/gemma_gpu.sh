#!/usr/bin/env bash
# Gemma 3 270M at 32K on one GPU: the shipped pattern database and the evidence behind it
# (issues 5, 7 and 8), one step at a time. Results land in benchmarks/results/ (JSON, PNG and
# the printed tables); every step prints its estimated and measured time.
#
#   steps (STEPS="..." picks and orders them; each step reads only files earlier steps wrote,
#   so a run that stopped can go on with the remaining steps):
#     prep     dequantise the GGUF file once into $MCOMPILE_CACHE            (~1 min, CPU work)
#     search   mcompile search at 32K -> pattern_db/databases/gemma3-270m.json, its details
#              (every candidate's cost/recall/error per head) and a PNG         (~2.5-3.5 min)
#     select   choose the database again from the search's details at BUDGET (no model run: a new
#              budget or scoring without a new search)                          (~5 s)
#     recall   per-head attention-mass recall of each registered pattern at equal cost, from
#              the search's details (issue 5; no model run)                      (~5 s)
#     plans    searched plan vs MInference default vs best single pattern at equal cost, and
#              other budgets: recall on held-out q/k/v, perplexity + top-1 on held-out text (~3 min)
#     eval     mcompile eval with the database over WINDOWS held-out windows: perplexity vs dense,
#              top-1, density, per-layer recall of the plan on the first window's q/k (issue 8) (~2.5 min)
#     niah     needle in a haystack, lengths x depths x needles, dense vs sparse, heat maps (~3 min)
#     scoring  (optional) which scoring predicts perplexity: plans chosen by output error vs by
#              recall at several budgets, Spearman correlations                   (~4-5 min)
#     pack     tar the results (and the database) into ${OUT:-$R}/gemma3-270m-<length>-results.tgz
#
# On a machine with the GGUF file but no network (the device): carry what benchmarks/gpu_env.sh
# lists, with gemma-3-270m-q4_k_m.gguf as .carry/gguf.00 .. gguf.NN (joined here into
# $WORK/gemma-3-270m-q4_k_m.gguf; .carry/gguf.sha256 checks it), or set GGUF=/path/to/the.gguf
# then, e.g.:
#   STEPS="prep search recall plans" bash benchmarks/gemma_gpu.sh
#   STEPS="eval niah" bash benchmarks/gemma_gpu.sh
# The mcompile package is installed editable (pip -e, offline) when it is not importable.
# CPU smoke test of every step (tiny sizes, nothing shipped is overwritten):
#   DEVICE=cpu LENGTH=1024 SAMPLES=2 HELDOUT=1 NIAH_LENGTHS=512,1024 MIN_LEN=256 \
#     R=/tmp/gemma-smoke DB=/tmp/gemma-smoke/db.json WORK=/tmp/gemma-smoke/work \
#     STEPS="prep search recall plans eval niah scoring" bash benchmarks/gemma_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

MODEL=gemma3-270m
LENGTH=${LENGTH:-32768}
DEVICE=${DEVICE:-cuda}
TEXT=${TEXT:-bible-kjv}
BUDGET=${BUDGET:-0.36}                # mean kernel cost of the searched heads, of dense causal attention
EXTRA_BUDGETS=${EXTRA_BUDGETS:-0.3,0.4}
SCORING_BUDGETS=${SCORING_BUDGETS:-0.2,0.3,0.4}
SAMPLES=${SAMPLES:-4}                 # calibration prompts of LENGTH tokens
HELDOUT=${HELDOUT:-2}                 # held-out prompts (plans, scoring)
MIN_LEN=${MIN_LEN:-8192}              # eval/niah: shorter prompts run dense (the backend's default)
WINDOWS=${WINDOWS:-4}                 # eval: held-out windows of LENGTH tokens, pooled
NIAH_LENGTHS=${NIAH_LENGTHS:-4096,8192,16384,32768}
NIAH_DEPTHS=${NIAH_DEPTHS:-0,0.25,0.5,0.75,1}
NIAH_NEEDLES=${NIAH_NEEDLES:-3}
R=${R:-benchmarks/results}
DB=${DB:-pattern_db/databases/gemma3-270m.json}
WORK=${WORK:-.cache/gemma_gpu}        # captures and the joined GGUF (ignored by git)
STEPS=${STEPS:-"prep search recall plans eval niah"}
PYTHON=${PYTHON:-python3}
TAG=gemma3-270m_$LENGTH
mkdir -p "$R" "$WORK" "$(dirname "$DB")"
. benchmarks/gpu_env.sh

if [ ! -f "$MCOMPILE_CACHE/$MODEL/config.json" ] && [ -z "${GGUF:-}" ]; then
  GGUF=$WORK/gemma-3-270m-q4_k_m.gguf
  join_gguf .carry/gguf "$GGUF" "$([ -f .carry/gguf.sha256 ] && cut -d' ' -f1 .carry/gguf.sha256)"
fi
if [ -n "${GGUF:-}" ] && [ -f "$GGUF" ]; then export MCOMPILE_GGUF_GEMMA3_270M=$GGUF; fi

declare -A ESTIMATE=([prep]="60" [search]="150-210" [select]="5" [recall]="5" [plans]="150-200" [eval]="120-180"
                     [niah]="120-200" [scoring]="240-300" [pack]="1")
# later steps read the database and the search's details; a copy in $WORK (ignored by git)
# survives a re-synced working tree on the device between calls
restore() { for f in "$@"; do [ -f "$f" ] || [ ! -f "$WORK/saved/$(basename "$f")" ] || cp "$WORK/saved/$(basename "$f")" "$f"; done; }
save() { mkdir -p "$WORK/saved"; cp "$@" "$WORK/saved/"; }

run_step() {
  local step=$1 start=$SECONDS
  restore "$DB" "$R/search_$TAG.details.json"
  echo "=== $step: estimated ${ESTIMATE[$step]:-?} s on one H100 at 32K ($DEVICE, $LENGTH tokens) ==="
  "step_$step"
  echo "=== $step: took $((SECONDS - start)) s ==="
  echo "{\"step\": \"$step\", \"seconds\": $((SECONDS - start)), \"length\": $LENGTH, \"device\": \"$DEVICE\", \"date\": \"$(date -u +%FT%TZ)\"}" \
    >> "$R/gemma_gpu_timings_$TAG.jsonl"
}

step_prep() {
  $PYTHON - <<EOF
import time, torch, transformers
from mcompile.eval.models import checkpoint_dir
t = time.perf_counter()
print("checkpoint", checkpoint_dir("$MODEL"), f"({time.perf_counter() - t:.0f} s)")
print("torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
EOF
}

keep_complete_capture() {   # a capture dir is reused only when it holds $2 complete samples
  $PYTHON - "$1" "$2" <<'PY' || rm -rf "$1"
import json, sys
from pathlib import Path
d, n = Path(sys.argv[1]), int(sys.argv[2])
if d.exists():
    samples = sorted(p for p in d.glob("sample*") if p.is_dir())
    layers = len(json.loads((d / "meta.json").read_text())["layers"]) if (d / "meta.json").exists() else -1
    sys.exit(0 if len(samples) == n and all(len(list(s.glob("layer*.pt"))) == layers for s in samples) else 1)
PY
}

step_search() {   # the calibration capture is kept in $WORK/calib and reused when complete
  keep_complete_capture "$WORK/calib" "$SAMPLES"
  $SEARCH --model "$MODEL" --text "$TEXT" --length "$LENGTH" --samples "$SAMPLES" --budget "$BUDGET" \
    --device "$DEVICE" --out "$DB" --overwrite --capture-dir "$WORK/calib" --reuse-capture \
    --plot "$R/search_$TAG.png" --details "$R/search_$TAG.details.json" | tee "$R/search_$TAG.txt"
  save "$DB" "$R/search_$TAG.details.json"
}

step_select() {
  $SEARCH --model "$MODEL" --from-details "$R/search_$TAG.details.json" --budget "$BUDGET" --out "$DB" --overwrite \
    --plot "$R/search_$TAG.png" | tee "$R/search_$TAG.txt"
  save "$DB"
}

step_recall() {
  $PYTHON benchmarks/pattern_recall.py "$R/search_$TAG.details.json" --costs 0.1,0.2,0.3,0.4 --per-head 0.3 \
    --out "$R/pattern_recall_$TAG.json" | tee "$R/pattern_recall_$TAG.md"
}

step_plans() {
  keep_complete_capture "$WORK/heldout/heldout" "$HELDOUT"
  $PYTHON benchmarks/search_eval.py plans --model "$MODEL" --text "$TEXT" --length "$LENGTH" --device "$DEVICE" \
    --details "$R/search_$TAG.details.json" --budget "$BUDGET" --extra-budgets "$EXTRA_BUDGETS" \
    --heldout "$HELDOUT" --work "$WORK/heldout" --reuse --out "$R/search_plans_$TAG.json" | tee "$R/search_plans_$TAG.txt"
}

step_scoring() {
  keep_complete_capture "$WORK/heldout/heldout" "$HELDOUT"
  $PYTHON benchmarks/search_eval.py scoring --model "$MODEL" --text "$TEXT" --length "$LENGTH" --device "$DEVICE" \
    --details "$R/search_$TAG.details.json" --budgets "$SCORING_BUDGETS" \
    --heldout "$HELDOUT" --work "$WORK/heldout" --reuse --out "$R/search_scoring_$TAG.json" | tee "$R/search_scoring_$TAG.txt"
}

step_eval() {
  keep_complete_capture "$WORK/eval_capture" 1
  $MCOMPILE eval --model "$MODEL" --text "$TEXT" --length "$LENGTH" --windows "$WINDOWS" --db "$DB" \
    --min-len "$MIN_LEN" --device "$DEVICE" --recall --capture-dir "$WORK/eval_capture" --out "$R/eval_$TAG.json" | tee "$R/eval_$TAG.txt"
}

step_niah() {
  $MCOMPILE eval --model "$MODEL" --text "$TEXT" --length 0 --db "$DB" --min-len "$MIN_LEN" --device "$DEVICE" \
    --niah-lengths "$NIAH_LENGTHS" --niah-depths "$NIAH_DEPTHS" --niah-needles "$NIAH_NEEDLES" \
    --plot "$R/niah_$TAG.png" --out "$R/niah_$TAG.json" | tee "$R/niah_$TAG.txt"
}

step_pack() {   # every result of this pipeline in one archive, e.g. for the device's $OUT
  local to=${OUT:-$R}/gemma3-270m-${LENGTH}-results.tgz
  tar czf "$to" $(ls -d "$R"/*"$TAG"* "$DB" 2>/dev/null)
  tar tzvf "$to"
}

for step in $STEPS; do
  case $step in
    prep|search|select|recall|plans|scoring|eval|niah|pack) run_step "$step" ;;
    *) echo "unknown step $step (prep search select recall plans scoring eval niah pack)" >&2; exit 2 ;;
  esac
done
