"""XGBoost across Dask workers (``xgboost.dask``): the chunks' events are built on the workers and stay there.

Every block of every chunk (:func:`~mlaas4hep_lab.cluster.blocks.build_block`, placed as the chunk stream
places them) becomes, on its worker, the training and validation rows of one partition: features, labels
and weights (:func:`_parts`). Dask arrays over those partitions feed a ``DaskQuantileDMatrix`` (the
validation one referring to the training one for its bins), and ``xgboost.dask.train`` boosts with one
XGBoost process per worker, as many threads as the worker has. Only small summaries (events and weight
sums per class) and a few hundred probe rows (for the ONNX export's check) reach the client.

The weights are those of the local run (:meth:`Trainer._train_weight
<mlaas4hep_lab.training.loop.Trainer>`): the weight branch, balanced per label over each chunk's split
(``balance_weights``, from the per-block sums) and times the class weights. The boosting runs in segments
of rounds, each continuing the booster of the one before (``xgb_model``): between segments the client
publishes each round's metrics, checkpoints as the local run does (``checkpoint_seconds`` /
``checkpoint_rounds``) and honours a stop request; early stopping carries over from segment to segment
(it replays the rounds already done, as a resumed local run does) and the best round is kept at the end.
The booster is the backend's, so the bundle is written and loaded as for a local XGBoost training.
Memory: the training and validation rows live on the workers for the whole boosting, as ``xgboost.dask``
needs (about 4 bytes per value, plus the quantised matrix).
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.cluster.blocks import BlockJob, BlockSetup, build_block
from mlaas4hep_lab.cluster.stream import RETRIES
from mlaas4hep_lab.errors import ConfigError

__all__ = ["train_on_cluster"]

log = logging.getLogger(__name__)

_FIRST_SEGMENT = 10      # rounds boosted before the client first hears back (then sized by the time a round takes)
_PROBE_ROWS = 512
_SPLITS = (0, 1)         # training and validation rows; the test rows are scored by the trainer afterwards


@dataclass
class _Parts:
    """The training and validation rows of one block (on a worker), and what the weights need of them."""

    rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]   # split -> (X, y, raw weight)
    sums: np.ndarray | None     # float64[2, 2, K]: per split, the sum of |weight| and the count per class


def _parts(setup: BlockSetup, job: BlockJob, n_classes: int) -> _Parts:
    """A block's training and validation rows (the mask and the test rows dropped at once)."""
    block = build_block(setup, job)
    rows, sums = {}, None
    if block.weight is not None and n_classes:
        sums = np.zeros((len(_SPLITS), 2, n_classes), np.float64)
    for code in _SPLITS:
        take = np.flatnonzero(block.split == code)
        y = block.y[take]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)   # one regression target: XGBoost's plain label
        w = None if block.weight is None else block.weight[take]
        rows[code] = (block.X[take], y, w)
        if sums is not None:
            labels = y.astype(np.int64)
            sums[code, 0] = np.bincount(labels, np.abs(w.astype(np.float64)), n_classes)[:n_classes]
            sums[code, 1] = np.bincount(labels, minlength=n_classes)[:n_classes]
    return _Parts(rows, sums)


def _summary(parts: _Parts) -> tuple[list[int], np.ndarray | None]:
    return [len(parts.rows[code][1]) for code in _SPLITS], parts.sums


def _pick(parts: _Parts, code: int, what: int) -> np.ndarray:
    return parts.rows[code][what]


def _head(X: np.ndarray, n: int) -> np.ndarray:
    return np.array(X[:n])


def _weight(parts: _Parts, code: int, means: np.ndarray | None, table: np.ndarray | None,
            classification: bool) -> np.ndarray | None:
    """The training weight of the rows, as ``Trainer._train_weight`` gives it: for a classification, the raw
    weight divided by its class's mean |weight| in the chunk's split (``means``, None: not balanced), times
    the class weight (``table``)."""
    _, y, w = parts.rows[code]
    if not classification:
        return w
    labels = y.astype(np.int64)
    out = w
    if w is not None and means is not None:
        scale = means[labels]
        out = w.astype(np.float32, copy=True)
        np.divide(out, scale, out=out, where=scale > 0, casting="unsafe")
    if table is not None:
        factor = table[labels]
        out = factor if out is None else (out * factor).astype(np.float32)
    return out


def _matrices(backend, stream, validation: bool, balance: bool, class_weights: np.ndarray | None):
    """The training (and validation) ``DaskQuantileDMatrix`` over partitions built on the workers, the
    number of training events and a few training rows (the probe of the ONNX export)."""
    da, delayed = extras.require("dask.array"), extras.require("dask").delayed
    distributed, dxgb = extras.require("distributed"), extras.require("xgboost.dask")
    client, task = stream.client, backend.task
    classification = task.is_classification
    n_classes = task.n_classes if classification else 0
    token = uuid.uuid4().hex[:8]
    # every worker gets a part of every file: a worker holding one class alone cannot rank (AUC) its events
    jobs = [(k, job, worker) for k in range(stream.n_chunks) for job, worker in stream.jobs(k, spread=True)]
    parts = [client.submit(_parts, stream._setup, job, n_classes, key=f"mlaas4hep-xgb-rows-{token}-{i}",
                           workers=[worker], allow_other_workers=True, retries=RETRIES, priority=-i)
             for i, (k, job, worker) in enumerate(jobs)]
    with client.as_current():  # wait() takes the default client: a Gateway one is not (connect)
        distributed.wait(parts)
    for (k, job, _), future in zip(jobs, parts):
        if future.status != "finished":
            err = future.exception() if future.status == "error" else None
            client.cancel(parts)
            raise stream._failure(job, k, err) from err
    summaries = client.gather(client.map(_summary, parts, key=[f"mlaas4hep-xgb-sum-{token}-{i}"
                                                               for i in range(len(parts))]))
    means = _chunk_means(jobs, summaries, stream.n_chunks) if balance else None
    weighted = stream.plan.weight != "" or (classification and class_weights is not None)
    width = backend.n_features

    def array(futures: list, sizes: list[int], tail: tuple, dtype) -> Any:
        return da.concatenate([da.from_delayed(delayed(f), shape=(n, *tail), dtype=dtype)
                               for f, n in zip(futures, sizes)])

    out, n_train, probe = [], 0, None
    for code in _SPLITS if validation else _SPLITS[:1]:
        chosen = [i for i, (sizes, _) in enumerate(summaries) if sizes[code]]
        sizes = [summaries[i][0][code] for i in chosen]
        if code == 0:
            n_train = sum(sizes)
            if not n_train:
                raise ConfigError("XGBoost: the training split is empty (no events in any chunk)", "nevts")
            probe = client.submit(_head, client.submit(_pick, parts[chosen[0]], 0, 0), _PROBE_ROWS)
        if not chosen:
            continue
        X = array([client.submit(_pick, parts[i], code, 0) for i in chosen], sizes, (width,), np.float32)
        y_tail = () if task.kind != "regression" or len(task.targets) == 1 else (len(task.targets),)
        y = array([client.submit(_pick, parts[i], code, 1) for i in chosen], sizes, y_tail, np.float32)
        w = None
        if weighted:
            w = array([client.submit(_weight, parts[i], code, None if means is None else means[jobs[i][0], code],
                                     class_weights if classification else None, classification) for i in chosen],
                      sizes, (), np.float32)
        kwargs = {"max_bin": int(backend.params.get("max_bin", 256))}
        if backend._missing is not None:
            kwargs["missing"] = backend._missing
        out.append(dxgb.DaskQuantileDMatrix(client, X, y, weight=w, ref=out[0] if out else None, **kwargs))
    del parts   # the rows are kept by the partitions' own tasks; the blocks go
    return out[0], (out[1] if len(out) > 1 else None), n_train, probe.result()


def _chunk_means(jobs: list, summaries: list, n_chunks: int) -> np.ndarray | None:
    """float64[chunks, 2, K]: the mean |weight| of each class in each chunk's training and validation rows."""
    sums = [s for _, s in summaries]
    if not sums or sums[0] is None:
        return None
    total = np.zeros((n_chunks, *sums[0].shape), np.float64)
    for (k, _, _), s in zip(jobs, sums):
        total[k] += s
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total[:, :, 0] / total[:, :, 1]
    return np.where(np.isfinite(means), means, 0.0)


class _FirstRounds:
    """The booster of a segment as it was after its first ``n`` rounds, sliced only when used (a
    checkpoint written while the client replays a segment's rounds saves the rounds it reports)."""

    def __init__(self, booster: Any, n: int):
        self._booster, self._n, self._sliced = booster, n, None

    def num_boosted_rounds(self) -> int:
        return self._n

    def __getattr__(self, name: str) -> Any:
        if self._sliced is None:
            self._sliced = self._booster[: self._n]
        return getattr(self._sliced, name)


def _next_segment(left: int, every_rounds: int, every_seconds: float, per_round: float | None) -> int:
    if every_rounds:
        return min(left, every_rounds)
    if per_round is None:
        return min(left, _FIRST_SEGMENT)
    if not every_seconds:
        return left
    return max(1, min(left, int(every_seconds / max(per_round, 1e-6))))


def train_on_cluster(backend, stream, validation: bool = True, *,
                     on_round: Callable[[dict[str, float]], bool | None] | None = None,
                     previous_rounds: list[dict[str, float]] | None = None,
                     checkpoint_every: tuple[int, float] = (0, 60.0), balance: bool = True,
                     class_weights: np.ndarray | None = None,
                     on_events: Callable[[int], None] | None = None) -> dict[str, float]:
    """Boost ``backend`` (an :class:`~mlaas4hep_lab.backends.xgboost.XGBoostBackend`) on the cluster of
    ``stream`` (a :class:`~mlaas4hep_lab.cluster.stream.DaskChunkStream`); see the module's docstring.

    Arguments as :meth:`XGBoostBackend.fit_stream <mlaas4hep_lab.backends.xgboost.XGBoostBackend.fit_stream>`
    (``on_round``, ``previous_rounds``), plus ``validation`` (evaluate on the validation split),
    ``checkpoint_every`` (rounds, seconds: how the rounds are cut into segments), ``balance`` and
    ``class_weights`` (the weights, as the trainer's) and ``on_events`` (told the training events). Returns
    the metrics ``fit_stream`` returns."""

    # xgboost.dask asks for Dask's default client even when given one; a Gateway client is not (connect)
    with stream.client.as_current():
        return _train_on_cluster(backend, stream, validation, on_round, previous_rounds, checkpoint_every, balance,
                                 class_weights, on_events)


def _train_on_cluster(backend, stream, validation, on_round, previous_rounds, checkpoint_every, balance,
                      class_weights, on_events) -> dict[str, float]:
    from mlaas4hep_lab.backends.xgboost import _early_stopping_class, _round_callback

    dxgb = extras.require("xgboost.dask")
    if previous_rounds is not None and backend.booster is None:
        raise RuntimeError("no XGBoost model to continue: load() the checkpoint first")
    if backend._opt("external_memory", False):
        warnings.warn("external_memory does not apply on a Dask cluster: each worker keeps its partitions in "
                      "memory (more workers spread them)", UserWarning, stacklevel=3)
    dtrain, dval, n_train, probe = _matrices(backend, stream, validation, balance, class_weights)
    backend._keep_probe(probe)
    if on_events is not None:
        on_events(n_train)
    evals = [(dtrain, "train")] if backend._opt("eval_train", True) else []
    if dval is not None:
        evals.append((dval, "validation"))
    # nthread: each worker's own thread count (xgboost.dask's default when the parameters do not set one)
    params = {k: v for k, v in backend.params.items() if k not in ("nthread", "n_jobs")}
    backend.history = list(previous_rounds or [])
    booster = backend.booster if previous_rounds is not None else None
    start = done = booster.num_boosted_rounds() if booster is not None else 0
    interrupted = [False]
    loss_metric = backend._loss_metric()
    replay = _round_callback(on_round, backend.history, backend._keep_booster,
                             lambda: interrupted.__setitem__(0, True), start=start, loss_metric=loss_metric)
    stopping = _stopping(backend, evals, loss_metric, previous_rounds)
    every_rounds, every_seconds = checkpoint_every
    per_round, segments = None, 0
    while done < backend.n_estimators and not interrupted[0]:
        n = _next_segment(backend.n_estimators - done, every_rounds, every_seconds, per_round)
        callbacks = []
        if stopping is not None:
            previous = [r.get(f"validation_{stopping}") for r in backend.history]
            callbacks.append(_early_stopping_class()(previous, lambda: True, rounds=backend.early_stopping_rounds,
                                                     metric_name=stopping, data_name="validation", save_best=True))
        t0 = time.monotonic()
        result = dxgb.train(stream.client, params, dtrain, num_boost_round=n, evals=evals, callbacks=callbacks,
                            verbose_eval=False, xgb_model=booster)
        per_round, segments = (time.monotonic() - t0) / n, segments + 1
        booster, evals_log = result["booster"], result["history"]
        got = booster.num_boosted_rounds() - done
        for i in range(got):   # the rounds' metrics, in order, as the local run publishes them
            rounds = {name: {m: values[: i + 1] for m, values in by.items()} for name, by in evals_log.items()}
            replay.after_iteration(booster if i == got - 1 else _FirstRounds(booster, done + i + 1),
                                   done - start + i, rounds)
            if interrupted[0]:
                booster = booster[: done + i + 1] if i < got - 1 else booster
                break
        done = booster.num_boosted_rounds()
        if got < n:   # early stopping ended it
            break
    if stopping is not None and not interrupted[0] and booster.attr("best_iteration") is not None:
        best, score = int(booster.attr("best_iteration")), booster.attr("best_score")
        booster = booster[: best + 1]
        booster.set_attr(best_iteration=str(best), best_score=score)
    backend.booster = booster
    best = booster.attr("best_iteration")
    backend.best_iteration = int(best) if best is not None else None
    backend.stream_stats = {"train": {"events": n_train, "segments": segments}}
    metrics = dict(backend.history[-1]) if backend.history else {}
    metrics.update({"rounds": float(booster.num_boosted_rounds()), "n_events": float(n_train)})
    if backend.best_iteration is not None:
        metrics["best_iteration"] = float(backend.best_iteration)
    return metrics


def _stopping(backend, evals: list, loss_metric: str, previous_rounds) -> str | None:
    """The metric early stopping watches, when it applies (as the local run decides it)."""
    if not backend.early_stopping_rounds:
        return None
    if not any(name == "validation" for _, name in evals):
        warnings.warn("early_stopping_rounds is set but there is no validation stream: training runs all "
                      "n_estimators rounds", UserWarning, stacklevel=4)
        return None
    metrics = backend.params["eval_metric"]
    metric = loss_metric if loss_metric in metrics else metrics[-1]
    previous = [r.get(f"validation_{metric}") for r in previous_rounds or []]
    if not all(isinstance(v, (int, float)) for v in previous):
        # the segments replay the scores of every round before them: without those there is nothing to go on
        warnings.warn("the checkpoint's rounds have no validation scores: no early stopping in this resumed run "
                      "on the cluster", UserWarning, stacklevel=4)
        return None
    return metric
