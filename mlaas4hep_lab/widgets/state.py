"""The Lab's shared state: inputs, params, preproc, the branch table, a sample of events, results.

Plain Python (numpy, awkward, the engine): no ipywidgets here, so every rule the panels follow is
reachable from pytest. Panels bind widgets to a :class:`LabState` and listen to its topics
(``params``, ``preproc``, ``specs``, ``training``, ``bundle``) with :meth:`LabState.on`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.data.reader import TreeReader, select_branches
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.params import Params, load_json
from mlaas4hep_lab.pipeline import Inputs, load_inputs
from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.widgets.companions import companions, params_summary
from mlaas4hep_lab.widgets.histograms import finite_values, sparkline

__all__ = ["LabState", "BranchRow", "DEFAULT_SAMPLE", "default_workdir", "run_on_choices", "RUN_ON_KERNEL",
           "RUN_ON_GATEWAY"]

log = logging.getLogger(__name__)
DEFAULT_SAMPLE = 2_000       # events read per file for the branch table and the cut preview
_WILDCARDS = set("*?[")


RUN_ON_KERNEL = "this kernel"
RUN_ON_GATEWAY = "Dask Gateway"


def run_on_choices(environ: dict[str, str] | None = None, cpus: int | None = None) -> dict[str, str | None]:
    """The Training panel's "Run on" choices, each label with the ``dask=`` value it stands for: this kernel
    (None), a local cluster of one worker process per core, and Dask Gateway where ``DASK_GATEWAY__ADDRESS``
    is set (the hub sets it in every user's server). ``environ`` and ``cpus``: for tests."""
    env = os.environ if environ is None else environ
    n = max(1, cpus or os.cpu_count() or 1)
    out: dict[str, str | None] = {RUN_ON_KERNEL: None,
                                  f"local cluster ({n} worker{'s' if n > 1 else ''})": f"local:{n}"}
    if env.get("DASK_GATEWAY__ADDRESS", "").strip():
        out[RUN_ON_GATEWAY] = "gateway"
    return out


def default_workdir() -> Path:
    """``$MLAAS4HEP_WORKDIR`` if set, else ``./mlaas4hep-lab`` in the current folder."""
    return Path(os.environ.get("MLAAS4HEP_WORKDIR") or Path.cwd() / "mlaas4hep-lab")


@dataclass
class BranchRow:
    """One line of the branch table."""

    name: str
    typename: str
    kind: str                    # "flat" or "jagged"
    entries: int                 # over all files
    minimum: float
    maximum: float
    spark: str                   # text sparkline of the sampled values
    source: str                  # "specs" when min/max come from the specs, else "sample"
    mean_length: float | None = None   # jagged: mean list length in the sample


def _split_names(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return [p.strip() for p in text.split(",") if p.strip()]
    return [str(p).strip() for p in text if str(p).strip()]


def _as_files(files) -> Any:
    """A single ROOT path is a one-file list; a .txt path is files.txt; a list is a list."""
    if isinstance(files, (str, os.PathLike)) and not str(files).endswith(".txt"):
        return [str(files)]
    return files


class LabState:
    """Everything the four panels share.

    Args:
        files: ROOT file paths or URLs, a files.txt path, or a folder (its files.txt, else its ROOT files).
        labels: one label per file, or a labels.txt path (None: the labels.txt beside files.txt, or none
            for a regression).
        params: None (the params.json beside files.txt, if any), a :class:`~mlaas4hep_lab.params.Params`,
            a dict or a params.json path.
        preproc: None (the preproc.json beside files.txt, if any), a dict, a preproc.json path or JSON text;
            checked against the files' branches here.
        model: a template name (``keras``, ``torch``, ``sklearn``, ``xgboost``, ``torch_multiclass``...:
            ``model_file.TEMPLATES``) or a model.py path.
        workdir: where specs, training outputs and bundles go (default :func:`default_workdir`).
        service_url, token: the inference service (the Deploy panel fills in hub defaults).
        sample_size: events read from the start of each file for the table and the cut preview.
        dask: where training runs: None (this kernel) or a ``--dask`` address (``local:N``, ``gateway``...).
    """

    def __init__(self, files, labels=None, params=None, preproc=None, model: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None, service_url: str | None = None,
                 token: str | None = None, sample_size: int = DEFAULT_SAMPLE, dask: str | None = None):
        found = companions(files, labels, params, preproc)
        inputs = load_inputs(_as_files(found.files), found.labels, found.params, None)
        self.files: list[str] = inputs.files
        self.labels: list[float] = inputs.labels
        self.params: Params = inputs.params
        self.preproc_dict: dict[str, Any] = _preproc_dict(found.preproc)
        self.loaded: dict[str, Path] = found.loaded      # what was taken from beside files.txt
        self.notes: list[str] = list(found.notes)
        self.model: str = str(model) if model is not None else "keras"
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.service_url, self.token = service_url, token
        self.sample_size = int(sample_size)
        self.specs: Specs | None = None
        self.bundle: Path | None = None         # the last trained bundle
        self.result: Any = None                 # the last WorkflowResult
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self.dask: str | None = None
        self.set_dask(dask)
        self._read_branches()
        if self.preproc_dict:   # a preproc that names branches the files lack is refused now, not at Start
            from mlaas4hep_lab.data.preprocess import Preproc

            Preproc.from_json(self.preproc_dict).validate(self.kinds, "the files")
        if "params" in self.loaded:
            self.notes.insert(1, f"{self.loaded['params'].name}: {params_summary(self.params)}")

    # -- change notification ------------------------------------------------------------------------
    def on(self, topic: str, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever ``topic`` changes (``params``, ``preproc``, ``specs``, ``bundle``...)."""
        self._listeners.setdefault(topic, []).append(fn)

    def emit(self, topic: str) -> None:
        for fn in list(self._listeners.get(topic, [])):
            fn()

    # -- the files ----------------------------------------------------------------------------------
    def _read_branches(self) -> None:
        """Branch kinds (those common to every file), entries per file and the sample of events."""
        kinds: dict[str, str] | None = None
        self.typenames: dict[str, str] = {}
        self.entries: list[int] = []
        self.sample: list[ak.Array] = []
        for path in self.files:
            reader = TreeReader(path, self.params.branch, retries=self.params.retries, decompression_workers=0)
            try:
                here = reader.kinds()
                kinds = dict(here) if kinds is None else {k: v for k, v in kinds.items() if here.get(k) == v}
                for name, info in reader.branches.items():
                    self.typenames.setdefault(name, info.typename)
                self.entries.append(reader.num_entries)
                names = list(kinds)
                self.sample.append(reader.read(names, 0, min(self.sample_size, reader.num_entries)))
            finally:
                reader.close()
        self.kinds: dict[str, str] = kinds or {}
        names = list(self.kinds)
        # a branch dropped by a later file must be dropped from the earlier samples too
        self.sample = [s[names] if set(s.fields) != set(names) else s for s in self.sample]

    @property
    def branch_names(self) -> list[str]:
        return list(self.kinds)

    def sample_events(self) -> ak.Array:
        """The sampled events of every file, concatenated (file order)."""
        return ak.concatenate(self.sample) if len(self.sample) > 1 else self.sample[0]

    def branch_rows(self) -> list[BranchRow]:
        """The table: one row per numeric branch, min/max from the specs when known, else the sample."""
        events = self.sample_events()
        total = int(sum(self.entries))
        rows = []
        for name, kind in self.kinds.items():
            column = events[name]
            values = finite_values(column)
            missing = self.params.missing_values
            shown = values[~np.isin(values, missing)] if missing else values
            if self.specs is not None and name in self.specs.minv:
                lo, hi, source = float(self.specs.minv[name]), float(self.specs.maxv[name]), "specs"
            else:
                lo = float(shown.min()) if shown.size else float("nan")
                hi = float(shown.max()) if shown.size else float("nan")
                source = "sample"
            mean_length = float(ak.mean(ak.num(column, axis=1))) if kind == "jagged" and len(column) else None
            rows.append(BranchRow(name, self.typenames.get(name, ""), kind, total, lo, hi,
                                  sparkline(shown), source, mean_length))
        return rows

    # -- branch selection ---------------------------------------------------------------------------
    def selected(self) -> list[str]:
        """Branch names that are features with the current params (identifier and weight excluded)."""
        chosen = select_branches(self.branch_names, self.params.selected_branches, self.params.exclude_branches,
                                 "the files")
        drop = set(self.params.identifier) | ({self.params.weight} if self.params.weight else set())
        return [b for b in chosen if b not in drop]

    def summary(self) -> str:
        return f"{len(self.selected())} of {len(self.branch_names)} branches selected"

    def filter_names(self, query: str) -> list[str]:
        """Branch names matching ``query``: a shell wildcard if it has ``* ? [``, else a substring
        (both case-insensitive)."""
        q = query.strip().lower()
        if not q:
            return self.branch_names
        if _WILDCARDS & set(q):
            return [n for n in self.branch_names if fnmatch.fnmatch(n.lower(), q)]
        return [n for n in self.branch_names if q in n.lower()]

    def _set_params(self, **changes) -> None:
        new = self.params.replace(**changes)   # validates; select_branches below checks the patterns
        select_branches(self.branch_names, new.selected_branches, new.exclude_branches, "the files")
        for key, names in (("identifier", new.identifier), ("weight", [new.weight] if new.weight else [])):
            for name in names:
                if name not in self.kinds:
                    raise ConfigError(f"{name!r} is not a numeric branch of the files", key=key)
        self.params = new
        self.emit("params")

    def set_include(self, patterns: str | Sequence[str]) -> None:
        """params ``selected_branches`` (comma-separated wildcards; empty = every branch)."""
        self._set_params(selected_branches=_split_names(patterns))

    def set_exclude(self, patterns: str | Sequence[str]) -> None:
        """params ``exclude_branches`` (comma-separated wildcards)."""
        self._set_params(exclude_branches=_split_names(patterns))

    def set_identifier(self, names: str | Sequence[str]) -> None:
        """params ``identifier``: branches read beside the features, not used as features."""
        self._set_params(identifier=_split_names(names))

    def set_weight(self, name: str | None) -> None:
        """params ``weight``: the per-event weight branch (flat; kept out of the features), or none."""
        name = (name or "").strip()
        if name and self.kinds.get(name) == "jagged":
            raise ConfigError(f"weight branch {name!r} is a list per event: the weight must be one number per "
                              "event", key="weight")
        self._set_params(weight=name)

    def set_missing_values(self, values: str | Sequence[float]) -> None:
        """params ``missing_values``: sentinels (comma-separated numbers, e.g. ``-999``) masked, not normalised."""
        self._set_params(missing_values=_numbers(values, "missing_values"))

    def set_normalization(self, value: str) -> None:
        """params ``normalization``: ``minmax``, ``standard`` or ``none``."""
        self._set_params(normalization=str(value).strip())

    def set_split(self, fractions: str | Sequence[float]) -> None:
        """params ``split``: train, validation[, test] fractions summing to 1 (``0.64, 0.16, 0.2``)."""
        self._set_params(split=_numbers(fractions, "split"))

    # -- leakage ------------------------------------------------------------------------------------
    def leakage(self):
        """``(findings, error)``: the leakage check (:func:`~mlaas4hep_lab.data.leakage.check_sample`) of the
        current features on the sampled events after the cuts; ``error`` when the settings cannot be
        planned (the branch table's message says why)."""
        from mlaas4hep_lab.data.leakage import check_sample

        try:
            return check_sample(self.sample, self.labels, self.params, self.preproc(), self.kinds, "the files"), ""
        except (KeyError, ValueError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            return [], str(text)

    def set_checked(self, name: str, checked: bool) -> None:
        """Tick or untick one branch, keeping the user's wildcards where they still say the truth:
        unticking adds the name to ``exclude_branches``; ticking removes it from there (a wildcard that
        covered it is replaced by the names it still covers) and adds it to a non-empty
        ``selected_branches`` that does not cover it."""
        if name not in self.kinds:
            raise ConfigError(f"{name!r} is not a numeric branch of the files", key="selected_branches")
        p = self.params
        if not checked:
            if name in self.selected():
                self._set_params(exclude_branches=[*p.exclude_branches, name])
            return
        exclude: list[str] = []
        for pattern in p.exclude_branches:
            if fnmatch.fnmatchcase(name, pattern):
                exclude += [b for b in self.branch_names if fnmatch.fnmatchcase(b, pattern) and b != name]
            else:
                exclude.append(pattern)
        selected = list(p.selected_branches)
        if selected and not any(fnmatch.fnmatchcase(name, s) for s in selected):
            selected.append(name)
        identifier = [i for i in p.identifier if i != name]
        self._set_params(exclude_branches=list(dict.fromkeys(exclude)), selected_branches=selected,
                         identifier=identifier)

    # -- preproc ------------------------------------------------------------------------------------
    def preproc(self):
        """The current preprocessing as an engine :class:`~mlaas4hep_lab.data.preprocess.Preproc` (or None)."""
        from mlaas4hep_lab.data.preprocess import Preproc

        pre = Preproc.from_json(self.preproc_dict)
        return None if pre.is_empty() else pre

    def set_preproc(self, data: dict[str, Any]) -> None:
        """Replace the preprocessing (checked against the files' branches first)."""
        from mlaas4hep_lab.data.preprocess import Preproc

        pre = Preproc.from_json(data)
        pre.validate(self.kinds, "the files")
        self.preproc_dict = pre.to_dict()
        self.emit("preproc")

    def import_preproc(self, path: str | os.PathLike) -> None:
        """Load a preproc.json file (the engine's reader: same checks and messages as the CLI)."""
        from mlaas4hep_lab.data.preprocess import Preproc

        self.set_preproc(Preproc.from_json(Path(path)).to_dict())

    def export_preproc(self, path: str | os.PathLike | None = None) -> Path:
        """Write the preprocessing as preproc.json (default: ``workdir/preproc.json``)."""
        from mlaas4hep_lab.data.preprocess import Preproc

        target = Path(path) if path is not None else self.workdir / "preproc.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Preproc.from_json(self.preproc_dict).to_json() + "\n")
        return target

    # -- training inputs ----------------------------------------------------------------------------
    def inputs(self) -> Inputs:
        """The validated inputs of a training run with the current choices."""
        return Inputs(list(self.files), list(self.labels), self.params.replace(), self.preproc())

    def model_path(self) -> Path:
        """The model.py to train: a template's path or the user's file."""
        from mlaas4hep_lab.training.model_file import template_path

        if self.model in TEMPLATES:
            return template_path(self.model)
        path = Path(self.model).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {path} not found; give a model.py path or one of the templates "
                              f"{', '.join(TEMPLATES)}", key="model")
        return path

    # -- where training runs -------------------------------------------------------------------------
    def set_dask(self, dask: str | None) -> None:
        """Where the next training runs: None (this kernel) or a ``--dask`` address, checked now (a
        ConfigError says which forms exist); nothing is started until a run starts."""
        from mlaas4hep_lab.cluster.connect import parse_address  # light: no dask import

        value = None if dask is None or not str(dask).strip() else str(dask).strip()
        if value is not None:
            parse_address(value)
        self.dask = value
        self.emit("dask")

    def run_on_options(self) -> dict[str, str | None]:
        """:func:`run_on_choices`, plus the current address when it is none of them (given in code)."""
        choices = run_on_choices()
        if self.dask not in choices.values():
            choices[str(self.dask)] = self.dask
        return choices

    def run_on(self) -> str:
        """The label of :meth:`run_on_options` for the current ``dask``."""
        return next(label for label, value in self.run_on_options().items() if value == self.dask)

    def set_run_on(self, label: str) -> None:
        """Choose where training runs by a label of :meth:`run_on_options`."""
        choices = self.run_on_options()
        if label not in choices:
            raise ConfigError(f"cannot run on {label!r}; choose one of {', '.join(choices)}", key="dask")
        self.set_dask(choices[label])

    def set_specs(self, specs: Specs) -> None:
        self.specs = specs
        self.emit("specs")

    def set_bundle(self, bundle: Path, result: Any = None) -> None:
        self.bundle, self.result = Path(bundle), result
        self.emit("bundle")


def _numbers(values: str | Sequence[float], key: str) -> list[float]:
    parts = values.replace(";", ",").split(",") if isinstance(values, str) else list(values)
    out = []
    for part in parts:
        if isinstance(part, str) and not part.strip():
            continue
        try:
            out.append(float(part))
        except (TypeError, ValueError):
            raise ConfigError(f"{part!r} is not a number: give comma-separated numbers", key=key) from None
    return out


def _preproc_dict(preproc) -> dict[str, Any]:
    if preproc is None:
        return {}
    from mlaas4hep_lab.data.preprocess import Preproc

    if isinstance(preproc, Preproc):
        return preproc.to_dict()
    if isinstance(preproc, dict):
        return Preproc.from_json(preproc).to_dict()
    if isinstance(preproc, str) and preproc.lstrip().startswith("{"):
        return Preproc.from_json(preproc).to_dict()
    data, _ = load_json(preproc, "preproc")
    return Preproc.from_json(Path(preproc)).to_dict() if data else {}
