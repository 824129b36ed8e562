"""The particle-set ("objects") layout: each collection as a set of objects with a mask, beside the flat inputs.

With params ``"layout": "objects"`` a model receives, instead of one flat vector per event, a dict of named
inputs (the layout ParticleNet, DeepSets and transformer taggers consume):

* ``flat``: ``float32[n, F]``, the flat branches and the multiplicity of each collection;
* per collection, e.g. ``Jet``: ``float32[n, k, C]``, the C branches of its first k objects (the specs'
  padded length; normalised and padded as in the flat layout);
* ``Jet_mask``: ``bool[n, k]``, True where the event has an object in that slot.

A collection is a group of jagged branches with equal lengths in every event (the specs pass finds them:
``Jet_pt``, ``Jet_eta`` ... read through ``nJet``), named by their common prefix (``Jet``); params
``collections`` (``{"Jet": ["Jet_*"]}``) declares them instead, by wildcards. A jagged branch in no group is
a collection of its own.

Nothing is computed twice: the chunk's flat matrix ``X`` (and ``mask``) is built as always and
:meth:`ObjectsLayout.split` gathers the named inputs from its columns (one copy per input), so streaming,
shuffling and normalisation are those of the flat layout. Networks gather the same columns inside their own
graph (:meth:`ObjectsLayout.index_arrays`), so a batch of ``X`` rows is all they are fed.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import ConfigError, SpecsError

__all__ = ["Collection", "ObjectsLayout", "LAYOUTS", "FLAT_INPUT"]

LAYOUTS = ("flat", "objects")
FLAT_INPUT = "flat"


@dataclass(frozen=True)
class Collection:
    """``name``'s branches (one feature each per object) and the ``X`` columns of slot ``j``, branch ``c``."""

    name: str
    branches: tuple[str, ...]
    k: int
    columns: np.ndarray      # int64[k, C]
    # how a network sees from X alone which slots hold an object: the X column of the collection's
    # multiplicity and (scale, offset) with which it was normalised (count = x / scale + offset), or,
    # without one, the X columns of the slots' 0/1 mask features, int64[k, C]
    count: tuple[int, float, float] | None = None
    mask_columns: np.ndarray | None = None

    @property
    def mask_name(self) -> str:
        return f"{self.name}_mask"


@dataclass(frozen=True)
class ObjectsLayout:
    """Which columns of ``X`` make each named input (see the module docstring)."""

    flat_columns: np.ndarray            # int64[F]
    collections: tuple[Collection, ...]

    @classmethod
    def from_specs(cls, specs, normalization: str = "minmax", missing_values: Sequence[float] = (),
                   declared: Mapping[str, Sequence[str]] | None = None) -> ObjectsLayout:
        from mlaas4hep_lab.data.vectorize import Vectorizer

        vectorizer = Vectorizer.from_specs(specs, normalization, missing_values)
        names = list(specs.features)
        where = {name: i for i, name in enumerate(names)}
        jdim = {b: int(k) for b, k in specs.jdim.items() if int(k) > 0}
        groups = _groups(specs, declared, jdim)
        group_of = {b: g[0] for g in vectorizer.groups for b in g}
        collections = []
        for name, branches in groups:
            ks = {jdim[b] for b in branches}
            if len(ks) != 1:
                lengths = ", ".join(f"{b}: {jdim[b]}" for b in branches)
                raise ConfigError(f"collection {name!r}: its branches are padded to different lengths ({lengths}); "
                                  "give them one max_jagged_length", "collections")
            k = ks.pop()
            cols = np.array([[where[f"{b}[{j}]"] for b in branches] for j in range(k)], np.int64)
            count, masks = None, None
            col = vectorizer._count_col.get(group_of.get(branches[0], ""))
            if col is not None:
                scale, offset = (1.0, 0.0) if normalization == "none" else \
                    (float(vectorizer._scale[col]), float(vectorizer._offset[col]))
                count = (int(col), scale if scale else 1.0, offset)
            elif all(f"mask({b}[0])" in where for b in branches):
                masks = np.array([[where[f"mask({b}[{j}])"] for b in branches] for j in range(k)], np.int64)
            else:
                raise ConfigError(f"the objects layout needs to tell {name!r} objects from padding: use params "
                                  f"padding \"multiplicity\" (the default), \"mask\" or \"multiplicity+mask\", "
                                  f"not {specs.padding!r}", "padding")
            collections.append(Collection(name, tuple(branches), k, cols, count, masks))
        flat = np.array([i for i, n in enumerate(names) if "[" not in n and not n.startswith("mask(")], np.int64)
        return cls(flat, tuple(collections))

    def object_masks(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """bool[n, k] per collection from ``X`` alone (what a network computes in its graph): slot j holds an
        object when j is below the collection's multiplicity, or where a mask feature of the slot is set."""
        out = {}
        for c in self.collections:
            if c.count is not None:
                col, scale, offset = c.count
                counts = np.rint(X[:, col].astype(np.float64) / scale + offset)
                out[c.mask_name] = np.arange(c.k)[None, :] < counts[:, None]
            else:
                out[c.mask_name] = (X[:, c.mask_columns.reshape(-1)].reshape(len(X), c.k, -1) > 0.5).any(axis=2)
        return out

    @property
    def input_names(self) -> list[str]:
        out = [FLAT_INPUT]
        for c in self.collections:
            out += [c.name, c.mask_name]
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per named input, its shape without the event axis: the contract of a model.py for this layout."""
        out: dict[str, tuple[int, ...]] = {FLAT_INPUT: (len(self.flat_columns),)}
        for c in self.collections:
            out[c.name] = (c.k, len(c.branches))
            out[c.mask_name] = (c.k,)
        return out

    def split(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The named inputs of the rows of ``X`` (float32[n, F]), masks included (:meth:`object_masks`)."""
        X = np.asarray(X, np.float32)
        n = len(X)
        out = {FLAT_INPUT: X[:, self.flat_columns]}
        masks = self.object_masks(X)
        for c in self.collections:
            out[c.name] = X[:, c.columns.reshape(-1)].reshape(n, c.k, len(c.branches))
            out[c.mask_name] = masks[c.mask_name]
        return out

    def index_arrays(self) -> dict[str, np.ndarray]:
        """The gather indices networks apply to a batch of ``X`` rows: ``flat`` [F] and, per collection,
        [k, C] value columns (the same as :meth:`split` uses)."""
        out = {FLAT_INPUT: self.flat_columns}
        out.update({c.name: c.columns for c in self.collections})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"layout": "objects", "flat_columns": self.flat_columns.tolist(),
                "collections": [{"name": c.name, "branches": list(c.branches), "k": c.k,
                                 "columns": c.columns.tolist(), "count": list(c.count) if c.count else None,
                                 "mask_columns": None if c.mask_columns is None else c.mask_columns.tolist()}
                                for c in self.collections],
                "inputs": {name: [None, *shape] for name, shape in self.shapes().items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectsLayout:
        def collection(c: Mapping[str, Any]) -> Collection:
            shape = (int(c["k"]), len(c["branches"]))
            masks = c.get("mask_columns")
            return Collection(c["name"], tuple(c["branches"]), int(c["k"]),
                              np.asarray(c["columns"], np.int64).reshape(shape),
                              tuple(c["count"]) if c.get("count") else None,
                              None if masks is None else np.asarray(masks, np.int64).reshape(shape))

        return cls(np.asarray(data["flat_columns"], np.int64), tuple(collection(c) for c in data["collections"]))


def _prefix(branches: Sequence[str]) -> str:
    """``Jet`` for ``Jet_pt``, ``Jet_eta``; ``Muon`` for ``Muon.PT``, ``Muon.Eta``; else the first branch."""
    common = os.path.commonprefix(list(branches))
    cut = max(common.rfind("_"), common.rfind("."), common.rfind("/"))
    return common[:cut] if cut > 0 else (common if len(branches) > 1 and common else branches[0])


def _groups(specs, declared, jdim: dict[str, int]) -> list[tuple[str, list[str]]]:
    jagged = sorted(jdim)
    if declared:
        out, used = [], set()
        for name, patterns in declared.items():
            patterns = [patterns] if isinstance(patterns, str) else list(patterns)
            branches = sorted({b for p in patterns for b in fnmatch.filter(jagged, p)})
            if not branches:
                raise ConfigError(f"collection {name!r}: {patterns} match no jagged feature branch (jagged: "
                                  f"{jagged[:12]}{' ...' if len(jagged) > 12 else ''})", "collections")
            if used & set(branches):
                raise ConfigError(f"collection {name!r} shares branches {sorted(used & set(branches))} with another",
                                  "collections")
            _check_same_lengths(specs, name, branches)
            used |= set(branches)
            out.append((name, branches))
        out += [(b, [b]) for b in jagged if b not in used]
        return _unique(out)
    if not specs.jagged_groups and len(jagged) > 1:
        raise SpecsError("these specs do not group the jagged branches into collections: recompute them with "
                         'params "layout": "objects"')
    grouped = [sorted(b for b in g if b in jdim) for g in specs.jagged_groups]
    grouped = [g for g in grouped if g]
    seen = {b for g in grouped for b in g}
    grouped += [[b] for b in jagged if b not in seen]
    return _unique([(_prefix(g), g) for g in sorted(grouped)])


def _check_same_lengths(specs, name: str, branches: list[str]) -> None:
    if len(branches) < 2:
        return
    if not specs.jagged_groups:
        raise SpecsError("these specs do not group the jagged branches: recompute them with params "
                         '"layout": "objects"')
    group_of = {b: i for i, g in enumerate(specs.jagged_groups) for b in g}
    if len({group_of.get(b, b) for b in branches}) > 1:
        raise ConfigError(f"collection {name!r}: its branches {branches} do not have the same number of values in "
                          "every event, so they are not one collection of objects", "collections")


def _unique(groups: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Names made unique (and never the flat input's nor a mask's)."""
    out, taken = [], {FLAT_INPUT}
    for name, branches in groups:
        base, i = name, 1
        while name in taken or name.endswith("_mask"):
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        out.append((name, branches))
    return out
