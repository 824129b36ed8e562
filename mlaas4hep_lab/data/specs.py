"""The first pass: per-branch min/max/mean/std, jagged lengths, events per file; specs.json.

The JSON keeps the original's keys (``jdim minv maxv fkeys jkeys nans events``) and adds ``version``,
``features`` (the ordered feature names), ``files`` (path, size, modification time, entries) and a
``fingerprint`` of the settings it depends on, so that a stale specs file is detected, not reused.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data._partial import PartStats, Totals, _Stats, chunk_ranges, part_list, read_chunk
from mlaas4hep_lab.data._pipeline import pipelined
from mlaas4hep_lab.data.plan import Plan, events_to_use, make_plan
from mlaas4hep_lab.data.reader import BlockReader, TreeReader, open_readers
from mlaas4hep_lab.data.vectorize import LEGACY_PADDING, _padding, feature_names
from mlaas4hep_lab.errors import ConfigError, InputFileError, SpecsError, StaleSpecsError
from mlaas4hep_lab.params import Params

__all__ = ["Specs", "compute_specs", "load_specs", "specs_fingerprint", "SPECS_VERSION"]

log = logging.getLogger(__name__)
SPECS_VERSION = 1
_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass
class Specs:
    """What the first pass learnt about the files; it fixes the feature layout and the normalisation."""

    fkeys: list[str]
    jkeys: list[str]
    jdim: dict[str, int]
    minv: dict[str, float]
    maxv: dict[str, float]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    nans: dict[str, float] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)      # after cuts: "total" and per file
    files: list[dict[str, Any]] = field(default_factory=list)  # path, size, mtime, entries (before cuts)
    jagged_max: dict[str, int] = field(default_factory=dict)   # longest list seen, before any cap
    jagged_quantiles: dict[str, dict[str, float]] = field(default_factory=dict)
    tree: str = "events"
    identifier: list[str] = field(default_factory=list)
    weight: str = ""
    normalization: str = "minmax"
    missing_values: list[float] = field(default_factory=list)
    fingerprint: str = ""
    version: int = SPECS_VERSION
    features: list[str] = field(default_factory=list)
    # the padding mode (mlaas4hep_lab.data.vectorize) fixes part of the feature list; specs files written
    # before it existed have no key and keep their layout ("zeros")
    padding: str = LEGACY_PADDING
    jagged_groups: list[list[str]] = field(default_factory=list)  # jagged branches of equal lengths
    # what the checks before training read (mlaas4hep_lab.data.validation); absent from older specs files
    cutflow: dict[str, dict[str, Any]] = field(default_factory=dict)      # per file: read, cuts, passed
    split_events: dict[str, Any] = field(default_factory=dict)            # split, seed, per file [train, val, test]
    nonfinite: dict[str, dict[str, Any]] = field(default_factory=dict)    # per branch: nan, inf, values, files
    # the per-event truth (mlaas4hep_lab.data.truth): a label's events per class and split, or the
    # regression targets' moments and NaN/inf counts; empty when the files' labels are the truth
    truth: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.features:
            try:
                self.features = feature_names(self.fkeys, self.jdim, self.padding, self.jagged_groups)
            except ConfigError as err:
                raise SpecsError(f"specs: {err}; written by a newer version? recompute them") from None

    @property
    def n_features(self) -> int:
        return len(self.features)

    def plan_read(self) -> list[str]:
        return sorted(set(self.fkeys) | set(self.jkeys))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Specs:
        missing = [k for k in ("jdim", "minv", "maxv", "fkeys", "jkeys") if k not in data]
        if missing:
            raise SpecsError(f"{source or 'specs'}: missing keys {missing}; not a specs file?")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        specs = cls(**known)
        if specs.version > SPECS_VERSION:
            raise SpecsError(f"{source}: specs version {specs.version} is newer than this package supports")
        return specs

    def check(self, files: Sequence[str], fingerprint: str, source: str = "specs.json") -> None:
        """Raise StaleSpecsError when these specs were computed for other files or settings."""
        hint = (f" Recompute it with `mlaas4hep specs --files FILES --labels LABELS --params PARAMS "
                f"[--preproc PREPROC] --fout {source}`, or delete it.")
        if self.fingerprint and fingerprint != self.fingerprint:
            raise StaleSpecsError(f"{source} was computed with other params (tree, branch selection, "
                                  "identifiers, weight, nevts, missing values, jagged lengths, padding) or another "
                                  "preproc.json." + hint)
        if not self.files:
            return  # an original-format specs file: nothing to compare
        known = [f["path"] for f in self.files]
        if [os.path.basename(p) for p in known] != [os.path.basename(p) for p in files]:
            raise StaleSpecsError(f"{source} lists files {known}, not {list(files)}." + hint)
        for entry, path in zip(self.files, files):
            info = sources.file_info(path)
            for key, now in (("size", info.size), ("mtime", info.mtime)):
                then = entry.get(key)
                if then is not None and now is not None and abs(float(then) - float(now)) > 1e-3:
                    raise StaleSpecsError(f"{source} is stale: {path} changed since it was computed "
                                          f"({key} {then} then, {now} now)." + hint)


def load_specs(path: str | os.PathLike) -> Specs:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"specs file not found: {path}", str(path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpecsError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    return Specs.from_dict(data, str(path))


def specs_fingerprint(params: Params, preproc=None) -> str:
    """A hash of every setting the specs depend on."""
    keys = ("branch", "selected_branches", "exclude_branches", "identifier", "weight", "nevts",
            "missing_values", "max_jagged_length", "normalization")
    payload = {k: getattr(params, k) for k in keys}
    payload["preproc"] = preproc.fingerprint() if preproc is not None and not preproc.is_empty() else ""
    if params.padding != LEGACY_PADDING:  # absent for "zeros", so specs written before the key still match
        payload["padding"] = params.padding
    if params.layout == "objects" and not _padding(params.padding).counts:  # the groups of the collections
        payload["layout"] = params.layout
    if params.label or params.target:  # the truth's branches are no features; absent for file labels
        payload["truth"] = [params.task, params.label, params.target]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jagged_caps(cap: Any, jagged: Sequence[str]) -> dict[str, Any]:
    """The ``max_jagged_length`` rule of each jagged branch. A mapping's keys are branch names or wildcards
    (``"Jet_*"``; an exact name wins over a pattern, earlier patterns over later ones); a key that matches no
    jagged branch is an error, not a silently uncapped collection."""
    if not isinstance(cap, dict):
        return {name: cap for name in jagged}
    rules: dict[str, Any] = {}
    for key, rule in cap.items():
        matched = [key] if key in jagged else fnmatch.filter(jagged, key)
        if not matched:
            close = difflib.get_close_matches(key, jagged, n=3, cutoff=0.5)
            hint = f"; did you mean {close}?" if close else f"; the jagged branches are {sorted(jagged)[:20]}"
            raise ConfigError(f"{key!r} names no jagged branch{hint}", "max_jagged_length")
        for name in matched:
            rules.setdefault(name, rule)
    rules.update({key: rule for key, rule in cap.items() if key in jagged})  # exact names win
    return rules


def _jdim(name: str, true_max: int, stats: _Stats, cap: Any) -> int:
    rule = cap.get(name) if isinstance(cap, dict) else cap
    if rule is None:
        return true_max
    if isinstance(rule, float) and 0 < rule < 1:
        return max(1, min(true_max, stats.quantile(rule)))
    return min(true_max, int(rule))


def _entry_plan(files: Sequence[str], params: Params, preproc, readers: list[TreeReader]) -> Plan:
    plan = make_plan(readers[0], params, preproc)
    for reader in readers[1:]:
        other = make_plan(reader, params, preproc)
        if other.features != plan.features:
            diff = sorted(set(plan.features) ^ set(other.features))
            raise ConfigError(
                f"{reader.path} does not have the same feature branches as {readers[0].path}: "
                f"differs in {diff[:10]}. Select common branches with params 'selected_branches' or "
                "'exclude_branches'.", "selected_branches",
            )
    return plan


def compute_specs(files: Sequence[str], params: Params, preproc=None, progress: bool | None = None,
                  readers: list[TreeReader] | None = None, dask=None) -> Specs:
    """Run the first pass over ``files`` (chunk by chunk, bounded memory) and return the specs.

    ``dask``: run it on a Dask cluster (an address such as ``"local:2"``, a ``distributed.Client`` or a
    :class:`~mlaas4hep_lab.cluster.connect.Cluster`; see :func:`~mlaas4hep_lab.cluster.connect.connect`),
    one task per part of a file; the specs are the same as without.

    Example::

        specs = compute_specs(["sig.root", "bkg.root"], load_params("params.json"))
        specs.save("specs.json")
    """
    own = readers is None
    readers = readers or open_readers(files, params.branch, params.retries)
    try:
        plan = _entry_plan(files, params, preproc, readers)
        use = events_to_use([r.num_entries for r in readers], params.nevts)
        # the parts of the files (cut on cluster boundaries): the local pass accumulates each on its own and
        # merges them in order, as the cluster does, so both give the same numbers
        parts = part_list(readers, plan, use, params.chunk_size)
        totals = Totals(plan, len(readers))
        show = params.verbose > 0 if progress is None else progress
        bar = _progress(sum(use), "specs", show)
        t0 = time.perf_counter()
        if dask is not None:
            from mlaas4hep_lab.cluster.specs_pass import run_parts

            where = run_parts(dask, [r.path for r in readers], params, preproc, plan, parts, totals, bar)
        else:
            _local_pass(readers, params, preproc, plan, parts, totals, bar)
            where = "in this process"
        bar.close()
        log.info("specs pass: %d events in %.1fs %s", sum(use), time.perf_counter() - t0, where)
    finally:
        if own:
            for r in readers:
                r.close()
    events: dict[str, int] = {"total": 0}
    nonfinite: dict[str, dict[str, list[int]]] = {}
    for reader, tally, counts in zip(readers, totals.tallies, totals.file_counts):
        _end_of_file(reader.path, tally, counts, events, nonfinite)
    stats = totals.stats
    specs = _finish(stats, plan, params, preproc, events, readers, use)
    from mlaas4hep_lab.data.validation import log_warnings, tallies_to_json

    specs.cutflow, specs.split_events = tallies_to_json(totals.tallies, [r.path for r in readers], params)
    specs.truth = totals.truth.to_json() if totals.truth is not None else {}
    specs.nonfinite = {
        name: {"values": int(stats[name].counts[0]), "nan": int(stats[name].counts[1]),
               "inf": int(stats[name].counts[2]),
               "files": {path: dict(zip(("values", "nan", "inf"), c)) for path, c in per_file.items()}}
        for name, per_file in sorted(nonfinite.items())
    }
    log_warnings(specs, preproc)
    return specs


def _local_pass(readers: list[TreeReader], params: Params, preproc, plan: Plan, parts: list, totals: Totals,
                bar) -> None:
    """The parts read in this process, each as :func:`~mlaas4hep_lab.data._partial.read_part` reads it,
    but pipelined: one thread reads the next chunk while another adds the last to the statistics."""
    ranges = [(p, a, b) for p, (_, start, stop) in enumerate(parts)
              for a, b in chunk_ranges(start, stop, params.chunk_size)]
    missing = np.asarray(params.missing_values, dtype=np.float64)
    blocks: dict[int, BlockReader] = {}
    current: dict[int, PartStats] = {}

    def read(j: int) -> tuple[PartStats, list]:
        p, start, stop = ranges[j]
        i, first, last = parts[p]
        if start == first:  # a new part: its own blocks and statistics, as on a worker
            blocks[p], current[p] = BlockReader(readers[i], plan.read), PartStats(plan)
        pieces = read_chunk(blocks[p], start, stop, preproc, current[p].tally.cuts)
        if stop == last:
            del blocks[p]
        return current[p], pieces

    def update(j: int, item: tuple[PartStats, list]) -> None:
        p, start, stop = ranges[j]
        i, _, last = parts[p]
        part, pieces = item
        for first, arrays, keep in pieces:
            part.add(readers[i].path, first, arrays, keep, plan, params, missing)
        pieces.clear()
        bar.update(stop - start)
        if stop == last:
            totals.merge(i, current.pop(p))

    for _ in pipelined(read, update, len(ranges), 1):
        pass


def _end_of_file(path: str, tally, counts: dict[str, np.ndarray], events: dict, nonfinite: dict) -> None:
    """Book a file's events and the NaN/inf counts of its branches."""
    events[path] = tally.passed
    events["total"] += tally.passed
    for name, here in counts.items():
        if here[1] or here[2]:
            nonfinite.setdefault(name, {})[path] = here.tolist()


def _finish(stats, plan: Plan, params: Params, preproc, events, readers, use) -> Specs:
    minv, maxv, mean, std, nans = {}, {}, {}, {}, {}
    for name, st in stats.items():
        lo, hi = (st.lo, st.hi) if st.n else (0.0, 0.0)
        minv[name], maxv[name] = float(lo), float(hi)
        mean[name] = float(st.mean)
        std[name] = float(np.sqrt(st.m2 / st.n)) if st.n else 0.0
        nans[name] = float(hi) if hi == lo else float((0 - lo) / (hi - lo))  # the original's key
    jagged_max, jq, jdim = {}, {}, {}
    caps = _jagged_caps(params.max_jagged_length, list(plan.jagged))
    for name in plan.jagged:
        st = stats[name]
        jagged_max[name] = int(st.lengths.size - 1 if st.lengths.any() else 0)
        jq[name] = {str(q): st.quantile(q) for q in _QUANTILES}
        jdim[name] = _jdim(name, jagged_max[name], st, caps)
    groups: list[list[str]] = []
    if _padding(params.padding).counts or params.layout == "objects":  # objects: the collections
        groups = _collections(stats, plan.jagged, (minv, maxv, mean, std))
    files = []
    for reader, n in zip(readers, use):
        info = sources.file_info(reader.path)
        files.append({"path": reader.path, "size": info.size, "mtime": info.mtime,
                      "entries": reader.num_entries, "used": n})
    return Specs(
        fkeys=sorted(plan.flat), jkeys=sorted(plan.jagged), jdim=jdim, minv=minv, maxv=maxv, mean=mean,
        std=std, nans=nans, events=events, files=files, jagged_max=jagged_max, jagged_quantiles=jq,
        tree=params.branch, identifier=list(plan.ids), weight=plan.weight,
        normalization=params.normalization, missing_values=list(params.missing_values),
        fingerprint=specs_fingerprint(params, preproc), padding=params.padding, jagged_groups=groups,
    )


def _collections(stats, jagged: Sequence[str], moments: tuple[dict, dict, dict, dict]) -> list[list[str]]:
    """The jagged branches grouped by equal length in every event after cuts (a collection: ``Jet_pt``,
    ``Jet_eta``, ...); each group's multiplicity feature gets the min, max, mean and std of its lengths."""
    by_digest: dict[tuple[int, bytes], list[str]] = {}
    for name in sorted(jagged):
        st = stats[name]
        by_digest.setdefault((st.lengths_crc, st.lengths.tobytes()), []).append(name)
    groups = sorted(by_digest.values(), key=lambda group: group[0])
    for group in groups:
        hist = stats[group[0]].lengths.astype(np.float64)
        n, length = hist.sum(), np.arange(hist.size, dtype=np.float64)
        seen = np.flatnonzero(hist)
        mu = float(hist @ length / n) if n else 0.0
        values = (float(seen[0]), float(seen[-1]), mu, float(np.sqrt(hist @ (length - mu) ** 2 / n))) \
            if n else (0.0, 0.0, 0.0, 0.0)
        for table, value in zip(moments, values):
            table[f"len({group[0]})"] = value
    return groups


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="evt", unit_scale=True, leave=False)
