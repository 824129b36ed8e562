"""scikit-learn adapter: one of three training strategies, chosen from what the estimator can do.

* ``partial_fit`` (mode ``"batches"``): estimators with ``partial_fit`` (MLPClassifier with the sgd/adam
  solvers, SGDClassifier, Perceptron, naive Bayes, ...). Each chunk is passed ``epochs`` times, in
  ``batch_size`` mini-batches shuffled with the seed; ``classes=[0, 1]`` goes with the very first call.
* ``warm_start`` (mode ``"batches"``): ensembles that can grow (RandomForest, ExtraTrees,
  GradientBoosting, Bagging): each chunk adds ``n_estimators_per_chunk`` members fitted on that chunk.
* ``fit`` (mode ``"accumulate"``): everything else (DecisionTree, kNN, SVC, LogisticRegression, AdaBoost,
  HistGradientBoosting, pipelines): fitted once on the accumulated training split, within a memory guard
  (:meth:`SklearnBackend.check_accumulate`).

The strategy can be forced with ``options["strategy"]`` (e.g. ``"fit"`` for an MLPClassifier that should
see all events at once).

Tasks (``options["task"]``): binary and multiclass take a classifier (``partial_fit`` gets
``classes=range(K)``; ``predict_proba``'s columns are put in class-index order through ``classes_``, a class
the estimator never saw gets probability 0); a binary task also takes a regressor whose ``predict`` is
clipped to [0, 1], as before. A regression takes a regressor, with several targets only where it predicts
several outputs (else ``sklearn.multioutput.MultiOutputRegressor`` around it).

``save`` writes a joblib pickle (and a skops file when skops is installed); ``export`` writes ONNX through
skl2onnx when it is installed and converts the estimator faithfully.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends._onnx import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    _int_missing_flags,
    export_scored_onnx,
    onnx_with_outputs,
    onnx_with_score,
    write_verified_onnx,
)
from mlaas4hep_lab.backends._sklearn_tasks import fits_targets, pad_classes, target_tags
from mlaas4hep_lab.backends.base import Backend
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import softmax

__all__ = ["SklearnBackend", "STRATEGIES", "DEFAULT_MAX_ACCUMULATE_BYTES", "ONNX_INPUT", "ONNX_OUTPUT",
           "export_scored_onnx", "onnx_with_score", "onnx_with_outputs", "write_verified_onnx", "log_loss",
           "task_loss"]

STRATEGIES = ("partial_fit", "warm_start", "fit")
DEFAULT_MAX_ACCUMULATE_BYTES = 4 * 1024**3
_DEFAULT_N_CHUNKS = 10          # when the trainer does not say how many chunks to expect
_LOSS_SAMPLE = 10_000           # the training loss is measured on at most this many events
_PROBE_ROWS = 512               # training rows kept to verify an ONNX export against the estimator


def _human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**power:.1f} {units[power]}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |x|
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def log_loss(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean (weighted) binary cross-entropy of scores ``p`` for labels ``y``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    per_event = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(per_event, weights=weight) if weight is not None else per_event.mean())


def task_loss(task: Any, y: np.ndarray, out: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The training loss reported for ``task``: binary cross-entropy (binary), mean ``-log p(true class)``
    (multiclass), mean squared error over the targets (regression); weighted by ``weight`` when given."""
    if task.kind == "binary":
        return log_loss(y, out, weight)
    if task.kind == "multiclass":
        rows = np.arange(len(out))
        p = np.asarray(out, dtype=np.float64)[rows, np.asarray(y, dtype=np.int64).reshape(-1)]
        per_event = -np.log(np.clip(p, 1e-7, 1.0))
    else:
        diff = np.asarray(out, dtype=np.float64) - np.asarray(y, dtype=np.float64).reshape(len(out), -1)
        per_event = (diff * diff).mean(axis=1)
    return float(np.average(per_event, weights=weight) if weight is not None else per_event.mean())


def _final_step(est: Any) -> Any:
    """The estimator that does the learning (the last step of a Pipeline)."""
    steps = getattr(est, "steps", None)
    return steps[-1][1] if isinstance(steps, list) and steps else est


class SklearnBackend(Backend):
    """Adapter for scikit-learn estimators (and estimators following its API).

    Options read (from params or model.py's ``fit_options``): ``seed``, ``batch_size``, ``strategy``,
    ``n_chunks`` (expected number of ``fit_chunk`` calls), ``n_estimators_per_chunk``,
    ``max_accumulate_bytes`` (default 4 GiB), ``safe_load`` (load the skops file, refusing untrusted types).

    Attributes set here: ``strategy`` (one of :data:`STRATEGIES`) and ``mode`` (``"batches"`` for
    partial_fit/warm_start, ``"accumulate"`` for fit) -- an instance attribute, as it depends on the estimator.
    """

    name = "sklearn"
    extra = "sklearn"

    def __init__(self, model: Any, n_features: int, options: dict[str, Any] | None = None):
        super().__init__(model, n_features, options)
        sklearn_base = extras.require("sklearn.base")
        self._is_classifier = bool(sklearn_base.is_classifier(model))
        self.estimator_name = type(model).__name__
        self._flat_target = True  # a regression of one target hands y as [n] (False: [n, 1], MultiOutputRegressor)
        self._check_task(model)
        self.strategy = self._choose_strategy(model)
        self.mode = "accumulate" if self.strategy == "fit" else "batches"
        seed = self._opt("seed", None)
        self._rng = np.random.default_rng(seed)
        if seed is not None:
            self._seed_estimator(int(seed))
        self._weight_kw = self._sample_weight_key(model, "fit")
        self._partial_weight = self.strategy == "partial_fit" and "sample_weight" in _params_of(model.partial_fit)
        self._warned_weights = False
        self._partial_calls = 0
        self.n_estimators_per_chunk: int | None = None
        self._n_estimators_user = getattr(model, "n_estimators", None)
        self._probe: np.ndarray | None = None
        self.fitted = False

    # -- options and detection ------------------------------------------------------------------------
    def _opt(self, key: str, default: Any) -> Any:
        if key in self.options:
            return self.options[key]
        fit_options = self.options.get("fit_options") or {}
        return fit_options.get(key, default)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        module = type(model).__module__.split(".")[0]
        if module == "sklearn":
            return hasattr(model, "fit")
        if module in ("xgboost", "keras", "tensorflow", "tf_keras", "torch"):
            return False
        # estimators of other libraries that follow scikit-learn's API (imblearn, lightgbm, ...)
        try:
            base = extras.require("sklearn.base")
        except ImportError:
            return False
        return isinstance(model, base.BaseEstimator) and hasattr(model, "fit") and hasattr(model, "predict")

    def _choose_strategy(self, model: Any) -> str:
        params = model.get_params(deep=False) if hasattr(model, "get_params") else {}
        possible = ["fit"]
        if hasattr(model, "partial_fit"):  # False for MLPClassifier(solver="lbfgs"): available_if
            possible.insert(0, "partial_fit")
        if "warm_start" in params and "n_estimators" in params:
            possible.insert(0 if "partial_fit" not in possible else 1, "warm_start")
        forced = self._opt("strategy", None)
        if forced is None:
            return possible[0]
        if forced not in STRATEGIES:
            raise ConfigError(f"unknown scikit-learn strategy {forced!r}; choose one of {', '.join(STRATEGIES)}",
                              key="strategy")
        if forced not in possible:
            raise ConfigError(f"{self.estimator_name} cannot train with strategy {forced!r} (it supports: "
                              f"{', '.join(possible)})", key="strategy")
        return forced

    def _check_task(self, model: Any) -> None:
        """Refuse, before any training, an estimator that cannot give the task's outputs."""
        task, name = self.task, self.estimator_name
        if task.kind == "regression":
            if self._is_classifier:
                raise ConfigError(
                    f"{name} is a classifier, but the task is a regression of {list(task.targets)}: model() must "
                    f"return a regressor (e.g. HistGradientBoostingRegressor, RandomForestRegressor, "
                    f"MLPRegressor)", key="model")
            self._check_targets(model)
        elif task.kind == "multiclass":
            what = f"the task is multiclass ({task.n_classes} classes: {', '.join(task.classes)})"
            if not self._is_classifier:
                raise ConfigError(
                    f"{name} is not a classifier, but {what}: model() must return a classifier with predict_proba "
                    f"(e.g. HistGradientBoostingClassifier, RandomForestClassifier, MLPClassifier)", key="model")
            if not (hasattr(model, "predict_proba") or hasattr(model, "decision_function")):
                raise ConfigError(f"{name} has neither predict_proba nor decision_function, but {what} and needs "
                                  f"class probabilities: choose a classifier that gives them", key="model")

    def _check_targets(self, model: Any) -> None:
        tags = target_tags(model)
        if tags is not None:
            self._flat_target = tags[1]
        n = len(self.task.targets)
        if n > 1 and not (tags is not None and tags[0]) and fits_targets(model, self.n_features, n) is False:
            raise ConfigError(
                f"{self.estimator_name} predicts one target, but the regression has {n} "
                f"({', '.join(self.task.targets)}): wrap it, sklearn.multioutput.MultiOutputRegressor("
                f"{self.estimator_name}(...)) (one model per target), or return an estimator that predicts "
                f"several outputs (RandomForestRegressor, ExtraTreesRegressor, KNeighborsRegressor, MLPRegressor)",
                key="model")

    def _seed_estimator(self, seed: int) -> None:
        # only fill a random_state the user left unset; a user's own seed wins
        params = self.model.get_params(deep=False) if hasattr(self.model, "get_params") else {}
        if "random_state" in params and params["random_state"] is None:
            self.model.set_params(random_state=seed)

    def _sample_weight_key(self, model: Any, method: str) -> str | None:
        """Keyword under which ``model.<method>`` takes sample weights, or None."""
        if "sample_weight" in _params_of(getattr(model, method)):
            return "sample_weight"
        steps = getattr(model, "steps", None)
        if isinstance(steps, list) and steps and "sample_weight" in _params_of(getattr(steps[-1][1], method)):
            return f"{steps[-1][0]}__sample_weight"  # Pipeline routes step__param to the step
        return None

    def _weights_ignored(self, weight: np.ndarray | None, supported: bool, method: str = "fit") -> bool:
        if weight is None or supported:
            return False
        if not self._warned_weights:
            warnings.warn(f"{self.estimator_name}.{method} does not accept sample_weight: the event weights are "
                          f"ignored in training (they still weight the reported loss)", UserWarning, stacklevel=3)
            self._warned_weights = True
        return True

    # -- training -------------------------------------------------------------------------------------
    def _labels(self, y: np.ndarray) -> np.ndarray:
        """The truth as the estimator takes it: class indices (int64), or the regression targets
        (float32 ``[n, T]``; ``[n]`` for one target unless the estimator wants a column)."""
        task = self.task
        if task.kind == "regression":
            y = np.asarray(y, dtype=np.float32)
            width = len(task.targets)
            y = y.reshape(len(y), -1) if y.ndim == 1 and width == 1 else y
            if y.ndim != 2 or y.shape[1] != width:
                raise ConfigError(f"{self.estimator_name}: the regression of {width} target(s) "
                                  f"{list(task.targets)} needs y of shape [n, {width}], got {y.shape}",
                                  key="target")
            return y[:, 0] if width == 1 and self._flat_target else y
        y = np.asarray(y).reshape(-1)
        if not self._is_classifier:
            return y.astype(np.float32)
        labels = np.rint(y).astype(np.int64)
        k = task.n_classes
        if task.kind == "multiclass" and len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise ConfigError(f"{self.estimator_name}: class labels must be 0..{k - 1} (classes "
                              f"{list(task.classes)}), got labels from {labels.min()} to {labels.max()}",
                              key="label")
        return labels

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"{self.estimator_name}: expected events x {self.n_features} features, got an "
                              f"array of shape {X.shape}", key="features")
        return X

    def _keep_probe(self, X: np.ndarray) -> None:
        if self._probe is None or len(self._probe) < _PROBE_ROWS:
            have = 0 if self._probe is None else len(self._probe)
            extra = np.array(X[: _PROBE_ROWS - have], dtype=np.float32)
            self._probe = extra if self._probe is None else np.concatenate([self._probe, extra])

    def fit_chunk(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, *, epochs: int = 1,
                  batch_size: int | None = None) -> dict[str, float]:
        """Train on one chunk: ``epochs`` shuffled mini-batch passes of ``partial_fit``, or one growth
        step of a warm-started ensemble (``epochs`` does not apply there: the chunk adds its trees once)."""
        if self.strategy == "fit":
            raise NotImplementedError(
                f"{self.estimator_name} trains once on the accumulated training split (mode 'accumulate'): "
                f"call fit_all, or force a strategy it supports")
        X = self._check_X(X)
        y = self._labels(y)
        if len(X) == 0:
            return {"loss": float("nan"), "n_events": 0.0}
        self._keep_probe(X)
        if self.strategy == "partial_fit":
            metrics = self._partial_fit_chunk(X, y, weight, epochs=max(1, int(epochs)),
                                              batch_size=int(batch_size or self._opt("batch_size", 256) or 256))
        else:
            metrics = self._grow(X, y, weight)
        metrics["loss"] = self._training_loss(X, y, weight) if self.fitted else float("nan")
        metrics["n_events"] = float(len(X))
        return metrics

    def _partial_fit_chunk(self, X, y, weight, *, epochs: int, batch_size: int) -> dict[str, float]:
        use_weight = self._partial_weight and weight is not None
        self._weights_ignored(weight, self._partial_weight, "partial_fit")
        n = len(X)
        calls = 0
        for _ in range(epochs):
            order = self._rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                kwargs: dict[str, Any] = {}
                if self._partial_calls == 0 and self._is_classifier:
                    kwargs["classes"] = np.arange(self.task.n_classes)  # binary: [0, 1]
                if use_weight:
                    kwargs["sample_weight"] = np.asarray(weight)[idx]
                self.model.partial_fit(X[idx], y[idx], **kwargs)
                self._partial_calls += 1
                calls += 1
        self.fitted = True
        return {"partial_fit_calls": float(calls)}

    def _per_chunk(self) -> int:
        if self.n_estimators_per_chunk is None:
            given = self._opt("n_estimators_per_chunk", None)
            if given is not None:
                self.n_estimators_per_chunk = max(1, int(given))
            else:
                n_chunks = max(1, int(self._opt("n_chunks", None) or _DEFAULT_N_CHUNKS))
                self.n_estimators_per_chunk = max(1, math.ceil(int(self._n_estimators_user or 100) / n_chunks))
        return self.n_estimators_per_chunk

    def _grow(self, X, y, weight) -> dict[str, float]:
        present = np.unique(y) if self._is_classifier else None
        if present is not None and len(present) < 2:
            warnings.warn(f"{self.estimator_name}: a chunk with only one class ({len(y)} events) cannot grow "
                          f"the ensemble and is skipped", UserWarning, stacklevel=3)
            return {"skipped": 1.0, "n_estimators": float(self._n_members())}
        if present is not None and self.task.kind == "multiclass" and len(present) < self.task.n_classes:
            missing = np.setdiff1d(np.arange(self.task.n_classes), present)
            if self._weight_kw is None:
                warnings.warn(f"{self.estimator_name}: a chunk without the classes {missing.tolist()} cannot grow "
                              f"the ensemble (its members would have fewer class columns; {self.estimator_name} "
                              f"takes no sample_weight to stand them in at weight 0) and is skipped",
                              UserWarning, stacklevel=3)
                return {"skipped": 1.0, "n_estimators": float(self._n_members())}
            X, y, weight = pad_classes(X, y, weight, missing)
        step = self._per_chunk()
        current = self._n_members() if self.fitted else 0
        self.model.set_params(warm_start=True, n_estimators=current + step)
        kwargs = self._weight_kwargs(weight)
        self.model.fit(X, y, **kwargs)
        self.fitted = True
        return {"n_estimators": float(self._n_members())}

    def _n_members(self) -> int:
        members = getattr(self.model, "estimators_", None)
        if members is None:
            return 0
        return int(members.shape[0]) if hasattr(members, "shape") else len(members)

    def _weight_kwargs(self, weight: np.ndarray | None) -> dict[str, Any]:
        if weight is None or self._weights_ignored(weight, self._weight_kw is not None):
            return {}
        return {self._weight_kw: np.asarray(weight)}

    def check_accumulate(self, n_events: int, n_features: int | None = None) -> int:
        """Bytes the accumulated training split needs (float32 X, y and weights); a ConfigError naming
        the estimator, the size and what to do when it is above ``max_accumulate_bytes``.

        The trainer calls it before gathering (with the expected count) and while gathering (with the
        running count), so that it refuses before the memory is used.
        """
        n_features = self.n_features if n_features is None else int(n_features)
        y_width = len(self.task.targets) if self.task.kind == "regression" else 1
        needed = int(n_events) * (int(n_features) + 1 + y_width) * 4
        limit = int(self._opt("max_accumulate_bytes", DEFAULT_MAX_ACCUMULATE_BYTES))
        if needed > limit:
            raise ConfigError(
                f"{self.estimator_name} can only be fitted once on the whole training split, which needs "
                f"{_human_bytes(needed)} in memory ({int(n_events):,} events x {n_features} features, float32) "
                f"-- above the limit of {_human_bytes(limit)} (option max_accumulate_bytes). Lower params "
                f"'nevts', or choose an estimator that trains chunk by chunk: one with partial_fit "
                f"(MLPClassifier, SGDClassifier, GaussianNB) or warm_start (RandomForestClassifier, "
                f"ExtraTreesClassifier, GradientBoostingClassifier), or XGBoost; or raise "
                f"max_accumulate_bytes if this machine has the memory.",
                key="max_accumulate_bytes",
            )
        return needed

    def fit_all(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> dict[str, float]:
        """Fit once on the accumulated training split (any strategy: for partial_fit/warm_start
        estimators this is one chunk)."""
        X = self._check_X(X)
        if self.strategy != "fit":
            return self.fit_chunk(X, y, weight, epochs=1, batch_size=self._opt("batch_size", 256))
        self.check_accumulate(len(X), X.shape[1])
        y = self._labels(y)
        self._keep_probe(X)
        self.model.fit(X, y, **self._weight_kwargs(weight))
        self.fitted = True
        return {"loss": self._training_loss(X, y, weight), "n_events": float(len(X))}

    def _training_loss(self, X, y, weight) -> float:
        # a bounded sample: predicting all training events is quadratic for kNN and SVC
        if len(X) > _LOSS_SAMPLE:
            idx = self._rng.choice(len(X), _LOSS_SAMPLE, replace=False)
            X, y = X[idx], y[idx]
            weight = None if weight is None else np.asarray(weight)[idx]
        return task_loss(self.task, y, self.predict(X), weight)

    # -- inference ------------------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(self.model)
        except NotFittedError:
            return False
        return True

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The task's outputs. Binary: signal score ``float32[n]``, ``predict_proba[:, class 1]``, else
        ``sigmoid(decision_function)`` (SVC without probability=True, SGD with hinge loss), else ``predict``
        clipped to [0, 1] (regressors). Multiclass: ``float32[n, K]``, ``predict_proba`` (else a softmax of
        ``decision_function``) in class-index order. Regression: ``predict`` as ``float32[n, T]``."""
        X = self._check_X(X)
        if self.task.kind != "binary":
            return self._predict_task(X)
        est = self.model
        if len(X) == 0:
            return np.zeros(0, dtype=np.float32)
        if self._is_classifier and hasattr(est, "predict_proba"):
            proba = est.predict_proba(X)
            classes = list(getattr(est, "classes_", [0, 1]))
            if 1 in classes:
                return proba[:, classes.index(1)].astype(np.float32)
            return np.zeros(len(X), dtype=np.float32)  # trained on background only
        if self._is_classifier and hasattr(est, "decision_function"):
            return _sigmoid(est.decision_function(X)).astype(np.float32).reshape(-1)
        return np.clip(np.asarray(est.predict(X), dtype=np.float32).reshape(-1), 0.0, 1.0)

    def _predict_task(self, X: np.ndarray) -> np.ndarray:
        task = self.task
        if len(X) == 0:
            return task.scores(np.zeros((0, task.n_outputs), np.float32), 0)
        raw = self.model.predict(X) if task.kind == "regression" else self._class_probabilities(X)
        return task.scores(raw, len(X), where=self.estimator_name)

    def _class_probabilities(self, X: np.ndarray) -> np.ndarray:
        est = self.model
        if hasattr(est, "predict_proba"):
            proba = np.asarray(est.predict_proba(X), dtype=np.float64)
        else:  # a softmax of the decision scores (two classes: one score, that of the second)
            d = np.asarray(est.decision_function(X), dtype=np.float64)
            proba = softmax(np.stack([np.zeros(len(d)), d], axis=1) if d.ndim == 1 else d)
        out = np.zeros((len(X), self.task.n_classes))
        out[:, self._class_columns()] = proba
        return out

    def _class_columns(self) -> np.ndarray:
        """The class index of each of the estimator's ``classes_`` (its probability columns)."""
        k = self.task.n_classes
        classes = np.asarray(getattr(self.model, "classes_", np.arange(k)))
        columns = np.rint(classes.astype(np.float64)).astype(np.int64) if classes.dtype.kind in "iuf" else None
        if columns is None or np.any(columns != classes) or np.any((columns < 0) | (columns >= k)):
            raise ConfigError(f"{self.estimator_name} was trained on the classes {classes.tolist()}, but the task "
                              f"has {k} classes, 0..{k - 1} ({', '.join(self.task.classes)})", key="classes")
        return columns

    # -- persistence ----------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        sklearn = extras.sklearn()
        return {"backend": self.name, "estimator": f"{type(self.model).__module__}.{self.estimator_name}",
                "strategy": self.strategy, "n_features": self.n_features, "sklearn_version": sklearn.__version__,
                "n_estimators_per_chunk": self.n_estimators_per_chunk}

    def save(self, directory: Path) -> dict[str, Any]:
        """``model.joblib`` (a pickle: load only your own), plus ``model.skops`` when skops is installed."""
        joblib = extras.require("joblib")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = ["model.joblib"]
        joblib.dump(self.model, directory / "model.joblib")
        try:
            skops_io = extras.require("skops.io")
        except ImportError:
            skops_io = None
        if skops_io is not None:
            skops_io.dump(self.model, directory / "model.skops")
            files.append("model.skops")
        (directory / "sklearn.json").write_text(json.dumps(self._meta(), indent=2))
        files.append("sklearn.json")
        return {"format": "joblib" if skops_io is None else "joblib+skops", "files": files}

    @classmethod
    def load(cls, directory: Path, n_features: int, options: dict[str, Any] | None = None) -> SklearnBackend:
        """Load what :meth:`save` wrote. With ``options["safe_load"]`` the skops file is read and types
        outside skops' trusted set are refused; otherwise the joblib pickle is read (it runs code)."""
        extras.sklearn()  # unpickling imports it anyway: fail first with the install hint
        directory = Path(directory)
        options = dict(options or {})
        meta_path = directory / "sklearn.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if options.get("safe_load"):
            skops_io = extras.require("skops.io")
            if not (directory / "model.skops").is_file():
                raise ConfigError(f"safe_load asked for, but {directory} has no model.skops", key="safe_load")
            model = skops_io.load(directory / "model.skops")
        else:
            model = extras.require("joblib").load(directory / "model.joblib")
        saved_version, version = meta.get("sklearn_version"), extras.sklearn().__version__
        if saved_version and saved_version != version:
            warnings.warn(f"{directory}: model saved with scikit-learn {saved_version}, loaded with {version}",
                          UserWarning, stacklevel=2)
        if meta.get("strategy") and "strategy" not in options:
            options["strategy"] = meta["strategy"]
        backend = cls(model, n_features, options)
        backend.n_estimators_per_chunk = meta.get("n_estimators_per_chunk")
        backend.fitted = True
        backend._partial_calls = 1  # classes are already known to a loaded estimator
        if backend.task.kind == "multiclass":
            backend._class_columns()  # a model of other classes than the task's: said now, not at predict
        return backend

    def export(self, directory: Path) -> dict[str, Any]:
        """ONNX through skl2onnx (input ``features`` float32[N, n_features], output ``score``: float32[N] for a
        binary task, [N, K] class probabilities or [N, T] targets otherwise), checked against :meth:`predict`
        with onnxruntime; ``{"format": None, "reason": ...}`` otherwise."""
        if not self.fitted:
            return {"format": None, "reason": f"{self.estimator_name} is not trained yet"}
        try:
            skl2onnx = extras.require("skl2onnx")
            data_types = extras.require("skl2onnx.common.data_types")
        except ImportError:
            return {"format": None,
                    "reason": "skl2onnx is not installed (pip install skl2onnx==1.20.0) -- no ONNX export"}
        final = _final_step(self.model)
        options = {id(final): {"zipmap": False}} if self._is_classifier else None
        try:
            with warnings.catch_warnings(), _int_missing_flags():
                warnings.simplefilter("ignore")
                onx = skl2onnx.to_onnx(
                    self.model, initial_types=[(ONNX_INPUT, data_types.FloatTensorType([None, self.n_features]))],
                    options=options)
        except Exception as err:  # any converter failure means: no export for this estimator
            cause = err.__cause__ or err  # skl2onnx wraps the real error in a message dumping the tree
            return {"format": None, "reason": f"skl2onnx {skl2onnx.__version__} cannot convert "
                                              f"{self.estimator_name}: {type(cause).__name__}: {str(cause)[:300]}"}
        if self.task.kind != "binary":
            return self._export_task(onx, directory)
        if self._is_classifier:
            # converters disagree on which column of the decision scores is class 1 (SVC: 0, SGD: 1):
            # both are tried and the export must match predict() anyway
            decision = not hasattr(self.model, "predict_proba")
            classes = list(getattr(self.model, "classes_", [0, 1]))
            column = classes.index(1) if 1 in classes else 1
            variants = ((column, True), (1 - column, True)) if decision else ((column, False),)
            return export_scored_onnx(onx, "probabilities", variants=variants, predict=self.predict,
                                      X=self._probe_rows(), directory=directory, what=self.estimator_name)
        return export_scored_onnx(onx, onx.graph.output[0].name, variants=((None, False),), clip=True,
                                  predict=self.predict, X=self._probe_rows(), directory=directory,
                                  what=self.estimator_name)

    def _export_task(self, onx: Any, directory: Path) -> dict[str, Any]:
        width, softmax, mapping = self.task.n_outputs, False, None
        if self.task.kind == "regression":
            source = onx.graph.output[0].name
        else:  # skl2onnx's "probabilities" hold the decision scores of a classifier without predict_proba
            source, softmax = "probabilities", not hasattr(self.model, "predict_proba")
            columns = self._class_columns()
            if not np.array_equal(columns, np.arange(width)):
                mapping = np.zeros((len(columns), width), np.float32)
                mapping[np.arange(len(columns)), columns] = 1.0
        model = onnx_with_outputs(onx, source, width=width, softmax=softmax, mapping=mapping)
        result = write_verified_onnx(model, self.predict, self._probe_rows(), directory, self.estimator_name)
        if result["format"] is not None:
            result["columns"] = self.task.output_names
        return result

    def _probe_rows(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        random_rows = rng.uniform(-0.5, 1.5, size=(256, self.n_features)).astype(np.float32)
        return random_rows if self._probe is None else np.concatenate([self._probe, random_rows])



def _params_of(method: Any) -> set[str]:
    try:
        return set(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return set()
