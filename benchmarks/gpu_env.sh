# Sourced by the GPU scripts (benchmarks/*_gpu.sh): the environment of a bare device machine
# with no network. What the scripts need beside the repository:
#   .whl/                  wheels: jsonschema + deps (jsonschema_specifications, referencing,
#                          rpds_py) and gguf 0.19.0, installed to /tmp/site
#   GGUF files             $MCOMPILE_GGUF_<MODEL> (see mcompile/eval/models.py), or chunks made with
#                          `split -d -b 50M FILE PREFIX.` joined by `join_gguf PREFIX OUT`
#   .carry/bible-kjv.txt   the text (`bible -f "Gen1:1-Rev22:21" > .carry/bible-kjv.txt`): when
#                          Debian's `bible` is missing, a stand-in prints this file, so results
#                          record the rerunnable `--text bible-kjv`
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MCOMPILE_CACHE=${MCOMPILE_CACHE:-$HOME/.cache/mcompile}

if [ -d .whl ] && ! $PYTHON -c "import gguf, jsonschema" 2>/dev/null; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d /tmp/site ]; then case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH};; esac; fi
if ! $PYTHON -c "import mcompile.kernels, mcompile.pattern_db, importlib.metadata as m
assert any(e.name == 'minference' for e in m.entry_points(group='torch_dynamo_backends'))" 2>/dev/null; then
  $PYTHON -m pip install -q --no-deps --no-build-isolation --no-index -e .
fi
if command -v mcompile >/dev/null; then MCOMPILE=mcompile; SEARCH="mcompile search"
else MCOMPILE="$PYTHON -m mcompile.cli"; SEARCH="$PYTHON -m mcompile.pattern_db.search.cli"; fi

run_steps() {   # run_steps STEP ...: each a function step_STEP of the calling script, timed
  local step start
  for step in "$@"; do
    start=$SECONDS
    echo "=== $step ==="
    "step_$step"
    echo "=== $step: $((SECONDS - start)) s ==="
  done
}

join_gguf() {   # join_gguf PREFIX OUT [SHA256]: the chunks PREFIX.NN into OUT, once, checked when a sum is given
  local prefix=$1 out=$2 sum=${3:-} chunks
  [ -f "$out" ] && return 0
  ls "$prefix".[0-9]* >/dev/null 2>&1 || return 0
  # `split -b 50M` leaves every chunk but the last full: while the last one is full, the chunks
  # are still arriving (one device call each), and joining them now would leave a truncated
  # OUT that later calls take as done
  chunks=("$prefix".[0-9]*)
  if [ -z "$sum" ] && [ "$(stat -c %s "${chunks[-1]}")" = $((50 << 20)) ]; then
    echo "join_gguf: the last of ${#chunks[@]} chunk(s) of $prefix is full-size: waiting for the rest" >&2
    return 0
  fi
  cat "${chunks[@]}" > "$out.tmp"
  if [ -n "$sum" ]; then echo "$sum  $out.tmp" | sha256sum -c --quiet || { rm -f "$out.tmp"; return 1; }; fi
  mv "$out.tmp" "$out"
}

if ! command -v bible >/dev/null && [ -f .carry/bible-kjv.txt ]; then
  mkdir -p /tmp/mcompile-bin       # stand-in for Debian's `bible`: the text it would print
  printf '#!/bin/sh\n[ "$*" = "-f Gen1:1-Rev22:21" ] || { echo "stand-in bible: only -f Gen1:1-Rev22:21" >&2; exit 2; }\nexec cat %q\n' \
    "$PWD/.carry/bible-kjv.txt" > /tmp/mcompile-bin/bible
  chmod +x /tmp/mcompile-bin/bible
  export PATH=/tmp/mcompile-bin:$PATH
fi
