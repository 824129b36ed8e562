"""The truth of every event when it is not the file's label: a per-event class (params ``label``, a
multi-class task) or the regression targets (params ``target``), each a flat branch or an expression.

The branches the truth is computed from are never features (nor the file branches behind a new branch
it uses): a model that sees ``GenTop_pt`` learns to copy it. :class:`Truth` compiles the expressions
(parsed and whitelisted by :mod:`mlaas4hep_lab.data.expressions`, never evaluated as code), checks them
against a tree and evaluates them on a chunk's records; :class:`TruthTally` counts, in the specs pass,
the events of each class (or the targets' moments and non-finite values) that the checks before
training and the standardisation of the targets read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas4hep_lab.data.expressions import compile_expression
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError

__all__ = ["Truth", "TruthTally"]


@dataclass
class Truth:
    """The compiled ``label`` (one expression) or ``target`` expressions (one per output)."""

    key: str                        # "label" or "target": the params key, named in errors
    texts: list[str]
    expressions: list = field(default_factory=list)

    @classmethod
    def from_params(cls, params) -> Truth | None:
        if getattr(params, "task", "binary") == "regression":
            texts, key = list(params.target), "target"
        elif getattr(params, "label", ""):
            texts, key = [params.label], "label"
        else:
            return None
        exprs = [compile_expression(t, where=f"params {key!r}") for t in texts]
        return cls(key, texts, exprs)

    def names(self) -> set[str]:
        out: set[str] = set()
        for expr in self.expressions:
            out |= set(expr.names)
        return out

    def check(self, kinds: Mapping[str, str], new_kinds: Mapping[str, str], where: str) -> None:
        """Every name exists in the tree (or is a new branch) and every expression gives one number per
        event; BranchNotFoundError / ConfigError name the key."""
        known = {**dict(kinds), **dict(new_kinds)}
        for text, expr in zip(self.texts, self.expressions):
            for name in sorted(expr.names):
                if name not in known:
                    raise BranchNotFoundError(name, where, list(known), context=f"params {self.key!r}: {text!r}")
            if expr.kind(known) != "flat":
                what = "regression target" if self.key == "target" else "per-event label"
                raise ConfigError(f"the {what} {text!r} is a list per event in {where}; it must be one number "
                                  f"per event (reduce it, e.g. max({text}) or {text}[0] via a new branch)", self.key)

    def file_branches(self, kinds: Mapping[str, str], preproc=None) -> set[str]:
        """The tree's branches the truth depends on, through new branches too."""
        defs = {nb.name: nb.expression.names for nb in (preproc.new_branches if preproc is not None else [])}
        pending, seen = list(self.names()), set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            pending.extend(defs.get(name, ()))
        return {n for n in seen if n in kinds}

    def evaluate(self, arrays: Any) -> np.ndarray:
        """``float64[n]`` (label) or ``float64[n, T]`` (targets) for the records ``arrays``."""
        n = len(arrays)
        cols = []
        for text, expr in zip(self.texts, self.expressions):
            values = np.asarray(expr(arrays), dtype=np.float64)
            if values.shape != (n,):
                raise ConfigError(f"params {self.key!r}: {text!r} gave shape {values.shape} for {n} events; it "
                                  "must give one number per event", self.key)
            cols.append(values)
        if self.key == "label":
            return cols[0]
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


class TruthTally:
    """What the specs pass learns of the truth: per class value, its events (label), or per target its
    min, max, mean, std and NaN/inf counts (target). ``to_json`` goes into specs.json."""

    def __init__(self, truth: Truth):
        self.truth = truth
        self.classes: dict[float, np.ndarray] = {}   # class value -> events per split
        width = len(truth.texts)
        self.n = np.zeros(width, np.int64)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.lo = np.full(width, np.inf)
        self.hi = np.full(width, -np.inf)
        self.nan = np.zeros(width, np.int64)
        self.inf = np.zeros(width, np.int64)

    def update(self, arrays: Any, keep: np.ndarray | None, split: np.ndarray | None = None) -> None:
        """Add the records ``arrays`` (those at ``keep``, a boolean mask, when given); ``split``: the
        split code (0 train, 1 validation, 2 test) of each kept event, for the per-split class counts."""
        values = self.truth.evaluate(arrays)
        if keep is not None:
            values = values[keep]
        if self.truth.key == "label":
            values = np.where(np.isnan(values), np.inf, values)  # NaN and inf: one "nonfinite" class
            found, inverse = np.unique(values, return_inverse=True)
            codes = np.zeros(len(values), np.int64) if split is None else split.astype(np.int64)
            counts = np.bincount(inverse.reshape(-1) * 3 + codes, minlength=3 * len(found)).reshape(-1, 3)
            for value, per_split in zip(found.tolist(), counts):
                self.classes[value] = self.classes.get(value, np.zeros(3, np.int64)) + per_split
            return
        for j in range(values.shape[1]):
            col = values[:, j]
            finite = np.isfinite(col)
            self.nan[j] += int(np.isnan(col).sum())
            self.inf[j] += int(np.isinf(col).sum())
            good = col[finite]
            if not good.size:
                continue
            n_b, mean_b = good.size, float(good.mean())
            m2_b = float(((good - mean_b) ** 2).sum())
            n = self.n[j] + n_b
            delta = mean_b - self.mean[j]
            self.mean[j] += delta * n_b / n
            self.m2[j] += m2_b + delta * delta * self.n[j] * n_b / n
            self.n[j] = n
            self.lo[j], self.hi[j] = min(self.lo[j], good.min()), max(self.hi[j], good.max())

    def to_json(self) -> dict[str, Any]:
        if self.truth.key == "label":
            # per class value: events in [train, validation, test]
            return {"label": self.truth.texts[0],
                    "classes": {_number_key(v): [int(c) for c in self.classes[v]] for v in sorted(self.classes)}}
        targets = {}
        for j, text in enumerate(self.truth.texts):
            n = int(self.n[j])
            targets[text] = {"values": n, "nan": int(self.nan[j]), "inf": int(self.inf[j]),
                             "min": float(self.lo[j]) if n else None, "max": float(self.hi[j]) if n else None,
                             "mean": float(self.mean[j]) if n else None,
                             "std": float(np.sqrt(self.m2[j] / n)) if n else None}
        return {"targets": targets}


def _number_key(value: float) -> str:
    return "nonfinite" if np.isinf(value) else f"{value:g}"
