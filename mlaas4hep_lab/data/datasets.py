"""Realistic example ROOT files, generated locally (no download).

Three kinds, each written as ROOT **TTrees** named ``events`` with uproot, together with the
``files.txt``, ``labels.txt`` and ``params.json`` (and, for ttH, ``preproc.json``) that the
rest of the package reads:

- :func:`higgs`: the layout of the ATLAS H->tautau machine-learning challenge (Kaggle 2014):
  30 flat ``DER_``/``PRI_`` features, ``EventId`` and ``Weight``, with ``-999.0`` where a
  quantity is undefined. Signal is H(125)->tautau (gluon fusion and VBF), background
  Z->tautau, W+jets and ttbar.
- :func:`tth`: NanoAOD-style events with ~20 flat branches and ~50 jagged branches in six
  collections (``Jet``, ``Electron``, ``Muon``, ``Tau``, ``Photon``, ``FatJet``), each
  collection sharing one counter branch (``nJet``, ...). Signal is ttH(bb)-like, background
  tt+jets-like.
- :func:`tth_tasks`: the same layout plus flat ``Gen*`` truth branches, in three classes built
  from the top quarks' decays: ttH(bb), tt+bb and tt+light jets, with a ``params.json`` for the
  three-class task and a ``params_regression.json`` that regresses the hadronic top's true pT.

Generation is vectorised numpy and written in slices of 100k events, so millions of events
take seconds and bounded memory::

    from mlaas4hep_lab.data import datasets
    ds = datasets.higgs("example/higgs", n_events=200_000)
    ds.files, ds.labels, ds.files_txt, ds.params_json
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from mlaas4hep_lab.data import _physics, _physics_tth
from mlaas4hep_lab.errors import ConfigError

__all__ = ["ExampleDataset", "higgs", "tth", "tth_tasks", "write_example", "KINDS", "TREE"]

TREE = "events"
SLICE = 100_000  # events generated and written per TTree.extend

_COMPRESSION: dict[str, Callable[[], object] | None] = {
    "none": None,
    "zlib": lambda: uproot.ZLIB(1),
    "lz4": lambda: uproot.LZ4(1),
    "zstd": lambda: uproot.ZSTD(1),
    "lzma": lambda: uproot.LZMA(1),
}


@dataclass
class ExampleDataset:
    """What :func:`higgs` / :func:`tth` / :func:`tth_tasks` wrote; every path is absolute."""

    directory: Path
    files: list[Path]  # ROOT files, in label order of classes (binary kinds: signal first)
    labels: list[int]  # the class index of each file: binary 1 signal, 0 background
    files_txt: Path
    labels_txt: Path
    params_json: Path
    preproc_json: Path | None
    tree: str = TREE
    classes: list[str] = field(default_factory=lambda: ["background", "signal"])  # name of each label
    params_regression: Path | None = None  # a params.json for a regression task, where the kind has one

    @property
    def n_files(self) -> int:
        return len(self.files)


# ---------------------------------------------------------------------------------------------
# argument checks


def _compression_kwargs(compression) -> dict:
    if compression is None:
        return {"compression": None}
    if isinstance(compression, uproot.compression.Compression):
        return {"compression": compression}
    if not isinstance(compression, str):
        raise ConfigError(f"expected a name or an uproot compression object, got {compression!r}",
                          key="compression")
    name = compression.strip().lower()
    if name == "default":
        return {}
    if name not in _COMPRESSION:
        raise ConfigError(f"unknown compression {compression!r}; use one of "
                          f"{', '.join(['default', *_COMPRESSION])}", key="compression")
    factory = _COMPRESSION[name]
    return {"compression": None if factory is None else factory()}


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=name)
    return int(value)


def _class_sizes(n_events, signal_fraction, files_per_class):
    n_events = _check_int("n_events", n_events, 2)
    files_per_class = _check_int("files_per_class", files_per_class, 1)
    if isinstance(signal_fraction, bool) or not isinstance(signal_fraction, (int, float)) \
            or not 0.0 < float(signal_fraction) < 1.0:
        raise ConfigError(f"must be a number strictly between 0 and 1, got {signal_fraction!r}",
                          key="signal_fraction")
    n_sig = min(max(int(round(n_events * float(signal_fraction))), files_per_class), n_events - files_per_class)
    n_bkg = n_events - n_sig
    if n_sig < files_per_class or n_bkg < files_per_class:
        raise ConfigError(f"{n_events} events cannot fill {files_per_class} file(s) per class; "
                          f"use n_events >= {2 * files_per_class}", key="n_events")
    per_file = [np.array_split(np.arange(n), files_per_class) for n in (n_sig, n_bkg)]
    return [[len(p) for p in parts] for parts in per_file]


# ---------------------------------------------------------------------------------------------
# writing


def _scrambler(n_total: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A bijection of ``range(n_total)`` (affine modulo n), so identifiers are unique but unordered."""
    rng = np.random.default_rng([seed, 0x1D])
    if n_total <= 1:
        return lambda idx: idx
    a = int(rng.integers(1, n_total))
    while math.gcd(a, n_total) != 1:
        a = a % (n_total - 1) + 1
    c = int(rng.integers(0, n_total))
    return lambda idx: (np.asarray(idx, dtype=np.int64) * a + c) % n_total


def _jagged(counts: np.ndarray, fields: dict[str, np.ndarray]) -> ak.Array:
    """A list-of-records array from per-event counts and flat field arrays, without copies."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    content = ak.contents.RecordArray(
        [ak.contents.NumpyArray(v) for v in fields.values()], list(fields), length=int(offsets[-1]))
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))


def _write_tree(path: Path, types: dict, slices: Iterator[dict], n_slices: int, compression: dict):
    with uproot.recreate(path, **compression) as f:
        f.mktree(TREE, types, title="mlaas4hep-lab example events",
                 initial_basket_capacity=max(n_slices + 2, 10))
        tree = f[TREE]
        for data in slices:
            tree.extend(data)


def _slice_sizes(n):
    return [min(SLICE, n - s) for s in range(0, n, SLICE)]


def _rng(seed, kind, label, index):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, label, index)))


_BINARY = ((1, "signal"), (0, "background"))


def _layout(directory, kind, sizes, classes=_BINARY):
    """(label, index within class, path, n_events, first global index) per file, in the order of
    ``classes`` ((label, name) pairs; ``sizes`` holds each one's events per file, in the same order)."""
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    first = 0
    out = []
    for (label, name), class_sizes in zip(classes, sizes, strict=True):
        for i, n in enumerate(class_sizes):
            suffix = f"_{i}" if len(class_sizes) > 1 else ""
            out.append((label, i, directory / f"{kind}_{name}{suffix}.root", n, first))
            first += n
    return directory, out


def _write_texts(directory, kind, seed, layout, params, preproc, classes=None,
                 params_regression=None) -> ExampleDataset:
    files_txt, labels_txt = directory / "files.txt", directory / "labels.txt"
    header = (f"# {kind} example dataset written by mlaas4hep_lab.data.datasets (seed {seed}).\n"
              "# One ROOT file per line, relative to this folder; labels in labels.txt, same order.\n")
    files_txt.write_text(header + "".join(f"{p.name}\n" for _, _, p, _, _ in layout))
    labels_txt.write_text("".join(f"{label}\n" for label, *_ in layout))
    params_json = directory / "params.json"
    params_json.write_text(json.dumps(params, indent=2) + "\n")
    preproc_json = None
    if preproc is not None:
        preproc_json = directory / "preproc.json"
        preproc_json.write_text(json.dumps(preproc, indent=2) + "\n")
    regression_json = None
    if params_regression is not None:
        regression_json = directory / "params_regression.json"
        regression_json.write_text(json.dumps(params_regression, indent=2) + "\n")
    return ExampleDataset(
        directory=directory, files=[p for _, _, p, _, _ in layout], labels=[lab for lab, *_ in layout],
        files_txt=files_txt, labels_txt=labels_txt, params_json=params_json,
        preproc_json=preproc_json, tree=TREE, params_regression=regression_json,
        **({"classes": list(classes)} if classes is not None else {}))


def _params(chunk_size, identifier, exclude, seed, extra=None):
    params = {
        "nevts": -1, "shuffle": True, "chunk_size": chunk_size, "epochs": 5, "batch_size": 256,
        "identifier": identifier, "branch": TREE, "selected_branches": [], "exclude_branches": exclude,
        "hist": "", "redirector": "", "verbose": 1, "seed": seed,
    }
    params.update(extra or {})
    return params


# ---------------------------------------------------------------------------------------------
# Higgs challenge


def higgs(directory, n_events: int = 100_000, signal_fraction: float = 0.35, seed: int = 42,
          files_per_class: int = 1, compression="default") -> ExampleDataset:
    """Write an ATLAS Higgs-challenge-like dataset (H->tautau vs Z->tautau, W+jets, ttbar).

    ``n_events`` is the total over all files; each class is split over ``files_per_class`` files.
    ``Weight`` is normalised like the challenge: the signal weights sum to 691.99 and the
    background ones to 410999.85 per 250k events (scaled to ``n_events``). ``EventId`` is
    unique across the files (a scrambled range starting at 100000).
    """
    seed = _check_int("seed", seed, 0)
    comp = _compression_kwargs(compression)
    sizes = _class_sizes(n_events, signal_fraction, files_per_class)
    n_total = sum(map(sum, sizes))
    n_class = {1: sum(sizes[0]), 0: sum(sizes[1])}
    scramble = _scrambler(n_total, seed)
    directory, layout = _layout(directory, "higgs", sizes)
    types = {name: np.dtype(t) for name, t in _physics.HIGGS_BRANCHES.items()}

    for label, index, path, n, first in layout:
        rng = _rng(seed, 1, label, index)
        scale = _physics.higgs_weight_scale(label, n_class[label], n_total)

        def slices(rng=rng, n=n, first=first, scale=scale, label=label):
            done = 0
            for size in _slice_sizes(n):
                block = _physics.higgs_block(rng, size, label)
                block["Weight"] = (block["Weight"] * scale).astype(np.float32)
                ids = 100_000 + scramble(np.arange(first + done, first + done + size))
                done += size
                yield {"EventId": ids.astype(np.int64), **block}

        _write_tree(path, types, slices(), len(_slice_sizes(n)), comp)

    params = _params(50_000, ["EventId"], ["Weight"], seed,
                     {"missing_values": [-999.0], "weight": "Weight", "normalization": "standard"})
    return _write_texts(directory, "Higgs-challenge-like", seed, layout, params, None)


# ---------------------------------------------------------------------------------------------
# ttH


TTH_IDENTIFIER = ["run", "luminosityBlock", "event"]
TTH_PREPROC = {
    "new_branch": {
        "Jet_pt_log": {
            "def": "log(Jet_pt)",
            "type": "jagged",
            "cut": ["Jet_pt_log>3.4", "any"],
            "remove": "False",
        },
    },
    "flat_cut": {
        "nJet": {"cut": "nJet>=2", "remove": "False"},
        "MET_pt": {"cut": "MET_pt>0", "remove": "False"},
    },
    "jagged_cut": {
        "Jet_pt": {"cut": ["Jet_pt>60", "any"], "remove": "False"},
    },
}


def tth_branch_types(truth: bool = False) -> dict:
    """The ``mktree`` types of the ttH tree: flat dtypes (with ``truth``, the ``Gen*`` ones of
    :func:`tth_tasks` after them), then one list-of-records type per collection."""
    flat = {**_physics_tth.TTH_FLAT, **(_physics_tth.TTH_TRUTH if truth else {})}
    types: dict = {name: np.dtype(t) for name, t in flat.items()}
    for coll, fields in _physics_tth.TTH_COLLECTIONS.items():
        empty = {f: np.zeros(0, dtype=t) for f, t in fields.items()}
        types[coll] = _jagged(np.zeros(0, dtype=np.int64), empty).type.content
    return types


def tth(directory, n_events: int = 20_000, signal_fraction: float = 0.5, seed: int = 42,
        files_per_class: int = 1, compression="default") -> ExampleDataset:
    """Write a NanoAOD-style ttH(bb)-like vs tt+jets-like dataset with jagged collections.

    Flat branches (bool, 8/16/32/64-bit integers, float32, float64), and per collection
    ``Jet`` (13 fields), ``Electron`` (8), ``Muon`` (8), ``Tau`` (7), ``Photon`` (6) and
    ``FatJet`` (8), named ``<Collection>_<field>`` with a shared counter ``n<Collection>``
    (0-12 objects per event). ``event`` is unique across files; ``run`` is 1 as in simulation.
    An example ``preproc.json`` (a new jagged branch, a jagged and two flat cuts) is written too.
    """
    seed = _check_int("seed", seed, 0)
    comp = _compression_kwargs(compression)
    sizes = _class_sizes(n_events, signal_fraction, files_per_class)
    n_total = sum(map(sum, sizes))
    scramble = _scrambler(n_total, seed)
    directory, layout = _layout(directory, "tth", sizes)
    types = tth_branch_types()

    for label, index, path, n, first in layout:
        slices = _nanoaod_slices(_physics_tth.tth_block, _rng(seed, 2, label, index), label, n, first,
                                 scramble, list(_physics_tth.TTH_FLAT))
        _write_tree(path, types, slices, len(_slice_sizes(n)), comp)

    params = _params(10_000, TTH_IDENTIFIER, ["genWeight"], seed)
    return _write_texts(directory, "ttH-like", seed, layout, params, TTH_PREPROC)


def _nanoaod_slices(block, rng, label, n, first, scramble, flat_names):
    """The slices of one file: ``block(rng, size, label)`` with run / luminosityBlock / event added."""
    done = 0
    for size in _slice_sizes(n):
        flat, collections = block(rng, size, label)
        event = 1 + scramble(np.arange(first + done, first + done + size))
        done += size
        data = {
            "run": np.ones(size, dtype=np.int32),
            "luminosityBlock": (1 + event // 200).astype(np.int32),
            "event": event.astype(np.int64),
            **flat,
        }
        data = {k: data[k] for k in flat_names}
        for coll, (counts, fields) in collections.items():
            data[coll] = _jagged(counts, fields)
        yield data


# ---------------------------------------------------------------------------------------------
# ttH(bb) vs tt+bb vs tt+light, with truth for regression


def tth_tasks(directory, n_events: int = 30_000, seed: int = 42, files_per_class: int = 1,
              compression="default") -> ExampleDataset:
    """Write single-lepton ttH(bb), tt+bb and tt+light-jets events (labels 0, 1, 2) with their truth.

    The layout of :func:`tth` (same flat branches and collections) plus flat truth branches:
    ``GenTop_pt``/``_eta``/``_phi``/``_mass`` (the hadronically decaying top; its mass a Breit-Wigner
    around 172.5 GeV of width 1.42), ``GenW_mass`` (its W), ``GenExtra_pt``/``_mass`` (the H,
    the g->bb pair or the two light partons). Jets come from the decays' partons with a realistic
    response, so the top's pT is measurable from its three jets. Classes: ttH has four b jets and a
    bb mass at 125 GeV; tt+bb four b jets too, but the extra pair is softer, closer in ΔR and its
    mass a falling continuum; tt+light has two b jets (and a c from W -> cs now and then).

    ``n_events`` is split equally over the three classes, each over ``files_per_class`` files.
    ``params.json`` is for the three-class task (``"task": "multiclass"``, ``"classes"``), and
    ``params_regression.json`` regresses ``GenTop_pt``; both keep ``Gen*`` and the truth-level
    ``Jet_hadronFlavour`` out of the features. ``preproc.json`` is the one of :func:`tth`.

    Example::

        ds = tth_tasks("example/tth_tasks", n_events=30_000)
        ds.classes  # ["ttH", "ttbb", "ttlf"]
    """
    seed = _check_int("seed", seed, 0)
    comp = _compression_kwargs(compression)
    n_events = _check_int("n_events", n_events, 1)
    files_per_class = _check_int("files_per_class", files_per_class, 1)
    classes = _physics_tth.TTH_TASK_CLASSES
    if n_events < len(classes) * files_per_class:
        raise ConfigError(f"{n_events} events cannot fill {files_per_class} file(s) per class for "
                          f"{len(classes)} classes; use n_events >= {len(classes) * files_per_class}",
                          key="n_events")
    sizes = [[len(p) for p in np.array_split(np.arange(len(c)), files_per_class)]
             for c in np.array_split(np.arange(n_events), len(classes))]
    scramble = _scrambler(n_events, seed)
    directory, layout = _layout(directory, "tth_tasks", sizes, tuple(enumerate(classes)))
    types = tth_branch_types(truth=True)
    flat_names = [*_physics_tth.TTH_FLAT, *_physics_tth.TTH_TRUTH]

    for label, index, path, n, first in layout:
        slices = _nanoaod_slices(_physics_tth.tth_tasks_block, _rng(seed, 3, label, index), label, n, first,
                                 scramble, flat_names)
        _write_tree(path, types, slices, len(_slice_sizes(n)), comp)

    exclude = ["genWeight", "Gen*", "Jet_hadronFlavour"]
    params = _params(10_000, TTH_IDENTIFIER, exclude, seed, {"task": "multiclass", "classes": list(classes)})
    regression = _params(10_000, TTH_IDENTIFIER, exclude, seed, {"task": "regression", "target": ["GenTop_pt"]})
    return _write_texts(directory, "ttH / tt+bb / tt+light", seed, layout, params, TTH_PREPROC,
                        classes=classes, params_regression=regression)


# ---------------------------------------------------------------------------------------------

KINDS: dict[str, Callable[..., ExampleDataset]] = {"higgs": higgs, "tth": tth, "tth_tasks": tth_tasks}


def _kind_key(kind) -> str:
    return str(kind).strip().lower().replace("-", "").replace("_", "")


def write_example(kind: str, directory, n_events: int | None = None, **kw) -> ExampleDataset:
    """Write the example dataset ``kind`` ("higgs", "tth" or "tth_tasks") into ``directory``.

    ``n_events=None`` keeps the kind's default; other keywords go to :func:`higgs` / :func:`tth` /
    :func:`tth_tasks`. Case, ``-`` and ``_`` in ``kind`` do not matter ("tth-tasks" works).
    """
    key = next((k for k in KINDS if _kind_key(k) == _kind_key(kind)), None)
    if key is None:
        raise ConfigError(f"unknown example dataset {kind!r}; available kinds: {', '.join(KINDS)}",
                          key="kind")
    if n_events is not None:
        kw["n_events"] = n_events
    return KINDS[key](directory, **kw)
