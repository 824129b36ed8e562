"""PyTorch adapter: ``def model(idim)`` returns an ``nn.Module``; it really trains (the original never did).

PyTorch is imported on first use through :mod:`mlaas4hep_lab.extras`.

What the module's output means (the rule, in order):

1. ``fit_options = {"output": "logit" | "probability" | "log_probability"}`` in model.py, when given;
2. otherwise the **last leaf module registered** (the last element of an ``nn.Sequential``) decides:
   ``nn.Sigmoid``/``nn.Softmax`` -> probabilities, ``nn.LogSoftmax`` -> log-probabilities, anything
   else (e.g. a final ``nn.Linear``) -> logits.

The output width is found by one forward pass: one value per event (``[n]`` or ``[n, 1]``) or two
(``[n, 2]``, column 1 = signal). Default losses, all computed per event (``reduction="none"``):

===========  ==================  ====================================  =======================
width        logit               probability                           log_probability
===========  ==================  ====================================  =======================
1            BCEWithLogitsLoss   BCELoss                               --
2            CrossEntropyLoss    NLLLoss on log(p)                     NLLLoss
===========  ==================  ====================================  =======================

The score returned by :meth:`TorchBackend.predict` (and computed by the ONNX export) is the sigmoid of a
logit, the probability itself, or column 1 of the softmax.

Optional names in model.py:

* ``loss``: an ``nn.Module`` instance, a loss class, a function of no argument returning a loss
  module, or a function ``loss(output, target)``. It is called as ``loss(output, target)`` with
  ``output: float[B]`` and ``target: float[B]`` (one value per event) or ``output: float[B, 2]`` and
  ``target: long[B]``. A module with a ``reduction`` attribute is switched to ``reduction="none"`` so
  that sample weights apply per event; a loss returning a scalar cannot take weights (an error when the
  weights are not all equal).
* ``optimizer``: a function ``optimizer(parameters)`` returning a ``torch.optim.Optimizer``
  (default ``torch.optim.Adam(parameters, lr=1e-3)``).
* ``fit_options``: a dict with ``output`` (above) and ``device`` (``"cpu"`` by default, ``"cuda"``...).

Sample weights: each mini-batch loss is ``sum(w * l) / sum(|w|)``, the weighted mean for non-negative
weights, finite with the negative weights of NLO generators.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends._torch_modules import (
    named_inputs_module_class,
    objects_module_class,
    score_module_class,
)
from mlaas4hep_lab.backends.base import Backend, quiet
from mlaas4hep_lab.errors import ConfigError

__all__ = ["TorchBackend"]

_STATE_FILE = "model.pt"
_SOURCE_FILE = "model.py"
_MODULE_FILE = "module.pt"
_ONNX_FILE = "model.onnx"
_NAMED_ONNX_FILE = "model_named_inputs.onnx"
_FORMAT_VERSION = 1
_OUTPUTS = ("logit", "probability", "log_probability")
_FIT_OPTIONS = ("output", "device", "predict_batch_size")
_PREDICT_BATCH = 65536
_EXPORT_TOLERANCE = 1e-5


class TorchBackend(Backend):
    """Adapter for a ``torch.nn.Module`` (``mode = "batches"``: shuffled mini-batches of each chunk).

    Options used: ``loss``, ``optimizer``, ``fit_options`` (from model.py, see the module docstring),
    ``seed`` (``torch.manual_seed`` for dropout and the shuffling generator), ``model_source`` and
    ``model_path`` (the model.py text and path, saved so that :meth:`load` can rebuild the module),
    ``device``.
    """

    name = "torch"
    extra = "torch"
    mode = "batches"
    objects = True

    def __init__(self, model: Any, n_features: int, options: dict[str, Any] | None = None):
        super().__init__(model, n_features, options)
        torch = extras.torch()
        layout = self.options.get("layout")
        if layout is not None and not isinstance(model, objects_module_class()):
            # the objects layout: the user's module gets a dict of named inputs gathered from X in its graph
            model = self.model = objects_module_class()(model, layout)
        fit_options = self.options.get("fit_options") or {}
        if not isinstance(fit_options, dict):
            raise ConfigError(f"fit_options in model.py must be a dict, not {type(fit_options).__name__}",
                              key="fit_options")
        unknown = sorted(set(fit_options) - set(_FIT_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown torch fit_options {', '.join(unknown)}; known: {', '.join(_FIT_OPTIONS)}",
                              key="fit_options")
        self.output = fit_options.get("output") or _output_kind(model)
        if self.output not in _OUTPUTS:
            raise ConfigError(f"fit_options 'output' is {self.output!r}; use one of {', '.join(_OUTPUTS)}",
                              key="fit_options")
        self.device = torch.device(fit_options.get("device") or self.options.get("device") or "cpu")
        self._predict_batch = int(fit_options.get("predict_batch_size") or _PREDICT_BATCH)
        self.model.to(self.device)
        self._width: int | None = None
        self._loss = None
        self.loss_name: str | None = None  # the loss in use, for logs and the bundle manifest
        self._optimizer = None
        self._optimizer_state = None  # restored by load(), applied when the optimizer is created
        self._generator = torch.Generator()  # shuffling, on the CPU whatever the device
        seed = self.options.get("seed")
        if seed is not None:
            self.seed(int(seed))
            self._generator.manual_seed(int(seed))
        else:
            self._generator.seed()

    # -- detection ----------------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        if type(model).__module__.split(".")[0] != "torch" and sys.modules.get("torch") is None:
            return False  # a torch module, even a user's subclass, needs torch imported
        return isinstance(model, extras.torch().nn.Module)

    @classmethod
    def seed(cls, seed: int) -> None:
        extras.torch().manual_seed(int(seed))

    # -- pieces built on first use ----------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Values per event of the module's output (binary: 1 or 2; else the task's K or T), from one
        forward pass."""
        if self._width is None:
            torch = extras.torch()
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    out = self.model(torch.zeros(2, self.n_features, device=self.device))
            finally:
                self.model.train(was_training)
            width = int(np.prod(tuple(out.shape[1:]))) if out.ndim > 1 else 1
            if self.task.kind != "binary":
                if out.shape[0] == 2:  # the task's shape, or an error saying which it needs
                    self.task.scores(np.zeros((2, width), np.float32), 2, "the torch module")
                if self.output == "log_probability" and self.task.kind == "regression":
                    raise ConfigError("a regression's outputs are values, not log-probabilities (nn.LogSoftmax)",
                                      key="model")
                self._width = width
                return width
            if out.shape[0] != 2 or width not in (1, 2):
                raise ConfigError(
                    f"the torch module maps a batch of shape (2, {self.n_features}) to {tuple(out.shape)}; "
                    f"a binary classifier returns one value per event ([n] or [n, 1]) or two ([n, 2])",
                    key="model")
            if self.output == "log_probability" and width != 2:
                raise ConfigError("log-probability output (nn.LogSoftmax) needs two values per event",
                                  key="model")
            self._width = width
        return self._width

    def _make_loss(self) -> tuple[Any, str]:
        """The loss function and its name."""
        torch = extras.torch()
        nn = torch.nn
        user = self.options.get("loss")
        if user is not None:
            loss = _user_loss(user, nn)
            if isinstance(getattr(loss, "reduction", None), str):
                loss.reduction = "none"  # per-event values, so that the sample weights apply
            return loss, getattr(loss, "__name__", None) or type(loss).__name__
        if self.task.kind == "regression":
            return nn.MSELoss(reduction="none"), "MSELoss"
        if self.task.kind == "binary" and self.width == 1:
            if self.output == "logit":
                return nn.BCEWithLogitsLoss(reduction="none"), "BCEWithLogitsLoss"
            bce = nn.BCELoss(reduction="none")
            return (lambda p, t: bce(p.clamp(0.0, 1.0), t)), "BCELoss"
        if self.output == "logit":
            return nn.CrossEntropyLoss(reduction="none"), "CrossEntropyLoss"
        nll = nn.NLLLoss(reduction="none")
        if self.output == "log_probability":
            return nll, "NLLLoss"
        return (lambda p, t: nll(torch.log(p.clamp_min(1e-12)), t)), "NLLLoss(log p)"

    def _make_optimizer(self):
        torch = extras.torch()
        factory = self.options.get("optimizer")
        if factory is None:
            optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        elif isinstance(factory, torch.optim.Optimizer) or not callable(factory):
            raise ConfigError(
                "optimizer in model.py must be a function optimizer(parameters) returning the optimizer, "
                "e.g. `def optimizer(parameters): return torch.optim.Adam(parameters, lr=1e-3)`",
                key="optimizer")
        else:
            optimizer = factory(self.model.parameters())
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise ConfigError(f"optimizer(parameters) returned {type(optimizer).__name__}, not a "
                                  f"torch.optim.Optimizer", key="optimizer")
        if self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None
        return optimizer

    @property
    def optimizer(self):
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        return self._optimizer

    # -- training -----------------------------------------------------------------------------------
    def fit_chunk(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, *, epochs: int,
                  batch_size: int) -> dict[str, float]:
        """``epochs`` passes over the chunk in shuffled mini-batches; returns the last epoch's weighted
        mean loss."""
        torch = extras.torch()
        X = self._tensor(X)
        n = len(X)
        regression = self.task.kind == "regression"
        y = self.task.standardise(np.asarray(y, np.float32).reshape(len(y), self.task.n_outputs)) if regression \
            else np.asarray(y).reshape(-1)
        if len(y) != n or (weight is not None and len(weight) != n):
            raise ValueError(f"X has {n} events, y {len(y)}, weight {None if weight is None else len(weight)}")
        if n == 0:
            return {"loss": float("nan")}
        if self._loss is None:
            self._loss, self.loss_name = self._make_loss()
        optimizer, width, loss_fn = self.optimizer, self.width, self._loss
        target = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(self.device)
        if not regression and width >= 2:
            target = target.round().long()   # the class index
        w = None
        uniform = True
        if weight is not None:
            weight = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
            uniform = bool(np.all(weight == weight[0]))
            w = torch.from_numpy(weight).to(self.device)
        batch_size = max(1, int(batch_size))
        self.model.train()
        last = float("nan")
        for _ in range(int(epochs)):
            # one gather per epoch, then contiguous slices: cheaper than indexing every mini-batch
            order = torch.randperm(n, generator=self._generator).to(self.device)
            Xs, ts = X[order], target[order]
            ws = None if w is None else w[order]
            total = torch.zeros((), device=self.device)
            norm = torch.zeros((), device=self.device)
            for start in range(0, n, batch_size):
                xb, tb = Xs[start:start + batch_size], ts[start:start + batch_size]
                m = len(xb)
                out = self.model(xb)
                out = out.reshape(m) if width == 1 and not regression else out.reshape(m, width)
                values = loss_fn(out, tb)
                if values.ndim == 0:
                    if not uniform:
                        raise ConfigError(
                            "the loss from model.py returns one number per batch, so the sample weights "
                            "cannot be applied; give it a `reduction` attribute (any torch.nn loss) or "
                            "return one value per event", key="loss")
                    loss = values
                    total = total + values.detach() * m
                    norm = norm + m
                else:
                    values = values.reshape(m, -1).mean(dim=1)
                    if ws is None:
                        loss = values.mean()
                        total = total + values.detach().sum()
                        norm = norm + m
                    else:
                        wb = ws[start:start + batch_size]
                        weighted = (values * wb).sum()
                        wsum = wb.abs().sum()
                        loss = weighted / wsum.clamp_min(1e-30)
                        total = total + weighted.detach()
                        norm = norm + wsum
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if self.stop_requested():  # the Stop button: return after this batch
                    break
            last = float(total / norm) if float(norm) > 0 else float("nan")
            if self.stop_requested():
                break
        return {"loss": last}

    # -- inference ----------------------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        torch = extras.torch()
        X = self._tensor(X)
        if len(X) == 0:
            return self.task.scores(np.zeros((0, self.task.n_outputs), np.float32), 0)
        scorer = self._scorer(self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                parts = [scorer(X[i:i + self._predict_batch]).cpu().numpy()
                         for i in range(0, len(X), self._predict_batch)]
        finally:
            self.model.train(was_training)
        out = np.concatenate(parts)
        if self.task.kind != "regression":
            out = np.clip(out, 0.0, 1.0)
        return self.task.scores(out, len(X), "the torch module")

    def _scorer(self, model):
        """The module that maps features to the task's outputs (shared by predict and the ONNX export)."""
        scale = self.task.scale() if self.task.kind == "regression" and self.task.target_scale else None
        return score_module_class()(model, self.width, self.output, self.task.kind, scale)

    def _tensor(self, X: np.ndarray):
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {X.shape}")
        return extras.torch().from_numpy(X).to(self.device)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``model.pt`` (state_dict, optimizer and shuffling-generator state, output rule,
        architecture text), ``model.py`` (the source that rebuilds the module) when known, and
        ``module.pt`` (the whole pickled module, a fallback for when no source is at hand)."""
        torch = extras.torch()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = self.options.get("model_source")
        path = self.options.get("model_path")
        if source is None and path and Path(path).is_file():
            source = Path(path).read_text()
        if self._optimizer is not None:
            optimizer_state = self._optimizer.state_dict()
        else:
            optimizer_state = self._optimizer_state
        state = {
            "format_version": _FORMAT_VERSION,
            "n_features": self.n_features,
            "output": self.output,
            "width": self.width,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": optimizer_state,
            "generator_state": self._generator.get_state(),
            "model_source": source,
            "model_path": str(path) if path else None,
            "architecture": repr(self.model),
            "torch_version": str(torch.__version__),
        }
        torch.save(state, directory / _STATE_FILE)
        files = [_STATE_FILE]
        if source is not None:
            (directory / _SOURCE_FILE).write_text(source)
            files.append(_SOURCE_FILE)
        result: dict[str, Any] = {"format": "torch-state", "files": files}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.save(self.model, directory / _MODULE_FILE)
            files.append(_MODULE_FILE)
        except Exception as err:  # lambdas or local classes cannot be pickled; the source still rebuilds it
            (directory / _MODULE_FILE).unlink(missing_ok=True)
            result["module_pickle"] = f"not written: {type(err).__name__}: {err}"
        return result

    @classmethod
    def load(cls, directory: Path, n_features: int, options: dict[str, Any] | None = None) -> TorchBackend:
        """Rebuild the module from the saved model.py (running it, as training did), or unpickle
        ``module.pt`` when there is no source (unpickling runs code too: load only bundles you trust),
        then restore the weights, the optimizer state and the shuffling generator."""
        torch = extras.torch()
        directory = Path(directory)
        state_file = directory / _STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"no torch model in {directory}: {_STATE_FILE} is missing")
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        options = dict(options or {})
        model, problems = None, []
        source_file = directory / _SOURCE_FILE
        if source_file.is_file():
            try:
                model, extras_found = _rebuild(source_file, n_features, options.get("task"), options.get("layout"))
                for key, value in extras_found.items():
                    options.setdefault(key, value)
                options.setdefault("model_source", source_file.read_text())
            except Exception as err:
                problems.append(f"rebuilding from {source_file.name}: {type(err).__name__}: {err}")
        if model is None and (directory / _MODULE_FILE).is_file():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = torch.load(directory / _MODULE_FILE, map_location="cpu", weights_only=False)
            except Exception as err:
                problems.append(f"unpickling {_MODULE_FILE}: {type(err).__name__}: {err}")
        if model is None:
            raise ConfigError(f"cannot rebuild the torch model saved in {directory} "
                              f"({'; '.join(problems) or 'neither model.py nor module.pt is there'})",
                              key="model")
        model.load_state_dict(state["state_dict"])
        fit_options = dict(options.get("fit_options") or {})
        fit_options["output"] = state["output"]
        options["fit_options"] = fit_options
        backend = cls(model, n_features, options)
        backend._width = state["width"]
        backend._optimizer_state = state.get("optimizer_state")
        if state.get("generator_state") is not None:
            backend._generator.set_state(state["generator_state"])
        return backend

    # -- export -------------------------------------------------------------------------------------
    def export(self, directory: Path) -> dict[str, Any]:
        """Write ``model.onnx`` (input ``features: float32[batch, n_features]``, output
        ``score: float32[batch]``, the batch dimension free), checked with onnxruntime against
        :meth:`predict` within 1e-5. ``{"format": None, "reason": ...}`` when it cannot be made."""
        torch = extras.torch()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / _ONNX_FILE
        probe = _probe(self.n_features)
        expected = self.predict(probe)
        scorer = self._scorer(copy.deepcopy(self.model).cpu()).eval()
        name = self.task.tensor_name
        example = (torch.from_numpy(probe[:3]),)
        attempts = []
        try:
            extras.onnx()
            extras.require("onnxscript")  # the torch.export-based exporter writes the graph with it
            with _quiet():
                torch.onnx.export(scorer, example, str(target), input_names=["features"], output_names=[name],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                  external_data=False, verbose=False)
            attempts.append(None)
        except Exception as err:
            target.unlink(missing_ok=True)
            attempts.append(f"torch.export-based exporter: {type(err).__name__}: {err}")
            try:  # the TorchScript exporter still handles some modules torch.export cannot trace
                with _quiet():
                    torch.onnx.export(scorer, example, str(target), input_names=["features"],
                                      output_names=[name], dynamo=False, opset_version=17,
                                      dynamic_axes={"features": {0: "batch"}, name: {0: "batch"}})
                attempts.append(None)
            except Exception as err2:
                target.unlink(missing_ok=True)
                attempts.append(f"TorchScript exporter: {type(err2).__name__}: {err2}")
        if attempts[-1] is not None:
            return {"format": None, "reason": "ONNX export failed: " + "; ".join(a for a in attempts if a)}
        try:
            ort = extras.onnxruntime()
            session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            got = np.asarray(session.run([name], {"features": probe})[0]).reshape(-1)
            diff = float(np.max(np.abs(got - expected.reshape(-1))))
            # relative to the outputs' size: a regression's values in GeV round at 1e-5 in float32
            tolerance = _EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0)))
            if not diff <= tolerance:
                raise ValueError(f"its scores differ from predict() by up to {diff:.3g} "
                                 f"(tolerance {tolerance:.3g})")
        except Exception as err:
            target.unlink(missing_ok=True)
            return {"format": None, "reason": f"the ONNX export could not be verified: {type(err).__name__}: {err}"}
        result = {"format": "onnx", "path": str(target), "input": "features", "output": name,
                  "max_abs_diff": diff, "exports": [{"format": "onnx", "path": str(target), "input": "features",
                                                     "output": name, "max_abs_diff": diff}],
                  "failed": [{"format": "onnx", "reason": a} for a in attempts if a]}
        layout = self.options.get("layout")
        if layout is not None:   # the objects layout: also the user's module on its named inputs
            named = self._export_named(directory / _NAMED_ONNX_FILE, layout, probe, expected, name)
            result["exports" if named.get("path") else "failed"].append(named)
        return result

    def _export_named(self, target: Path, layout, probe: np.ndarray, expected: np.ndarray, name: str) -> dict:
        """``model_named_inputs.onnx``: the user's module (with the task's softmax or unstandardisation) on the
        objects layout's named inputs (``flat``, each collection, its ``_mask``), for programs that build the
        sets themselves; checked against :meth:`predict`."""
        torch = extras.torch()
        fmt = "onnx-named-inputs"
        names = layout.input_names
        inner = copy.deepcopy(self.model.model).cpu()   # the user's module inside the objects wrapper
        module = named_inputs_module_class()(self._scorer(inner), names).eval()
        split = layout.split(probe)
        example = tuple(torch.from_numpy(np.ascontiguousarray(split[n][:3])) for n in names)
        try:
            with _quiet():
                torch.onnx.export(module, example, str(target), input_names=names, output_names=[name], dynamo=False,
                                  opset_version=17, dynamic_axes={n: {0: "batch"} for n in [*names, name]})
            session = extras.onnxruntime().InferenceSession(str(target), providers=["CPUExecutionProvider"])
            got = np.asarray(session.run([name], {n: split[n] for n in names})[0]).reshape(-1)
            diff = float(np.max(np.abs(got - expected.reshape(-1))))
            if not diff <= _EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0))):
                raise ValueError(f"its outputs differ from predict() by up to {diff:.3g}")
        except Exception as err:
            target.unlink(missing_ok=True)
            return {"format": fmt, "reason": f"{type(err).__name__}: {err}"}
        return {"format": fmt, "path": str(target), "inputs": {n: [None, *shape] for n, shape in layout.shapes().items()},
                "output": name, "max_abs_diff": diff}


# -- helpers --------------------------------------------------------------------------------------------
def _output_kind(model: Any) -> str:
    """``probability``/``log_probability``/``logit`` from the last leaf module registered."""
    nn = extras.torch().nn
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    last = leaves[-1] if leaves else model
    if isinstance(last, (nn.Sigmoid, nn.Softmax)):
        return "probability"
    if isinstance(last, nn.LogSoftmax):
        return "log_probability"
    return "logit"


def _user_loss(user: Any, nn: Any):
    """The loss named ``loss`` in model.py: a module, a class, a factory of no argument or a function."""
    if isinstance(user, nn.Module):
        return user
    if isinstance(user, type):
        return user()
    if not callable(user):
        raise ConfigError(f"loss in model.py must be a torch loss module or a callable, not {type(user).__name__}",
                          key="loss")
    try:
        required = [p for p in inspect.signature(user).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return user
    if required:
        return user  # loss(output, target) itself
    loss = user()
    if not callable(loss):
        raise ConfigError(f"loss() in model.py returned {type(loss).__name__}, not a loss module", key="loss")
    return loss


def _rebuild(path: Path, n_features: int, task=None, layout=None) -> tuple[Any, dict[str, Any]]:
    """Import a saved model.py and call its ``model(idim)``; also return its ``loss``/``optimizer``/
    ``fit_options``."""
    name = f"mlaas4hep_saved_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # the model's own source, saved at training time
    from mlaas4hep_lab.training.model_file import model_arguments

    args, kwargs, _ = model_arguments(module.model, n_features if layout is None else layout.shapes(), task)
    model = module.model(*args, **kwargs)
    if layout is not None:
        model = objects_module_class()(model, layout)
    found = {k: getattr(module, k) for k in ("loss", "optimizer", "fit_options") if hasattr(module, k)}
    return model, found


def _probe(n_features: int) -> np.ndarray:
    """Deterministic inputs on which an export is compared with predict()."""
    rng = np.random.default_rng(12345)
    return np.concatenate([rng.uniform(0.0, 1.0, (200, n_features)),
                           rng.normal(0.0, 2.0, (57, n_features))]).astype(np.float32)


def _quiet():
    return quiet("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
