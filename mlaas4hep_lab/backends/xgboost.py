"""XGBoost adapter: one model trained over the whole stream, never refitted per chunk.

The chunk stream reaches XGBoost through an ``xgboost.DataIter`` whose ``next`` pulls the next chunk from
the :data:`~mlaas4hep_lab.backends.base.ChunkSource` iterator and whose ``reset`` starts a new pass.
``xgboost.QuantileDMatrix`` sketches the feature quantiles over a few passes and keeps only the binned
matrix (one byte per value), so the float events are never all in memory at once; with
``options["external_memory"]`` an ``ExtMemQuantileDMatrix`` keeps even the bins on disk.

model.py returns an ``xgboost.XGBClassifier`` (or an ``XGBRegressor`` with a logistic objective) or a dict
of booster parameters (``n_estimators`` / ``num_boost_round`` and ``early_stopping_rounds`` allowed in it).

Tasks (``options["task"]``): binary, a ``binary:logistic``-like objective (one probability per event);
multiclass, ``multi:softprob`` with ``num_class`` = K (set when the model leaves it out; an XGBClassifier's
default objective becomes multi:softprob, as its own ``fit`` does), metrics mlogloss and merror; regression,
an XGBRegressor (or params) with a ``reg:*`` objective on the raw targets, several targets through
XGBoost's multi-target trees (labels ``[n, T]``), metric rmse.

Training continues a saved model (``fit_stream(..., previous_rounds=...)`` after :meth:`XGBoostBackend.load`):
boosting goes on from the loaded booster for the rounds still missing, early stopping from the rounds done;
``backend.booster`` is there after every round, for the trainer's checkpoints. On a Dask cluster
:meth:`XGBoostBackend.fit_cluster` boosts through ``xgboost.dask`` instead (:mod:`mlaas4hep_lab.cluster.xgb`).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends import _onnx
from mlaas4hep_lab.backends._xgb_iter import Deferred, deferred_interrupt, iterator_class
from mlaas4hep_lab.backends.base import Backend, ChunkSource
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import Task

__all__ = ["XGBoostBackend"]

_OBJECTIVES = ("binary:logistic", "reg:logistic", "binary:logitraw")
# the metrics reported each round unless the model names its own; the first is the "loss"
_TASK_METRICS = {"binary": ["logloss", "auc"], "multiclass": ["mlogloss", "merror"], "regression": ["rmse"]}
_DEFAULT_ROUNDS = 100
_PROBE_ROWS = 512
# keys that mark a plain dict as XGBoost booster parameters
_PARAM_KEYS = {"objective", "booster", "eta", "learning_rate", "max_depth", "n_estimators", "num_boost_round",
               "tree_method", "max_bin", "min_child_weight", "subsample", "colsample_bytree", "gamma",
               "reg_lambda", "lambda", "reg_alpha", "alpha", "eval_metric", "scale_pos_weight", "num_class",
               "multi_strategy"}


def _round_callback(on_round: Callable[[dict[str, float]], bool | None] | None, history: list[dict[str, float]],
                    keep: Callable[[Any], None], interrupt: Callable[[], None], start: int = 0,
                    loss_metric: str = "logloss", deferred: Deferred | None = None):
    xgb = extras.xgboost()

    class RoundCallback(xgb.callback.TrainingCallback):
        """After each boosting round: record the metrics, ``keep`` the booster (a checkpoint may save it),
        hand the metrics to ``on_round``, stop (and ``interrupt``) when it says so. Rounds count on from
        ``start`` (the rounds of a continued model), as xgboost's ``epoch`` restarts at 0 in a continuation.
        A Ctrl-C held back during the round (``deferred``) is raised here, between rounds."""

        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, dict[str, list]]) -> bool:
            keep(model)
            if deferred is not None:
                deferred.check()
            metrics: dict[str, float] = {"round": float(start + epoch + 1)}
            for data_name, by_metric in evals_log.items():
                for metric, values in by_metric.items():
                    value = values[-1]
                    metrics[f"{data_name}_{metric}"] = float(value[0] if isinstance(value, tuple) else value)
            if f"train_{loss_metric}" in metrics:
                metrics["loss"] = metrics[f"train_{loss_metric}"]
            if f"validation_{loss_metric}" in metrics:
                metrics["val_loss"] = metrics[f"validation_{loss_metric}"]
            history.append(metrics)
            stop = bool(on_round(dict(metrics))) if on_round is not None else False
            if stop:
                interrupt()
            return stop

    return RoundCallback()


@functools.cache
def _early_stopping_class() -> type:
    xgb = extras.xgboost()

    class ResumableEarlyStopping(xgb.callback.EarlyStopping):
        """xgboost's EarlyStopping, resumable: it first replays the scores of the rounds a continued model
        already has (from the checkpoint's history), so that a resumed training stops where an uninterrupted
        one would and keeps the same best round; and it keeps every round when training was interrupted
        (a stop request: the model is checkpointed and may be resumed, so it must hold the rounds the
        history lists), cutting back to the best round only at the real end."""

        def __init__(self, previous: list[float], interrupted: Callable[[], bool], **kwargs: Any):
            super().__init__(**kwargs)
            self._previous, self._interrupted = previous, interrupted

        def before_training(self, model: Any) -> Any:
            model = super().before_training(model)
            for i in range(len(self._previous)):
                # after_iteration adds starting_round (the continued model's rounds) to the epoch it gets
                self.after_iteration(model, i - self.starting_round,
                                     {self.data: {self.metric_name: list(self._previous[: i + 1])}})
            return model

        def after_training(self, model: Any) -> Any:
            return model if self._interrupted() else super().after_training(model)

    return ResumableEarlyStopping


def _json_safe(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue  # e.g. missing=nan, the default anyway
        if value is None or isinstance(value, (str, int, float, bool)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
    return out


class XGBoostBackend(Backend):
    """Adapter for XGBoost (mode ``"stream"``: :meth:`fit_stream` trains over the whole stream).

    Options read (from params or model.py's ``fit_options``): ``seed``, ``early_stopping_rounds``,
    ``n_estimators`` (overrides the model's), ``external_memory`` (bool), ``cache_dir`` (for the external
    memory pages; a temporary folder by default, removed after training), ``eval_train`` (default True:
    report training metrics each round).
    """

    name = "xgboost"
    extra = "xgboost"
    mode = "stream"

    def __init__(self, model: Any, n_features: int, options: dict[str, Any] | None = None):
        super().__init__(model, n_features, options)
        self.params, self.n_estimators, self.early_stopping_rounds = self._read_params(model)
        self._missing = self.params.pop("missing", None)  # a DMatrix setting, not a booster parameter
        self.booster: Any = None
        self.history: list[dict[str, float]] = []
        self.stream_stats: dict[str, dict[str, int]] = {}
        self.best_iteration: int | None = None
        self._probe: np.ndarray | None = None

    def _opt(self, key: str, default: Any) -> Any:
        if key in self.options:
            return self.options[key]
        return (self.options.get("fit_options") or {}).get(key, default)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, dict):
            return bool(_PARAM_KEYS & set(model)) and all(isinstance(k, str) for k in model)
        if type(model).__module__.split(".")[0] != "xgboost":
            return False
        return hasattr(model, "get_xgb_params")

    def _read_params(self, model: Any) -> tuple[dict[str, Any], int, int | None]:
        if isinstance(model, dict):
            params = dict(model)
            rounds = params.pop("n_estimators", None)
            rounds = params.pop("num_boost_round", rounds)
            stopping = params.pop("early_stopping_rounds", None)
        else:
            params = {k: v for k, v in model.get_xgb_params().items() if v is not None}
            rounds = getattr(model, "n_estimators", None)
            stopping = getattr(model, "early_stopping_rounds", None)
            missing = getattr(model, "missing", np.nan)
            if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
                params["missing"] = missing
        rounds = self._opt("n_estimators", rounds)
        stopping = self._opt("early_stopping_rounds", stopping)
        if self.task.kind == "binary":
            params.setdefault("objective", "binary:logistic")
            if params["objective"] not in _OBJECTIVES:
                raise ConfigError(
                    f"XGBoost objective {params['objective']!r} does not give a signal probability; use "
                    f"XGBClassifier (objective 'binary:logistic') or XGBRegressor(objective='reg:logistic')",
                    key="objective")
        elif self.task.kind == "multiclass":
            self._multiclass_params(model, params)
        else:
            self._regression_params(model, params)
        if params.get("tree_method", "hist") not in ("hist", "auto"):
            warnings.warn(f"tree_method {params['tree_method']!r} replaced by 'hist': training over a "
                          f"stream needs the quantile (hist) method", UserWarning, stacklevel=3)
        params["tree_method"] = "hist"
        seed = self._opt("seed", None)
        if seed is not None and "random_state" not in params and "seed" not in params:
            params["seed"] = int(seed)
        metrics = params.get("eval_metric") or _TASK_METRICS[self.task.kind]
        params["eval_metric"] = [metrics] if isinstance(metrics, str) else list(metrics)
        return params, int(rounds if rounds is not None else _DEFAULT_ROUNDS), \
            (int(stopping) if stopping else None)

    def _multiclass_params(self, model: Any, params: dict[str, Any]) -> None:
        xgb, task = extras.xgboost(), self.task
        k, what = task.n_classes, f"the task is multiclass ({task.n_classes} classes: {', '.join(task.classes)})"
        if isinstance(model, xgb.XGBRegressor):
            raise ConfigError(f"model() returned an {type(model).__name__}, but {what}: return "
                              f"xgboost.XGBClassifier(objective='multi:softprob')", key="model")
        objective = params.get("objective")
        if objective is None or (objective == "binary:logistic" and isinstance(model, xgb.XGBClassifier)):
            objective = params["objective"] = "multi:softprob"  # what XGBClassifier.fit does for > 2 classes
        if objective == "multi:softmax":
            raise ConfigError(f"XGBoost objective 'multi:softmax' gives the most likely class only; {what} and "
                              f"needs class probabilities: use objective 'multi:softprob'", key="objective")
        if objective != "multi:softprob":
            raise ConfigError(f"XGBoost objective {objective!r} does not give class probabilities; {what}: use "
                              f"objective 'multi:softprob'", key="objective")
        given = params.setdefault("num_class", k)
        if int(given) != k:
            raise ConfigError(f"XGBoost num_class={given}, but {what}: leave num_class out (it is set to {k}) "
                              f"or make it {k}", key="num_class")
        params["num_class"] = k

    def _regression_params(self, model: Any, params: dict[str, Any]) -> None:
        xgb, targets = extras.xgboost(), list(self.task.targets)
        if isinstance(model, xgb.XGBClassifier):
            raise ConfigError(f"model() returned an {type(model).__name__}, but the task is a regression of "
                              f"{targets}: return xgboost.XGBRegressor(objective='reg:squarederror')", key="model")
        objective = params.setdefault("objective", "reg:squarederror")
        if not str(objective).startswith("reg:"):
            raise ConfigError(f"XGBoost objective {objective!r} is not a regression, but the task is a regression "
                              f"of {targets}: use 'reg:squarederror' (or another reg:* objective, e.g. "
                              f"'reg:pseudohubererror', 'reg:absoluteerror')", key="objective")
        if params.get("num_class"):
            raise ConfigError(f"XGBoost num_class={params['num_class']} is for classes, but the task is a "
                              f"regression of {targets}: leave num_class out", key="num_class")

    def _loss_metric(self) -> str:
        """The metric reported as ``loss`` / ``val_loss`` and watched by early stopping: the task's own
        (logloss, mlogloss, rmse) when evaluated, else (multiclass, regression) the model's last metric."""
        own, metrics = _TASK_METRICS[self.task.kind][0], self.params["eval_metric"]
        return own if own in metrics or self.task.kind == "binary" else metrics[-1]

    @staticmethod
    def _check_booster(booster: Any, task: Task, where: str) -> None:
        """The loaded booster's classes or targets are the task's."""
        config = json.loads(booster.save_config())["learner"]["learner_model_param"]
        if task.kind == "multiclass" and int(config.get("num_class", 0)) != task.n_classes:
            raise ConfigError(f"{where}: the XGBoost model has num_class={config.get('num_class')}, but the task "
                              f"has {task.n_classes} classes ({', '.join(task.classes)})", key="classes")
        if task.kind == "regression" and int(config.get("num_target", 1)) != len(task.targets):
            raise ConfigError(f"{where}: the XGBoost model predicts {config.get('num_target')} target(s), but the "
                              f"task has {len(task.targets)} ({', '.join(task.targets)})", key="target")

    # -- training -------------------------------------------------------------------------------------
    def fit_chunk(self, X, y, weight, *, epochs: int = 1, batch_size: int | None = None) -> dict[str, float]:
        raise NotImplementedError(
            "the xgboost backend trains one model over the whole stream (mode 'stream'): call fit_stream "
            "with a ChunkSource; refitting per chunk would forget the previous chunks")

    def fit_all(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> dict[str, float]:
        """Train on in-memory arrays (a stream of one chunk)."""
        return self.fit_stream(lambda: iter([(X, y, weight)]), None, epochs=1, batch_size=len(X))

    def _keep_booster(self, booster: Any) -> None:
        self.booster = booster

    def _keep_probe(self, X: np.ndarray) -> None:
        have = 0 if self._probe is None else len(self._probe)
        if have < _PROBE_ROWS:
            rows = np.array(X[: _PROBE_ROWS - have], dtype=np.float32)
            self._probe = rows if self._probe is None else np.concatenate([self._probe, rows])

    def fit_stream(self, train: ChunkSource, validation: ChunkSource | None = None, *, epochs: int = 1,
                   batch_size: int | None = None,
                   on_round: Callable[[dict[str, float]], bool | None] | None = None,
                   previous_rounds: list[dict[str, float]] | None = None) -> dict[str, float]:
        """Boost ``n_estimators`` rounds over the whole training stream (``epochs`` and ``batch_size`` do not
        apply: each round already sees every event). ``on_round(metrics)`` is called after each round with
        ``round``, ``train_logloss``/``train_auc``, ``validation_logloss``/``validation_auc`` (``loss`` and
        ``val_loss`` as aliases) and stops training when it returns True. Early stopping (on the validation
        logloss, keeping the best model) when ``early_stopping_rounds`` is set and a validation stream given.

        ``previous_rounds``: continue the loaded booster (see :meth:`load`) instead of starting afresh; the
        metrics of its rounds (as ``on_round`` received them), for early stopping to go on from. Only the
        missing ``n_estimators - done`` rounds are boosted; round numbers count on from ``done``."""
        if previous_rounds is not None and self.booster is None:
            raise RuntimeError("no XGBoost model to continue: load() the checkpoint first")
        external = bool(self._opt("external_memory", False))
        cache_root = None
        if external:
            cache_root = tempfile.mkdtemp(prefix="mlaas4hep-xgb-", dir=self._opt("cache_dir", None))
        self.history = list(previous_rounds or [])
        try:
            n_events = self._train(train, validation, on_round, cache_root, previous_rounds)
        finally:
            # the matrices (which own the page files) are gone once _train has returned
            if cache_root is not None:
                shutil.rmtree(cache_root, ignore_errors=True)
        best = self.booster.attr("best_iteration")
        self.best_iteration = int(best) if best is not None else None
        result = dict(self.history[-1]) if self.history else {}
        result.update({"rounds": float(self.booster.num_boosted_rounds()), "n_events": float(n_events)})
        if self.best_iteration is not None:
            result["best_iteration"] = float(self.best_iteration)
        return result

    def fit_cluster(self, stream: Any, validation: bool = True, **kwargs: Any) -> dict[str, float]:
        """:meth:`fit_stream` on ``stream``'s Dask cluster (xgboost.dask: :mod:`mlaas4hep_lab.cluster.xgb`)."""
        from mlaas4hep_lab.cluster.xgb import train_on_cluster
        return train_on_cluster(self, stream, validation, **kwargs)

    def _train(self, train: ChunkSource, validation: ChunkSource | None,
               on_round: Callable[[dict[str, float]], bool | None] | None, cache_root: str | None,
               previous_rounds: list[dict[str, float]] | None = None) -> int:
        # Ctrl-C must not land in XGBoost's C++ calls into Python (the chunk iterator): see _xgb_iter
        with deferred_interrupt() as deferred:
            return self._boost(train, validation, on_round, cache_root, previous_rounds, deferred)

    def _boost(self, train: ChunkSource, validation: ChunkSource | None,
               on_round: Callable[[dict[str, float]], bool | None] | None, cache_root: str | None,
               previous_rounds: list[dict[str, float]] | None, deferred: Deferred) -> int:
        xgb = extras.xgboost()
        continued = self.booster if previous_rounds is not None else None
        done = continued.num_boosted_rounds() if continued is not None else 0
        ChunkIter = iterator_class()
        build = self._matrix_builder(xgb, external=cache_root is not None)

        def prefix(name: str) -> str | None:
            return None if cache_root is None else str(Path(cache_root) / name)

        train_iter = ChunkIter(train, self.n_features, "training", probe=self._keep_probe,
                               cache_prefix=prefix("train"), task=self.task, deferred=deferred)
        dtrain = build(train_iter, None)
        deferred.check()   # a Ctrl-C held back during the build (it cut the iterator's pass short)
        if train_iter.events_last_pass == 0:
            raise ConfigError("XGBoost: the training stream is empty (no events in any chunk)", key="nevts")
        evals = [(dtrain, "train")] if self._opt("eval_train", True) else []
        val_iter = None
        if validation is not None:
            val_iter = ChunkIter(validation, self.n_features, "validation", cache_prefix=prefix("validation"),
                                 task=self.task, deferred=deferred)
            dval = build(val_iter, dtrain)
            deferred.check()
            if val_iter.events_last_pass:
                evals.append((dval, "validation"))
        interrupted = [False]
        loss_metric = self._loss_metric()
        callbacks = [_round_callback(on_round, self.history, self._keep_booster,
                                     lambda: interrupted.__setitem__(0, True), start=done,
                                     loss_metric=loss_metric, deferred=deferred)]
        if self.early_stopping_rounds:
            if any(name == "validation" for _, name in evals):
                # xgboost's default is the last metric; named here so that a continuation replays the same
                metrics = self.params["eval_metric"]
                metric = loss_metric if loss_metric in metrics else metrics[-1]
                previous = [r.get(f"validation_{metric}") for r in previous_rounds or []]
                if not all(isinstance(v, (int, float)) for v in previous):
                    warnings.warn("the checkpoint's rounds have no validation scores: early stopping starts "
                                  "afresh from the resumed round", UserWarning, stacklevel=3)
                    previous = []
                callbacks.append(_early_stopping_class()(
                    previous, lambda: interrupted[0], rounds=self.early_stopping_rounds, metric_name=metric,
                    data_name="validation", save_best=True))
            else:
                warnings.warn("early_stopping_rounds is set but there is no validation stream: training "
                              "runs all n_estimators rounds", UserWarning, stacklevel=3)
        # a continuation boosts only the missing rounds (xgb.train counts num_boost_round from the model's)
        self.booster = xgb.train(self.params, dtrain, num_boost_round=max(self.n_estimators - done, 0),
                                 evals=evals, callbacks=callbacks, verbose_eval=False, xgb_model=continued)
        self.stream_stats = {"train": train_iter.stats}
        if val_iter is not None:
            self.stream_stats["validation"] = val_iter.stats
        return train_iter.events_last_pass

    def _matrix_builder(self, xgb: Any, external: bool) -> Callable[[Any, Any], Any]:
        max_bin = int(self.params.get("max_bin", 256))
        kwargs: dict[str, Any] = {"max_bin": max_bin}
        if self._missing is not None:
            kwargs["missing"] = self._missing

        def build(iterator: Any, ref: Any) -> Any:
            if external:
                return xgb.ExtMemQuantileDMatrix(iterator, ref=ref, **kwargs)
            return xgb.QuantileDMatrix(iterator, ref=ref, **kwargs)

        return build

    # -- inference ------------------------------------------------------------------------------------
    trained = property(lambda self: self.booster is not None)   # Backend.trained: a booster once it saw events
    def predict(self, X: np.ndarray) -> np.ndarray:
        """The task's outputs from the Booster (``inplace_predict``): binary, the signal score ``float32[n]``
        (sigmoid for ``binary:logitraw``); multiclass, ``multi:softprob``'s ``float32[n, K]``; regression, ``[n, T]``."""
        if self.booster is None:
            raise RuntimeError("the XGBoost model is not trained yet: call fit_stream first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"XGBoost: expected events x {self.n_features} features, got an array of shape "
                              f"{X.shape}", key="features")
        if len(X) == 0:
            return self.task.scores(np.zeros((0, self.task.n_outputs), np.float32), 0)
        kwargs = {"missing": self._missing} if self._missing is not None else {}
        raw = self.booster.inplace_predict(X, **kwargs)
        if self.task.kind != "binary":
            return self.task.scores(raw, len(X), where="the XGBoost model")
        score = np.asarray(raw, dtype=np.float64).reshape(-1)
        if self.params["objective"] == "binary:logitraw":
            score = 0.5 * (1.0 + np.tanh(0.5 * score))
        return score.astype(np.float32)

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """``model.json`` (the Booster's own JSON) and ``xgboost.json`` (parameters, rounds, wrapper)."""
        if self.booster is None:
            raise RuntimeError("the XGBoost model is not trained yet: nothing to save")
        xgb = extras.xgboost()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / "model.json")
        wrapper = None if isinstance(self.model, dict) else type(self.model).__name__
        meta = {
            "backend": self.name, "xgboost_version": xgb.__version__, "n_features": self.n_features,
            "params": _json_safe(self.params), "n_estimators": self.n_estimators,
            "early_stopping_rounds": self.early_stopping_rounds, "best_iteration": self.best_iteration,
            "rounds": self.booster.num_boosted_rounds(), "missing": self._missing,
            "wrapper": wrapper,
            "wrapper_params": None if wrapper is None else _json_safe(self.model.get_params()),
        }
        (directory / "xgboost.json").write_text(json.dumps(meta, indent=2))
        return {"format": "xgboost-json", "files": ["model.json", "xgboost.json"]}

    @classmethod
    def load(cls, directory: Path, n_features: int, options: dict[str, Any] | None = None) -> XGBoostBackend:
        xgb = extras.xgboost()
        directory = Path(directory)
        meta_path = directory / "xgboost.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        model: Any = dict(meta.get("params") or {"objective": "binary:logistic"})
        model["n_estimators"] = meta.get("n_estimators", _DEFAULT_ROUNDS)
        wrapper = meta.get("wrapper")
        if wrapper and hasattr(xgb, wrapper):
            model = getattr(xgb, wrapper)(**(meta.get("wrapper_params") or {}))
        booster = xgb.Booster()
        booster.load_model(directory / "model.json")
        # the booster's classes or targets first: they say more than the saved parameters would
        cls._check_booster(booster, (options or {}).get("task") or Task(), str(directory))
        backend = cls(model, n_features, options)
        backend.params = dict(meta.get("params") or backend.params)
        backend._missing = meta.get("missing")
        backend.booster = booster
        backend.best_iteration = meta.get("best_iteration")
        return backend

    def export(self, directory: Path) -> dict[str, Any]:
        """ONNX through onnxmltools (input ``features`` float32[N, n_features], output ``score``: float32[N]
        for a binary task, [N, K] class probabilities or [N, 1] for a regression of one target), checked
        against :meth:`predict` with onnxruntime; ``{"format": None, "reason": ...}`` otherwise (a regression of
        several targets, which onnxmltools does not convert)."""
        if self.booster is None:
            return {"format": None, "reason": "the XGBoost model is not trained yet"}
        try:
            convert = extras.require("onnxmltools.convert")
            data_types = extras.require("onnxmltools.convert.common.data_types")
        except ImportError:
            return {"format": None,
                    "reason": "onnxmltools is not installed (pip install onnxmltools==1.16.0) -- no ONNX export"}
        if self.task.kind != "binary":
            return self._export_task(convert, data_types, directory)
        # onnxmltools 1.16 mistranslates reg:logistic (base_score left in probability space, no link):
        # the same trees under binary:logistic predict exactly the same probabilities and convert well
        # (binary:logitraw keeps base_score as a margin: it becomes the matching probability)
        booster = self.booster.copy()
        switch: dict[str, Any] = {"objective": "binary:logistic"}
        if self.params["objective"] == "binary:logitraw":
            config = json.loads(booster.save_config())["learner"]["learner_model_param"]
            margin = float(str(config["base_score"]).strip("[]").split(",")[0])
            switch["base_score"] = 1.0 / (1.0 + math.exp(-margin))
        booster.set_param(switch)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onx = convert.convert_xgboost(
                    booster, initial_types=[(_onnx.ONNX_INPUT, data_types.FloatTensorType([None, self.n_features]))])
        except Exception as err:  # any converter failure means: no export for this model
            return {"format": None, "reason": f"onnxmltools cannot convert this XGBoost model: "
                                              f"{type(err).__name__}: {str(err)[:300]}"}
        outputs = [o.name for o in onx.graph.output]
        if "probabilities" in outputs:
            source, variants = "probabilities", ((1, False), (1, True))
        else:  # regression-style output: one column, the margin or the probability
            source, variants = outputs[0], ((None, False), (None, True))
        return _onnx.export_scored_onnx(onx, source, variants=variants, predict=self.predict, X=self._probe_rows(),
                                  directory=directory, what="the XGBoost model")

    def _export_task(self, convert: Any, data_types: Any, directory: Path) -> dict[str, Any]:
        n_targets = len(self.task.targets)
        if n_targets > 1:
            # measured with onnxmltools 1.16: its graph adds every target's trees into each output column and
            # keeps the first target's base score only; it cannot read trees with vector leaves at all
            how = ("it cannot read trees with vector leaves (multi_strategy 'multi_output_tree')"
                   if self.params.get("multi_strategy") == "multi_output_tree" else
                   "its graph adds every target's trees into each output and keeps the first target's base score")
            return {"format": None, "reason": f"onnxmltools {_version('onnxmltools')} does not convert an XGBoost "
                                              f"regression of {n_targets} targets ({how}); no ONNX export"}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                features = data_types.FloatTensorType([None, self.n_features])
                onx = convert.convert_xgboost(self.booster, initial_types=[(_onnx.ONNX_INPUT, features)])
        except Exception as err:  # any converter failure means: no export for this model
            return {"format": None, "reason": f"onnxmltools cannot convert this XGBoost model: "
                                              f"{type(err).__name__}: {str(err)[:300]}"}
        source = "probabilities" if self.task.kind == "multiclass" else onx.graph.output[0].name
        model = _onnx.onnx_with_outputs(onx, source, width=self.task.n_outputs)
        result = _onnx.write_verified_onnx(model, self.predict, self._probe_rows(), directory, "the XGBoost model")
        if result["format"] is not None:
            result["columns"] = self.task.output_names
        return result

    def _probe_rows(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        X = rng.uniform(-0.5, 1.5, size=(256, self.n_features)).astype(np.float32)
        return X if self._probe is None else np.concatenate([self._probe, X])


def _version(module: str) -> str:
    try:
        return extras.require(module).__version__
    except (ImportError, AttributeError):
        return "(version unknown)"
