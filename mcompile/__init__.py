"""mcompile: ``torch.compile(model, backend="minference")`` for fast long-context prefill.

Importing this package is never needed to use the backend (it is found through the
``torch_dynamo_backends`` entry point); it gives access to the report and the helpers.
"""
import importlib.util as _util
import os as _os


def _map_checkout_subpackages() -> None:
    """passes/, kernels/ and pattern_db/ install as mcompile.passes etc. (pyproject's package-dir).

    The checkout's kernels/ has no __init__.py on purpose: a folder without one is only a
    namespace portion, and Python prefers a regular package (Hugging Face's ``kernels``, which
    transformers imports) wherever each sits on sys.path, so running Python from the checkout
    root can never shadow it. setuptools' editable finder does not resolve such a mapped
    namespace subpackage, so in a checkout mcompile also looks for its subpackages beside itself.
    """
    if _util.find_spec(__name__ + ".kernels") is None:
        root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
        if _os.path.isfile(_os.path.join(root, "kernels", "sparse_attention.py")):
            __path__.append(root)  # noqa: F821 (the package's own __path__)


_map_checkout_subpackages()

from .options import OptionError, Options  # noqa: E402
from .plan import HeadPlan, LayerPlan  # noqa: E402
from .reporting import Report, report  # noqa: E402
from .tensor_parallel import TensorParallelError, shard_heads  # noqa: E402

__all__ = ["report", "Report", "Options", "OptionError", "HeadPlan", "LayerPlan", "shard_heads",
           "TensorParallelError"]
__version__ = "0.1.0"
