"""Score ROOT files with a model bundle: the bundle's own preprocessing, specs and model.

Writes one row per event (file, entry, identifier branches, score, whether the event passes the
bundle's cuts) as CSV or as a ROOT TTree, streaming chunk by chunk; optionally the Higgs challenge's
submission CSV (``EventId,RankOrder,Class``). The tree read is the bundle's own unless ``tree`` names
another (a TTree at another path such as ``dir/events``, or an RNTuple of another name).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.reader import BlockReader, TreeReader
from mlaas4hep_lab.data.vectorize import _flat_numpy
from mlaas4hep_lab.errors import ConfigError, TreeNotFoundError

__all__ = ["score_files"]


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
                threshold: float | None = None, chunk_size: int = 100_000, tree: str | None = None) -> dict[str, Any]:
    """Score ``files`` (paths/URLs, or a single files.txt) with the bundle at ``bundle_path``.

    ``tree``: the TTree or RNTuple to read in each file (default: the one the bundle was trained on)."""
    bundle = Bundle.load(bundle_path)
    try:
        return _score(bundle, files, out, submission, threshold, chunk_size, tree)
    finally:
        bundle.close()  # a bundle unpacked from a .tar.gz leaves no temporary folder, even on an error


def _score(bundle: Bundle, files: list[str], out: str | Path, submission: str | None, threshold: float | None,
           chunk_size: int, tree: str | None) -> dict[str, Any]:
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
    sink = (_RootSink if out.suffix == ".root" else _CsvSink)(out, ids, bundle.output_names)
    all_ids, all_scores = [], []
    total = 0
    try:
        for i, path in enumerate(files):
            with _open_tree(path, tree, bundle.specs.tree) as reader:
                branches = sorted(set(bundle.input_branches()) | set(ids))
                reader.check(branches, "the bundle's inputs")
                blocks = BlockReader(reader, branches)
                for start in range(0, reader.num_entries, chunk_size):
                    stop = min(start + chunk_size, reader.num_entries)
                    for first, arrays in blocks.read(start, stop):
                        scores, keep = bundle.predict_arrays(arrays)
                        cols = {"file": np.full(len(scores), i, np.int32),
                                "entry": np.arange(first, first + len(scores), dtype=np.int64)}
                        for name in ids:
                            cols[name] = _flat_numpy(arrays[name])
                        if scores.ndim == 1:
                            cols["score"] = scores
                        else:  # one column per class (p_<class>) or regression target
                            cols.update(zip(bundle.output_names, scores.T))
                        cols["passes_cuts"] = keep.astype(np.int8)
                        sink.write(cols)
                        if submission:
                            all_ids.append(cols["EventId"])
                            all_scores.append(scores)
                        total += len(scores)
    except BaseException:
        sink.close()
        out.unlink(missing_ok=True)  # no partial scores file that looks like a result
        raise
    sink.close()
    if submission:
        from mlaas4hep_lab.training.evaluation import write_submission

        cut = threshold if threshold is not None else bundle.manifest.get("metrics", {}).get("ams_threshold", 0.5)
        write_submission(submission, np.concatenate(all_ids), np.concatenate(all_scores), float(cut))
    return {"files": len(files), "events": total}


def _open_tree(path: str, tree: str, trained_on: str) -> TreeReader:
    try:
        return TreeReader(path, tree)
    except TreeNotFoundError as err:
        origin = "the tree the bundle was trained on" if tree == trained_on else "the tree given"
        raise TreeNotFoundError(tree, path, err.available, hint=(
            f"{tree!r} is {origin}; give --tree PATH (e.g. --tree dir/events, or an RNTuple's name) "
            "to read another")) from None
