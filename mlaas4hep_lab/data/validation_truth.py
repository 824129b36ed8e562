"""The checks of a per-event truth before training, from what the specs pass counted (specs.json
``truth``, see :mod:`mlaas4hep_lab.data.truth`):

* a multi-class ``label``: every value is a class index 0..K-1 (K: params ``classes``, else the largest
  value plus one), at least two classes, and every class has events in every split in use;
* regression ``target``: every value is finite, and a target is not constant.

Each refusal is a :class:`~mlaas4hep_lab.errors.DataError` (or ConfigError) naming the key and the value.
"""

from __future__ import annotations

import math

from mlaas4hep_lab.data.splits import SPLITS
from mlaas4hep_lab.errors import ConfigError, DataError, MissingClassError, NonFiniteError

__all__ = ["check_truth", "classes_from_specs"]


def classes_from_specs(specs, params) -> int:
    """K of a multi-class task with a per-event label: params ``classes``, else the largest value + 1."""
    if params.classes:
        return len(params.classes)
    found = [float(v) for v in (specs.truth.get("classes") or {}) if v != "nonfinite"]
    return int(max(found)) + 1 if found else 0


def check_truth(specs, params) -> None:
    """Refuse a per-event truth a model could not learn from (see the module docstring)."""
    truth = specs.truth or {}
    if params.task == "multiclass" and params.label:
        _check_label(truth, params, classes_from_specs(specs, params))
    elif params.task == "regression":
        _check_targets(truth, params)


def _check_label(truth: dict, params, k: int) -> None:
    counts = truth.get("classes")
    if counts is None:
        raise ConfigError('the specs hold no per-event label counts: recompute them (the "label" changed?)', "label")
    text = params.label
    bad = [v for v in counts if v == "nonfinite" or not float(v).is_integer() or float(v) < 0 or float(v) >= k]
    if bad:
        shown = ", ".join(f"{v} ({sum(counts[v]):,} events)" for v in bad[:5])
        names = f"params \"classes\" names {k}" if params.classes else f"{k} classes from the largest value"
        raise DataError(f"params 'label' {text!r} gives values that are not a class index 0..{k - 1}: {shown} "
                        f"({names}); make it an integer in 0..{k - 1}, or cut the other events")
    if k < 2:
        raise MissingClassError(f"params 'label' {text!r} gives a single class: a classifier needs at least two")
    names = list(params.classes) or [str(i) for i in range(k)]
    for i in range(k):
        per = counts.get(f"{i:g}", [0, 0, 0])
        if not sum(per):
            raise MissingClassError(f"no event has class {i} ({names[i]}) of params 'label' {text!r} after the "
                                    f"cuts; every class 0..{k - 1} needs events (or name fewer classes)")
        for s, fraction in enumerate(params.split):
            if fraction > 0 and not per[s]:
                raise MissingClassError(
                    f"the {SPLITS[s]} split has no event of class {i} ({names[i]}) of params 'label' {text!r} "
                    f"({sum(per):,} events in all: " + ", ".join(f"{n:,} {SPLITS[j]}" for j, n in enumerate(per))
                    + "); use more events or change params 'split' or 'seed'")


def _check_targets(truth: dict, params) -> None:
    targets = truth.get("targets")
    if targets is None:
        raise ConfigError('the specs hold no regression target statistics: recompute them (the "target" '
                          'changed?)', "target")
    for text in params.target:
        t = targets.get(text)
        if t is None:
            raise ConfigError(f"the specs hold no statistics of target {text!r}: recompute them", "target")
        bad = int(t.get("nan", 0)) + int(t.get("inf", 0))
        if bad:
            raise NonFiniteError(f"params 'target' {text!r} is NaN or inf in {bad:,} of "
                                 f"{bad + int(t.get('values', 0)):,} events ({t.get('nan', 0):,} NaN, "
                                 f"{t.get('inf', 0):,} inf): a regression needs a finite truth; cut those events "
                                 "(preproc.json) or fix the expression")
        if not t.get("values"):
            raise DataError(f"params 'target' {text!r} has no value after the cuts")
        lo, hi = t.get("min"), t.get("max")
        if lo is not None and hi is not None and math.isclose(lo, hi):
            raise DataError(f"params 'target' {text!r} is {lo:g} in every event: there is nothing to regress")
