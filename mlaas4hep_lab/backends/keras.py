"""Keras 3 adapter: the original MLaaS4HEP contract (``def model(idim)`` returns a compiled Keras model).

Keras (and TensorFlow under it) is imported on first use through :mod:`mlaas4hep_lab.extras`.

How the model's output becomes a signal score (one rule, shared by :meth:`KerasBackend.predict` and both
exports):

* one unit (``Dense(1, activation="sigmoid")``): the unit's value;
* two units (``Dense(2, activation="softmax")``): the second column, P(label 1);
* a loss compiled with ``from_logits=True`` means the outputs are logits: a sigmoid (one unit) or a
  softmax (two units) is applied first.

Exports (:meth:`KerasBackend.export`): a TF SavedModel whose ``serve`` endpoint (also the
``serving_default`` signature) takes ``features: float32[n, n_features]`` and returns the score
``float32[n]``, and the same function as ``model.onnx`` (input ``features``, output ``score``) when
tf2onnx is installed. Each is checked against :meth:`predict` before it is reported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends._keras_feed import PartFeeder
from mlaas4hep_lab.backends.base import Backend, TrainPart, quiet
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import softmax

__all__ = ["KerasBackend"]

_MODEL_FILE = "model.keras"
# a checkpoint's variables (the model's, then the optimizer's) beside a model.keras written earlier in the run
_VARIABLES_FILE = "variables.npz"
_SAVEDMODEL_DIR = "saved_model"
_ONNX_FILE = "model.onnx"
_EXPORT_TOLERANCE = 1e-5
_PREDICT_BATCH = 8192
# model.fit arguments the backend sets itself; fit_options from model.py may add others (callbacks, ...)
_OWN_FIT_ARGS = ("x", "y", "sample_weight", "epochs", "batch_size")
# fit_options that fit_parts' tf.data pipeline honours; any other (validation_split, ...) makes it train part
# by part through fit_chunk, with model.fit's own handling of numpy arrays
_PIPELINE_FIT_OPTIONS = frozenset({"callbacks", "verbose", "shuffle", "class_weight"})


class KerasBackend(Backend):
    """Adapter for a compiled Keras 3 model (``mode = "batches"``).

    The trainer's stream goes through :meth:`fit_parts`: one ``tf.data`` pipeline fed with whole chunks
    (shared with TensorFlow, not copied; batched and shuffled inside TensorFlow), one ``model.fit`` per
    chunk with the trainer's per-chunk work (validation, metric event, checkpoint) between them; with
    model.py callbacks, one ``model.fit`` per pass over the stream and that work in a callback after
    each chunk's last batch (``_keras_feed`` says why both). :meth:`fit_chunk` trains on one array.

    Options used: ``seed`` (``keras.utils.set_random_seed``: dropout, shuffling), ``fit_options`` (a dict
    from model.py passed on to ``model.fit``, e.g. ``{"class_weight": {0: 1.0, 1: 5.0}}``),
    ``predict_batch_size`` (default 8192), ``custom_objects`` (for :meth:`load` of models with custom
    layers).
    """

    name = "keras"
    extra = "keras"
    mode = "batches"
    objects = True

    def __init__(self, model: Any, n_features: int, options: dict[str, Any] | None = None):
        super().__init__(model, n_features, options)
        layout = self.options.get("layout")
        if layout is not None and not _is_wrapped(model):
            self.model = _wrap_objects(model, layout, self.n_features)
        fit_options = self.options.get("fit_options") or {}
        if not isinstance(fit_options, dict):
            raise ConfigError(f"fit_options in model.py must be a dict, not {type(fit_options).__name__}",
                              key="fit_options")
        clash = sorted(set(fit_options) & set(_OWN_FIT_ARGS))
        if clash:
            raise ConfigError(f"fit_options may not set {', '.join(clash)}: the training loop sets them "
                              f"(epochs and batch_size come from params.json)", key="fit_options")
        self._fit_options = fit_options
        if self.options.get("seed") is not None:
            self.seed(int(self.options["seed"]))
        # the order of each part's events in fit_parts (model.fit's shuffle for arrays)
        seed = self.options.get("seed")
        self._order_rng = np.random.default_rng(None if seed is None else int(seed) % 2**32)
        self._checkpoint_variables = 0   # variables in the model.keras this backend last wrote for a checkpoint

    # -- detection ----------------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        if (type(model).__module__.split(".")[0] not in ("keras", "tensorflow", "tf_keras")
                and sys.modules.get("keras") is None):
            return False  # a Keras model, even a user's subclass, needs keras imported
        return isinstance(model, extras.keras().Model)

    @classmethod
    def seed(cls, seed: int) -> None:
        extras.keras().utils.set_random_seed(int(seed) % 2**32)

    # -- training -----------------------------------------------------------------------------------
    def fit_chunk(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, *, epochs: int,
                  batch_size: int) -> dict[str, float]:
        """``model.fit`` on one chunk; returns the last epoch's mean loss and compiled metrics."""
        self._check_compiled()
        X, y = self._inputs(X), self._targets(y)
        if len(X) == 0:
            return {"loss": float("nan")}
        if weight is not None:
            weight = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
        # numpy float32 arrays of a fixed feature width: the traced train function is reused across chunks
        kwargs = {"verbose": 0, "shuffle": True, **self._fit_options}
        if self.stop_event is not None:  # Keras checks model.stop_training after every batch
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _stop_callback(self.stop_event)]
        history = self.model.fit(X, y, sample_weight=weight, epochs=int(epochs), batch_size=int(batch_size),
                                 **kwargs)
        metrics = {name: float(values[-1]) for name, values in history.history.items() if values}
        metrics.setdefault("loss", float("nan"))  # epochs=0
        return metrics

    def _check_compiled(self) -> None:
        if not getattr(self.model, "compiled", False) or getattr(self.model, "optimizer", None) is None:
            raise ConfigError(
                "model(idim) returned a Keras model that is not compiled; call "
                "model.compile(optimizer=keras.optimizers.Adam(1e-3), loss='binary_crossentropy', "
                "metrics=['accuracy']) before returning it", key="model")

    def fit_parts(self, parts: Iterable[TrainPart], *, batch_size: int,
                  on_part: Callable[[TrainPart, dict[str, float]], None]) -> None:
        """Train on the parts through one ``tf.data`` pipeline: one ``model.fit`` per epoch on a part, or,
        with model.py ``fit_options`` ``callbacks``, one per group (pass) as those callbacks expect.

        Each part's training events are batched in its (shuffled) order inside TensorFlow, ``epochs``
        times; the metrics handed to ``on_part`` are those of the part's last epoch (the compiled
        metrics are reset after every part), as :meth:`fit_chunk` returns them. ``on_part`` runs after
        the part's last batch. The stop event is checked at every batch. A model.py
        ``fit_options`` key other than ``callbacks``, ``verbose``, ``shuffle`` or ``class_weight``
        (``validation_split``, ...) or a Keras backend other than TensorFlow trains part by part through
        :meth:`fit_chunk` instead.
        """
        self._check_compiled()
        if set(self._fit_options) - _PIPELINE_FIT_OPTIONS or extras.keras().backend.backend() != "tensorflow":
            super().fit_parts(parts, batch_size=batch_size, on_part=on_part)
            return
        feeder = PartFeeder(self, iter(parts), int(batch_size), on_part)
        try:
            feeder.run()
        finally:
            feeder.close()

    # -- inference ----------------------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self._inputs(X)
        if len(X) == 0:
            return self.task.scores(np.zeros((0, self.task.n_outputs), np.float32), 0)
        batch = int(self.options.get("predict_batch_size") or _PREDICT_BATCH)
        # a direct call per large batch: model.predict's per-call machinery costs more than the forward pass
        outs = [np.asarray(self.model(X[i:i + batch], training=False)) for i in range(0, len(X), batch)]
        out = np.concatenate(outs) if len(outs) > 1 else outs[0]
        if self.task.kind == "binary":
            return np.clip(self._score_numpy(out), 0.0, 1.0).astype(np.float32, copy=False)
        out = self.task.scores(out.reshape(len(out), -1), len(X), "the Keras model")
        if self.task.kind == "multiclass":
            return softmax(out).astype(np.float32) if self._from_logits() else out
        return self.task.unstandardise(out)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """The truth as the model trains on it: the class index ``float32[n]``, or the regression targets
        standardised (mean 0, width 1: the scale of a network's outputs), ``float32[n, T]``."""
        if self.task.kind == "regression":
            y = np.asarray(y, np.float32).reshape(len(y), self.task.n_outputs)
            return np.ascontiguousarray(self.task.standardise(y), dtype=np.float32)
        return np.ascontiguousarray(y, dtype=np.float32).reshape(-1)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {X.shape}")
        return X

    def _from_logits(self) -> bool:
        loss = getattr(self.model, "loss", None)
        get_config = getattr(loss, "get_config", None)
        if callable(get_config):
            with contextlib.suppress(Exception):
                return bool(get_config().get("from_logits", False))
        return False

    def _check_width(self, width: int | None) -> None:
        if width not in (1, 2):
            raise ConfigError(
                f"the Keras model has {width} outputs per event; a binary classifier needs one (sigmoid) "
                f"or two (softmax, column 1 = signal)", key="model")

    def _score_numpy(self, out: np.ndarray) -> np.ndarray:
        out = out.reshape(len(out), -1)
        self._check_width(out.shape[1])
        if self._from_logits():
            if out.shape[1] == 1:
                return 1.0 / (1.0 + np.exp(-out[:, 0].astype(np.float64)))
            shifted = out - out.max(axis=1, keepdims=True)
            e = np.exp(shifted.astype(np.float64))
            return e[:, 1] / e.sum(axis=1)
        return out[:, 0] if out.shape[1] == 1 else out[:, 1]

    def _score_model(self, layout=None):
        """A functional Keras model wrapping the user's model (for export): ``features`` -> ``score``
        float32[n] (binary), ``probabilities`` [n, K] (multiclass) or ``targets`` [n, T] in the targets'
        units (regression). With ``layout`` (the objects layout): the user's own model on its named inputs."""
        keras = extras.keras()
        ops = keras.ops
        width = int(np.prod(np.shape(self.model(np.zeros((1, self.n_features), np.float32), training=False))[1:]))
        kind, from_logits = self.task.kind, self._from_logits()
        if kind == "binary":
            self._check_width(width)
        elif width != self.task.n_outputs:
            self.task.scores(np.zeros((1, width)), 1, "the Keras model")  # raises, saying what is expected
        mean, std = self.task.scale() if kind == "regression" and self.task.target_scale else (None, None)

        def score(t):
            t = ops.reshape(t, (-1, width))
            if kind == "multiclass":
                return ops.softmax(t, axis=-1) if from_logits else t
            if kind == "regression":
                return t if mean is None else t * std + mean
            if from_logits:
                t = ops.sigmoid(t) if width == 1 else ops.softmax(t, axis=-1)
            return t[:, 0] if width == 1 else t[:, 1]

        if layout is not None:
            inner = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
            inp = {n: keras.Input(shape, name=n, dtype="bool" if n.endswith("_mask") else "float32")
                   for n, shape in layout.shapes().items()}
            out = keras.layers.Lambda(score, name=self.task.tensor_name)(inner(inp, training=False))
            return keras.Model(inp, out, name="mlaas4hep_named_inputs")
        inp = keras.Input((self.n_features,), name="features", dtype="float32")
        out = keras.layers.Lambda(score, name=self.task.tensor_name)(self.model(inp, training=False))
        return keras.Model(inp, out, name="mlaas4hep_score")

    def _export_named(self, target: Path, layout, probe: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
        """``model_named_inputs.onnx``: the user's model on the objects layout's named inputs (``flat``, each
        collection, its ``_mask``), for programs that build the sets themselves; checked against predict."""
        fmt, name = "onnx-named-inputs", self.task.tensor_name
        try:
            split = layout.split(probe)
            named = self._score_model(layout)
            named({n: v[:2] for n, v in split.items()})   # built, as the exporter wants
            _write_onnx(named, target)
            session = extras.onnxruntime().InferenceSession(str(target), providers=["CPUExecutionProvider"])
            feed = {i.name: split[i.name] for i in session.get_inputs()}
            got = np.asarray(session.run(None, feed)[0]).reshape(-1)
            diff = float(np.max(np.abs(got - expected.reshape(-1))))
            if not diff <= _EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0))):
                raise ValueError(f"its outputs differ from predict() by up to {diff:.3g}")
        except Exception as err:
            _remove(target)
            return {"format": fmt, "reason": f"{type(err).__name__}: {err}"}
        return {"format": fmt, "path": str(target), "inputs": {n: [None, *shape] for n, shape in layout.shapes().items()},
                "output": name, "max_abs_diff": diff}

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``model.keras`` (architecture, weights, compile settings and optimizer state)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # Keras' own numpy-2 copy-keyword notice, nothing to act on
                warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
                self.model.save(directory / _MODEL_FILE)
        except Exception as err:
            raise ConfigError(
                f"cannot save the Keras model to {directory / _MODEL_FILE}: {type(err).__name__}: {err}. "
                f"Custom layers must be registered with @keras.saving.register_keras_serializable() and "
                f"implement get_config()", key="model") from err
        return {"format": "keras", "files": [_MODEL_FILE]}

    def _variables(self) -> list:
        optimizer = getattr(self.model, "optimizer", None)
        return [*self.model.variables, *(optimizer.variables if optimizer is not None else [])]

    def save_checkpoint(self, directory: Path, previous: Path | None = None) -> dict[str, Any]:
        """After the first checkpoint of the run (a full :meth:`save`), the previous checkpoint's
        ``model.keras`` (architecture, compile settings) is linked and only the variables' values are
        written beside it (``variables.npz``: a few ms where ``model.save`` takes tens); :meth:`load`
        sets them. A full save again whenever the variables changed in number (the optimizer built)."""
        directory = Path(directory)
        variables = self._variables()
        base = Path(previous) / _MODEL_FILE if previous is not None else None
        if base is None or not base.is_file() or self._checkpoint_variables != len(variables):
            info = self.save(directory)
            self._checkpoint_variables = len(variables)
            return info
        directory.mkdir(parents=True, exist_ok=True)
        try:
            os.link(base, directory / _MODEL_FILE)
        except OSError:
            shutil.copyfile(base, directory / _MODEL_FILE)
        np.savez(directory / _VARIABLES_FILE, *[np.asarray(v.numpy()) for v in variables])
        return {"format": "keras", "files": [_MODEL_FILE, _VARIABLES_FILE]}

    @classmethod
    def load(cls, directory: Path, n_features: int, options: dict[str, Any] | None = None) -> KerasBackend:
        keras = extras.keras()
        path = Path(directory) / _MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no Keras model in {directory}: {_MODEL_FILE} is missing")
        custom = (options or {}).get("custom_objects")
        _objects_split_class()   # registered, so that an objects-layout model loads
        model = keras.models.load_model(path, custom_objects=custom, compile=True)
        backend = cls(model, n_features, options)
        values = Path(directory) / _VARIABLES_FILE
        if values.is_file():   # a checkpoint: the variables' values when it was written
            with np.load(values) as saved:
                arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            variables = backend._variables()
            if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
                raise ConfigError(f"{values} does not match the model in {path} "
                                  f"({len(arrays)} arrays for {len(variables)} variables)", key="resume")
            for variable, value in zip(variables, arrays):
                variable.assign(value)
        return backend

    # -- export -------------------------------------------------------------------------------------
    def export(self, directory: Path) -> dict[str, Any]:
        """Write ``saved_model/`` (format ``"tf-savedmodel"``) and, when tf2onnx is installed, ``model.onnx``.

        Returns ``{"format", "path", "input", "output", "exports": [...], "failed": [...]}``: the first
        working export is the main one; ``exports`` lists every one that works (with ``max_abs_diff``
        against :meth:`predict`), ``failed`` the others with their reason. ``{"format": None, "reason"}``
        when none works.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        probe = _probe(self.n_features)
        expected = self.predict(probe)
        try:
            wrapper = self._score_model()
        except Exception as err:
            return {"format": None, "reason": f"cannot wrap the model for export: {type(err).__name__}: {err}"}
        exports, failed = [], []
        for fmt, target, write, run in (
            ("tf-savedmodel", directory / _SAVEDMODEL_DIR, _write_savedmodel, _run_savedmodel),
            ("onnx", directory / _ONNX_FILE, _write_onnx, _run_onnx),
        ):
            try:
                write(wrapper, target)
                got = run(target, probe)
                diff = float(np.max(np.abs(got.reshape(-1) - expected.reshape(-1)))) if len(expected) else 0.0
                tolerance = _EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0)))
                if not diff <= tolerance:
                    raise ValueError(f"its scores differ from predict() by up to {diff:.3g} "
                                     f"(tolerance {tolerance:.3g})")
                exports.append({"format": fmt, "path": str(target), "input": "features",
                                "output": self.task.tensor_name, "max_abs_diff": diff})
            except Exception as err:
                _remove(target)
                failed.append({"format": fmt, "reason": f"{type(err).__name__}: {err}"})
        if not exports:
            reasons = "; ".join(f"{f['format']}: {f['reason']}" for f in failed)
            return {"format": None, "reason": f"no working export ({reasons})", "failed": failed}
        layout = self.options.get("layout")
        if layout is not None:   # the objects layout: also the user's model on its named inputs
            named = self._export_named(directory / "model_named_inputs.onnx", layout, probe, expected)
            (exports if named.get("path") else failed).append(named)
        return {**exports[0], "exports": exports, "failed": failed}


def _wrap_objects(model, layout, n_features: int):
    """The objects layout: a model ``features [n, F] -> outputs`` whose first layer gathers the user's
    named inputs (:class:`~mlaas4hep_lab.data.objects.ObjectsLayout`) from the rows of X inside the graph,
    compiled as the user's model was; training, checkpoints and exports then see one input, as always."""
    keras = extras.keras()
    features = keras.Input((n_features,), name="features", dtype="float32")
    wrapper = keras.Model(features, model(_objects_split_class()(layout.to_dict(), name="objects_inputs")(features)),
                          name="mlaas4hep_objects")
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if config:
        wrapper.compile_from_config(config)
    return wrapper


def _is_wrapped(model) -> bool:
    return any(layer.name == "objects_inputs" for layer in getattr(model, "layers", []))


_SPLIT_CLASS: list = []


def _objects_split_class():
    """The Keras layer (registered for loading) that turns X rows into the objects layout's named inputs."""
    if _SPLIT_CLASS:
        return _SPLIT_CLASS[0]
    keras = extras.keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="mlaas4hep")
    class ObjectsInputs(keras.layers.Layer):
        def __init__(self, layout: dict, **kwargs):
            super().__init__(**kwargs)
            self.layout = layout

        def call(self, x):
            out = {"flat": ops.take(x, self.layout["flat_columns"], axis=1)}
            for c in self.layout["collections"]:
                k, width = int(c["k"]), len(c["branches"])
                flat_index = [i for row in c["columns"] for i in row]
                out[c["name"]] = ops.reshape(ops.take(x, flat_index, axis=1), (-1, k, width))
                if c.get("count"):
                    col, scale, offset = c["count"]
                    n = ops.round(x[:, col] / scale + offset)
                    out[c["name"] + "_mask"] = ops.arange(k, dtype="float32")[None, :] < n[:, None]
                else:
                    flags = ops.take(x, [i for row in c["mask_columns"] for i in row], axis=1)
                    out[c["name"] + "_mask"] = ops.any(ops.reshape(flags, (-1, k, width)) > 0.5, axis=2)
            return out

        def get_config(self):
            return {**super().get_config(), "layout": self.layout}

    _SPLIT_CLASS.append(ObjectsInputs)
    return ObjectsInputs


def _stop_callback(event):
    """A Keras callback that ends ``model.fit`` after the batch during which ``event`` was set."""
    keras = extras.keras()

    class StopOnEvent(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if event.is_set():
                self.model.stop_training = True

    return StopOnEvent()


def _probe(n_features: int) -> np.ndarray:
    """Deterministic inputs on which an export is compared with predict()."""
    rng = np.random.default_rng(12345)
    return np.concatenate([rng.uniform(0.0, 1.0, (200, n_features)),
                           rng.normal(0.0, 2.0, (57, n_features))]).astype(np.float32)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _quiet():
    return quiet("tf2onnx", "tensorflow", "absl")


def _write_savedmodel(wrapper, target: Path) -> None:
    _remove(target)
    with _quiet():
        wrapper.export(str(target), format="tf_saved_model", verbose=False)


def _run_savedmodel(target: Path, X: np.ndarray) -> np.ndarray:
    tf = extras.tensorflow()
    loaded = tf.saved_model.load(str(target))
    return np.asarray(loaded.serve(tf.constant(X)))


def _write_onnx(wrapper, target: Path) -> None:
    _remove(target)
    extras.require("tf2onnx")  # Keras converts through tf2onnx; say which package is missing
    with _quiet():
        wrapper.export(str(target), format="onnx", verbose=False)
    onnx = extras.onnx()
    graph_model = onnx.load(str(target))
    _rename_output(graph_model.graph, wrapper.layers[-1].name)
    onnx.save(graph_model, str(target))


def _rename_output(graph, new: str) -> None:
    """Give the single graph output a stable name (tf2onnx calls it ``Identity:0``)."""
    old = graph.output[0].name
    if old == new:
        return
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    graph.output[0].name = new


def _run_onnx(target: Path, X: np.ndarray) -> np.ndarray:
    ort = extras.onnxruntime()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"features": X})[0])
