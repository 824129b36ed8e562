"""Score ROOT files with a model bundle: the bundle's own preprocessing, specs and model.

Writes one row per event (file, entry, identifier branches, score, whether the event passes the
bundle's cuts) as CSV or as a ROOT TTree, streaming part by part; optionally the Higgs challenge's
submission CSV (``EventId,RankOrder,Class``). The tree read is the bundle's own unless ``tree`` names
another (a TTree at another path such as ``dir/events``, or an RNTuple of another name).

Each file is scored in *parts*: entry ranges of at most ``chunk_size`` entries cut at the file's cluster
boundaries (:func:`file_parts`). With ``dask=`` the parts are scored on Dask workers
(:mod:`mlaas4hep_lab.cluster.predict`) by the same functions, and written here in the same order, so the
outputs are the same files either way.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.reader import BlockReader, TreeReader
from mlaas4hep_lab.data.vectorize import _flat_numpy
from mlaas4hep_lab.errors import ConfigError, TreeNotFoundError

__all__ = ["score_files", "file_parts"]


class _CsvSink:
    def __init__(self, path: Path, ids: list[str], outputs: list[str]):
        self.f = path.open("w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(["file", "entry", *ids, *outputs, "passes_cuts"])

    def write(self, cols: dict[str, np.ndarray]) -> None:
        self.w.writerows(zip(*[c.tolist() for c in cols.values()]))

    def close(self) -> None:
        self.f.close()


class _RootSink:
    def __init__(self, path: Path, ids: list[str], outputs: list[str]):
        import uproot

        self.file = uproot.recreate(path)
        self.tree = None

    def write(self, cols: dict[str, np.ndarray]) -> None:
        if self.tree is None:
            self.tree = self.file.mktree("scores", {k: v.dtype for k, v in cols.items()})
        self.tree.extend(cols)

    def close(self) -> None:
        self.file.close()


def prepare_output(path: str | Path, option: str = "--out") -> Path:
    """``path`` for a file about to be written: its folder is created when missing; a path that is a
    folder, or a folder that cannot be created, is a clear error before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name, e.g. {path / 'scores.csv'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{option} {path}: cannot create the folder {path.parent}: a file of that name (or "
                          "of a folder above it) is in the way") from None
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create the folder {path.parent}: {err.strerror or err}") from None
    return path


def score_files(bundle_path: str | Path, files: list[str], out: str | Path, *, submission: str | None = None,
                threshold: float | None = None, chunk_size: int = 100_000, tree: str | None = None,
                dask: Any = None) -> dict[str, Any]:
    """Score ``files`` (paths/URLs, or a single files.txt) with the bundle at ``bundle_path``.

    ``tree``: the TTree or RNTuple to read in each file (default: the one the bundle was trained on).
    ``dask``: score the files' parts on a Dask cluster (what :func:`~mlaas4hep_lab.cluster.connect`
    takes: ``"local:2"``, ``"tcp://host:port"``, ``"gateway"``, a ``distributed.Client``); the outputs
    are the same files as without it. Returns ``{"files": ..., "events": ...}``.

    Example::

        score_files("out/bundle.tar.gz", ["new.root"], "scores.csv", dask="local:2")
    """
    if chunk_size < 1:
        raise ConfigError(f"the chunk size must be at least 1 entry, not {chunk_size}", key="chunk_size")
    bundle = Bundle.load(bundle_path)
    try:
        if dask is None:
            return _score(bundle, files, out, submission, threshold, chunk_size, tree, None)
        from mlaas4hep_lab.cluster.connect import using_dask

        with using_dask(dask) as cluster:
            return _score(bundle, files, out, submission, threshold, chunk_size, tree, cluster)
    finally:
        bundle.close()  # a bundle unpacked from a .tar.gz leaves no temporary folder, even on an error


def _score(bundle: Bundle, files: list[str], out: str | Path, submission: str | None, threshold: float | None,
           chunk_size: int, tree: str | None, cluster) -> dict[str, Any]:
    if len(files) == 1 and str(files[0]).endswith(".txt"):
        files = sources.read_file_list(files[0], bundle.params.redirector or None)
    ids = list(bundle.specs.identifier)
    if submission and bundle.task.kind != "binary":
        raise ConfigError(f"a Higgs challenge submission is for binary classifiers; this bundle is a "
                          f"{bundle.task.kind} model", key="submission")
    if submission and "EventId" not in ids:
        raise ConfigError("a Higgs challenge submission needs the EventId identifier branch; the bundle's "
                          f"identifiers are {ids}", key="submission")
    tree = tree or bundle.specs.tree
    out = prepare_output(out)
    if submission:
        prepare_output(submission, "--submission")
    if cluster is None:
        parts = _local_parts(bundle, files, tree, chunk_size)
    else:
        from mlaas4hep_lab.cluster.predict import score_parts

        parts = score_parts(cluster, bundle, files, tree, chunk_size)
    sink = (_RootSink if out.suffix == ".root" else _CsvSink)(out, ids, bundle.output_names)
    all_ids, all_scores = [], []
    total = 0
    try:
        for cols in parts:  # in file order, then entry order, whichever way they were computed
            sink.write(cols)
            if submission:
                all_ids.append(cols["EventId"])
                all_scores.append(cols["score"])
            total += len(cols["entry"])
    except BaseException:
        parts.close()  # stops the work still queued (on the cluster: cancels its tasks)
        sink.close()
        out.unlink(missing_ok=True)  # no partial scores file that looks like a result
        raise
    sink.close()
    if submission:
        from mlaas4hep_lab.training.evaluation import write_submission

        cut = threshold if threshold is not None else bundle.manifest.get("metrics", {}).get("ams_threshold", 0.5)
        write_submission(submission, np.concatenate(all_ids), np.concatenate(all_scores), float(cut))
    return {"files": len(files), "events": total}


def file_parts(boundaries: np.ndarray, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering entries ``[0, boundaries[-1])`` in order: each part at most
    ``chunk_size`` entries, cut at cluster ``boundaries`` (0 and the end included) so that no basket is
    decompressed by two parts; a cluster longer than ``chunk_size`` is cut in equal parts.

    Example: ``file_parts([0, 300, 600, 2000], 700) == [(0, 600), (600, 1300), (1300, 2000)]``
    """
    bounds = np.asarray(boundaries, dtype=np.int64)
    n = int(bounds[-1]) if len(bounds) else 0
    parts: list[tuple[int, int]] = []
    start = 0
    while start < n:  # one step per part, not per event
        j = int(np.searchsorted(bounds, start + chunk_size, side="right")) - 1
        stop = int(bounds[j])
        if stop > start:
            parts.append((start, stop))
        else:  # the cluster starting at `start` is longer than a chunk
            stop = int(bounds[j + 1])
            k = -(-(stop - start) // chunk_size)
            cuts = start + (stop - start) * np.arange(k + 1, dtype=np.int64) // k
            parts.extend(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
        start = stop
    return parts


def input_branches(bundle: Bundle) -> list[str]:
    """The branches read from each file: the bundle's inputs and its identifiers."""
    return sorted(set(bundle.input_branches()) | set(bundle.specs.identifier))


def open_checked(path: str, tree: str, trained_on: str, branches: list[str]) -> TreeReader:
    """The file's tree, checked to hold ``branches`` (errors name the file and what to do)."""
    reader = _open_tree(path, tree, trained_on)
    try:
        reader.check(branches, "the bundle's inputs")
    except BaseException:
        reader.close()
        raise
    return reader


def part_columns(bundle: Bundle, arrays: ak.Array, file_index: int, first: int) -> dict[str, np.ndarray]:
    """The output columns of one part (entries ``first ...`` of file ``file_index``), in output order."""
    scores, keep = bundle.predict_arrays(arrays)
    cols = {"file": np.full(len(scores), file_index, np.int32),
            "entry": np.arange(first, first + len(scores), dtype=np.int64)}
    for name in bundle.specs.identifier:
        cols[name] = _flat_numpy(arrays[name])
    if scores.ndim == 1:
        cols["score"] = scores
    else:  # one column per class (p_<class>) or regression target
        cols.update(zip(bundle.output_names, scores.T))
    cols["passes_cuts"] = keep.astype(np.int8)
    return cols


def _local_parts(bundle: Bundle, files: list[str], tree: str, chunk_size: int) -> Iterator[dict[str, np.ndarray]]:
    branches = input_branches(bundle)
    for i, path in enumerate(files):
        with open_checked(path, tree, bundle.specs.tree, branches) as reader:
            blocks = BlockReader(reader, branches)
            for start, stop in file_parts(blocks.boundaries, chunk_size):
                pieces = [arrays for _, arrays in blocks.read(start, stop)]
                # one batch per part, as a worker scores it: a model's output cannot depend on where a
                # decoded block happened to end (only inside clusters longer than a chunk is there more
                # than one piece)
                arrays = pieces[0] if len(pieces) == 1 else ak.concatenate(pieces)
                yield part_columns(bundle, arrays, i, start)


def _open_tree(path: str, tree: str, trained_on: str) -> TreeReader:
    try:
        return TreeReader(path, tree)
    except TreeNotFoundError as err:
        origin = "the tree the bundle was trained on" if tree == trained_on else "the tree given"
        raise TreeNotFoundError(tree, path, err.available, hint=(
            f"{tree!r} is {origin}; give --tree PATH (e.g. --tree dir/events, or an RNTuple's name) "
            "to read another")) from None
