"""preproc.json: new branches, flat cuts and jagged cuts (the original MLaaS4HEP format).

::

    {
      "new_branch": {
        "log_partonE": {"def": "log(partonE)", "type": "jagged",
                        "cut_1": ["log_partonE<6.31", "any"], "cut_2": ["log_partonE>5.85", "all"],
                        "remove": "False", "keys_to_remove": ["partonE"]},
        "nJets_square": {"def": "nJets**2", "type": "flat", "cut": "1<=nJets_square<=16",
                         "remove": "False", "keys_to_remove": ["nJets"]}
      },
      "flat_cut": {"nLeptons": {"cut": "0<=nLeptons<=2", "remove": "False"}},
      "jagged_cut": {"partonPt": {"cut": ["partonPt>200", "all"], "remove": "False"}}
    }

- ``new_branch.<name>``: ``def`` (an expression, see :mod:`mlaas4hep_lab.data.expressions`), ``type``
  (``flat``/``jagged``, checked against what ``def`` gives), cuts, ``remove`` (drop the new branch
  from the features after the cuts), ``keys_to_remove`` (original branches dropped from the features).
- ``flat_cut.<branch>`` / ``jagged_cut.<branch>``: cuts and ``remove``.
- A cut is ``cut`` or ``cut_1 ... cut_N``: a string for a per-event condition, ``[expr, "any"|"all"]``
  for a condition on each element of a jagged branch (``any``: keep the event when at least one
  element passes; ``all``: when every element passes, so an empty list passes). All cuts AND together.
- ``remove`` accepts JSON booleans and the strings ``"True"``/``"False"``.
- Key order does not matter: new branches may use each other in any order of the file (they are
  computed in dependency order) and cuts may use new branches.

Everything is computed on whole arrays with numpy/awkward; :meth:`Preproc.apply` returns the
arrays with the new branches added and a boolean mask of the events that pass; it does not filter.

This module holds :class:`Preproc` (ordering, validation against a tree, application and
serialisation). The entries (:class:`Cut`, :class:`NewBranch`, :class:`BranchCut`, re-exported
here) and the reading and checking of the JSON live in the private module ``_preproc_json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.data._preproc_json import (
    KINDS,
    MODES,
    BranchCut,
    Cut,
    NewBranch,
    load_json,
    loads_json,
    parse_preproc,
)
from mlaas4hep_lab.data._preproc_json import SECTIONS as SECTIONS  # importable from here, as before
from mlaas4hep_lab.data.expressions import Expression, flat_to_numpy, is_jagged, kind_of, unknown_name
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError

__all__ = ["Cut", "NewBranch", "BranchCut", "Preproc", "KINDS", "MODES"]


# --------------------------------------------------------------------------------------------------
# dependency order of new branches


def _dependency_order(branches: list[NewBranch], source: str | None) -> list[NewBranch]:
    """New branches sorted so that each comes after the new branches it uses (ties by name)."""
    by_name = {b.name: b for b in branches}
    deps = {b.name: set(b.expression.names) & set(by_name) for b in branches}
    ordered: list[NewBranch] = []
    done: set[str] = set()
    pending = sorted(by_name)
    while pending:
        ready = [n for n in pending if deps[n] <= done]
        if not ready:
            cycle = _find_cycle(pending, deps)
            raise ConfigError(
                "new branches depend on each other in a cycle: "
                + " -> ".join(cycle)
                + "; a definition cannot use itself, directly or through other new branches",
                key="new_branch",
                source=source,
            )
        for n in ready:
            ordered.append(by_name[n])
            done.add(n)
        pending = [n for n in pending if n not in done]
    return ordered


def _find_cycle(pending: list[str], deps: Mapping[str, set[str]]) -> list[str]:
    todo = set(pending)
    node = pending[0]
    path: list[str] = []
    while node not in path:
        path.append(node)
        node = sorted(d for d in deps[node] if d in todo)[0]
    return path[path.index(node) :] + [node]


# --------------------------------------------------------------------------------------------------
# the preprocessing


class Preproc:
    """Parsed preproc.json. Build it with :meth:`from_json`."""

    def __init__(
        self,
        new_branches: list[NewBranch] | None = None,
        flat_cuts: list[BranchCut] | None = None,
        jagged_cuts: list[BranchCut] | None = None,
        source: str | None = None,
    ):
        self.source = source
        self.new_branches: list[NewBranch] = _dependency_order(list(new_branches or []), source)
        self.flat_cuts: list[BranchCut] = sorted(flat_cuts or [], key=lambda c: c.branch)
        self.jagged_cuts: list[BranchCut] = sorted(jagged_cuts or [], key=lambda c: c.branch)

    # construction -----------------------------------------------------------------------------
    @classmethod
    def from_json(cls, source: Any = None) -> Preproc:
        """Parse a preproc.json file path, a dict, JSON text (starting with ``{``) or None (empty)."""
        if isinstance(source, Preproc):
            return source
        origin: str | None = None
        if source is None:
            data: Any = {}
        elif isinstance(source, Mapping):
            data = source
        elif isinstance(source, str) and source.lstrip().startswith("{"):
            data = loads_json(source, None)
        elif isinstance(source, (str, os.PathLike)):
            origin = os.fspath(source)
            data = load_json(Path(origin))
        else:
            raise ConfigError(
                f"preproc must be a path to a JSON file, a dict or None, got {type(source).__name__}"
            )
        return cls._from_dict(data, origin)

    @classmethod
    def _from_dict(cls, data: Any, source: str | None) -> Preproc:
        return cls(*parse_preproc(data, source), source)

    # queries ----------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not (self.new_branches or self.flat_cuts or self.jagged_cuts)

    def cuts(self) -> Iterator[Cut]:
        """Every cut (of new branches, flat_cut and jagged_cut entries)."""
        for nb in self.new_branches:
            yield from nb.cuts
        for bc in self.flat_cuts + self.jagged_cuts:
            yield from bc.cuts

    def new_branch_kinds(self) -> dict[str, str]:
        return {nb.name: nb.kind for nb in self.new_branches}

    def input_branches(self) -> set[str]:
        """Branches of the file this preprocessing reads (new-branch names excluded)."""
        names: set[str] = set()
        for nb in self.new_branches:
            names |= nb.expression.names
        for cut in self.cuts():
            names |= cut.expression.names
        names |= {bc.branch for bc in self.flat_cuts + self.jagged_cuts}
        return names - set(self.new_branch_kinds())

    def removed_branches(self) -> set[str]:
        """Branches that must not become features."""
        out: set[str] = set()
        for nb in self.new_branches:
            out |= set(nb.keys_to_remove)
            if nb.remove:
                out.add(nb.name)
        out |= {bc.branch for bc in self.flat_cuts + self.jagged_cuts if bc.remove}
        return out

    # validation -------------------------------------------------------------------------------
    def validate(self, kinds: Mapping[str, str], where: str = "the tree") -> None:
        """Check names and kinds against a tree's branches (``name -> "flat"|"jagged"``).

        Raises :class:`BranchNotFoundError` for unknown names (with close spellings) and
        :class:`ConfigError` for a new branch that shadows a branch of the tree, a flat_cut on a
        jagged branch (or the reverse), a declared ``type`` that does not match its definition, and
        a string (per-event) cut on a jagged condition.
        """
        new_kinds = self.new_branch_kinds()
        all_kinds = {**dict(kinds), **new_kinds}
        available = set(all_kinds)
        src = self.source

        def check_names(expr: Expression, path: str) -> None:
            for name in sorted(expr.names - available):
                raise unknown_name(name, where, available, f"preproc {path}: {expr.text!r}")

        for nb in self.new_branches:
            path = f"new_branch.{nb.name}"
            if nb.name in kinds:
                raise ConfigError(
                    f"new branch {nb.name!r} has the name of a branch of {where}; choose another name",
                    key=path,
                    source=src,
                )
            check_names(nb.expression, f"{path}.def")
            for name in nb.keys_to_remove:
                if name not in available:
                    raise BranchNotFoundError(
                        name, where, available, context=f"preproc {path}.keys_to_remove"
                    )
        for section, wanted, bcs in (
            ("flat_cut", "flat", self.flat_cuts),
            ("jagged_cut", "jagged", self.jagged_cuts),
        ):
            for bc in bcs:
                path = f"{section}.{bc.branch}"
                if bc.branch not in available:
                    raise BranchNotFoundError(bc.branch, where, available, context=f"preproc {path}")
                if all_kinds[bc.branch] != wanted:
                    other = "jagged_cut" if section == "flat_cut" else "flat_cut"
                    hint = (
                        ' with cut [expression, "any"|"all"]'
                        if other == "jagged_cut"
                        else " with a string cut"
                    )
                    raise ConfigError(
                        f"{bc.branch!r} is a {all_kinds[bc.branch]} branch; put it under {other}{hint}",
                        key=path,
                        source=src,
                    )
        for cut in self.cuts():
            check_names(cut.expression, cut.key)

        # kinds of results, known before reading any data
        for nb in self.new_branches:
            got = nb.expression.kind(all_kinds)
            if got != nb.kind:
                raise ConfigError(_kind_mismatch(nb, got), key=f"new_branch.{nb.name}.type", source=src)
        for cut in self.cuts():
            if cut.mode is None and cut.expression.kind(all_kinds) == "jagged":
                raise ConfigError(_jagged_flat_cut(cut), key=cut.key, source=src)

    # application ------------------------------------------------------------------------------
    def apply(self, arrays: ak.Array, cutflow: dict[str, int] | None = None) -> tuple[ak.Array, np.ndarray]:
        """Add the new branches to ``arrays`` and compute which events pass every cut.

        Returns ``(arrays with the new branch fields, keep)`` where ``keep`` is a boolean numpy
        array of ``len(arrays)``. Nothing is filtered here. With ``cutflow``, the events passing each
        cut on its own are added to ``cutflow[cut.key]`` (what the specs pass reports per file).
        """
        n = len(arrays)
        if self.is_empty():
            return arrays, np.ones(n, dtype=bool)
        fields = set(arrays.fields)
        new_values: dict[str, Any] = {}
        cache: dict[str, Any] = {}

        def lookup(name: str) -> Any:
            if name in new_values:
                return new_values[name]
            if name in cache:
                return cache[name]
            if name not in fields:
                raise BranchNotFoundError(
                    name, "the arrays", fields | set(self.new_branch_kinds()), context="preproc"
                )
            value = cache[name] = flat_to_numpy(arrays[name])
            return value

        for nb in self.new_branches:
            value = nb.expression.evaluate(lookup, n)
            got = kind_of(value)
            if got != nb.kind:
                raise ConfigError(
                    _kind_mismatch(nb, got), key=f"new_branch.{nb.name}.type", source=self.source
                )
            new_values[nb.name] = value

        keep = np.ones(n, dtype=bool)
        for cut in self.cuts():
            passed = self._mask(cut, lookup, n)
            if cutflow is not None:
                cutflow[cut.key] = cutflow.get(cut.key, 0) + int(np.count_nonzero(passed))
            keep &= passed
        return _with_fields(arrays, new_values), keep

    def _mask(self, cut: Cut, lookup: Any, n: int) -> np.ndarray:
        value = cut.expression.evaluate(lookup, n)
        if is_jagged(value):
            if cut.mode is None:
                raise ConfigError(_jagged_flat_cut(cut), key=cut.key, source=self.source)
            reduce = ak.any if cut.mode == "any" else ak.all
            while is_jagged(value):
                value = reduce(value, axis=-1)
        if isinstance(value, ak.Array):
            value = ak.to_numpy(ak.fill_none(value, False), allow_missing=False)
        value = np.asarray(value)
        if value.shape != (n,):
            raise ConfigError(
                f"the cut {cut.expression.text!r} gives shape {value.shape}, expected one value per event ({n})",
                key=cut.key,
                source=self.source,
            )
        return value if value.dtype == np.bool_ else value.astype(bool)

    # serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The preproc.json content (canonical: booleans for remove, no empty sections)."""
        out: dict[str, Any] = {}
        if self.new_branches:
            section = {}
            for nb in self.new_branches:
                entry: dict[str, Any] = {"def": nb.expression.text, "type": nb.kind}
                entry.update({c.local_key: c.to_json() for c in nb.cuts})
                entry["remove"] = nb.remove
                if nb.keys_to_remove:
                    entry["keys_to_remove"] = list(nb.keys_to_remove)
                section[nb.name] = entry
            out["new_branch"] = section
        for key, bcs in (("flat_cut", self.flat_cuts), ("jagged_cut", self.jagged_cuts)):
            if bcs:
                out[key] = {
                    bc.branch: {**{c.local_key: c.to_json() for c in bc.cuts}, "remove": bc.remove}
                    for bc in bcs
                }
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (sorted keys)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preproc) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Preproc(new_branches={[nb.name for nb in self.new_branches]}, "
            f"flat_cuts={[bc.branch for bc in self.flat_cuts]}, jagged_cuts={[bc.branch for bc in self.jagged_cuts]})"
        )


def _kind_mismatch(nb: NewBranch, got: str) -> str:
    hint = (
        ' (reduce it per event with min max sum mean count any all, or declare type "jagged")'
        if got == "jagged"
        else ' (declare type "flat")'
    )
    return (
        f"new branch {nb.name!r} is declared {nb.kind} but {nb.expression.text!r} gives a {got} array{hint}"
    )


def _jagged_flat_cut(cut: Cut) -> str:
    text = cut.expression.text
    return (
        f"the cut {text!r} gives a list of values per event (jagged); write it as "
        f'[{json.dumps(text)}, "any"] or [{json.dumps(text)}, "all"]'
    )


def _with_fields(arrays: ak.Array, new: Mapping[str, Any]) -> ak.Array:
    """``arrays`` with the fields in ``new`` added (or replaced), sharing the existing buffers."""
    if not new:
        return arrays
    layout = arrays.layout
    if isinstance(layout, ak.contents.RecordArray) and not layout.is_tuple:
        fields = list(layout.fields)
        contents = list(layout.contents)
        for name, value in new.items():
            content = ak.to_layout(value)
            if name in fields:
                contents[fields.index(name)] = content
            else:
                fields.append(name)
                contents.append(content)
        record = ak.contents.RecordArray(contents, fields, length=layout.length, parameters=layout.parameters)
        return ak.Array(record, behavior=arrays.behavior, attrs=arrays.attrs)
    out = arrays
    for name, value in new.items():
        out = ak.with_field(out, value, name)
    return out
