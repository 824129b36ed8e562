"""The user's model.py: loaded by path (no PYTHONPATH needed), ``model(idim)`` called, backend detected.

The original contract: ``def model(idim)`` returns a compiled Keras model; here it may also return a
``torch.nn.Module``, a scikit-learn classifier or an XGBoost model (for tree models ``def model()``
with no argument is accepted). Optional names in the same file are handed to the backend: ``loss``
and ``optimizer`` (torch), ``fit_options`` (a dict).

Errors name the file and the line of model.py (``model.py line 12: ValueError: ...``), on one line:
:class:`~mlaas4hep_lab.errors.ModelFileError`. :func:`user_code_location` finds model.py's line in any
exception, which the command line uses for errors raised later, inside training.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import linecache
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.backends.base import detect_backend, seed_frameworks
from mlaas4hep_lab.errors import ConfigError, InputFileError, MissingExtraError, ModelFileError

__all__ = ["UserModel", "load_model_file", "model_arguments", "check_model_file", "user_code_location", "input_width_error",
           "first_line", "TEMPLATES", "template_path"]

_OPTIONAL = ("loss", "optimizer", "fit_options")
TEMPLATES = {
    "keras": "keras_mlp.py",
    "torch": "torch_mlp.py",
    "sklearn": "sklearn_gbt.py",
    "xgboost": "xgboost_gbt.py",
    # per task: <framework>_<task>.py
    **{f"{fw}_{task}": f"{fw}_{task}.py" for fw in ("keras", "torch", "sklearn", "xgboost")
       for task in ("multiclass", "regression")},
    # the objects layout (any task: model(inputs, n_outputs))
    "torch_deepsets": "torch_deepsets.py",
    "keras_deepsets": "keras_deepsets.py",
    "torch_attention": "torch_attention.py",
}
# module names of imported model.py files start with this: how a traceback frame is known as the user's
_MODULE_PREFIX = "mlaas4hep_user_model_"


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


# -- errors that name model.py's line ---------------------------------------------------------------
def first_line(text: object, limit: int = 400) -> str:
    """The first non-empty line of an exception message, shortened: frameworks (Keras above all) add
    paragraphs of call arguments that would bury the sentence that matters."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def user_code_location(err: BaseException | None) -> tuple[str, int, str] | None:
    """``(path, line number, source line)`` of the innermost frame of a model.py loaded by this module in
    the traceback of ``err`` (or of the exceptions it was raised from), or None when model.py's own code
    is not on the stack (a Keras layer built there but failing inside Keras, say)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        found = None
        for frame, lineno in traceback.walk_tb(err.__traceback__):
            if str(frame.f_globals.get("__name__", "")).startswith(_MODULE_PREFIX):
                found = (frame.f_code.co_filename, lineno)
        if found is not None:
            return found[0], found[1], linecache.getline(found[0], found[1]).strip()
        err = err.__cause__ or err.__context__
    return None


def _line_in(err: BaseException, path: Path) -> int | None:
    where = user_code_location(err)
    return where[1] if where and Path(where[0]) == path else None


def _user_error(err: BaseException, path: Path, during: str) -> ModelFileError:
    """``model.py line 12: ValueError: ... (during)``: one line naming the user's file and line."""
    line = _line_in(err, path)
    at = f"{path} line {line}" if line else str(path)
    return ModelFileError(f"{at}: {type(err).__name__}: {first_line(err)} ({during})", str(path), line)


def _syntax_error(err: SyntaxError, path: Path) -> ModelFileError:
    where = f" at line {err.lineno}" + (f", column {err.offset}" if err.offset else "")
    return ModelFileError(f"{path}: syntax error{where}: {err.msg}", str(path), err.lineno)


def input_width_error(user_model: UserModel, n_features: int, err: BaseException) -> ModelFileError:
    """The error for a model that fails on a batch of ``n_features`` inputs (a layer sized for another
    number of features). Names the line of model.py where it was raised, else the one line that holds
    the width the framework expected (``keras.Input(shape=(25,))``) when exactly one line does."""
    path = Path(user_model.path)
    line = _line_in(err, path) or _line_with_width(user_model.source, str(err), n_features)
    at = f"{path} line {line}" if line else str(path)
    return ModelFileError(
        f"{at}: {type(err).__name__}: {first_line(err)}: the model returned by model({n_features}) does not "
        f"take the {n_features} input features of these data; size its input layer with idim (the number "
        "of features) instead of a fixed number", str(path), line)


def _line_with_width(source: str, message: str, n_features: int) -> int | None:
    # the sizes the framework names (Keras "expected shape=(None, 25)", torch "(2x30 and 25x8)") other
    # than the data's own width, looked up as whole numbers in model.py's code (comments left out); a
    # line is named only when exactly one line holds one of them
    numbers = {int(m) for m in re.findall(r"(?<![\d.])\d+(?![\d.])", message)} - {0, 1, 2, n_features}
    if not numbers:
        return None
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(str, sorted(numbers))) + r")(?![\w.])")
    hits = [i for i, text in enumerate(source.splitlines(), 1) if pattern.search(text.split("#", 1)[0])]
    return hits[0] if len(hits) == 1 else None


# -- loading ------------------------------------------------------------------------------------------
def check_model_file(path: str | Path) -> Path:
    """Fail fast, before the (long) specs pass: model.py must exist and be valid Python. Nothing is run."""
    path = Path(path).resolve()
    if not path.is_file():
        kind = " (it is a folder)" if path.is_dir() else ""
        raise InputFileError(f"model file not found: {path}{kind}", str(path))
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as err:
        raise _syntax_error(err, path) from None
    except ValueError as err:  # null bytes: not a Python source at all
        raise ModelFileError(f"{path}: not a Python source file ({err})", str(path)) from None
    return path


def _import(path: Path):
    name = f"{_MODULE_PREFIX}{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"cannot load {path} as a Python module", str(path))
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
        raise _user_error(err, path, "while importing it") from err
    except SyntaxError as err:
        raise _syntax_error(err, path) from None
    except Exception as err:
        raise _user_error(err, path, "while importing it") from err
    return module


def load_model_file(path: str | Path, idim: int, seed: int | None = None, task=None, inputs=None) -> UserModel:
    """Import ``path``, call its ``model(idim)`` (or ``model()``), detect the backend.

    For a task other than binary (``task``, a :class:`~mlaas4hep_lab.task.Task`), ``model`` may take the
    outputs it must give as a second argument or a keyword: ``def model(idim, n_outputs)`` is called with
    K (multiclass) or T (regression); a parameter named ``task`` receives the task's kind
    (``"binary"``, ``"multiclass"``, ``"regression"``). For the objects layout (params ``"layout":
    "objects"``) ``inputs`` is the shape of each named input (:meth:`ObjectsLayout.shapes`), handed to
    ``model`` in place of ``idim``: ``def model(inputs, n_outputs)``.

    Example::

        um = load_model_file("model.py", idim=30)
        um.backend   # "keras"
    """
    path = check_model_file(path)
    source = path.read_text()
    module = _import(path)
    factory = getattr(module, "model", None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ModelFileError(
            f"{path} defines no function `model`; it must define `def model(idim)` returning the model "
            f"(callables found: {', '.join(defined) or 'none'})", str(path))
    if seed is not None:  # weights are initialised inside model(idim): seed before calling it
        seed_frameworks(seed)
    args, kwargs, call = model_arguments(factory, idim if inputs is None else inputs, task)
    try:
        obj = factory(*args, **kwargs)
    except Exception as err:
        if inputs is not None:
            hint = ('; with params "layout": "objects" model() receives the shapes of the named inputs (a dict: '
                    "flat, each collection and its mask), not the number of features")
        elif "'int'" in str(err):   # a model for the objects layout given the number of features
            hint = ('; model() received the number of features (the flat layout): a model written for named '
                    'inputs needs params "layout": "objects"')
        else:
            hint = ""
        raise _user_error(err, path, f"in {call}{hint}") from err
    if obj is None:
        raise ModelFileError(f"{path}: model({idim}) returned None; it must return the model", str(path))
    try:
        backend = detect_backend(obj)
    except ConfigError as err:
        said = str(err).removeprefix("key 'model': ")  # the key prefix means nothing beside the file name
        raise ModelFileError(f"{path}: {said}", str(path)) from None
    options = {name: getattr(module, name) for name in _OPTIONAL if hasattr(module, name)}
    return UserModel(path, source, obj, backend, options)


def model_arguments(factory, idim, task) -> tuple[list, dict, str]:
    """The arguments ``model`` takes: ``idim`` first (when it takes any; for the objects layout the dict of
    input shapes), ``n_outputs`` (second positional or by name) and ``task`` (by name) when declared."""
    params = inspect.signature(factory).parameters
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    varkw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    args: list = [idim] if positional or any(p.kind == p.VAR_POSITIONAL for p in params.values()) else []
    kwargs: dict = {}
    if task is not None:
        if "n_outputs" in named or varkw:
            kwargs["n_outputs"] = task.n_outputs
        elif len(positional) >= 2 and positional[1].default is inspect.Parameter.empty:
            args.append(task.n_outputs)
        if "task" in named or varkw:
            kwargs["task"] = task.kind
    shown = ", ".join([str(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return args, kwargs, f"model({shown})"
