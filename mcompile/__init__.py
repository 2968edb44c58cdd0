"""mcompile: ``torch.compile(model, backend="minference")`` for fast long-context prefill.

Importing this package is never needed to use the backend (it is found through the
``torch_dynamo_backends`` entry point); it gives access to the report and the helpers.
"""
from .options import OptionError, Options
from .plan import HeadPlan, LayerPlan
from .reporting import Report, report

__all__ = ["report", "Report", "Options", "OptionError", "HeadPlan", "LayerPlan"]
__version__ = "0.1.0"
