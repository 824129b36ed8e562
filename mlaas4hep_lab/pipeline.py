"""The data side of a workflow, as the CLI, the widgets and the services call it.

``load_inputs`` validates files.txt, labels.txt, params.json and preproc.json together (labels fit the
task, each file is listed once); ``ensure_specs`` reuses a matching specs file or runs the first pass, and
refuses data with no event after the cuts or a feature that is never finite; ``dry_run`` builds every chunk
without training and reports what a model would be trained on. The rules are in
:mod:`mlaas4hep_lab.data.validation`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.data import sources, validation
from mlaas4hep_lab.data.specs import Specs, compute_specs, load_specs, specs_fingerprint
from mlaas4hep_lab.data.stream import SPLITS, ChunkStream
from mlaas4hep_lab.errors import LabelsError
from mlaas4hep_lab.params import Params, load_params

__all__ = ["Inputs", "load_inputs", "ensure_specs", "dry_run"]

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    files: list[str]
    labels: list[float]
    params: Params
    preproc: Any = None   # Preproc or None


def load_inputs(files: str | os.PathLike | Sequence[str], labels: str | os.PathLike | Sequence[float] | None,
                params: str | os.PathLike | dict | Params | None = None,
                preproc: str | os.PathLike | dict | None = None) -> Inputs:
    """Validate a workflow's inputs: paths of files.txt/labels.txt (or lists), params, preproc.

    Labels must fit the task (binary: 1 signal, 0 background; multiclass: 0..K-1; a regression needs
    none: ``labels=None``) and no file may be listed twice (LabelsError, DuplicateFileError)."""
    p = params if isinstance(params, Params) else load_params(params)
    task = getattr(p, "task", "binary")
    from_file = isinstance(files, (str, os.PathLike))
    if from_file:
        file_list = sources.read_file_list(files, p.redirector or None)
    else:
        file_list = [sources.resolve_path(str(f), None, p.redirector or None) for f in files]
    shown = [os.path.basename(f) for f in file_list]
    if labels is None:
        if task != "regression":
            raise LabelsError(f"the {task} task needs labels.txt: one label per file (a regression alone "
                              "takes its truth from params \"target\")")
        label_list = [0.0] * len(file_list)
    elif isinstance(labels, (str, os.PathLike)):
        label_list = validation.read_labels(labels, len(file_list), task, shown)
    else:
        label_list = list(labels)
        if len(label_list) != len(file_list):
            raise LabelsError(f"{len(label_list)} labels for {len(file_list)} files: give one label per file")
        label_list = validation.check_labels(label_list, task, files=shown)
    validation.check_unique_files(file_list, files if from_file else None, label_list)
    pre = None
    if preproc is not None:
        from mlaas4hep_lab.data.preprocess import Preproc

        pre = Preproc.from_json(preproc)
        if pre.is_empty():
            pre = None
    return Inputs(file_list, label_list, p, pre)


def ensure_specs(inputs: Inputs, path: str | os.PathLike | None = None, recompute: bool = False,
                 progress: bool | None = None, dask=None) -> Specs:
    """Reuse the specs at ``path`` when they match the inputs (StaleSpecsError when they do not),
    or compute them (and save them to ``path`` when given). DataError when no event passes the cuts or
    a feature is NaN/inf everywhere (the specs are saved first: their counts say why).

    ``dask``: compute them on a Dask cluster (an address, a ``distributed.Client`` or a
    :class:`~mlaas4hep_lab.cluster.connect.Cluster`; see :func:`~mlaas4hep_lab.cluster.connect.connect`)."""
    fingerprint = specs_fingerprint(inputs.params, inputs.preproc)
    if path is not None and Path(path).is_file() and not recompute:
        specs = load_specs(path)
        specs.check(inputs.files, fingerprint, str(path))
        log.info("reusing specs %s", path)
        validation.log_warnings(specs, inputs.preproc)   # a fresh pass logs them as it ends
    else:
        specs = compute_specs(inputs.files, inputs.params, inputs.preproc, progress=progress, dask=dask)
        if path is not None:
            specs.save(path)   # before the checks: its counts (cutflow, nonfinite) explain a refusal
    validation.check_specs(inputs, specs)
    return specs


def dry_run(inputs: Inputs, specs: Specs, progress: bool | None = None, dask=None) -> dict[str, Any]:
    """Build every chunk of one pass without training; return what a model would see.

    The checks a training makes first (:func:`~mlaas4hep_lab.data.validation.check_training_data`) run
    first here too: a dry run fails where the training would. ``dask``: build the chunks on a Dask cluster
    (an address, a ``distributed.Client`` or a ``Cluster``), as ``train(..., dask=...)`` does."""
    validation.check_training_data(inputs, specs)
    if dask is None:
        return _dry_run(inputs, specs, progress, None)
    from mlaas4hep_lab.cluster.connect import using_dask

    with using_dask(dask) as cluster:
        return _dry_run(inputs, specs, progress, cluster)


def _dry_run(inputs: Inputs, specs: Specs, progress: bool | None, cluster) -> dict[str, Any]:
    params = inputs.params
    counts = np.zeros((3, 1), np.int64)   # events per split
    by_label: dict[float, int] = {}
    masked = 0.0
    t0 = time.perf_counter()
    if cluster is None:
        opened = ChunkStream(inputs.files, inputs.labels, params, specs, inputs.preproc)
    else:
        from mlaas4hep_lab.cluster.stream import open_stream

        opened = open_stream(inputs, specs, cluster)
    with opened as stream:
        show = params.verbose > 0 if progress is None else progress
        from mlaas4hep_lab.data.specs import _progress

        bar = _progress(stream.n_events, "chunks", show)
        n_chunks = 0
        for chunk in stream:
            n_chunks += 1
            bar.update(chunk.read_events)
            if chunk.y.ndim == 1:  # classes (a regression's truth has no labels to count)
                for label in np.unique(chunk.y):
                    by_label[float(label)] = by_label.get(float(label), 0) + int(np.count_nonzero(chunk.y == label))
            counts[:, 0] += np.bincount(chunk.split, minlength=3)[:3]
            masked += float(chunk.mask.size - np.count_nonzero(chunk.mask))
        bar.close()
        seconds = time.perf_counter() - t0
        read, kept = stream.stats["read"], stream.stats["kept"]
        names = stream.feature_names
    return {
        "files": len(inputs.files),
        "chunks": n_chunks,
        "events_read": int(read),
        "events_after_cuts": int(kept),
        "features": len(names),
        "flat_branches": len(specs.fkeys),
        "jagged_branches": len(specs.jkeys),
        "events_per_label": {str(k): v for k, v in sorted(by_label.items())},
        "split": {SPLITS[s]: int(counts[s].sum()) for s in range(3)},
        "masked_fraction": masked / max(1, kept * len(names)),
        "seconds": seconds,
        "events_per_second": read / seconds if seconds > 0 else float("inf"),
    }
