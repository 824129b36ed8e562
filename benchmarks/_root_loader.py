"""ROOT 6.40's ML data loader over the benchmark's files; run by ROOT's own venv, never imported.

``benchmarks/stream.py`` starts this script with the python of a separate venv that has ROOT
(``pip install ROOT==0.1a12 uproot awkward psutil numpy``: the 6.40 wheel, and what benchmarks/_peers.py,
whose memory probes this script uses, imports): ROOT is no dependency of the project. The job comes as
JSON on stdin::

    {"files": [...], "labels": [1, 0], "tree": "events", "columns": ["MET_pt", "Jet_pt", ...],
     "max_vec_sizes": {"Jet_pt": 12, ...}, "batch_size": 256, "batches_in_memory": 390, "seed": 42,
     "epochs": 1}

and one line of JSON goes to stdout: the events/s of each timed epoch (after one warm-up epoch, whose
first batches wait for the JIT compilation of the loader and of the ``Define``; its rate, set-up
included, is ``first_rate``), the peak RSS (VmHWM) and the peak anonymous memory above the interpreter
with ROOT's ML library loaded (the JIT's memory included), and the fraction of one-class batches over
the timed epochs (over the warm-up epoch when none is timed).

The API is ``ROOT.Experimental.ML.RDataLoader`` (ROOT/_pythonization/_ml_dataloader.py and
include/ROOT/ML/RClusterLoader.hxx, RDataLoaderEngine.hxx of the wheel; the tutorials
machine_learning/ml_dataloader_NumPy.py and ml_dataloader_filters_vectors.py of root-project/root).
It takes a list of RDataFrames, so each file gets its own RDataFrame with its label as a constant
column (``Define``) passed as ``target``; jagged (RVec) columns are cut or padded to ``max_vec_sizes``
by the loader itself (padding value ``vec_padding``, 0). It has no chunk size: its shuffle buffer holds
about ``batches_in_memory`` batches, so the caller passes ``chunk_size // batch_size``. Shuffling
reorders the files' clusters every epoch, fills the buffer with whole clusters, and shuffles the events
inside the buffer: a buffer filled from one file's cluster yields batches of one class.
"""

from __future__ import annotations

import json
import sys
import time

from _peers import AnonPeak, peak_mb

LABEL = "mlaas4hep_label"


def _frames(ROOT, job):
    """One RDataFrame per file, with the file's label as a float column."""
    return [ROOT.RDataFrame(job["tree"], path).Define(LABEL, f"{float(label)}f")
            for path, label in zip(job["files"], job["labels"])]


def _loader(ROOT, job, frames):
    return ROOT.Experimental.ML.RDataLoader(
        frames, batch_size=job["batch_size"], batches_in_memory=job["batches_in_memory"],
        columns=[*job["columns"], LABEL], max_vec_sizes=job["max_vec_sizes"], target=LABEL,
        shuffle=True, drop_remainder=False, set_seed=job["seed"])


def _epoch(batches) -> dict:
    """Consume one epoch; its events, seconds, batches and batches whose labels are all equal."""
    events = n_batches = one_class = features = 0
    t0 = time.perf_counter()
    for x, y in batches:
        events += len(y)
        n_batches += 1
        one_class += int(y.min() == y.max())
        features = x.shape[1]
    return {"events": events, "seconds": time.perf_counter() - t0, "batches": n_batches,
            "one_class": one_class, "features": features}


def run(job) -> dict:
    """A warm-up epoch (its first batches wait for the JIT), then ``job["epochs"]`` timed ones."""
    import ROOT

    ROOT.gROOT.SetBatch(True)
    ROOT.Experimental.ML.RDataLoader  # noqa: B018 (loads the library before the baseline)
    baseline = peak_mb()
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        batches = _loader(ROOT, job, _frames(ROOT, job)).as_numpy()
        first = _epoch(batches)
        first_seconds = time.perf_counter() - t0  # RDataFrames, loader, JIT and the first epoch
        timed = [_epoch(batches) for _ in range(job["epochs"])]
    counted = timed or [first]
    return {"events": first["events"], "features": first["features"],
            "first_rate": first["events"] / first_seconds,
            "rates": [e["events"] / e["seconds"] for e in timed],
            "one_class": sum(e["one_class"] for e in counted) / max(1, sum(e["batches"] for e in counted)),
            "rss_mb": peak_mb() - baseline, "anon_mb": anon.peak_mb - anon.baseline_mb,
            "baseline_mb": baseline, "root": str(ROOT.gROOT.GetVersion())}


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
