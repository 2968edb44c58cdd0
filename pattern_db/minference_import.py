"""Import MInference 1.0 pattern files and SGLang/Qwen ``sparse_attention_config``.

Feeds the "resolve plan" step of the pipeline (find sites -> resolve plan -> build index ->
one kernel): a published per-head configuration becomes a PatternDB the backend can look up.

MInference 1.0 format (minference/configs/*_best_pattern*.json): a JSON list, one entry per
layer, each ``{"<head>": [pattern, vertical_size, slash_size, score], ...}`` with heads
counted after KV repetition (i.e. query heads); :func:`_map_entry` says what each entry maps
to, :func:`import_minference_obj` how missing layers and heads are filled.

SGLang / vLLM (Qwen2.5-1M): ``config.json`` -> ``dual_chunk_attention_config`` ->
``sparse_attention_config`` holds the same per-layer list (:func:`import_sglang_config`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcompile.kernels.patterns import vertical_slash

from .database import HeadEntry, LayerEntry, PatternDB, Provenance
from .errors import Issue, PatternDBValidationError, json_path, render_value
from .identity import ModelIdentity
from .io import read_json_file

# MInference's own fallback for layers missing at the end of a file and heads missing in a layer
MINFERENCE_DEFAULT = ("vertical_and_slash", vertical_slash.MINFERENCE_COUNTS["vertical_size"],
                      vertical_slash.MINFERENCE_COUNTS["slash_size"])
SUPPORTED = ("vertical_and_slash", "stream_llm", "a_shape", "block_sparse", "dense")
# MInference's block_sparse_kernel keeps the top 100 key blocks of 64 per query block
BLOCK_SPARSE_TOP_K = 100


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (
        isinstance(v, float) and v.is_integer())


def _map_entry(entry: Any, parts: list[Any], issues: list[Issue]) -> HeadEntry | None:
    """One head's entry, mapped as MInference's forward (minference/modules/minference_forward.py)
    reads it:

      "vertical_and_slash", v, s -> vertical_slash {vertical_size: v, slash_size: s}
            (MInference clamps at run time to max(v, 30) / max(s, 50) and to the length; our
            builder clamps to the length)
      "stream_llm", v, s         -> a_shape {n_init: v, n_local: s}
            (MInference calls streaming_forward(q, k, v, n_init=v, n_local=s): v sink tokens,
            a local window of s tokens); "a_shape" is accepted as an alias
      "block_sparse", v, s       -> block_sparse {top_k: 100}
            (MInference's block_sparse_kernel ignores v and s and keeps the top 100 key blocks
            of 64 per query block)
      "dense"                    -> dense
      score                      -> ``score`` (kept raw: its meaning differs between files,
                                    attention-mass recall in some, counts in others), recall null.
    Other names (e.g. "flex_vertical_and_slash" with list budgets) are refused with the list
    of supported names."""
    if not isinstance(entry, list) or not 3 <= len(entry) <= 4:
        issues.append(Issue(json_path(parts), render_value(entry),
                            "[pattern, vertical_size, slash_size, score]"))
        return None
    name, v, s = entry[0], entry[1], entry[2]
    score = entry[3] if len(entry) == 4 else None
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        issues.append(Issue(json_path(parts + [3]), render_value(score), "a number (score)"))
        return None
    score = float(score) if score is not None else None
    if name not in SUPPORTED:
        issues.append(Issue(json_path(parts + [0]), render_value(name),
                            "one of " + ", ".join(SUPPORTED)))
        return None
    if name == "dense":
        return HeadEntry("dense", {}, score=score)
    if name == "block_sparse":
        return HeadEntry("block_sparse", {"top_k": BLOCK_SPARSE_TOP_K}, score=score)
    lo_v = 0 if name in ("stream_llm", "a_shape") else 1
    ok = True
    for idx, val, lo in ((1, v, lo_v), (2, s, 1)):
        if not _is_count(val) or val < lo:
            issues.append(Issue(json_path(parts + [idx]), render_value(val),
                                f"an integer >= {lo} (a token count)"))
            ok = False
    if not ok:
        return None
    v, s = int(v), int(s)
    if name == "vertical_and_slash":
        return HeadEntry("vertical_slash", {"vertical_size": v, "slash_size": s}, score=score)
    return HeadEntry("a_shape", {"n_init": v, "n_local": s}, score=score)


def _default_head() -> HeadEntry:
    _, v, s = MINFERENCE_DEFAULT
    return HeadEntry("vertical_slash", {"vertical_size": v, "slash_size": s})


def import_minference_obj(data: Any, identity: ModelIdentity, file: str = "<memory>",
                          base: list[Any] | None = None, command: str | None = None,
                          source: str | None = None, notes: list[str] | None = None
                          ) -> PatternDB:
    """Convert an already-parsed MInference list; ``base`` prefixes JSON paths in errors.

    Layers missing at the end of the file, and heads missing in a layer, get MInference's own
    fallback, ``MINFERENCE_DEFAULT`` ("vertical_and_slash", 1000, 6096)."""
    base = list(base or [])
    issues: list[Issue] = []
    if not isinstance(data, list) or not data:
        raise PatternDBValidationError(file, [Issue(
            json_path(base), render_value(data),
            'a non-empty JSON list of layers, each {"<head>": [pattern, vertical_size, '
            'slash_size, score]}')])
    H, L = identity.num_heads, identity.num_layers
    if len(data) > L:
        issues.append(Issue(json_path(base), f"{len(data)} layers",
                            f"at most {L} layers (the model's num_layers)"))
    layers: list[LayerEntry] = []
    filled_heads = 0
    for i, layer in enumerate(data):
        lp = base + [i]
        if not isinstance(layer, dict):
            issues.append(Issue(json_path(lp), render_value(layer),
                                'an object {"<head>": [pattern, vertical_size, slash_size, '
                                'score]}'))
            continue
        heads: dict[int, HeadEntry] = {}
        for key, entry in layer.items():
            hp = lp + [key]
            if not (isinstance(key, str) and key.isdigit() and int(key) < H):
                issues.append(Issue(json_path(hp), f"head key {render_value(key)}",
                                    f"a query head index 0..{H - 1} (heads counted after KV "
                                    "repetition)"))
                continue
            if int(key) in heads:
                issues.append(Issue(json_path(hp), "a head given twice", "each head once"))
                continue
            h = _map_entry(entry, hp, issues)
            if h is not None:
                heads[int(key)] = h
        filled_heads += H - len(heads)
        layers.append(LayerEntry.searched(heads.get(j, _default_head()) for j in range(H)))
    if issues:
        raise PatternDBValidationError(file, issues)
    notes = list(notes or [])
    fallback = "{} {}/{}".format(*MINFERENCE_DEFAULT)
    if filled_heads:
        notes.append(f"{filled_heads} head(s) absent in the source got MInference's fallback "
                     f"{fallback}")
    if len(layers) < L:
        notes.append(f"layers {len(layers)}..{L - 1} absent in the source got MInference's "
                     f"fallback {fallback}")
        layers += [LayerEntry.searched(_default_head() for _ in range(H))
                   for _ in range(L - len(layers))]
    notes.append("mapping: vertical_and_slash(v,s)->vertical_slash(vertical_size=v,"
                 "slash_size=s); stream_llm(v,s)->a_shape(n_init=v,n_local=s); "
                 f"block_sparse->block_sparse(top_k={BLOCK_SPARSE_TOP_K}); score kept raw")
    prov = Provenance(command=command, source=source or f"minference:{file}",
                      notes="; ".join(notes))
    return PatternDB.build(identity, layers, prov)


def _identity(identity: ModelIdentity | None, data: Any, num_kv_heads: int | None,
              head_dim: int | None, name: str | None, file: str) -> ModelIdentity:
    if identity is not None:
        return identity
    if num_kv_heads is None or head_dim is None:
        raise PatternDBValidationError(file, [Issue(
            "$", "a MInference file (it gives layers and query heads, not kv heads or head dim)",
            "a model shape: pass identity=ModelIdentity(...) or num_kv_heads= and head_dim= "
            "(CLI: --model-shape L,H,KV,D or --config config.json)")])
    heads = [int(k) for layer in (data if isinstance(data, list) else [])
             if isinstance(layer, dict) for k in layer if isinstance(k, str) and k.isdigit()]
    if not heads:
        raise PatternDBValidationError(file, [Issue("$", render_value(data),
                                                    "a non-empty MInference layer list")])
    return ModelIdentity(num_layers=len(data), num_heads=max(heads) + 1,
                         num_kv_heads=num_kv_heads, head_dim=head_dim, name=name)


def import_minference(source: str | os.PathLike | list, identity: ModelIdentity | None = None,
                      *, num_kv_heads: int | None = None, head_dim: int | None = None,
                      name: str | None = None, command: str | None = None) -> PatternDB:
    """MInference 1.0 file (path) or parsed list -> PatternDB (validated).

    Give the model as ``identity`` (checked against the file: layer count, head indices), or
    give ``num_kv_heads`` and ``head_dim`` and the layer and head counts are read from the
    file (number of layers; highest head index + 1).
    """
    if isinstance(source, list):
        data, file = source, "<memory>"
    else:
        file = str(source)
        data = read_json_file(source)
    ident = _identity(identity, data, num_kv_heads, head_dim, name, file)
    src = f"minference:{Path(file).name}" if file != "<memory>" else "minference"
    return import_minference_obj(data, ident, file, command=command, source=src)


def import_sglang_config(config: str | os.PathLike | dict, *, name: str | None = None,
                         command: str | None = None) -> PatternDB:
    """A model ``config.json`` (path or dict) with
    ``dual_chunk_attention_config.sparse_attention_config`` -> PatternDB. The model shape
    comes from the same config. A string value is read as a JSON file next to config.json.

    SGLang's dual-chunk backend only accepts "vertical_and_slash" and adds 100 to a
    vertical_size of 30 at run time; we import the numbers as written.
    ``sparse_attention_threshold`` (dense below that length) is recorded in the provenance
    notes."""
    if isinstance(config, dict):
        cfg, file, folder = config, "<memory>", Path(".")
    else:
        file, folder = str(config), Path(config).parent
        cfg = read_json_file(config)
    if not isinstance(cfg, dict):
        raise PatternDBValidationError(file, [Issue("$", render_value(cfg),
                                                    "a model config.json object")])
    dca = cfg.get("dual_chunk_attention_config")
    base = ["dual_chunk_attention_config", "sparse_attention_config"]
    sac = dca.get("sparse_attention_config") if isinstance(dca, dict) else None
    if sac is None:
        raise PatternDBValidationError(file, [Issue(
            json_path(base), "nothing (missing)",
            "a MInference-style per-layer list (Qwen2.5-1M / SGLang dual chunk attention)")])
    data_file = file
    if isinstance(sac, str):
        data_file = str(folder / sac)
        sac, base = read_json_file(data_file), []
    try:
        identity = ModelIdentity.from_hf_config(cfg, name=name)
    except (ValueError, TypeError) as e:
        raise PatternDBValidationError(file, [Issue("$", "an unusable model config",
                                                    f"a decoder config ({e})")]) from None
    notes = [f"sparse_attention_threshold={dca.get('sparse_attention_threshold', 32768)} "
             "(SGLang runs dense below this length)",
             "SGLang adds 100 to a vertical_size of 30 at run time; imported as written"]
    if dca.get("sparse_attention_enabled") is False:
        notes.append("sparse_attention_enabled was false in the source config")
    return import_minference_obj(sac, identity, data_file, base=base, command=command,
                                 source=f"sglang:{Path(file).name}", notes=notes)
