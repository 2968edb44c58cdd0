"""The checkout's top-level ``kernels/`` folder never shadows Hugging Face's ``kernels`` package.

``python -c``, ``python -m pytest`` and notebooks started in the checkout root put that root
first on ``sys.path``. ``kernels/`` has no ``__init__.py``, so it is only a namespace portion
there and the installed regular package wins (see ``mcompile/__init__.py``). These tests run
Python from the root in a subprocess, as the README's commands do.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_in_root(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


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
    result = _run_in_root(f"""
        import sys, torch
        assert sys.path[0] in ("", {str(ROOT)!r}), sys.path[:3]   # the checkout root comes first
        import kernels, pathlib
        assert not pathlib.Path(kernels.__file__).resolve().is_relative_to({str(ROOT)!r}), kernels.__file__
        from transformers.integrations import hub_kernels
        from kernels import get_kernel            # what transformers' integration imports
        import mcompile.kernels.sparse_attention  # ours, as a subpackage of mcompile
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from tiny_models import tiny_inputs, tiny_model
        model = tiny_model("llama")
        ids, mask = tiny_inputs(1, 48)
        compiled = torch.compile(model, backend="minference",
                                 options={{"min_len": 16, "plan": "vertical_slash"}})
        with torch.no_grad():
            out = compiled(ids, attention_mask=mask, use_cache=False).logits
            ref = model(ids, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        import mcompile
        rows = mcompile.report().rows
        assert rows and all(r.decision == "sparse" for r in rows), mcompile.report()
        print("OK")
    """)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
