"""The training report physicists expect from a classifier (TMVA is the reference).

Four parts, each a plot (PNG + PDF in the run's ``plots`` folder) and numbers in ``metrics.json``:

* **variable ranking** (``variable_ranking``; ``ranking``): permutation importance on the test split for
  every backend -- how much the test AUC drops when one input column is shuffled (the model is not
  retrained) -- beside the trees' own importance (XGBoost gain, scikit-learn ``feature_importances_``)
  where the model has one;
* **overtraining check** (``overtraining``; ``ks_pvalue_signal``, ``ks_pvalue_background``): train and
  test score distributions of signal and background overlaid as TMVA draws them, with the two-sample
  Kolmogorov-Smirnov p-values (train vs test);
* **input correlations** (``correlation_signal``, ``correlation_background``): the linear correlation
  matrices of the test split's inputs per class; the plot shows the top-ranked features, the full matrix
  is written beside it as CSV;
* **learning curve** (``learning_curve``): training and validation loss and AUC against training events
  seen (boosting rounds for XGBoost), from the metric events the trainer recorded.

Everything is computed from a :class:`ReportSample` (at most ``MAX_EVENTS`` test and train events, read
from the first chunks of the stream, which mix every file in proportion) that is saved in the run folder
as ``report_sample.npz``, so ``mlaas4hep report OUT`` rebuilds the report from the bundle's model without
reading the ROOT files again. Plots need matplotlib (the ``plots`` extra); without it the numbers are
still computed. Choices (all documented in the README's "The report"):

* importances are drops of the *unweighted* test AUC, averaged over ``repeats`` shuffles; one shuffled
  copy of the whole test matrix per feature, several features per ``predict`` call; the cost is bounded
  by ``max_rows`` predicted rows (fewer repeats, then fewer events when a model has many features);
* KS tests and score histograms are unweighted (a p-value of a weighted sample is not a p-value);
* correlations use the physics weights when they are all non-negative (the events as they are in
  nature), else none; a constant input (e.g. an always padded slot) has no correlation (NaN, grey).

Example::

    from mlaas4hep_lab.training import report
    metrics = report.rebuild_report("out")          # what `mlaas4hep report out` runs
    metrics["ranking"][0], metrics["ks_pvalue_signal"]
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import InputFileError
from mlaas4hep_lab.training.evaluation import auc

__all__ = [
    "REPORT_PLOTS",
    "SAMPLE_FILE",
    "ReportSample",
    "collect_sample",
    "permutation_importance",
    "native_importance",
    "ks_2samp",
    "correlation",
    "learning_curve",
    "build_report",
    "training_report",
    "rebuild_report",
    "report_pngs",
    "report_files",
]

log = logging.getLogger(__name__)

REPORT_PLOTS = ("variable_ranking", "overtraining", "correlation_signal", "correlation_background",
                "learning_curve")
SAMPLE_FILE = "report_sample.npz"
MAX_EVENTS = 50_000              # test (and train) events the report uses
REPEATS = 3                      # shuffles per feature
MAX_PREDICT_ROWS = 10_000_000    # rows predicted for the ranking in all
MAX_SECONDS = 60.0               # and about this long at the model's measured prediction speed
_MAX_SAMPLE_CELLS = 16_000_000   # float32 test features kept (64 MiB): bounds memory and the .npz
_BLOCK_CELLS = 4_000_000         # cells per predict call (16 MiB): several features per call
_MIN_RANKING_EVENTS = 2_000      # below this an AUC drop is noise; the cost bound never goes lower


# --------------------------------------------------------------------------------------------- sample
@dataclass
class ReportSample:
    """Test events with their features and scores, and train events with their scores."""

    features: list[str]
    X_test: np.ndarray           # float32[n, n_features], the model's inputs
    y_test: np.ndarray
    score_test: np.ndarray
    y_train: np.ndarray
    score_train: np.ndarray
    w_test: np.ndarray | None = None
    w_train: np.ndarray | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ("X_test", "y_test", "score_test", "y_train", "score_train")}
        arrays.update({k: getattr(self, k) for k in ("w_test", "w_train") if getattr(self, k) is not None})
        np.savez_compressed(path, features=np.asarray(self.features, dtype=str), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReportSample:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise InputFileError(f"cannot read the report sample {path}: {err}; rebuild it from the ROOT files "
                                 "with `mlaas4hep report OUT --files files.txt --labels labels.txt`", str(path)) from err
        features = [str(f) for f in arrays.pop("features")]
        return cls(features, **arrays)


def _pick(n: int, need: int, rng: np.random.Generator) -> np.ndarray:
    """``need`` of ``n`` rows at random (in order), or all of them: chunks that are not shuffled hold
    the files one after the other, so the first rows would be one class."""
    return np.arange(n) if need >= n else np.sort(rng.choice(n, need, replace=False))


def collect_sample(stream, predict: Callable[[np.ndarray], np.ndarray], max_events: int = MAX_EVENTS,
                   seed: int = 0) -> ReportSample:
    """Read chunks from the start of ``stream`` (a :class:`~mlaas4hep_lab.data.stream.ChunkStream`) until
    ``max_events`` test and train events are in hand (every chunk mixes every file in proportion, so the
    first ones are a fair sample), and score them with ``predict``."""
    n_features = len(stream.feature_names)
    max_events = max(1, min(int(max_events), _MAX_SAMPLE_CELLS // max(1, n_features)))
    rng = np.random.default_rng([int(seed), 0x5E9])
    # a split of fraction 0 has no events to wait for: without this the whole stream would be read
    want_test = max_events if stream.params.split[2] > 0 else 0
    want_train = max_events if stream.params.split[0] > 0 else 0
    tests, trains = [], []
    n_test = n_train = 0
    for k in range(stream.n_chunks):
        if n_test >= want_test and n_train >= want_train:
            break
        chunk = stream.build(k)
        if n_test < want_test:
            test = chunk.subset("test")
            test = test.take(_pick(len(test), want_test - n_test, rng))
            tests.append((test.X, test.y, test.weight))
            n_test += len(test)
        if n_train < want_train:
            train = chunk.subset("train")
            train = train.take(_pick(len(train), want_train - n_train, rng))
            trains.append((predict(train.X) if len(train) else np.zeros(0, np.float32), train.y, train.weight))
            n_train += len(train)

    def cat(parts, i, dtype, width=None):
        if not parts:
            return np.zeros((0, width) if width is not None else 0, dtype)
        if parts[0][i] is None:
            return None
        return np.concatenate([p[i] for p in parts]).astype(dtype, copy=False)

    X = cat(tests, 0, np.float32, n_features)
    return ReportSample(list(stream.feature_names), X, cat(tests, 1, np.float32),
                        np.asarray(predict(X) if len(X) else np.zeros(0), np.float32).reshape(-1),
                        cat(trains, 1, np.float32), np.asarray(cat(trains, 0, np.float32)).reshape(-1),
                        cat(tests, 2, np.float32), cat(trains, 2, np.float32))


# -------------------------------------------------------------------------------------------- ranking
def _budget(n: int, cost: int, repeats: int, rows: float) -> tuple[int, int]:
    """(events, repeats) whose ``events * cost * repeats`` predicted rows fit in ``rows``: fewer repeats
    first, then fewer events (never below ``_MIN_RANKING_EVENTS``)."""
    repeats = max(1, min(repeats, int(rows // max(1, n * cost))))
    if n * cost * repeats > rows:
        n = min(n, max(_MIN_RANKING_EVENTS, int(rows // max(1, cost * repeats))))
    return n, repeats


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, y: np.ndarray, *,
                           repeats: int = REPEATS, max_rows: int = MAX_PREDICT_ROWS,
                           max_seconds: float | None = MAX_SECONDS, seed: int = 0) -> dict[str, Any]:
    """Drop of the (unweighted) AUC when each column of ``X`` is shuffled, the model unchanged.

    For each repeat one permutation of the rows is drawn; each feature's column of the whole matrix is
    replaced by its permuted copy (several features stacked into one ``predict`` call). Constant columns
    (always-padded slots) cannot change a prediction: importance 0 without predicting. The cost is
    bounded by ``max_rows`` predicted rows and by ``max_seconds`` at the speed the baseline prediction
    showed: repeats are reduced first, then events (never below 2,000). Returns ``importance`` and
    ``std`` (float64[n_features]; std over repeats, 0 for one repeat), ``baseline_auc``, ``events``,
    ``repeats`` and ``seconds``.
    """
    t0 = time.perf_counter()
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y).reshape(-1)
    n, m = X.shape
    if n != y.size:
        raise ValueError(f"X has {n} events but y has {y.size}")
    rng = np.random.default_rng([int(seed), 0x7A1])
    varying = np.flatnonzero(np.ptp(X, axis=0) > 0) if n else np.zeros(0, int)
    cost = max(1, varying.size)
    keep, repeats = _budget(n, cost, max(1, int(repeats)), float(max_rows))
    if keep < n:
        rows = _pick(n, keep, rng)
        X, y, n = X[rows], y[rows], keep
    t_predict = time.perf_counter()
    baseline = auc(y, predict(X))
    if max_seconds is not None and n:
        rate = n / max(time.perf_counter() - t_predict, 1e-6)    # rows per second of this model
        keep, repeats = _budget(n, cost, repeats, rate * float(max_seconds))
        if keep < n:
            rows = _pick(n, keep, rng)
            X, y, n = X[rows], y[rows], keep
            baseline = auc(y, predict(X))
    drops = np.full((repeats, m), np.nan) if not math.isfinite(baseline) else np.zeros((repeats, m))
    per_call = max(1, _BLOCK_CELLS // max(1, n * m))
    for r in range(repeats if math.isfinite(baseline) else 0):   # one class only: nothing to rank by
        perm = rng.permutation(n)
        for start in range(0, varying.size, per_call):
            cols = varying[start:start + per_call]
            block = np.tile(X, (cols.size, 1)).reshape(cols.size, n, m)
            # block i has column cols[i] shuffled: one fancy-indexed assignment for the whole block
            block[np.arange(cols.size)[:, None], np.arange(n)[None, :], cols[:, None]] = X[perm[:, None], cols].T
            scores = np.asarray(predict(block.reshape(-1, m)), dtype=np.float64).reshape(cols.size, n)
            drops[r, cols] = baseline - np.array([auc(y, s) for s in scores])
    return {"importance": drops.mean(axis=0), "std": drops.std(axis=0), "baseline_auc": baseline,
            "events": int(n), "repeats": int(repeats), "seconds": time.perf_counter() - t0}


def native_importance(backend) -> tuple[np.ndarray, str] | None:
    """The model's own importance, normalised to sum 1: XGBoost ``gain`` (total gain of the splits on a
    feature), scikit-learn ``feature_importances_`` (impurity decrease); None when the model has none."""
    n = int(getattr(backend, "n_features", 0))
    values, kind = None, ""
    if getattr(backend, "name", "") == "xgboost" and getattr(backend, "booster", None) is not None:
        values = np.zeros(n)
        for key, gain in backend.booster.get_score(importance_type="total_gain").items():
            # a Booster trained without feature names calls them f0, f1, ...
            if key.startswith("f") and key[1:].isdigit() and int(key[1:]) < n:
                values[int(key[1:])] = gain
        kind = "xgboost total gain"
    elif getattr(backend, "name", "") == "sklearn":
        model = backend.model
        steps = getattr(model, "steps", None)
        final = steps[-1][1] if isinstance(steps, list) and steps else model
        try:
            found = getattr(final, "feature_importances_", None)
        except (AttributeError, ValueError):   # some estimators raise when they have none
            found = None
        if found is not None and np.asarray(found).shape == (n,):
            values, kind = np.asarray(found, dtype=np.float64), "scikit-learn feature_importances_"
    if values is None or not np.all(np.isfinite(values)):
        return None
    total = values.sum()
    return (values / total if total > 0 else values), kind


# -------------------------------------------------------------------------------------- overtraining
def _ks_numpy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic (exact) and its asymptotic p-value (Kolmogorov distribution with
    Stephens' small-sample correction, as in Numerical Recipes' ``kstwo``)."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, both, side="right") / a.size
                            - np.searchsorted(b, both, side="right") / b.size)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:   # the series converges slowly here, and its value is 1 to 1e-10
        return d, 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam))
    return d, float(min(1.0, max(0.0, p)))


def ks_2samp(a, b) -> tuple[float, float]:
    """``(statistic, p-value)`` of the two-sample Kolmogorov-Smirnov test: scipy's ``ks_2samp`` when
    scipy is installed (the ``sklearn`` extra brings it), else a numpy implementation (asymptotic
    p-value). ``(nan, nan)`` when a sample is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan")
    try:
        from scipy import stats
    except ImportError:
        return _ks_numpy(a, b)
    result = stats.ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


# -------------------------------------------------------------------------------------- correlations
def correlation(X: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Linear (Pearson) correlation matrix of the columns of ``X``; weighted when ``weight`` is given.
    Rows and columns of constant features are NaN (their correlation is undefined)."""
    X = np.asarray(X, dtype=np.float64)
    m = X.shape[1]
    if X.shape[0] < 2:
        return np.full((m, m), np.nan)
    cov = np.atleast_2d(np.cov(X, rowvar=False, aweights=weight))
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    bad = ~(sd > 1e-12 * np.maximum(1.0, np.abs(X).max(axis=0)))
    corr[bad, :] = np.nan
    corr[:, bad] = np.nan
    np.fill_diagonal(corr, np.where(bad, np.nan, 1.0))
    return np.clip(corr, -1.0, 1.0)


def _write_matrix(path: Path, corr: np.ndarray, names: Sequence[str]) -> Path:
    """CSV with a header row and a first column of feature names; NaN written as empty cells."""
    quoted = ['"' + n.replace('"', '""') + '"' for n in names]
    body = np.char.mod("%.4f", corr).astype(object)
    body[np.isnan(corr)] = ""
    lines = [",".join(["feature", *quoted])]
    lines += [",".join([q, *row]) for q, row in zip(quoted, body.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------- learning curve
# series of the learning curve -> the name XGBoost's evaluation gives it when the trainer has no alias
_CURVE_KEYS = {"loss": "train_logloss", "val_loss": "validation_logloss", "auc": "train_auc",
               "val_auc": "validation_auc"}


def learning_curve(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"x", "xlabel", "series": {loss, val_loss, auc, val_auc}}`` from the trainer's metric events
    (``history.json`` in the bundle, or ``metrics.jsonl``): one point per chunk (Keras, PyTorch,
    incremental scikit-learn) against training events seen, one per boosting round (XGBoost, whose
    every round sees every event), one for estimators fitted once."""
    steps = [e for e in history if e.get("kind") in ("chunk", "round") and e.get("metrics")]
    if not steps:
        steps = [e for e in history if e.get("kind") == "epoch" and e.get("metrics")]
    rounds = bool(steps) and all(e.get("kind") == "round" for e in steps)
    x = [float(e.get("epoch", i + 1)) if rounds else float(e.get("events_seen", 0)) for i, e in enumerate(steps)]
    series = {}
    for key, alias in _CURVE_KEYS.items():
        values = [e["metrics"].get(key, e["metrics"].get(alias)) for e in steps]
        if any(isinstance(v, (int, float)) for v in values):
            series[key] = [float(v) if isinstance(v, (int, float)) else math.nan for v in values]
    return {"x": x, "xlabel": "boosting round" if rounds else "training events seen", "series": series}


def _read_history(out: Path) -> list[dict[str, Any]]:
    """The run's metric events: the bundle's history.json, else metrics.jsonl."""
    bundled = out / "bundle" / "history.json"
    if bundled.is_file():
        return json.loads(bundled.read_text())
    jsonl = out / "metrics.jsonl"
    if jsonl.is_file():
        return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return []


# -------------------------------------------------------------------------------------------- report
def _plain(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_report(sample: ReportSample, backend, history: Sequence[dict[str, Any]], plots_dir: str | Path, *,
                 repeats: int = REPEATS, max_rows: int = MAX_PREDICT_ROWS, max_seconds: float | None = MAX_SECONDS,
                 seed: int = 0, plots: bool = True, top: int = 20) -> dict[str, Any]:
    """Compute the report of a trained ``backend`` from ``sample`` and ``history``; write the plots (when
    ``plots`` and matplotlib is installed) and ``correlation_{signal,background}.csv`` into ``plots_dir``.
    Returns the metrics.json entries: ``ranking`` (``{feature, importance, importance_std[, native]}``,
    most important first), ``ks_pvalue_signal``/``_background``, ``ks_statistic_signal``/``_background``
    and ``report`` (how it was computed)."""
    plots_dir = Path(plots_dir)
    names = list(sample.features)
    perm = permutation_importance(backend.predict, sample.X_test, sample.y_test, repeats=repeats,
                                  max_rows=max_rows, max_seconds=max_seconds, seed=seed)
    native = native_importance(backend)
    imp = perm["importance"]
    order = np.argsort(-np.nan_to_num(imp, nan=-np.inf), kind="stable")
    ranking = []
    for j in order.tolist() if np.any(np.isfinite(imp)) else []:
        row = {"feature": names[j], "importance": _plain(imp[j]), "importance_std": _plain(perm["std"][j])}
        if native is not None:
            row["native"] = _plain(native[0][j])
        ranking.append(row)

    sig_test, sig_train = sample.y_test > 0.5, sample.y_train > 0.5
    ks_s = ks_2samp(sample.score_train[sig_train], sample.score_test[sig_test])
    ks_b = ks_2samp(sample.score_train[~sig_train], sample.score_test[~sig_test])

    w = sample.w_test
    weighted = w is not None and bool(np.all(w >= 0)) and float(w.sum()) > 0
    corr = {label: correlation(sample.X_test[sel], w[sel] if weighted else None)
            for label, sel in (("signal", sig_test), ("background", ~sig_test))}
    for label, matrix in corr.items():
        _write_matrix(plots_dir / f"correlation_{label}.csv", matrix, names)
    # the plot shows the top-ranked features that vary in the test split (TMVA shows them all)
    defined = [j for j in (order.tolist() if ranking else range(len(names)))
               if np.isfinite(corr["signal"][j, j]) or np.isfinite(corr["background"][j, j])]
    shown = defined[:top]

    curve = learning_curve(history)
    written: list[str] = []
    if plots:
        try:
            from mlaas4hep_lab.training import report_plots as rp

            written += rp.plot_variable_ranking(ranking, plots_dir, native_kind=native[1] if native else None,
                                                baseline_auc=perm["baseline_auc"], events=perm["events"],
                                                repeats=perm["repeats"], top=top)
            written += rp.plot_overtraining(sample, plots_dir, ks_s[1], ks_b[1])
            for label, matrix in corr.items():
                written += rp.plot_correlation(matrix[np.ix_(shown, shown)], [names[j] for j in shown], label,
                                               plots_dir, weighted=weighted, total=len(names))
            written += rp.plot_learning_curve(curve, plots_dir)
        except ImportError as err:   # matplotlib is an extra: the numbers are still worth having
            log.warning("training report without plots: %s", err)
    return {
        "ranking": ranking,
        "ks_pvalue_signal": _plain(ks_s[1]), "ks_pvalue_background": _plain(ks_b[1]),
        "ks_statistic_signal": _plain(ks_s[0]), "ks_statistic_background": _plain(ks_b[0]),
        "report": {
            "events_test": int(sample.y_test.size), "events_train": int(sample.y_train.size),
            "ranking_metric": "drop of the unweighted test AUC when the feature is shuffled",
            "ranking_baseline_auc": _plain(perm["baseline_auc"]), "ranking_events": perm["events"],
            "ranking_repeats": perm["repeats"], "ranking_seconds": round(perm["seconds"], 2),
            "native_importance": native[1] if native else None,
            "correlation_weighted": weighted, "correlation_features_shown": [names[j] for j in shown],
            "plots": [str(Path(p).name) for p in written],
        },
    }


def training_report(result, inputs, specs, fout: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """The report at the end of :func:`mlaas4hep_lab.training.workflow.train`: samples the stream, saves
    ``report_sample.npz`` in ``fout`` and builds the report into ``fout/plots``. A failure here must not
    lose a trained model: it is logged and returned as ``report_error`` (rebuild with ``mlaas4hep report``)."""
    from mlaas4hep_lab.data.stream import ChunkStream

    fout = Path(fout)
    seed = inputs.params.seed
    try:
        with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
            sample = collect_sample(stream, result.backend.predict, seed=seed)
        sample.save(fout / SAMPLE_FILE)
        return build_report(sample, result.backend, result.history, fout / "plots", seed=seed, plots=plots)
    except Exception as err:  # the model is trained and about to be bundled: say what failed, keep going
        log.warning("the training report failed (%s: %s); the model is bundled anyway. Rebuild the report with "
                    "`mlaas4hep report %s`", type(err).__name__, err, fout)
        return {"report_error": f"{type(err).__name__}: {err}"}


def rebuild_report(out: str | Path, files=None, labels=None, *, max_events: int = MAX_EVENTS,
                   repeats: int = REPEATS, max_seconds: float | None = MAX_SECONDS, plots: bool = True
                   ) -> dict[str, Any]:
    """Rebuild the report of a finished run folder ``out`` (what ``mlaas4hep report OUT`` runs): the model
    from ``out/bundle``, the events from ``out/report_sample.npz`` or, when ``files`` and ``labels`` are
    given (or the sample is missing), re-read from the ROOT files with the bundle's own params, preproc,
    specs and split. Writes the plots into ``out/plots`` and merges the numbers into ``out/metrics.json``."""
    from mlaas4hep_lab.bundle import Bundle

    out = Path(out)
    bundle_path = out / "bundle"
    if not bundle_path.is_dir() and Path(f"{bundle_path}.tar.gz").is_file():
        bundle_path = Path(f"{bundle_path}.tar.gz")
    if not bundle_path.exists():
        hint = (" (this is a bundle; give the run folder that holds it)" if (out / "manifest.json").is_file()
                else "")
        raise InputFileError(f"{out} is not a finished training run: no bundle/ in it{hint}. Give the --fout "
                             "folder of `mlaas4hep workflow`", str(out))
    bundle = Bundle.load(bundle_path)
    try:
        seed = bundle.params.seed
        sample_path = out / SAMPLE_FILE
        if files is not None or labels is not None:
            sample = _sample_from_files(bundle, files, labels, max_events, seed)
            sample.save(sample_path)
        elif sample_path.is_file():
            sample = ReportSample.load(sample_path)
            if sample.features != list(bundle.features):
                raise InputFileError(f"{sample_path} was written for other features than the bundle's model; "
                                     "rebuild it with --files and --labels", str(sample_path))
            sample = _limit(sample, max_events, seed)
        else:
            raise InputFileError(f"{out} has no {SAMPLE_FILE} (a run from before reports existed?): give the "
                                 "ROOT files with --files files.txt --labels labels.txt to re-read the test split",
                                 str(out))
        metrics = build_report(sample, bundle.backend, _read_history(out), out / "plots", repeats=repeats,
                               max_seconds=max_seconds, seed=seed, plots=plots)
    finally:
        bundle.close()
    metrics_path = out / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    merged.pop("report_error", None)
    merged.update(metrics)
    metrics_path.write_text(json.dumps(merged, indent=1, default=float))
    return metrics


def _sample_from_files(bundle, files, labels, max_events: int, seed: int) -> ReportSample:
    from mlaas4hep_lab.data.stream import ChunkStream
    from mlaas4hep_lab.pipeline import load_inputs

    if files is None or labels is None:
        raise InputFileError("re-reading the test split needs both --files and --labels (in the order training "
                             "used them)", None)
    inputs = load_inputs(files, labels, bundle.params)
    with ChunkStream(inputs.files, inputs.labels, bundle.params, bundle.specs, bundle.preproc) as stream:
        return collect_sample(stream, bundle.backend.predict, max_events, seed)


def _limit(sample: ReportSample, max_events: int, seed: int) -> ReportSample:
    """At most ``max_events`` test and train events of a saved sample."""
    rng = np.random.default_rng([int(seed), 0x11A])
    t = _pick(sample.y_test.size, max_events, rng)
    r = _pick(sample.y_train.size, max_events, rng)
    return ReportSample(sample.features, sample.X_test[t], sample.y_test[t], sample.score_test[t],
                        sample.y_train[r], sample.score_train[r],
                        None if sample.w_test is None else sample.w_test[t],
                        None if sample.w_train is None else sample.w_train[r])


def report_pngs(plots_dir: str | Path) -> dict[str, Path]:
    """The report's PNGs that exist in ``plots_dir``, by name (what the Lab's training panel shows)."""
    plots_dir = Path(plots_dir)
    return {name: plots_dir / f"{name}.png" for name in REPORT_PLOTS if (plots_dir / f"{name}.png").is_file()}


def report_files(plots_dir: str | Path) -> list[Path]:
    """Every file of the report in ``plots_dir`` (PNG and PDF of each plot, the correlation CSVs)."""
    plots_dir = Path(plots_dir)
    names = [f"{n}.{ext}" for n in REPORT_PLOTS for ext in ("png", "pdf")]
    names += ["correlation_signal.csv", "correlation_background.csv"]
    return [plots_dir / n for n in names if (plots_dir / n).is_file()]
