"""The user's model.py: loaded by path (no PYTHONPATH needed), ``model(idim)`` called, backend detected.

The original contract: ``def model(idim)`` returns a compiled Keras model; here it may also return a
``torch.nn.Module``, a scikit-learn classifier or an XGBoost model (for tree models ``def model()``
with no argument is accepted). Optional names in the same file are handed to the backend: ``loss``
and ``optimizer`` (torch), ``fit_options`` (a dict).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.backends.base import detect_backend, seed_frameworks
from mlaas4hep_lab.errors import ConfigError, InputFileError, MissingExtraError

__all__ = ["UserModel", "load_model_file", "TEMPLATES", "template_path"]

_OPTIONAL = ("loss", "optimizer", "fit_options")
TEMPLATES = {
    "keras": "keras_mlp.py",
    "torch": "torch_mlp.py",
    "sklearn": "sklearn_gbt.py",
    "xgboost": "xgboost_gbt.py",
}


def template_path(name: str) -> Path:
    """Path of a model.py template shipped with the package (``keras``, ``torch``, ``sklearn``, ``xgboost``)."""
    if name not in TEMPLATES:
        raise ConfigError(f"no model template {name!r}; templates: {', '.join(TEMPLATES)}", key="model")
    return Path(__file__).with_name("templates") / TEMPLATES[name]


@dataclass
class UserModel:
    path: Path
    source: str
    model: Any
    backend: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


def _import(path: Path):
    name = f"mlaas4hep_user_model_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path} as a Python module", key="model")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # the user's own model file, run as a module by design
    except ImportError as err:
        top = (err.name or "").split(".")[0]
        from mlaas4hep_lab import extras

        if top in extras.HINTS:
            try:
                extras.require(top)
            except MissingExtraError as missing:
                raise MissingExtraError(f"{path} needs {top}: {missing}") from err
        raise ConfigError(f"{path}: importing it raised {type(err).__name__}: {err}\n{_where(err, path)}",
                          key="model") from err
    except SyntaxError as err:
        raise ConfigError(f"{path}: syntax error at line {err.lineno}: {err.msg}", key="model") from None
    except Exception as err:
        raise ConfigError(f"{path}: importing it raised {type(err).__name__}: {err}\n{_where(err, path)}",
                          key="model") from err
    return module


def _where(err: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return "\n".join(f"  {path.name}, line {f.lineno}: {f.line}" for f in frames[-3:])


def load_model_file(path: str | Path, idim: int, seed: int | None = None) -> UserModel:
    """Import ``path``, call its ``model(idim)`` (or ``model()``), detect the backend.

    Example::

        um = load_model_file("model.py", idim=30)
        um.backend   # "keras"
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}", str(path))
    source = path.read_text()
    module = _import(path)
    factory = getattr(module, "model", None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"{path} defines no function `model`; it must define `def model(idim)` returning the model "
            f"(callables found: {', '.join(defined) or 'none'})", key="model",
        )
    if seed is not None:  # weights are initialised inside model(idim): seed before calling it
        seed_frameworks(seed)
    try:
        params = inspect.signature(factory).parameters
        obj = factory(idim) if len(params) >= 1 else factory()
    except Exception as err:
        raise ConfigError(f"{path}: model({idim}) raised {type(err).__name__}: {err}\n{_where(err, path)}",
                          key="model") from err
    if obj is None:
        raise ConfigError(f"{path}: model({idim}) returned None; it must return the model", key="model")
    backend = detect_backend(obj)
    options = {name: getattr(module, name) for name in _OPTIONAL if hasattr(module, name)}
    return UserModel(path, source, obj, backend, options)
