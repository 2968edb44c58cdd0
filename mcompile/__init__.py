"""mcompile: ``torch.compile(model, backend="minference")`` for fast long-context prefill.

Importing this package is never needed to use the backend (it is found through the
``torch_dynamo_backends`` entry point); it gives access to the report and the helpers.
"""
import importlib.util as _util
import os as _os


def _map_checkout_subpackages() -> None:
    """passes/, kernels/ and pattern_db/ install as mcompile.passes etc. (pyproject's package-dir).
    When Python runs from the repository root, ./mcompile can shadow the editable install's
    mapping; then look for the subpackages beside it."""
    if _util.find_spec(__name__ + ".kernels") is None:
        root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
        if all(_os.path.isfile(_os.path.join(root, d, "__init__.py")) for d in ("passes", "kernels", "pattern_db")):
            __path__.append(root)  # noqa: F821 (the package's own __path__)


_map_checkout_subpackages()

from .options import OptionError, Options  # noqa: E402
from .plan import HeadPlan, LayerPlan  # noqa: E402
from .reporting import Report, report  # noqa: E402

__all__ = ["report", "Report", "Options", "OptionError", "HeadPlan", "LayerPlan"]
__version__ = "0.1.0"
