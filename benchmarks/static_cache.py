"""What a database's static heads keep allocated between calls, what a call makes again, and how
many parts a prefill runs.

    python benchmarks/static_cache.py --db pattern_db/databases/smollm2-135m.json --lengths 32K,128K

Per length, three passes over every layer as ``runtime.sparse_call`` makes them (three
prefills): the layer's parts (``patterns.index_parts`` under ``runtime.index_budget``), each
static part built (``patterns.build_part``: the spans of a ``BlockRanges``, or a static
pattern's index; the online parts need q and k, and keep nothing). Then the bytes the static
caches hold (``_common.StaticCache``, what stays allocated after a call, above dense
attention's peak), the static values the last pass made again (what did not stay cached), and
the parts: each is one launch of the sparse kernel.
No kernel runs, so the CPU gives the GPU's numbers (the indexes are the same tensors). The
lengths run in order in one process, as a server's prompts would.

Output: a printed table and JSON (``--out``, default ``benchmarks/results/static_cache_<db>.json``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from mcompile.cli_types import lengths
from mcompile.kernels import patterns as P
from mcompile.kernels.patterns import _common
from mcompile.runtime import index_budget
from pattern_db.io import loads


def caches():
    """The static caches, as the patterns module holds them now."""
    return P._static_indexes, P._block_ranges


def cached_bytes() -> int:
    """Bytes the static caches hold, each storage once."""
    return _common.held_bytes([entry[0] for cache in caches() for entry in cache.recent.values()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=str(Path(__file__).parent.parent / "pattern_db" / "databases" / "smollm2-135m.json"))
    parser.add_argument("--lengths", type=lengths, default="32K,128K")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    db = loads(Path(args.db).read_text(), args.db)
    model = db.model
    plans = [db.layer_plan(layer) for layer in range(model.num_layers)]     # one object a layer, as the sites hold
    rows = []
    for n in args.lengths:
        q = torch.empty(1, model.num_heads, n, model.head_dim, dtype=torch.bfloat16)
        k = torch.empty(1, model.num_kv_heads, n, model.head_dim, dtype=torch.bfloat16)
        for _ in range(3):
            made = sum(cache.made for cache in caches())
            parts = static_parts = 0
            for plan in plans:
                if plan is None or plan.is_dense:
                    continue
                heads_plan = P._plan_heads(plan)
                for heads in P.index_parts(plan, n, 1, index_budget(q, k, k)):
                    parts += 1
                    if not P.get_pattern(heads_plan[heads[0]].pattern).dynamic:
                        static_parts += 1
                        P.build_part(q, k, plan, heads)
        rows.append({"n": n, "cached_bytes": cached_bytes(), "cached_mib": cached_bytes() / 2**20, "made_again": sum(c.made for c in caches()) - made,
                     "parts": parts, "static_parts": static_parts, "cache_cap_mib": _common.STATIC_CACHE_BYTES / 2**20})
        r = rows[-1]
        print(f"{n:>8d}: static caches hold {r['cached_bytes']:>10,d} bytes (cap {r['cache_cap_mib']:.0f} MiB a cache), "
              f"{r['made_again']} static values made again a call; {r['parts']} kernel parts a prefill, "
              f"{r['static_parts']} of them static", flush=True)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"static_cache_{Path(args.db).stem}.json"
    out.write_text(json.dumps({"benchmark": "static_cache", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                               "date": datetime.date.today().isoformat(), "db": Path(args.db).name, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
