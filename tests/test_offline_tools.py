"""The offline tools (``mcompile.eval``, ``mcompile.pattern_db.search``) sit beside the runtime:
importing every runtime module and running a model compiled with the backend loads neither, so
the backend never pays their imports and they can change without touching it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("mcompile.eval", "mcompile.pattern_db.search")
# folder in the checkout -> package it installs as (pyproject's package-dir)
RUNTIME_DIRS = {"mcompile": "mcompile", "passes": "mcompile.passes", "kernels": "mcompile.kernels",
                "kernels/patterns": "mcompile.kernels.patterns", "pattern_db": "mcompile.pattern_db"}


def runtime_modules() -> list[str]:
    names = []
    for folder, package in RUNTIME_DIRS.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            names.append(package if f.stem == "__init__" else f"{package}.{f.stem}")
    return names


def test_runtime_never_imports_the_offline_tools():
    modules = runtime_modules()
    assert "mcompile.backend" in modules and "mcompile.pattern_db.lookup" in modules
    script = textwrap.dedent(f"""
        import importlib, sys, torch
        for name in {modules!r}:
            importlib.import_module(name)
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from tiny_models import tiny_inputs, tiny_model
        ids, mask = tiny_inputs(1, 48)
        for options in ({{"min_len": 16, "plan": "vertical_slash"}}, {{"min_len": 16}}):
            torch._dynamo.reset()
            compiled = torch.compile(tiny_model("gemma3"), backend="minference", options=options)
            with torch.no_grad():
                compiled(ids, attention_mask=mask, use_cache=False)
        loaded = sorted(m for m in sys.modules if m.startswith({OFFLINE!r}))
        assert not loaded, loaded
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
