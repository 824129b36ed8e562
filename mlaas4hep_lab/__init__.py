"""mlaas4hep-lab: Machine Learning as a Service for High-Energy Physics.

The public API is loaded lazily so that ``import mlaas4hep_lab`` costs only numpy, awkward and uproot
(and never TensorFlow, torch, XGBoost or ipywidgets).
"""

from __future__ import annotations

import importlib
import warnings

# XRootD's exit hook scans every live object; with torch loaded that trips a torch deprecation warning
warnings.filterwarnings("ignore", category=FutureWarning, module="XRootD.client.finalize")

try:  # The XRootD client library must be loaded before TensorFlow: the other order crashes (SIGSEGV)
    import XRootD.client  # noqa: F401  on the first root:// read. 11 ms, and only when installed.
except ImportError:
    pass

__version__ = "0.1.0"

_LAZY = {
    "Params": "mlaas4hep_lab.params",
    "load_params": "mlaas4hep_lab.params",
    "Preproc": "mlaas4hep_lab.data.preprocess",
    "compile_expression": "mlaas4hep_lab.data.expressions",
    "Specs": "mlaas4hep_lab.data.specs",
    "compute_specs": "mlaas4hep_lab.data.specs",
    "TreeReader": "mlaas4hep_lab.data.reader",
    "inspect_file": "mlaas4hep_lab.data.reader",
    "Vectorizer": "mlaas4hep_lab.data.vectorize",
    "ChunkStream": "mlaas4hep_lab.data.stream",
    "Chunk": "mlaas4hep_lab.data.stream",
    "load_inputs": "mlaas4hep_lab.pipeline",
    "ensure_specs": "mlaas4hep_lab.pipeline",
    "train": "mlaas4hep_lab.training.workflow",
    "Trainer": "mlaas4hep_lab.training.loop",
    "Bundle": "mlaas4hep_lab.bundle",
    "datasets": "mlaas4hep_lab.data.datasets",
    "errors": "mlaas4hep_lab.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mlaas4hep_lab' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
