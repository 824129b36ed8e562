"""Optional frameworks, imported on first use with an install hint when missing.

The engine never imports these at module level: ``import mlaas4hep_lab`` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mlaas4hep_lab.errors import MissingExtraError

__all__ = ["tensorflow", "keras", "torch", "sklearn", "xgboost", "onnxruntime", "onnx", "matplotlib", "require"]

HINTS = {
    "tensorflow": ("keras", "tensorflow-cpu"),
    "keras": ("keras", "keras"),
    "torch": ("torch", "torch==2.13.0 (install it first, pinned, to get the CPU wheel)"),
    "sklearn": ("sklearn", "scikit-learn"),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnx": ("onnx", "onnx"),
    "matplotlib": ("plots", "matplotlib"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "jwt": ("serve", "PyJWT"),
    "dask": ("dask", "dask[distributed]"),
    "distributed": ("dask", "distributed"),
    "dask_gateway": ("dask", "dask-gateway"),
    "dask_gateway_server": ("hub", "dask-gateway-server[local]"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError saying which extra (or package) to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra, package = HINTS.get(top, (None, top))
        how = f'pip install "mlaas4hep-lab[{extra}]"' if extra else f"pip install {package}"
        raise MissingExtraError(
            f"{module} is needed here but cannot be imported ({err}). Install it with: {how} "
            f"(or: pip install {package})"
        ) from err


def tensorflow() -> ModuleType:
    import mlaas4hep_lab  # noqa: F401  loads the XRootD client first (see mlaas4hep_lab/__init__.py)

    return require("tensorflow")


def keras() -> ModuleType:
    import mlaas4hep_lab  # noqa: F401

    return require("keras")


def torch() -> ModuleType:
    return require("torch")


def sklearn() -> ModuleType:
    return require("sklearn")


def xgboost() -> ModuleType:
    return require("xgboost")


def onnxruntime() -> ModuleType:
    return require("onnxruntime")


def onnx() -> ModuleType:
    return require("onnx")


def matplotlib() -> ModuleType:
    # plots draw on standalone Figure objects (no pyplot state), so any backend, headless included, works
    return require("matplotlib")


def lazy_attributes(module: str, table: dict[str, str]):
    """A module ``__getattr__`` that imports ``name`` from ``table[name]`` on first use and keeps it, so a
    package's ``__init__`` can name its app and settings without importing FastAPI, ipywidgets, ..."""
    import sys

    def __getattr__(name: str):
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target), name)
        sys.modules[module].__dict__[name] = value
        return value

    return __getattr__
