"""The checkout's top-level ``kernels/`` folder never shadows Hugging Face's ``kernels`` package.

``python -c``, ``python -m pytest`` and notebooks started in the checkout root put that root
first on ``sys.path``. ``kernels/`` has no ``__init__.py``, so it is only a namespace portion
there and the installed regular package wins (see ``mcompile/__init__.py``). These tests run
Python from the root in a subprocess (fresh_checks.py), as the README's commands do.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fresh_checks import run_fresh

ROOT = Path(__file__).resolve().parents[1]


def test_checkout_kernels_folder_is_not_a_regular_package():
    assert (ROOT / "kernels" / "sparse_attention.py").is_file()
    assert not (ROOT / "kernels" / "__init__.py").exists(), \
        "kernels/__init__.py would make the checkout shadow Hugging Face's kernels package"


def test_hub_kernels_and_compiled_model_from_checkout_root():
    """From the checkout root: transformers' hub-kernel integration imports the real package,
    and a tiny model compiled with the backend runs its sparse path and matches eager."""
    hf_kernels = importlib.util.find_spec("kernels")
    if hf_kernels is None or hf_kernels.origin is None:
        pytest.skip("Hugging Face's kernels package is not installed (transformers < 5.24 does not need it)")
    run_fresh("hub_kernels_from_the_root", cwd=ROOT)
