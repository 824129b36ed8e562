"""Checks that stop a training whose result could not be trusted, before it starts.

The rules (README "Validation"):

* **Labels** fit the task. The binary task takes ``1`` (signal) and ``0`` (background); ``1.0``/``0.0``,
  ``true``/``false`` (any case) and JSON booleans are read as the same. Anything else (``2``, ``0.7``,
  ``-1``, ``nan``, a word) is a :class:`~mlaas4hep_lab.errors.LabelsError` naming labels.txt's line, the
  file it labels and the value. A multi-class task takes the class indices 0..K-1 (K: params ``classes``,
  else the largest label plus one, and every class needs files); a regression ignores labels.txt. A
  per-event truth (params ``label`` or ``target``) is checked by :mod:`.validation_truth`.
* **Each file once.** Two entries naming the same file (the same URL, or the same local file through two
  spellings: ``a.root`` and ``./x/../a.root``, a symbolic or hard link) are a
  :class:`~mlaas4hep_lab.errors.DuplicateFileError` naming both lines.
* **Events** (:class:`~mlaas4hep_lab.errors.DataError`): some event must pass the cuts; each class must
  have files and events after the cuts; the train, validation and test splits (those with a non-zero
  fraction) must each hold both classes. The messages give, per file, the entries read and the events each
  cut keeps on its own.
* **Non-finite values.** NaN and inf in a feature (typically made by an expression: ``log(x - 1000)``,
  ``a / b``) are counted per branch and per file in the specs pass and stored in specs.json
  (``nonfinite``). Some: a warning with the counts (they are masked like missing values). All of them, or
  all of one class's: an error (the feature would be constant, or would tell the classes apart by itself).

Everything is counted in the specs pass, on whole chunks (:class:`FileTally`): per file the entries read,
the events passing each cut, and the events after every cut in each split (the split of an event is the
same hash of file name, entry and seed the stream uses). Specs files without these counts (older ones, or
computed with another ``split`` or ``seed``) get them from :func:`count_events`, a pass that reads only the
branches the cuts need.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.plan import events_to_use
from mlaas4hep_lab.data.reader import BlockReader, open_readers
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.data.stream import SPLITS, split_of
from mlaas4hep_lab.data.validation_truth import check_truth
from mlaas4hep_lab.errors import (
    ConfigError,
    DuplicateFileError,
    InputFileError,
    LabelsError,
    MissingClassError,
    NoEventsError,
    NonFiniteError,
)
from mlaas4hep_lab.params import Params

__all__ = ["TASKS", "check_labels", "read_labels", "check_unique_files", "FileTally", "count_events",
           "check_specs", "check_training_data", "specs_warnings", "log_warnings"]

log = logging.getLogger(__name__)

# label value -> class name of the binary task; a multi-class task's labels are 0..K-1 (names: params
# "classes"); a regression's labels.txt is optional and its values unused
TASKS: dict[str, dict[float, str]] = {"binary": {1.0: "signal", 0.0: "background"}, "multiclass": {},
                                      "regression": {}}
_MULTICLASS = 'For more than two classes set params "task": "multiclass" (labels 0..K-1).'
_LISTED = 5  # files named in a one-line message before "and N more"


# ------------------------------------------------------------------------------------------ labels
def _classes(task: str, params: Params | None = None, labels: Sequence[float] = ()) -> dict[float, str]:
    """Label value -> class name: binary, signal and background (or params ``classes``); multiclass,
    0..K-1 with K the number of params ``classes`` or the largest label plus one; regression, none."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; supported: {', '.join(TASKS)}. {_MULTICLASS}", "task")
    names = list(getattr(params, "classes", None) or [])
    if task == "binary":
        return {1.0: names[1], 0.0: names[0]} if len(names) == 2 else TASKS[task]
    if task == "multiclass":
        k = len(names) or (int(max(labels)) + 1 if len(labels) else 0)
        return {float(i): names[i] if names else f"class {i}" for i in range(k)}
    return {}


def _number(raw: Any) -> float | None:
    """The label as a float, or None when it is not a number (true/false count as 1/0)."""
    if isinstance(raw, (bool, np.bool_)):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("true", "false"):
            return float(text == "true")
        try:
            return float(text)
        except ValueError:
            return None
    return float(raw) if isinstance(raw, numbers.Real) else None


def check_labels(values: Sequence[Any], task: str = "binary", source: str | None = None,
                 lines: Sequence[int] | None = None, files: Sequence[str] | None = None) -> list[float]:
    """The labels as floats of the task's classes; LabelsError names the first bad one.

    ``lines``: labels.txt line numbers of ``values`` (else they are named by position); ``files``: the
    file each label belongs to, named in the message.

    Example::

        check_labels(["1", "0"])            # [1.0, 0.0]
        check_labels([2, 0, 1])             # LabelsError: label 1: 2 is not a label of the binary task ...
    """
    classes = _classes(task)
    out = []
    for i, raw in enumerate(values):
        value = _number(raw)
        if task == "regression" and value is not None and np.isfinite(value):
            out.append(value + 0.0)  # unused: the targets are the truth
            continue
        if task == "multiclass" and value is not None and value >= 0 and float(value).is_integer():
            out.append(value + 0.0)
            continue
        if value is None or value not in classes:  # NaN is never in classes
            where = f"line {lines[i]}" if lines is not None else f"label {i + 1}"
            of = f" (for {files[i]})" if files is not None and i < len(files) else ""
            shown = raw.strip() if isinstance(raw, str) else repr(raw) if value is None else f"{value:g}"
            what = "is not a number" if value is None else f"is not a label of the {task} task"
            if task == "multiclass":
                raise LabelsError(f"{where}{of}: {shown} {what}; a multi-class task takes the class index 0, 1, "
                                  "... K-1 (the class names go in params \"classes\")", source=source)
            if task == "regression":
                raise LabelsError(f"{where}{of}: {shown} is not a number (a regression does not need labels.txt: "
                                  "its truth is params \"target\")", source=source)
            accepted = ", ".join(f"{k:g} ({v})" for k, v in classes.items())
            raise LabelsError(f"{where}{of}: {shown} {what}; use {accepted} (1.0/0.0 and true/false are read "
                              f"the same). {_MULTICLASS}", source=source)
        out.append(value + 0.0)  # -0.0 -> 0.0
    return out


def _numbered_lines(path: str | os.PathLike, what: str) -> list[tuple[int, str]]:
    """(line number, text) of the entries of files.txt / labels.txt: ``#`` comments and blank lines
    skipped, as :mod:`mlaas4hep_lab.data.sources` reads them."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{what} file not found: {p}", str(p))
    out = []
    for number, raw in enumerate(p.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if text:
            out.append((number, text))
    if not out:
        raise InputFileError(f"{what} file {p} lists nothing (only blank lines or # comments)", str(p))
    return out


def read_labels(path: str | os.PathLike, n_files: int | None = None, task: str = "binary",
                files: Sequence[str] | None = None) -> list[float]:
    """Read labels.txt (one label per line, matched to files.txt by order) and check each label."""
    entries = _numbered_lines(path, "labels")
    if n_files is not None and len(entries) != n_files:
        raise LabelsError(f"{len(entries)} labels for {n_files} files: labels.txt needs one label per line of "
                          "files.txt, in the same order", source=str(path))
    return check_labels([t for _, t in entries], task, str(path), [n for n, _ in entries], files)


# ------------------------------------------------------------------------------------------- files
_SLASHES = re.compile(r"/{2,}")


def _identity(path: str) -> tuple:
    """What makes two entries the same file: device and inode of a local file (links and any spelling
    of its path), else its real path; a URL with scheme and host lower-cased and repeated slashes of the
    path folded (``root://host//a`` and ``root://host/a`` name the same file)."""
    if sources.is_remote(path):
        scheme, rest = path.split("://", 1)
        host, _, tail = rest.partition("/")
        return ("url", scheme.lower(), host.lower(), _SLASHES.sub("/", "/" + tail))
    local = path[len("file://"):] if path.startswith("file://") else path
    try:
        st = os.stat(local)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:  # missing: reported when it is opened; compare what the path resolves to
        return ("path", os.path.realpath(local))


def check_unique_files(files: Sequence[str], source: str | os.PathLike | None = None,
                       labels: Sequence[float] | None = None) -> None:
    """DuplicateFileError when two entries of ``files`` are the same file (``source``: files.txt, whose
    line numbers are then named)."""
    seen: dict[tuple, int] = {}
    for i, path in enumerate(files):
        first = seen.setdefault(_identity(str(path)), i)
        if first == i:
            continue
        if source is not None and Path(source).is_file():
            numbers_ = [n for n, _ in _numbered_lines(source, "files list")]
            where = f"lines {numbers_[first]} and {numbers_[i]}"
        else:
            where = f"entries {first + 1} and {i + 1}"
        same = files[first] if files[first] == path else f"{files[first]} and {path}"
        tagged = ""
        if labels is not None and labels[first] != labels[i]:
            tagged = f", once with label {labels[first]:g} and once with label {labels[i]:g}"
        raise DuplicateFileError(f"{where} name the same file ({same}){tagged}: its events would count twice. "
                                 "List each file once", source=None if source is None else str(source))


# ------------------------------------------------------------------------------------------ counts
@dataclass
class FileTally:
    """Counts of one file in one pass, gathered chunk by chunk: entries read, events passing each cut on
    its own (``cuts``, filled by ``Preproc.apply(arrays, cutflow=tally.cuts)``), and events passing every
    cut in each split (train, validation, test)."""

    read: int = 0
    cuts: dict[str, int] = field(default_factory=dict)
    splits: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))

    def add(self, path: str, first: int, n: int, keep: np.ndarray | None, params: Params) -> None:
        """Entries ``first .. first+n-1`` of ``path`` were read; ``keep``: those passing every cut."""
        self.read += n
        entries = np.arange(first, first + n, dtype=np.int64)
        if keep is not None:
            entries = entries[keep]
        self.splits += np.bincount(split_of(path, entries, params.split, params.seed), minlength=3)[:3]

    @property
    def passed(self) -> int:
        return int(self.splits.sum())

    def cutflow(self) -> dict[str, Any]:
        return {"read": self.read, "cuts": dict(self.cuts), "passed": self.passed}


def tallies_to_json(tallies: Sequence[FileTally], keys: Sequence[str], params: Params):
    """(``cutflow``, ``split_events``) as specs.json stores them, keyed by file path."""
    cutflow = {key: t.cutflow() for key, t in zip(keys, tallies)}
    split_events = {"split": [float(f) for f in params.split], "seed": int(params.seed),
                    "files": {key: [int(v) for v in t.splits] for key, t in zip(keys, tallies)}}
    return cutflow, split_events


def count_events(files: Sequence[str], params: Params, preproc=None, keys: Sequence[str] | None = None):
    """Count what :class:`FileTally` holds without a specs pass: only the branches the cuts need are
    read (nothing at all without cuts). Returns (``cutflow``, ``split_events``) as in specs.json."""
    has_cuts = preproc is not None and any(True for _ in preproc.cuts())
    readers = open_readers(files, params.branch, params.retries)
    try:
        use = events_to_use([r.num_entries for r in readers], params.nevts)
        tallies = []
        for reader, n in zip(readers, use):
            tally = FileTally()
            blocks = BlockReader(reader, sorted(preproc.input_branches())) if has_cuts else None
            for start in range(0, n, params.chunk_size):
                stop = min(start + params.chunk_size, n)
                if blocks is None:
                    tally.add(reader.path, start, stop - start, None, params)
                    continue
                for first, arrays in blocks.read(start, stop):
                    _, keep = preproc.apply(arrays, cutflow=tally.cuts)
                    tally.add(reader.path, first, len(arrays), keep, params)
            tallies.append(tally)
    finally:
        for r in readers:
            r.close()
    return tallies_to_json(tallies, list(keys or files), params)


# ------------------------------------------------------------------------------------------ checks
@dataclass
class _File:
    key: str                  # the file's path as specs.json keys it
    name: str                 # as messages show it
    label: float | None
    read: int | None
    cuts: dict[str, int]
    passed: int | None
    splits: np.ndarray | None


def _short_names(paths: Sequence[str]) -> list[str]:
    """Base names, unless two files share one."""
    base = [os.path.basename(str(p).rstrip("/")) or str(p) for p in paths]
    return base if len(set(base)) == len(base) else [str(p) for p in paths]


def _keys(specs: Specs, files: Sequence[str]) -> list[str]:
    # specs.check compares files by base name, so the specs may key the same files by other folders
    return [f["path"] for f in specs.files] if len(specs.files) == len(files) else [str(f) for f in files]


def _splits_match(specs: Specs, params: Params, keys: Sequence[str]) -> bool:
    counted = specs.split_events or {}
    return (counted.get("seed") == params.seed
            and [float(f) for f in counted.get("split", [])] == [float(f) for f in params.split]
            and all(k in counted.get("files", {}) for k in keys))


def _files(inputs, specs: Specs, need_splits: bool) -> list[_File]:
    """Per-file counts of ``specs``, counted again (:func:`count_events`) when the specs lack them or
    counted the splits with another ``split`` or ``seed``; the new counts are kept on ``specs``."""
    keys = _keys(specs, inputs.files)
    if not all(k in specs.cutflow for k in keys) or (need_splits and not _splits_match(specs, inputs.params, keys)):
        specs.cutflow, specs.split_events = count_events(inputs.files, inputs.params, inputs.preproc, keys)
    splits = (specs.split_events or {}).get("files", {})
    labels = list(inputs.labels) if inputs.labels is not None else [None] * len(keys)
    out = []
    for key, name, label in zip(keys, _short_names(inputs.files), labels):
        flow = specs.cutflow.get(key, {})
        counted = splits.get(key)
        out.append(_File(key, name, label, flow.get("read"), flow.get("cuts", {}),
                         flow.get("passed", specs.events.get(key)),
                         None if counted is None else np.asarray(counted, np.int64)))
    return out


def _cut_texts(preproc) -> dict[str, str]:
    if preproc is None:
        return {}
    return {c.key: repr(c.expression.text) + (f" ({c.mode})" if c.mode else "") for c in preproc.cuts()}


def _listed(items: Sequence[str]) -> str:
    more = f"; and {len(items) - _LISTED} more files" if len(items) > _LISTED else ""
    return "; ".join(items[:_LISTED]) + more


def _flow(f: _File, texts: dict[str, str]) -> str:
    parts = [f"{f.name}: {f.read:,} read" if f.read is not None else f.name]
    parts += [" ".join(filter(None, (key, texts.get(key), f"keeps {n:,}"))) for key, n in f.cuts.items()]
    if f.passed is not None:
        parts.append(f"all cuts keep {f.passed:,}" if f.cuts else f"{f.passed:,} events")
    return ", ".join(parts)


def _loosen(files: Sequence[_File]) -> str:
    tips = "(the Lab's Cuts tab previews each cut, `mlaas4hep inspect FILE` shows the branches)"
    if any(0 in f.cuts.values() for f in files):
        return (f"Loosen the cut that keeps 0: check its units, its direction and whether its expression gives "
                f"NaN (a comparison with NaN is false) {tips}")
    if any(f.cuts for f in files):
        return f"No cut removes every event alone, together they do: loosen one of them {tips}"
    return "Check files.txt, params 'nevts' and the tree (params 'branch')"


def _class_name(table: dict[float, str], label: float) -> str:
    return f"{table[label]} (label {label:g})"


def _task(params: Params) -> str:
    return getattr(params, "task", "binary")


def _check_events(files: Sequence[_File], texts: dict[str, str]) -> None:
    if files and all(f.passed == 0 for f in files):
        raise NoEventsError(f"no event is left after the cuts: {_listed([_flow(f, texts) for f in files])}. "
                            f"{_loosen(files)}")


def _check_classes(files: Sequence[_File], params: Params, texts: dict[str, str]) -> None:
    task = _task(params)
    if task == "regression" or params.label:
        return  # no class per file: the per-event truth is checked from the specs (validation_truth)
    table = _classes(task, params, [f.label for f in files])
    beyond = sorted({f.label for f in files} - set(table))
    if beyond:
        raise LabelsError(f"label {beyond[0]:g} but params \"classes\" names {len(table)} classes "
                          f"({', '.join(table.values())}): labels must be 0..{len(table) - 1}")
    for label in sorted(table, reverse=True):
        mine = [f for f in files if f.label == label]
        name = _class_name(table, label)
        if not mine:
            given = ", ".join(sorted({f"{f.label:g}" for f in files}))
            need = ("a binary classifier needs signal (1) and background (0) files" if task == "binary" else
                    f"a {len(table)}-class task needs files of every class 0..{len(table) - 1}")
            raise MissingClassError(f"no file has {name}: {need}; the labels given are {given}. Add "
                                    f"{table[label]} files to files.txt and their labels to labels.txt")
        if sum(f.passed or 0 for f in mine) == 0:
            raise MissingClassError(f"no {name} event is left after the cuts: "
                                    f"{_listed([_flow(f, texts) for f in mine])}. A classifier needs every "
                                    f"class. {_loosen(mine)}")
    for s, fraction in enumerate(params.split):
        if fraction <= 0:
            continue  # a split the user turned off
        for label in sorted(table, reverse=True):
            mine = [f for f in files if f.label == label]
            if sum(int(f.splits[s]) for f in mine) > 0:
                continue
            per = np.sum([f.splits for f in mine], axis=0)
            more = f" (params nevts is {params.nevts:,})" if params.nevts >= 0 else ""
            raise MissingClassError(
                f"the {SPLITS[s]} split has no {_class_name(table, label)} events: after the cuts, the "
                f"{table[label]} files ({_listed([f.name for f in mine])}) keep {int(per.sum()):,} events, "
                + ", ".join(f"{int(n):,} {SPLITS[i]}" for i, n in enumerate(per))
                + f" (params split {list(params.split)}, seed {params.seed}; an event's split is a hash of its "
                f"file name, entry and the seed). Use more events{more}, loosen the cuts, or change params "
                "'split' or 'seed'")


def _describe(branch: str, preproc) -> tuple[str, str]:
    """(what the branch is, how to fix it) for messages about its values."""
    for nb in preproc.new_branches if preproc is not None else ():
        if nb.name == branch:
            return (f"new branch {branch!r} = {nb.expression.text!r}",
                    f'fix its definition (preproc.json new_branch.{branch}.def) or keep it out of the features '
                    'with "remove": true')
    return f"branch {branch!r}", "leave it out of the features with params 'exclude_branches'"


def _bad(counts: dict[str, int]) -> int:
    return int(counts.get("nan", 0)) + int(counts.get("inf", 0))


def _per_file(entry: dict[str, Any], names: dict[str, str]) -> str:
    items = []
    for key, counts in entry.get("files", {}).items():
        kinds = " and ".join(f"{counts[k]:,} {k.replace('nan', 'NaN')}" for k in ("nan", "inf") if counts.get(k))
        items.append(f"{names.get(key, key)}: {kinds} of {counts.get('values', 0):,}")
    return _listed(items)


def _names(specs: Specs, files: Sequence[str] | None = None) -> dict[str, str]:
    keys = [f["path"] for f in specs.files] or list(specs.cutflow)
    shown = _short_names(files if files is not None and len(files) == len(keys) else keys)
    return dict(zip(keys, shown))


def _check_nonfinite(specs: Specs, preproc, files: Sequence[_File] | None, params: Params) -> None:
    task = _task(params)
    table = _classes(task, params, [f.label for f in files]) if files is not None and not params.label else {}
    names = {f.key: f.name for f in files} if files is not None else _names(specs)
    for branch, entry in sorted(specs.nonfinite.items()):
        what, fix = _describe(branch, preproc)
        values = int(entry.get("values", 0))
        if values and _bad(entry) >= values:
            raise NonFiniteError(f"{what} is NaN or inf in all {values:,} of its values "
                                 f"({_per_file(entry, names)}): as a feature it would be constant (masked everywhere); {fix}")
        if files is None:
            continue
        counted = entry.get("files", {})
        for label in table:
            mine = [f for f in files if f.label == label and f.passed]
            if mine and all(f.key in counted and _bad(counted[f.key]) >= counted[f.key].get("values", 0) > 0
                            for f in mine):
                raise NonFiniteError(
                    f"{what} is NaN or inf in every {_class_name(table, label)} event "
                    f"({_per_file(entry, names)}) and not in the others: masked for one class only, it would "
                    f"tell the classes apart by itself; {fix}")


def check_specs(inputs, specs: Specs) -> None:
    """The checks that need no labels: some event passes the cuts, no feature is non-finite everywhere.
    Raises :class:`~mlaas4hep_lab.errors.DataError`."""
    if specs.events.get("total") == 0:
        _check_events(_files(inputs, specs, need_splits=False), _cut_texts(inputs.preproc))
    _check_nonfinite(specs, inputs.preproc, None, inputs.params)
    check_truth(specs, inputs.params)


def check_training_data(inputs, specs: Specs) -> None:
    """Everything :mod:`this module <mlaas4hep_lab.data.validation>` checks, before a model is built:
    labels, each file once, events after the cuts, both classes overall and in every split, non-finite
    features. Raises a :class:`~mlaas4hep_lab.errors.MLaaSError` (LabelsError, DuplicateFileError,
    DataError) whose one-line message says what, where and what to try."""
    task = _task(inputs.params)
    check_labels(inputs.labels, task, files=_short_names(inputs.files))
    check_unique_files(inputs.files, labels=inputs.labels)
    files = _files(inputs, specs, need_splits=True)
    texts = _cut_texts(inputs.preproc)
    _check_events(files, texts)
    _check_classes(files, inputs.params, texts)
    _check_nonfinite(specs, inputs.preproc, files, inputs.params)
    check_truth(specs, inputs.params)


def specs_warnings(specs: Specs, preproc=None) -> list[str]:
    """One line per problem that does not stop a training: features with some NaN/inf values (masked like
    missing values), files whose events all fail the cuts while other files keep some."""
    names = _names(specs)
    out = []
    for branch, entry in sorted(specs.nonfinite.items()):
        values, bad = int(entry.get("values", 0)), _bad(entry)
        if bad and bad < values:
            what, _ = _describe(branch, preproc)
            out.append(f"{what}: {entry.get('nan', 0):,} NaN and {entry.get('inf', 0):,} inf among {values:,} "
                       f"values ({_per_file(entry, names)}); they are treated as missing values (masked, like padded "
                       "slots). Check the definition or the data if they are not expected")
    if specs.events.get("total"):
        texts = _cut_texts(preproc)
        for key, flow in specs.cutflow.items():
            if flow.get("passed") == 0 and flow.get("read"):
                f = _File(key, names.get(key, key), None, flow["read"], flow.get("cuts", {}), 0, None)
                out.append(f"no event of {f.name} passes the cuts ({_flow(f, texts)}): it adds nothing")
    return out


def log_warnings(specs: Specs, preproc=None) -> None:
    for line in specs_warnings(specs, preproc):
        log.warning("%s", line)
