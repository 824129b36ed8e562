"""A whole training workflow: model.py -> trained model -> evaluation, plots -> model bundle.

What ``mlaas4hep workflow`` runs, and what a notebook calls::

    from mlaas4hep_lab.pipeline import load_inputs, ensure_specs
    from mlaas4hep_lab.training.workflow import train
    inputs = load_inputs("files.txt", "labels.txt", "params.json")
    out = train(inputs, ensure_specs(inputs), "model.py", "out")
    out.metrics["auc"], out.bundle
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.bundle import write_bundle
from mlaas4hep_lab.data import leakage, validation
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.pipeline import Inputs
from mlaas4hep_lab.task import Task, run_task
from mlaas4hep_lab.training import evaluation, report
from mlaas4hep_lab.training.events import EventBus, JsonlLog, ProgressBar
from mlaas4hep_lab.training.loop import Trainer, TrainResult, objects_layout
from mlaas4hep_lab.training.model_file import load_model_file
from mlaas4hep_lab.training.runlog import RunRecorder

__all__ = ["train", "WorkflowResult", "make_plots"]

log = logging.getLogger(__name__)


@dataclass
class WorkflowResult:
    result: TrainResult
    bundle: Path
    metrics: dict[str, Any]
    plots: list[Path]


def make_plots(test: dict[str, np.ndarray], out: Path, params, stream: ChunkStream | None = None,
               task: Task | None = None) -> list[Path]:
    """ROC, score distributions, efficiency/purity, AMS (weighted data) and, for params hist "pdfs",
    per-feature signal/background distributions; for a multi-class task the ROC curves per class, the
    confusion matrix and the rejections, for a regression prediction vs truth, response and resolution."""
    out.mkdir(parents=True, exist_ok=True)
    y, score, w = test["y"], test["score"], test.get("weight")
    files: list[Path] = []
    if task is not None and task.kind != "binary":
        from mlaas4hep_lab.training import evaluation_tasks as et

        if len(y):
            files += (et.plot_multiclass(y, score, w, list(task.classes), out) if task.kind == "multiclass"
                      else et.plot_regression(y, score, w, list(task.targets), out))
        return [Path(f) for f in files]
    if len(y) and len(np.unique(y)) > 1:
        files += evaluation.plot_roc(y, score, w, out)
        files += evaluation.plot_score_distributions(y, score, w, out)
        files += evaluation.plot_efficiency_purity(y, score, w, out)
        if w is not None:
            files += evaluation.plot_ams_vs_threshold(y, score, w, out)
    if params.hist == "pdfs" and stream is not None:
        sample = stream.build(0)
        files += evaluation.plot_feature_pdfs((sample.X, sample.y, stream.feature_names, sample.mask), out / "pdfs")
    return [Path(f) for f in files]


def train(inputs: Inputs, specs: Specs, model: str | Path, fout: str | Path, *, resume: bool = False,
          bus: EventBus | None = None, stop: threading.Event | None = None, progress: bool | None = None,
          name: str | None = None, plots: bool = True, dask=None) -> WorkflowResult:
    """Train the model of ``model`` (a model.py path) and write the bundle to ``fout/bundle``.

    The data are checked first (:func:`~mlaas4hep_lab.data.validation.check_training_data`: labels, each
    file once, events after the cuts, both classes in every split, finite features); a refusal raises
    before anything is written to ``fout``.

    ``dask``: build the chunks on a Dask cluster (an address, a ``distributed.Client`` or a
    :class:`~mlaas4hep_lab.cluster.connect.Cluster`): Keras, PyTorch and scikit-learn train here on the same
    chunks as without it, XGBoost trains on the workers (``xgboost.dask``); ``resume`` works alike.

    Every run is recorded in ``fout/run.json`` (and in MLflow where ``MLFLOW_TRACKING_URI`` is set:
    :mod:`~mlaas4hep_lab.training.runlog`), with the leakage warnings of its first events
    (:func:`~mlaas4hep_lab.data.leakage.warn_leakage`, also logged)."""
    validation.check_training_data(inputs, specs)
    bus = bus or EventBus()
    warnings = [f.message for f in leakage.warn_leakage(inputs)]
    with RunRecorder(fout, inputs, model, bus, resume=resume, warnings=warnings) as record:
        if dask is None:
            return record.done(_train(inputs, specs, model, fout, resume, bus, stop, progress, name, plots, None))
        from mlaas4hep_lab.cluster.connect import using_dask

        with using_dask(dask) as cluster:
            return record.done(_train(inputs, specs, model, fout, resume, bus, stop, progress, name, plots,
                                      cluster))


def _train(inputs: Inputs, specs: Specs, model, fout, resume: bool, bus, stop, progress, name, plots: bool,
           cluster) -> WorkflowResult:
    fout = Path(fout)
    fout.mkdir(parents=True, exist_ok=True)
    task = run_task(inputs.params, inputs.labels, specs)
    layout = objects_layout(inputs.params, specs)
    user_model = load_model_file(model, specs.n_features, seed=inputs.params.seed, task=task,
                                 inputs=None if layout is None else layout.shapes())
    bus = bus or EventBus()
    unsubscribe = [bus.subscribe(JsonlLog(fout / "metrics.jsonl", append=resume))]
    show = inputs.params.verbose > 0 if progress is None else progress
    if show:
        unsubscribe.append(bus.subscribe(ProgressBar(f"training ({user_model.backend})")))
    stream = None
    try:
        if cluster is not None:
            from mlaas4hep_lab.cluster.stream import open_stream

            stream = open_stream(inputs, specs, cluster)
        trainer = Trainer(inputs, specs, user_model, fout, bus=bus, resume=resume, stop=stop, stream=stream)
        result = trainer.run()
    finally:
        for fn in unsubscribe:
            fn()
        if stream is not None:
            stream.close()
    plot_files: list[Path] = []
    if plots:
        try:
            # the per-feature plots read one chunk: in this process, also with a cluster
            with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
                plot_files = make_plots(result.test, fout / "plots", inputs.params, stream, task)
        except ImportError as err:  # plots are optional (matplotlib)
            log.warning("no plots: %s", err)
    if task.kind == "binary":
        # TMVA-style report (ranking, overtraining, correlations, learning curve): numbers even without plots
        result.metrics.update(report.training_report(result, inputs, specs, fout, plots=plots))
        plot_files += report.report_files(fout / "plots") if plots else []
    (fout / "metrics.json").write_text(json.dumps(result.metrics, indent=1, default=float))
    files = [{"path": f["path"], "size": f.get("size"), "entries": f.get("entries")} for f in specs.files]
    bundle = write_bundle(fout / "bundle", name=name or Path(user_model.path).stem, backend=result.backend,
                          backend_name=user_model.backend, specs=specs, params=inputs.params,
                          preproc=inputs.preproc, metrics=result.metrics, history=result.history,
                          model_source=user_model.source, files=files, plots_dir=fout / "plots", task=task,
                          layout=layout)
    return WorkflowResult(result, bundle, result.metrics, plot_files)
