"""The backend's options: ``torch.compile(model, backend="minference", options={...})``.

Every option is checked when the backend first runs; an unknown option or a bad value is an
``OptionError`` that names it and lists what is accepted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import Any

MODES = ("run", "capture")
LOG_LEVELS = ("debug", "info", "warning", "error")


class OptionError(ValueError):
    """A bad ``options={...}`` entry for the minference backend."""


@dataclass(frozen=True)
class Options:
    db: str | None = "auto"          # "auto", a path to a database JSON, a shipped model key, or None (default plan)
    force_db: bool = False           # use a database even if its fingerprint does not match the model
    min_len: int = 8192              # prompts shorter than this run dense
    mode: str = "run"                # "run" or "capture" (record q/k/v per site for the offline search)
    plan: Any = None                 # force one pattern for every head: a name, or {"pattern": name, **params}
    capture_dir: str = "mcompile_capture"
    overwrite: bool = False          # capture mode: allow writing into a non-empty capture_dir
    log: str = "warning"             # level of the "mcompile" logger
    report: str | None = None        # path: write the report as JSON after each compile
    debug: bool = False              # check sparse-index invariants at run time (slow)
    stats: bool = False              # record computed blocks and columns per sparse call (one host sync each)
    layerwise: bool = True           # compile each distinct decoder layer once (passes/layerwise.py)
    dense_tail: int = 64             # the last this-many prompt rows attend to every key (0: off)
    cost_model: bool = True          # GPU: run dense where the measured cost model predicts sparse is slower
    cuda_graphs: bool = False        # GPU: replay each length's prefill as CUDA graphs (mode="reduce-overhead")
    tensor_parallel: Any = None      # None: detect head sharding from DTensor parameters; False; a 1-D DeviceMesh; {"degree", "rank"}
    kv_compress: Any = None          # None, or {"method": "snapkv", "budget", "window", "kernel"} (mcompile/kv_compress.py)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "Options":
        options = dict(options or {})
        accepted = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise OptionError(f"unknown minference option(s) {unknown}; accepted options: {accepted}")
        opts = cls(**options)
        opts._check()
        return opts

    def _check(self) -> None:
        def bad(name: str, accepted: str) -> OptionError:
            return OptionError(f"bad value for minference option {name!r}: {getattr(self, name)!r}; accepted: {accepted}")

        if self.db is not None and not isinstance(self.db, (str, os.PathLike)):
            raise bad("db", '"auto", a path to a database JSON file, a shipped model key, or None')
        for name in ("force_db", "overwrite", "debug", "stats", "layerwise", "cost_model", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if isinstance(self.min_len, bool) or not isinstance(self.min_len, int) or self.min_len < 1:
            raise bad("min_len", "an integer >= 1 (prompts shorter than it run dense)")
        if isinstance(self.dense_tail, bool) or not isinstance(self.dense_tail, int) or self.dense_tail < 0:
            raise bad("dense_tail", "an integer >= 0 (prompt rows at the end computed densely; 0 turns it off)")
        if self.mode not in MODES:
            raise bad("mode", f"one of {list(MODES)}")
        if self.plan is not None:
            from .kernels.patterns import PATTERNS   # here, not at the top: it imports torch
            name = self.plan.get("pattern") if isinstance(self.plan, dict) else self.plan
            if not isinstance(name, str) or name not in PATTERNS:
                raise bad("plan", f'None, a pattern name in {list(PATTERNS)}, or {{"pattern": name, **params}}')
        self.kv_compression()
        if not isinstance(self.capture_dir, (str, os.PathLike)) or not str(self.capture_dir):
            raise bad("capture_dir", "a directory path")
        if not (isinstance(self.log, str) and self.log.lower() in LOG_LEVELS) and not isinstance(self.log, int):
            raise bad("log", f"a logging level, one of {list(LOG_LEVELS)} or an int")
        if self.report is not None and not isinstance(self.report, (str, os.PathLike)):
            raise bad("report", "None or a path for the JSON report")
        host_reads = [name for name, on in (("stats", self.stats), ("debug", self.debug),
                                            ("mode", self.mode == "capture")) if on]
        if self.cuda_graphs and host_reads:
            raise OptionError(f"minference option 'cuda_graphs' excludes {host_reads}: they read the GPU's "
                              "results on the host every call, which a replayed CUDA graph does not do")

    @property
    def log_level(self) -> int:
        return self.log if isinstance(self.log, int) else getattr(logging, self.log.upper())

    def kv_compression(self):
        """The ``kv_compress`` option as a ``KVCompress``, or None; OptionError when bad."""
        from .kv_compress import KVCompress   # here, not at the top: it imports torch
        return KVCompress.from_option(self.kv_compress)

    def forced_plan(self) -> tuple[str, dict[str, Any]] | None:
        if self.plan is None:
            return None
        if isinstance(self.plan, str):
            return self.plan, {}
        params = {k: v for k, v in self.plan.items() if k != "pattern"}
        return self.plan["pattern"], params
