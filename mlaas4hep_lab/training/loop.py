"""The chunked trainer: feeds the user's model chunk by chunk, epoch by epoch, through its backend.

Two schedules (params ``training``):

* ``per_chunk`` (the original): one pass over the stream, ``epochs`` epochs on each chunk;
* ``epochs``: ``epochs`` full passes over the stream, one epoch on each chunk per pass.

The chunks' training events go to the backend's ``fit_parts`` (Keras: one ``tf.data`` pipeline, one
``model.fit`` per chunk, or per pass when model.py brings callbacks of its own; PyTorch and scikit-learn: ``fit_chunk`` on each chunk). After
each chunk's last batch the model is validated on the chunk's validation events, a metric event is
published and a checkpoint is written; ``resume=True`` continues after the last completed chunk. Backends that
train over the whole stream (XGBoost) or on the accumulated training split (scikit-learn estimators
without ``partial_fit``/``warm_start``) get the stream in those forms instead; XGBoost is checkpointed
every minute of boosting (model.py ``fit_options``: ``checkpoint_seconds``, ``checkpoint_rounds``) and
resumes from the last boosting round saved. At the end the test split is scored in one more pass.

A resumed run continues the history of the run it resumes: the checkpoint's metric events are taken
over, and the ``start`` event says how many (``restored``), so that ``metrics.jsonl`` keeps one history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.backends.base import Backend, TrainPart, get_backend
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.data.stream import SPLITS, Chunk, ChunkStream
from mlaas4hep_lab.errors import (
    ConfigError,
    MLaaSError,
    ModelFileError,
    StoppedBeforeTraining,
    TrainingDiverged,
)
from mlaas4hep_lab.pipeline import Inputs
from mlaas4hep_lab.task import Task, run_task
from mlaas4hep_lab.training import task_metrics
from mlaas4hep_lab.training.checkpoint import Checkpoint
from mlaas4hep_lab.training.events import EventBus, History, MetricEvent
from mlaas4hep_lab.training.model_file import UserModel, input_width_error

__all__ = ["Trainer", "TrainResult", "StopTraining", "balanced_weights"]

log = logging.getLogger(__name__)
_TRAIN_METRIC_SAMPLE = 5_000    # training AUC, when the framework does not report it, on this many events
# backends whose untrained model already scores a batch: model.py's input width is checked before training
_PROBED_BACKENDS = ("keras", "torch")
# XGBoost checkpoints: after the round that ends this long after the previous checkpoint (so a kill loses
# at most about a minute of boosting, at one model save a minute), and every N rounds when set
_CHECKPOINT_SECONDS = 60.0
_CHECKPOINT_ROUNDS = 0


class StopTraining(Exception):
    """Raised inside the loop when a stop was requested (the Stop button, early stopping)."""


@dataclass
class TrainResult:
    backend: Backend
    history: list[dict[str, Any]]
    test: dict[str, np.ndarray]          # y, score, weight (or absent), ids (prefixed "id:")
    metrics: dict[str, Any]
    stopped: str = ""                    # "", "early_stopping" or "requested"
    feature_names: list[str] = field(default_factory=list)


class Trainer:
    """Train ``user_model`` on the inputs' stream.

    Args:
        inputs, specs: the validated inputs and their specs (see :mod:`mlaas4hep_lab.pipeline`).
        user_model: the loaded model.py (:func:`~mlaas4hep_lab.training.model_file.load_model_file`).
        fout: output folder (checkpoints, ``metrics.jsonl``).
        bus: where metric events go (a progress bar, a log, widgets subscribe to it).
        resume: continue from the checkpoint in ``fout``; a changed configuration is an error.
        stop: a threading.Event; when set, training stops after the current mini-batch (Keras, torch)
            or chunk / boosting round (scikit-learn, XGBoost).
        stream: the chunk stream to train on (default: a ``ChunkStream`` of the inputs); closed at the end.

    Example::

        result = Trainer(inputs, specs, load_model_file("model.py", specs.n_features), "out").run()
        result.metrics["auc"]
    """

    def __init__(self, inputs: Inputs, specs: Specs, user_model: UserModel, fout: str | Path,
                 bus: EventBus | None = None, resume: bool = False, stop: threading.Event | None = None,
                 checkpoints: bool = True, stream: ChunkStream | None = None):
        self.inputs, self.specs, self.user_model = inputs, specs, user_model
        self.params = inputs.params
        self.fout = Path(fout)
        self.bus = bus or EventBus()
        self.history = History()
        self.bus.subscribe(self.history)
        self.resume, self.stop = resume, stop or threading.Event()
        self.checkpoint = Checkpoint(self.fout) if checkpoints else None
        # another stream of the same chunks (built on a Dask cluster: cluster.stream.DaskChunkStream)
        self.stream = stream if stream is not None else \
            ChunkStream(inputs.files, inputs.labels, self.params, specs, inputs.preproc)
        self.n_features = specs.n_features
        self.task = run_task(self.params, inputs.labels, specs)
        self.layout = self.stream.layout   # the objects layout, or None
        self._class_weights = class_weight_table(self.task, self.params, inputs, specs)
        options = dict(user_model.options, seed=self.params.seed, batch_size=self.params.batch_size,
                       n_chunks=self.stream.n_chunks, model_source=user_model.source,
                       model_path=str(user_model.path), task=self.task, layout=self.layout)
        self.options = options
        self.backend_cls = get_backend(user_model.backend)
        if self.layout is not None and not self.backend_cls.objects:
            raise ConfigError(f"the objects layout feeds each collection as a set of objects to a network (Keras or "
                              f"PyTorch); the {user_model.backend} backend takes one flat vector per event: use "
                              '"layout": "flat"', "layout")
        self.backend: Backend = self.backend_cls(user_model.model, self.n_features, options)
        self.backend.stop_event = self.stop
        self._check_input_width()
        self.fingerprint = self._fingerprint()
        self.events_seen = 0
        self._resumed = False   # a checkpoint was loaded: training continues it
        self._best = (float("inf"), 0)   # (best val_loss, validations since)
        self._t0 = time.perf_counter()

    def _check_input_width(self) -> None:
        """A model built for another number of inputs (``keras.Input(shape=(25,))`` where the data have 30
        features) fails here, on a batch of zeros, with model.py's line, before any data are read."""
        if self.backend.name not in _PROBED_BACKENDS:
            return
        try:
            self.backend.predict(np.zeros((2, self.n_features), dtype=np.float32))
        except ConfigError as err:  # the outputs do not fit the task (Task.scores)
            said = str(err).removeprefix("key 'model': ")
            raise ModelFileError(f"{self.user_model.path}: {said}", str(self.user_model.path)) from None
        except MLaaSError:
            raise
        except (TypeError, KeyError, IndexError, AttributeError) as err:
            flat_model = self.layout is not None and "dict" in str(err)   # a flat model given named inputs
            if not flat_model and (self.layout is not None or not _takes_dict(err)):
                raise input_width_error(self.user_model, self.n_features, err) from err
            path = self.user_model.path
            if flat_model:
                raise ModelFileError(
                    f"{path}: {type(err).__name__}: {err}: with \"layout\": \"objects\" the model gets a dict of "
                    f"named inputs {sorted(self.layout.shapes())} (model(inputs, n_outputs) receives their "
                    "shapes), not one tensor; write it for that layout or use \"layout\": \"flat\"", str(path)) from err
            raise ModelFileError(f"{path}: {type(err).__name__}: {err}: this model takes named inputs (the objects "
                                 'layout); set params "layout": "objects"', str(path)) from err
        except Exception as err:  # whatever the framework raises for a shape mismatch
            raise input_width_error(self.user_model, self.n_features, err) from err

    # -- configuration identity (resume refuses a changed one) --------------------------------------
    def _fingerprint(self) -> str:
        p = self.params
        payload = {"specs": self.specs.fingerprint or json.dumps(self.specs.features),
                   "files": [str(f) for f in self.inputs.files], "labels": self.inputs.labels,
                   "model": self.user_model.digest, "backend": self.user_model.backend,
                   **{k: getattr(p, k) for k in ("epochs", "batch_size", "training", "chunk_size", "seed",
                                                 "split", "shuffle", "nevts", "weight")}, **self._task_config()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _restore(self) -> tuple[int, int]:
        """(epoch, next chunk) to start from; loads the checkpoint's model when resuming."""
        if not self.resume or self.checkpoint is None:
            if self.checkpoint is not None:
                self.checkpoint.clear()
            return 0, 0
        found = self.checkpoint.load()
        if found is None:
            log.warning("no checkpoint in %s: starting from the beginning", self.fout)
            return 0, 0
        state, model_dir = found
        if state.get("fingerprint") != self.fingerprint:
            changed = [k for k, v in state.get("config", {}).items() if self._config().get(k) != v]
            raise ConfigError(
                f"cannot resume from {self.checkpoint.path}: the configuration changed since it was written "
                f"({', '.join(changed) or 'files, specs or model.py'}); rerun without --resume to start over, "
                "or restore the original settings", key="resume")
        self.backend = self.backend_cls.load(model_dir, self.n_features, self.options)
        self.backend.stop_event = self.stop
        self._resumed = True
        self.events_seen = int(state.get("events_seen", 0))
        self._best = tuple(state.get("best", (float("inf"), 0)))
        for event in state.get("history", []):
            self.history.events.append(MetricEvent(**event))
        if state.get("done"):
            return -1, -1
        return int(state["epoch"]), int(state["next_chunk"])

    def _config(self) -> dict[str, Any]:
        p = self.params
        return {"model": self.user_model.digest, "backend": self.user_model.backend,
                "files": [str(f) for f in self.inputs.files],
                **{k: getattr(p, k) for k in ("epochs", "batch_size", "training", "chunk_size", "seed", "split",
                                               "shuffle", "nevts", "weight")}, **self._task_config()}

    def _task_config(self) -> dict[str, Any]:
        """The task's settings, where they differ from a binary run's (so older checkpoints still match)."""
        p = self.params
        if p.task == "binary" and p.class_weights is None:
            return {}
        return {"task": p.task, "label": p.label, "target": p.target, "classes": p.classes,
                "class_weights": p.class_weights}

    def _save(self, epoch: int, next_chunk: int, done: bool = False, **extra: Any) -> None:
        if self.checkpoint is None:
            return
        if self.backend.mode == "stream" and getattr(self.backend, "booster", True) is None:
            return  # stopped before the first boosting round: no model yet, and --resume starts afresh
        self.checkpoint.save(self.backend, {
            "fingerprint": self.fingerprint, "config": self._config(), "epoch": epoch, "next_chunk": next_chunk,
            "done": done, "events_seen": self.events_seen, "best": list(self._best),
            "history": [e.to_dict() for e in self.history.events], **extra,
        })

    # -- the run ----------------------------------------------------------------------------------
    def _passes(self) -> tuple[int, int]:
        """(passes over the stream, epochs on each chunk)."""
        epochs = max(1, self.params.epochs)
        return (1, epochs) if self.params.training == "per_chunk" else (epochs, 1)

    def _expected_events(self) -> int:
        passes, per_chunk = self._passes()
        train_fraction = self.params.split[0]
        return int(self.stream.n_events * train_fraction * passes * (per_chunk if self.backend.mode == "batches" else 1))

    def _event(self, kind: str, **kw) -> MetricEvent:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        event = MetricEvent(kind, n_chunks=self.stream.n_chunks, events_seen=self.events_seen,
                            events_total=self._expected_events(), events_per_second=self.events_seen / elapsed, **kw)
        self.bus.publish(event)
        return event

    def run(self) -> TrainResult:
        start_epoch, start_chunk = self._restore()
        what = (f"{self.user_model.backend} backend ({self.backend.mode}), {self.n_features} features, "
                f"{self.stream.n_chunks} chunks")
        if self._resumed or start_epoch < 0:
            where = ("training was complete" if start_epoch < 0 else
                     self._resume_point() if self.backend.mode == "stream" else
                     f"epoch {start_epoch}, chunk {start_chunk}")
            what += f"; resumed from {self.checkpoint.path if self.checkpoint else 'a checkpoint'} ({where})"
        self._event("start", message=what, restored=len(self.history.events))
        stopped = ""
        try:
            if start_epoch >= 0:
                mode = self.backend.mode
                if mode == "batches":
                    self._run_batches(start_epoch, start_chunk)
                elif mode == "accumulate":
                    self._run_accumulate()
                elif mode == "stream":
                    self._run_stream(resumed=self._resumed)
                else:
                    raise ConfigError(f"backend {self.backend.name!r} has unknown mode {mode!r}")
                self._save(0, 0, done=True)
        except StopTraining as why:
            stopped = str(why)
            self._save(*self._position, done=stopped == "early_stopping")
        if stopped and not self._trained():
            # scikit-learn and XGBoost have nothing to predict with before their first events
            self._event("end", metrics={}, message="stopped before anything was trained")
            self.stream.close()
            raise StoppedBeforeTraining("training was stopped before its first chunk (XGBoost: its first boosting "
                                        "round) was trained: there is no model to evaluate or save")
        test = self._score_test()
        metrics = task_metrics.final_metrics(self.task, test["y"], test["score"], test.get("weight"),
                                             self.params.split[2] or None)
        metrics["backend"] = self.user_model.backend
        metrics["events_seen"] = self.events_seen
        self._event("end", metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                    message=stopped or "done")
        self.stream.close()
        return TrainResult(self.backend, [e.to_dict() for e in self.history.events], test, metrics, stopped,
                           self.stream.feature_names)

    _position = (0, 0)

    def _trained(self) -> bool:
        """The model can be evaluated: resumed from a checkpoint, or fitted on some events (a network,
        however few batches it trained, always can; scikit-learn and XGBoost only once they saw events)."""
        return self._resumed or self.backend.trained

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise StopTraining("requested")

    def _run_batches(self, start_epoch: int, start_chunk: int) -> None:
        """Every chunk's training events through the backend's ``fit_parts`` (Keras: one ``tf.data``
        pipeline and one ``model.fit`` per pass; the others: ``fit_chunk`` on each); after each chunk's
        last batch (``on_part``) its validation, metric event, checkpoint and the early-stopping check."""
        passes, per_chunk = self._passes()
        n_chunks = self.stream.n_chunks
        last = n_chunks - 1
        if start_chunk > last:  # resumed after the last chunk of a pass: that pass is complete
            self._end_of_pass(start_epoch)
            start_epoch, start_chunk = start_epoch + 1, 0
        self._position = (start_epoch, start_chunk)
        if start_epoch >= passes or not n_chunks:
            return
        train_code = SPLITS.index("train")

        def parts() -> Iterator[TrainPart]:
            # Keras runs this in a tf.data thread, a few batches ahead of the training
            for epoch, chunk in self.stream.iterate_passes(passes, start_epoch, start_chunk):
                if self.stop.is_set():
                    return
                rows = np.flatnonzero(chunk.split == train_code)
                weight = chunk.weight
                if weight is not None and self.params.balance_weights:
                    weight = np.zeros(len(chunk), np.float32)
                    weight[rows] = self._train_weight(chunk.y[rows], chunk.weight[rows])
                yield TrainPart(chunk.X, chunk.y, weight, rows, epochs=per_chunk, group=epoch, tag=(epoch, chunk))

        def on_part(part: TrainPart, fit_metrics: dict[str, float]) -> None:
            epoch, chunk = part.tag
            self.events_seen += part.size * per_chunk
            where = f"epoch {epoch + 1}, chunk {chunk.index + 1}"
            train_metrics = {} if "auc" in fit_metrics else self._train_metrics(chunk, part.rows, where)
            metrics = dict(fit_metrics, **train_metrics, **self._validate(chunk.subset("validation"), where))
            self._position = (epoch, chunk.index + 1)
            self._event("chunk", epoch=epoch, chunk=chunk.index, metrics=metrics)
            self._save(epoch, chunk.index + 1)
            self._early_stopping(metrics)
            if chunk.index == last:
                self._end_of_pass(epoch)

        self.backend.fit_parts(parts(), batch_size=self.params.batch_size, on_part=on_part)
        done = self._position == (passes - 1, n_chunks)
        if self.stop.is_set() and not done:
            # a stop during a chunk's batches: that chunk is redone on --resume
            epoch, nxt = self._position
            if nxt > last:
                self._position = (epoch + 1, 0)
            raise StopTraining("requested")
        if not done:  # the model's own callbacks ended the training (keras.callbacks.EarlyStopping ...)
            raise StopTraining("early_stopping")

    def _end_of_pass(self, epoch: int) -> None:
        self._event("epoch", epoch=epoch, chunk=self.stream.n_chunks - 1,
                    metrics=self.history.events[-1].metrics if self.history.events else {})

    def _run_accumulate(self) -> None:
        check = getattr(self.backend, "check_accumulate", None)
        if check is not None:
            check(int(self.stream.n_events * self.params.split[0] * 1.1), self.n_features)
        parts = [self._check_stop() or c.subset("train") for c in self.stream.iterate(0)]
        X = np.concatenate([p.X for p in parts]) if parts else np.zeros((0, self.n_features), np.float32)
        y = np.concatenate([p.y for p in parts]) if parts else np.zeros(0, np.float32)
        w = np.concatenate([p.weight for p in parts]) if parts and parts[0].weight is not None else None
        del parts
        fit_metrics = self.backend.fit_all(X, y, self._train_weight(y, w))
        self.events_seen += len(y)
        del X, y, w
        metrics = dict(fit_metrics, **self._validate_pass())
        self._event("epoch", epoch=0, chunk=self.stream.n_chunks - 1, metrics=metrics)

    def _source(self, split: str):
        def factory() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
            seen = 0
            for chunk in self.stream.iterate(0):
                self._check_stop()
                part = chunk.subset(split)
                if len(part):
                    if split == "train":
                        # each boosting round sees every training event once, and the matrix is built in
                        # several passes: the count is one pass's (the same again when resumed)
                        seen += len(part)
                        self.events_seen = max(self.events_seen, seen)
                    yield part.X, part.y, self._train_weight(part.y, part.weight)
        return factory

    def _resume_point(self) -> str:
        rounds = getattr(getattr(self.backend, "booster", None), "num_boosted_rounds", None)
        return f"{rounds()} boosting rounds done" if callable(rounds) else "the saved model"

    def _checkpoint_every(self) -> tuple[int, float]:
        """(rounds, seconds) between XGBoost checkpoints: model.py's ``fit_options`` ``checkpoint_rounds``
        (0: none by count) and ``checkpoint_seconds`` (default 60; 0: none by time)."""
        fit_options = self.options.get("fit_options") or {}
        try:
            rounds = int(fit_options.get("checkpoint_rounds", _CHECKPOINT_ROUNDS) or 0)
            seconds = float(fit_options.get("checkpoint_seconds", _CHECKPOINT_SECONDS) or 0)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"checkpoint_rounds and checkpoint_seconds must be numbers: {err}",
                              key="fit_options", source=str(self.user_model.path)) from None
        return max(rounds, 0), max(seconds, 0.0)

    def _run_stream(self, resumed: bool = False) -> None:
        passes, _ = self._passes()
        every_rounds, every_seconds = self._checkpoint_every()
        done_before = [e.metrics for e in self.history.events if e.kind == "round"] if resumed else None
        last = {"round": len(done_before or []), "time": time.monotonic()}

        def on_round(metrics: dict[str, float]) -> bool:
            n = int(metrics.get("round", last["round"] + 1))   # counts on from the resumed rounds
            self._event("round", epoch=n, metrics=dict(metrics))
            now = time.monotonic()
            if ((every_rounds and n - last["round"] >= every_rounds)
                    or (every_seconds and now - last["time"] >= every_seconds)):
                self._save(0, 0, rounds=n)
                last.update(round=n, time=time.monotonic())
            return self.stop.is_set()

        has_val = self.params.split[1] > 0
        extra = {"previous_rounds": done_before} if resumed else {}
        fit_cluster = getattr(self.backend, "fit_cluster", None)
        if fit_cluster is not None and getattr(self.stream, "client", None) is not None:
            # the data stay on the Dask workers (xgboost.dask); the weights as _train_weight gives them
            fit_metrics = fit_cluster(self.stream, has_val, on_round=on_round, checkpoint_every=(every_rounds,
                                      every_seconds), balance=self.params.balance_weights,
                                      class_weights=self._class_weights, on_events=self._saw, **extra)
        else:
            fit_metrics = self.backend.fit_stream(self._source("train"), self._source("validation") if has_val
                                                  else None, epochs=passes, batch_size=self.params.batch_size,
                                                  on_round=on_round, **extra)
        self._check_stop()
        self._event("epoch", epoch=0, metrics=dict(fit_metrics or {}))

    def _saw(self, n: int) -> None:
        """One pass's training events (a boosting round sees each once): the count of a resumed run too."""
        self.events_seen = max(self.events_seen, int(n))

    def _train_weight(self, y: np.ndarray, weight: np.ndarray | None) -> np.ndarray | None:
        if not self.task.is_classification:
            return weight  # per-label balancing means nothing for a continuous truth
        out = balanced_weights(y, weight, self.params.balance_weights)
        if self._class_weights is None:
            return out
        factor = self._class_weights[y.astype(np.int64)]
        return factor if out is None else (out * factor).astype(np.float32)

    # -- metrics ----------------------------------------------------------------------------------
    def _predict(self, X: np.ndarray, where: str) -> np.ndarray:
        """The model's output on X during training; NaN or inf there means the training diverged."""
        score = np.asarray(self.backend.predict(X))
        if np.issubdtype(score.dtype, np.floating) and not np.isfinite(score).all():
            bad = int(np.count_nonzero(~np.isfinite(score)))
            raise TrainingDiverged(
                f"training diverged at {where}: the model's output is NaN or infinite for {bad} of {len(score)} "
                "events; lower the learning rate (model.py's optimizer) or check the inputs' normalisation "
                "(params \"normalization\"), and train again")
        return score

    def _train_metrics(self, chunk: Chunk, rows: np.ndarray, where: str) -> dict[str, float]:
        """Training AUC on the first (shuffled) training events of the chunk."""
        if not len(rows) or "auc" not in self.params.metrics:
            return {}
        part = chunk.take(rows[:_TRAIN_METRIC_SAMPLE])
        return task_metrics.train_auc(self.task, part.y, self._predict(part.X, where), part.weight)

    def _validate(self, val: Chunk, where: str) -> dict[str, float]:
        if not len(val):
            return {}
        return self._scores_metrics(val.y, self._predict(val.X, where), val.weight)

    def _scores_metrics(self, y, score, weight) -> dict[str, float]:
        return task_metrics.validation_metrics(self.task, y, score, weight, self.params.metrics)

    def _validate_pass(self) -> dict[str, float]:
        ys, scores, weights = [], [], []
        for X, y, w in self._source("validation")():
            ys.append(y)
            scores.append(self._predict(X, "the end of the pass (validation split)"))
            weights.append(w)
        if not ys:
            return {}
        w = np.concatenate(weights) if weights[0] is not None else None
        return self._scores_metrics(np.concatenate(ys), np.concatenate(scores), w)

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        patience = self.params.early_stopping
        loss = metrics.get("val_loss")
        if not patience or loss is None or not np.isfinite(loss):
            return
        best, since = self._best
        self._best = (loss, 0) if loss < best else (best, since + 1)
        if self._best[1] >= patience:
            raise StopTraining("early_stopping")

    def _score_test(self) -> dict[str, np.ndarray]:
        ys, scores, weights, ids, files, entries = [], [], [], {n: [] for n in self.stream.plan.ids}, [], []
        for chunk in self.stream.iterate(0):
            test = chunk.subset("test")
            if not len(test):
                continue
            ys.append(test.y)
            scores.append(self.backend.predict(test.X))
            files.append(test.file_index)
            entries.append(test.entry)
            if test.weight is not None:
                weights.append(test.weight)
            for name in ids:
                ids[name].append(test.ids[name])
        def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        out = {"y": np.concatenate(ys) if ys else self.task.empty_y(),
               "score": np.concatenate(scores) if scores else self.task.scores(np.zeros((0, self.task.n_outputs)), 0),
               "file_index": cat(files, np.int16), "entry": cat(entries, np.int64)}
        if weights:
            out["weight"] = cat(weights, np.float32)
        for name, parts in ids.items():
            out[f"id:{name}"] = cat(parts, np.int64)
        return out


def balanced_weights(y: np.ndarray, weight: np.ndarray | None, balance: bool = True) -> np.ndarray | None:
    """Physics weights rescaled per label to a mean of 1 (params ``balance_weights``): the Higgs
    challenge's signal weights are ~1000x smaller than background ones, and a loss weighted by them
    would learn to call everything background. Evaluation (AUC, AMS) keeps the raw weights."""
    if weight is None or not balance:
        return weight
    out = weight.astype(np.float32, copy=True)
    for label in np.unique(y):
        sel = y == label
        mean = float(np.mean(np.abs(out[sel])))
        if mean > 0:
            out[sel] /= mean
    return out


def class_weight_table(task: Task, params, inputs: Inputs, specs: Specs) -> np.ndarray | None:
    """float32[K]: the weight of each class (params ``class_weights``), or None. ``"balanced"`` gives class
    ``c`` the weight ``N / (K * N_c)`` over the training split's events after the cuts (counted in the
    specs pass), as scikit-learn's ``class_weight="balanced"`` does."""
    choice = params.class_weights
    if choice is None or not task.is_classification:
        return None
    k = task.n_classes
    if choice != "balanced":
        if len(choice) != k:
            raise ConfigError(f"{len(choice)} class weights for {k} classes ({', '.join(task.classes)})",
                              "class_weights")
        return np.asarray(choice, np.float32)
    counts = np.zeros(k, np.float64)
    if params.label:
        for value, per_split in (specs.truth.get("classes") or {}).items():
            if value != "nonfinite" and 0 <= float(value) < k:
                counts[int(float(value))] += per_split[0]
    else:
        per_file = (specs.split_events or {}).get("files", {})
        for path, label in zip(inputs.files, inputs.labels):
            counts[int(label)] += (per_file.get(path) or [0])[0]
    if not counts.all():
        raise ConfigError('"balanced" class weights need training events of every class; the training split '
                          f"holds {dict(zip(task.classes, counts.astype(int).tolist()))}", "class_weights")
    return (counts.sum() / (k * counts)).astype(np.float32)


def objects_layout(params, specs: Specs):
    """The objects layout of a run (params ``layout``), or None for the flat layout."""
    if getattr(params, "layout", "flat") != "objects":
        return None
    from mlaas4hep_lab.data.objects import ObjectsLayout

    return ObjectsLayout.from_specs(specs, params.normalization, params.missing_values, params.collections)


def _takes_dict(err: BaseException) -> bool:
    """Whether a model failed because it indexes its input by name (a model written for the objects layout)."""
    text = str(err)
    return isinstance(err, (KeyError, IndexError)) and ("'flat'" in text or "only integers" in text)
