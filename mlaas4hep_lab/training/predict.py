"""Score ROOT files with a model bundle: the bundle's own preprocessing, specs and model.

Writes one row per event (file, entry, identifier branches, score, whether the event passes the
bundle's cuts) as CSV or as a ROOT TTree, streaming chunk by chunk; optionally the Higgs challenge's
submission CSV (``EventId,RankOrder,Class``).
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
from mlaas4hep_lab.errors import ConfigError

__all__ = ["score_files"]


class _CsvSink:
    def __init__(self, path: Path, ids: list[str]):
        self.f = path.open("w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(["file", "entry", *ids, "score", "passes_cuts"])

    def write(self, cols: dict[str, np.ndarray]) -> None:
        self.w.writerows(zip(*[c.tolist() for c in cols.values()]))

    def close(self) -> None:
        self.f.close()


class _RootSink:
    def __init__(self, path: Path, ids: list[str]):
        import uproot

        self.file = uproot.recreate(path)
        self.tree = None

    def write(self, cols: dict[str, np.ndarray]) -> None:
        if self.tree is None:
            self.tree = self.file.mktree("scores", {k: v.dtype for k, v in cols.items()})
        self.tree.extend(cols)

    def close(self) -> None:
        self.file.close()


def score_files(bundle_path: str | Path, files: list[str], out: str | Path, *, submission: str | None = None,
                threshold: float | None = None, chunk_size: int = 100_000) -> dict[str, Any]:
    """Score ``files`` (paths/URLs, or a single files.txt) with the bundle at ``bundle_path``."""
    bundle = Bundle.load(bundle_path)
    if len(files) == 1 and str(files[0]).endswith(".txt"):
        files = sources.read_file_list(files[0], bundle.params.redirector or None)
    out = Path(out)
    ids = list(bundle.specs.identifier)
    if submission and "EventId" not in ids:
        raise ConfigError("a Higgs challenge submission needs the EventId identifier branch; the bundle's "
                          f"identifiers are {ids}", key="submission")
    sink = _RootSink(out, ids) if out.suffix == ".root" else _CsvSink(out, ids)
    all_ids, all_scores = [], []
    total = 0
    try:
        for i, path in enumerate(files):
            with TreeReader(path, bundle.specs.tree) as reader:
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
                        cols["score"] = scores
                        cols["passes_cuts"] = keep.astype(np.int8)
                        sink.write(cols)
                        if submission:
                            all_ids.append(cols["EventId"])
                            all_scores.append(scores)
                        total += len(scores)
    finally:
        sink.close()
    if submission:
        from mlaas4hep_lab.training.evaluation import write_submission

        cut = threshold if threshold is not None else bundle.manifest.get("metrics", {}).get("ams_threshold", 0.5)
        write_submission(submission, np.concatenate(all_ids), np.concatenate(all_scores), float(cut))
    bundle.close()
    return {"files": len(files), "events": total}
