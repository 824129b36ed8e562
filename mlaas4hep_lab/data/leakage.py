"""The leakage check: features that give the answer away before any model is trained.

A feature leaks when it separates the classes by itself (an event weight that differs between signal and
background, an event number that was assigned per sample, a truth flag) or when it is named like a weight,
an identifier or a label. Both are cheap to see on a sample of events, and a model trained on such a
feature scores a test AUC near 1 that means nothing. The check runs where the events already are: the Lab
on its preview sample (a warning in the panel), :func:`~mlaas4hep_lab.training.workflow.train` on the
first events of a few files (a logged warning, kept in ``run.json``).

Example::

    from mlaas4hep_lab.data.leakage import check_sample
    for finding in check_sample(samples, labels, params, preproc, kinds):
        print(finding.message)      # "Weight alone separates the classes (AUC 0.999, weighted) ..."

The separation is the single-variable AUC of every feature at once (one sort per column, ties counted
half, NaN and the params' ``missing_values`` left out, weighted by params ``weight`` when it is set):
above :data:`AUC_LIMIT` or below ``1 - AUC_LIMIT`` is flagged. Jagged features are judged by their first
value (``name[0]``, the first column the vectoriser makes of them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.errors import BranchNotFoundError, MLaaSError

__all__ = ["AUC_LIMIT", "NAME_PATTERNS", "Finding", "suspicious_name", "single_feature_auc", "check_sample",
           "read_sample", "warn_leakage"]

log = logging.getLogger(__name__)

AUC_LIMIT = 0.98
# what a name says a branch is (case-insensitive): a weight, an identifier or the truth itself
NAME_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("weight", re.compile(r"weight|wgt|^w$", re.I)),
    ("identifier", re.compile(r"^(event|evt|run|lumi|luminosityblock|entry)(_?(id|number|num|nr|no))?$"
                              r"|eventid|event_?number|run_?number|(^|_)id$|^id(_|$)|^(index|idx|uid|uuid)$", re.I)),
    ("label", re.compile(r"label|^(y|target|truth|class|class_?id|is_?signal|signal|sig|bkg|background|category)$",
                         re.I)),
)
_ADVICE = {"weight": "use it as the weight (params \"weight\") or exclude it",
           "identifier": "declare it as an identifier (params \"identifier\") or exclude it",
           "label": "exclude it"}
_FILES_PER_LABEL = 5          # warn_leakage reads the first events of at most this many files per label


def suspicious_name(name: str) -> str | None:
    """``"weight"``, ``"identifier"`` or ``"label"`` when ``name`` reads like one (``Weight``, ``EventId``,
    ``label``...), else None. ``Jet_jetId`` (a quality flag) is not an identifier; ``genWeight`` is a weight."""
    for kind, pattern in NAME_PATTERNS:
        if pattern.search(name):
            return kind
    return None


@dataclass(frozen=True)
class Finding:
    """One suspicious feature: ``auc`` is its single-variable AUC on the sample (None when not computed),
    ``named`` what its name suggests (``weight``, ``identifier``, ``label`` or "")."""

    feature: str
    auc: float | None = None
    named: str = ""
    weighted: bool = False
    events: int = 0

    @property
    def separates(self) -> bool:
        return self.auc is not None and (self.auc > AUC_LIMIT or self.auc < 1 - AUC_LIMIT)

    @property
    def message(self) -> str:
        """One line: what was seen and what to do."""
        article = "an" if self.named == "identifier" else "a"
        named = f"named like {article} {self.named}" if self.named else ""
        if self.separates:
            how = ", weighted" if self.weighted else ""
            text = (f"{self.feature} alone separates the classes (AUC {self.auc:.3f} on {self.events:,} sampled "
                    f"events{how})" + (f" and is {named}" if named else "") + ": a model would learn it instead "
                    "of the physics; ")
        else:
            alone = f" (alone: AUC {self.auc:.3f} on {self.events:,} sampled events)" if self.auc is not None else ""
            text = f"{self.feature} is {named}, not a physics feature{alone}: "
        return text + _ADVICE.get(self.named, "exclude it unless it is a genuine physics feature")


def single_feature_auc(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The AUC of each column of ``X`` (n, F) taken alone as the score of ``y`` (True/1: signal).

    Non-finite entries of a column are left out of that column (weight 0); tied values count half, as in
    :func:`~mlaas4hep_lab.training.evaluation.auc`, which gives the same numbers column by column. NaN for a
    column without events of both classes (or without positive total weight of either)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional (events, features), got shape {X.shape}")
    n, n_features = X.shape
    if n == 0:
        return np.full(n_features, np.nan)
    signal = np.asarray(y).reshape(-1) > 0.5
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    w = np.where(np.isfinite(w), w, 0.0)
    valid = np.isfinite(X)
    order = np.argsort(np.where(valid, X, np.inf), axis=0, kind="stable")
    xs = np.take_along_axis(X, order, axis=0)
    ws = w[order] * np.take_along_axis(valid, order, axis=0)
    ss = signal[order]
    w_sig, w_bkg = ws * ss, ws * ~ss
    # ties: rows with equal values form a group; a signal event beats the background before its group
    # and ties half of the background inside it
    new_group = np.ones((n, n_features), dtype=bool)
    new_group[1:] = xs[1:] != xs[:-1]
    last_row = np.ones((n, n_features), dtype=bool)
    last_row[:-1] = new_group[1:]
    rows = np.arange(n)[:, None]
    first = np.maximum.accumulate(np.where(new_group, rows, 0), axis=0)
    last = np.minimum.accumulate(np.where(last_row, rows, n - 1)[::-1], axis=0)[::-1]
    through = np.cumsum(w_bkg, axis=0)
    before = np.take_along_axis(through - w_bkg, first, axis=0)
    tied = np.take_along_axis(through, last, axis=0) - before
    total_sig, total_bkg = w_sig.sum(axis=0), w_bkg.sum(axis=0)
    wins = np.sum(w_sig * (before + 0.5 * tied), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins / (total_sig * total_bkg)
    return np.where((total_sig > 0) & (total_bkg > 0), auc, np.nan)


def _column(values: Any, missing: np.ndarray) -> np.ndarray:
    """One number per event: the value (flat) or the first value (jagged), NaN where absent or a sentinel."""
    if values.ndim > 1:
        values = ak.firsts(values, axis=1)
    out = ak.to_numpy(ak.fill_none(values, np.nan)).astype(np.float64, copy=False)
    if missing.size:
        out = np.where(np.isin(out, missing), np.nan, out)
    return out


class _KnownBranches:
    """The part of a TreeReader that :func:`~mlaas4hep_lab.data.plan.make_plan` asks, answered from branch
    kinds already known (the Lab's), so that the plan is decided without opening a file again."""

    def __init__(self, kinds: Mapping[str, str], where: str):
        self._kinds, self.tree_name, self.path = dict(kinds), "events", where

    def kinds(self) -> dict[str, str]:
        return dict(self._kinds)

    def check(self, names, context: str = "") -> None:
        for name in names:
            if name not in self._kinds:
                raise BranchNotFoundError(name, self.path, self._kinds, context)


def check_sample(samples: Sequence[ak.Array], labels: Sequence[float], params, preproc=None,
                 kinds: Mapping[str, str] | None = None, where: str = "the sample") -> list[Finding]:
    """The leakage findings on ``samples`` (one array of events per file, labelled by ``labels``) for the
    features that ``params`` and ``preproc`` would train on (:func:`~mlaas4hep_lab.data.plan.make_plan`).

    The events are those passing the cuts; the classes are the files' labels (binary: signal vs background;
    multi-class: each class against the rest, the most extreme AUC kept) or params ``label`` on each event;
    a regression is checked by names only. Findings are sorted, the most separating first."""
    from mlaas4hep_lab.data.plan import make_plan

    kinds = dict(kinds) if kinds is not None else _kinds_of(samples[0])
    plan = make_plan(_KnownBranches(kinds, where), params, preproc)
    features = plan.features
    named = {name: suspicious_name(name) or "" for name in features}
    columns, ys, ws = [], [], []
    missing = np.asarray(params.missing_values, dtype=np.float64)
    for events, label in zip(samples, labels):
        arrays, keep = (events, None) if preproc is None else preproc.apply(events)
        if keep is not None:
            arrays = arrays[keep]
        if not len(arrays):
            continue
        columns.append(np.column_stack([_column(arrays[f], missing) for f in features]))
        if plan.truth is not None and plan.truth.key == "label":
            ys.append(np.asarray(plan.truth.evaluate(arrays), dtype=np.float64).reshape(-1))
        else:
            ys.append(np.full(len(arrays), float(label)))
        if params.weight:
            ws.append(ak.to_numpy(arrays[params.weight]).astype(np.float64))
    aucs: dict[str, float] = {}
    regression = params.task == "regression"
    if columns and not regression:
        X, y = np.concatenate(columns), np.concatenate(ys)
        w = np.concatenate(ws) if params.weight else None
        classes = np.unique(y[np.isfinite(y)])
        if len(classes) >= 2:
            # binary: signal (the larger label) against the rest; multi-class: each class against the rest
            tests = classes[-1:] if len(classes) == 2 else classes
            extreme = np.full(X.shape[1], np.nan)
            for c in tests:
                auc = single_feature_auc(X, y == c, w)
                farther = ~(np.abs(auc - 0.5) <= np.abs(extreme - 0.5))
                extreme = np.where(farther & np.isfinite(auc), auc, extreme)
            aucs = {f: float(a) for f, a in zip(features, extreme) if np.isfinite(a)}
    n_events = int(sum(len(c) for c in columns))
    found = [Finding(f, aucs.get(f), named[f], bool(params.weight), n_events) for f in features]
    found = [f for f in found if f.separates or f.named]
    return sorted(found, key=lambda f: (-abs((f.auc if f.auc is not None else 0.5) - 0.5), f.feature))


def _kinds_of(events: ak.Array) -> dict[str, str]:
    return {name: "jagged" if events[name].ndim > 1 else "flat" for name in events.fields}


def read_sample(files: Sequence[str], labels: Sequence[float], params, preproc=None, size: int = 2_000,
                files_per_label: int = _FILES_PER_LABEL) -> tuple[list[ak.Array], list[float], dict[str, str]]:
    """(samples, their labels, branch kinds): the first events of at most ``files_per_label`` files of each
    label, ``size`` events in all, reading only the branches training reads."""
    from mlaas4hep_lab.data.plan import make_plan
    from mlaas4hep_lab.data.reader import TreeReader

    chosen: dict[float, list[int]] = {}
    for i, label in enumerate(labels):
        group = chosen.setdefault(float(label), [])
        if len(group) < files_per_label:
            group.append(i)
    picked = sorted(i for group in chosen.values() for i in group)
    per_file = max(100, size // max(1, len(picked)))
    samples, used, kinds = [], [], {}
    for i in picked:
        with TreeReader(files[i], params.branch, retries=params.retries, decompression_workers=0) as reader:
            plan = make_plan(reader, params, preproc)
            kinds = kinds or reader.kinds()
            samples.append(reader.read(plan.read, 0, min(per_file, reader.num_entries)))
            used.append(float(labels[i]))
    return samples, used, kinds


def warn_leakage(inputs, size: int = 2_000) -> list[Finding]:
    """Log a warning per leakage finding on the first events of the inputs' files; returns the findings.

    Advisory: a sample that cannot be read is said in one warning and gives no findings (the training's
    own reading reports the problem with its file)."""
    try:
        samples, labels, kinds = read_sample(inputs.files, inputs.labels, inputs.params, inputs.preproc, size)
        found = check_sample(samples, labels, inputs.params, inputs.preproc, kinds, "the files")
    except (MLaaSError, OSError, KeyError, ValueError, IndexError) as err:
        log.warning("leakage check skipped: %s: %s", type(err).__name__, err)
        return []
    for finding in found:
        log.warning("possible leakage: %s", finding.message)
    return found
