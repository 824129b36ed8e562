"""What to read and what becomes a feature, decided once from the params, the preprocessing and the tree.

A :class:`Plan` is shared by the specs pass, the stream and inference, so they agree on the branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mlaas4hep_lab.data.reader import TreeReader, select_branches
from mlaas4hep_lab.data.truth import Truth
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError
from mlaas4hep_lab.params import Params

__all__ = ["Plan", "make_plan", "events_to_use"]


@dataclass
class Plan:
    """Branch roles: ``read`` from the file, ``flat``/``jagged`` features (new branches included),
    ``ids`` kept beside the features, ``weight`` the per-event weight branch (or ""), ``truth`` the
    per-event label or regression targets (their branches are read but never features)."""

    read: list[str]
    flat: list[str]
    jagged: list[str]
    ids: list[str] = field(default_factory=list)
    weight: str = ""
    truth: Truth | None = None      # per-event label or regression targets (None: the file's label)

    @property
    def features(self) -> list[str]:
        return sorted(self.flat) + sorted(self.jagged)


def make_plan(reader: TreeReader, params: Params, preproc=None) -> Plan:
    """Decide the branch roles for ``reader``'s tree.

    Raises BranchNotFoundError (with close spellings) for a selected, excluded, identifier, weight or
    expression branch that is not in the tree.
    """
    kinds = reader.kinds()
    where = f"tree {reader.tree_name!r} of {reader.path}"
    reader.check(params.identifier, "params 'identifier'")
    if params.weight:
        reader.check([params.weight], "params 'weight'")
        if kinds[params.weight] != "flat":
            raise ConfigError(f"weight branch {params.weight!r} must be flat (one number per event)", "weight")
    new_kinds: dict[str, str] = {}
    removed: set[str] = set()
    needed: set[str] = set()
    if preproc is not None and not preproc.is_empty():
        preproc.validate(kinds, where)
        new_kinds = preproc.new_branch_kinds()
        removed = set(preproc.removed_branches())
        needed = set(preproc.input_branches())
    for name in params.identifier:
        if kinds[name] != "flat":
            raise ConfigError(f"identifier branch {name!r} must be flat (one number per event)", "identifier")
    available = list(kinds)
    candidates = available + [b for b in new_kinds if b not in kinds]
    features = select_branches(candidates, params.selected_branches, params.exclude_branches, where)
    if params.selected_branches:  # new branches are features unless excluded or removed
        kept = set(select_branches(candidates, [], params.exclude_branches, where))
        features += [b for b in new_kinds if b not in features and b in kept]
    not_features = set(params.identifier) | ({params.weight} if params.weight else set()) | removed
    truth = Truth.from_params(params)
    truth_branches: set[str] = set()
    if truth is not None:
        truth.check(kinds, new_kinds, where)
        truth_branches = truth.file_branches(kinds, preproc)
        # what the truth is computed from is never an input: a model would learn to copy it
        not_features |= truth_branches | truth.names()
    features = [b for b in dict.fromkeys(features) if b not in not_features]
    flat = sorted(b for b in features if kinds.get(b, new_kinds.get(b)) == "flat")
    jagged = sorted(b for b in features if kinds.get(b, new_kinds.get(b)) == "jagged")
    if not flat and not jagged:
        raise ConfigError(
            f"no feature branches left in {where} after selected_branches/exclude_branches/identifier/"
            "preprocessing; check those settings", "selected_branches",
        )
    read = [b for b in features if b in kinds]
    read += [b for b in (*params.identifier, params.weight, *sorted(needed), *sorted(truth_branches))
             if b and b in kinds]
    missing = [b for b in needed if b not in kinds and b not in new_kinds]
    if missing:
        raise BranchNotFoundError(missing[0], where, available, context="preprocessing")
    return Plan(list(dict.fromkeys(read)), flat, jagged, list(params.identifier), params.weight, truth)


def events_to_use(entries: Sequence[int], nevts: int) -> list[int]:
    """Entries to use per file: all (``nevts=-1``) or ``nevts`` split across files in proportion to size."""
    entries = [int(e) for e in entries]
    total = sum(entries)
    if nevts < 0 or nevts >= total:
        return entries
    share = np.floor(np.asarray(entries, dtype=np.float64) * nevts / total).astype(np.int64)
    # hand the rounding remainder to the largest files so the total is exactly nevts
    rest = nevts - int(share.sum())
    for i in np.argsort(entries)[::-1][:rest]:
        share[i] += 1
    return [int(min(s, e)) for s, e in zip(share, entries)]
