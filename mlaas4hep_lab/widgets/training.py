"""Training tab: params form, model choice, Start/Stop, live loss and AUC plots, ROC and AMS at the end,
and the training report (variable ranking, overtraining check, input correlations, learning curve).

Training runs in a background thread (:class:`~mlaas4hep_lab.widgets.run.TrainingRun`), so the kernel
answers the Stop button while it trains; the plots are redrawn from the trainer's metric events at most
every ``interval`` seconds, and once more at the end.
"""

from __future__ import annotations

import html
import math

import ipywidgets as w

from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.training.report import REPORT_PLOTS
from mlaas4hep_lab.widgets.histograms import curves_png, empty_png, roc_png
from mlaas4hep_lab.widgets.run import TrainingRun
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["TrainingPanel", "MODEL_FILE"]

MODEL_FILE = "model.py path"
_REPORT_TITLES = {"variable_ranking": "Ranking", "overtraining": "Overtraining", "correlation_signal":
                  "Correlations (S)", "correlation_background": "Correlations (B)", "learning_curve": "Learning curve"}


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


class TrainingPanel:
    """The Training tab. ``start()``/``stop()`` are what the buttons call; ``run`` is the current run."""

    def __init__(self, state: LabState, interval: float = 0.5):
        self.state, self.interval = state, interval
        p = state.params
        template = state.model if state.model in TEMPLATES else MODEL_FILE
        # the binary templates: the panel trains the binary task (the tasks' templates: model_file.TEMPLATES)
        binary = [name for name in TEMPLATES if "_" not in name]
        self.model = w.Dropdown(options=[*binary, MODEL_FILE], value=template if template in binary else MODEL_FILE,
                                description="Model")
        self.model_path = w.Text(value="" if template != MODEL_FILE else state.model, description="model.py",
                                 placeholder="/path/to/model.py")
        self.epochs = w.IntText(value=p.epochs, description="Epochs")
        self.chunk_size = w.IntText(value=p.chunk_size, description="Chunk size")
        self.batch_size = w.IntText(value=p.batch_size, description="Batch size")
        self.mode = w.Dropdown(options=["per_chunk", "epochs"], value=p.training, description="Mode")
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML("idle")
        self.progress = w.IntProgress(value=0, min=0, max=100, description="Progress")
        self.rate = w.HTML("")
        self.loss_plot = w.Image(format="png", value=empty_png("loss: start a training"))
        self.loss_points = w.HTML("0")
        self.auc_plot = w.Image(format="png", value=empty_png("AUC: start a training"))
        self.roc_plot = w.Image(format="png", value=empty_png("ROC: at the end of a training", 4, 4))
        self.result = w.HTML("")
        # the training report: one tab per plot, filled from the run's plots folder at the end
        waiting = empty_png("the training report: at the end of a training")
        self.report_plots = {name: w.Image(format="png", value=waiting, layout=w.Layout(max_width="100%"))
                             for name in REPORT_PLOTS}
        self.report_text = w.HTML("")
        self.report = w.Tab(children=list(self.report_plots.values()),
                            titles=[_REPORT_TITLES[n] for n in REPORT_PLOTS])
        self.report.add_class("m4h-train-report")
        self.report_text.add_class("m4h-train-report-text")
        self._report_of: TrainingRun | None = None
        for widget, cls in ((self.model, "m4h-train-model"), (self.model_path, "m4h-train-model-path"),
                            (self.epochs, "m4h-train-epochs"), (self.chunk_size, "m4h-train-chunk-size"),
                            (self.batch_size, "m4h-train-batch-size"), (self.mode, "m4h-train-mode"),
                            (self.start_button, "m4h-train-start"), (self.stop_button, "m4h-train-stop"),
                            (self.status, "m4h-train-status"), (self.progress, "m4h-train-progress"),
                            (self.rate, "m4h-train-rate"), (self.loss_plot, "m4h-loss-plot"),
                            (self.loss_points, "m4h-loss-points"), (self.auc_plot, "m4h-auc-plot"),
                            (self.roc_plot, "m4h-roc-plot"), (self.result, "m4h-train-result")):
            widget.add_class(cls)
        self.run: TrainingRun | None = None
        self.model.observe(self._show_path, "value")
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self._show_path()
        self.widget = w.VBox([
            w.HBox([self.model, self.model_path]),
            w.HBox([self.epochs, self.chunk_size]),
            w.HBox([self.batch_size, self.mode]),
            w.HBox([self.start_button, self.stop_button, self.status]),
            w.HBox([self.progress, self.rate]),
            w.HBox([self.loss_plot, self.auc_plot]),
            w.HBox([w.HTML("metric points plotted:"), self.loss_points]),
            w.HBox([self.roc_plot, self.result]),
            w.HTML("<b>Training report</b>"), self.report_text, self.report,
        ])
        self.widget.add_class("m4h-training")

    def _show_path(self, *_) -> None:
        self.model_path.layout.display = "" if self.model.value == MODEL_FILE else "none"

    # -- actions --------------------------------------------------------------------------------------
    def apply_form(self) -> None:
        """Write the form into the state's params and model choice (validated by Params)."""
        self.state.params = self.state.params.replace(
            epochs=int(self.epochs.value), chunk_size=int(self.chunk_size.value),
            batch_size=int(self.batch_size.value), training=self.mode.value)
        self.state.model = self.model.value if self.model.value != MODEL_FILE else self.model_path.value.strip()
        self.state.model_path()   # a missing model.py is an error now, not in the thread

    def start(self) -> TrainingRun | None:
        """Start a training run in the background with the form's settings."""
        if self.run is not None and self.run.running:
            return self.run
        try:
            self.apply_form()
        except (OSError, KeyError, ValueError) as err:
            self.status.value = f"failed: {html.escape(str(err))}"
            return None
        self.run = TrainingRun(self.state, self.interval)
        self.run.on_update(self.refresh)
        self.result.value = ""
        self.roc_plot.value = empty_png("ROC: at the end of a training", 4, 4)
        self.run.start()
        return self.run

    def stop(self) -> None:
        if self.run is not None:
            self.run.stop()

    # -- view -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Show the run's state (called by the run, throttled, from the training thread)."""
        run = self.run
        if run is None:
            return
        busy = run.status in ("running", "stopping")
        self.start_button.disabled = busy
        self.stop_button.disabled = run.status != "running"
        detail = f": {html.escape(run.message)}" if run.message else ""
        self.status.value = f"{run.status}{detail}"
        if run.events_total:
            self.progress.max = max(1, run.events_total)
            self.progress.value = min(run.events_seen, self.progress.max)
        self.rate.value = f"{run.events_seen:,} events, {run.events_per_second:,.0f} events/s"
        n = len(run.curves)
        if n and self.loss_points.value != str(n):
            self.loss_plot.value = curves_png(run.curves.series("loss", "val_loss"), "loss", "chunk")
            self.auc_plot.value = curves_png(run.curves.series("auc", "val_auc"), "AUC", "chunk")
        self.loss_points.value = str(n)
        if not busy and run.summary:
            s = run.summary
            self.result.value = (
                f"<div>test AUC: <b>{_num(s.get('test_auc'))}</b><br>best AMS: <b>{_num(s.get('ams'))}</b><br>"
                f"bundle: <code>{html.escape(str(s.get('bundle')))}</code>"
                + (" (stopped early)" if s.get("stopped") else "") + "</div>")
            if run.roc is not None:
                self.roc_plot.value = roc_png(run.roc[0], run.roc[1], run.summary.get("test_auc"))
            if self._report_of is not run:
                self._report_of = run
                self.show_report(run)
        elif run.status == "failed":
            self.result.value = f"<pre class='m4h-error'>{html.escape(run.error)}</pre>"

    def show_report(self, run: TrainingRun) -> None:
        """The report's plots and, above them, the KS p-values and the top of the variable ranking."""
        for name, image in self.report_plots.items():
            path = run.report.get(name)
            image.value = path.read_bytes() if path is not None else empty_png(f"{_REPORT_TITLES[name]}: not made")
        s = run.summary
        if s.get("report_error"):
            self.report_text.value = f"<pre class='m4h-error'>report failed: {html.escape(s['report_error'])}</pre>"
            return
        rows = "".join(f"<tr><td>{i}</td><td>{html.escape(r['feature'])}</td><td>{_num(r.get('importance'))}</td>"
                       f"<td>{_num(r.get('native'))}</td></tr>" for i, r in enumerate(s.get("ranking", []), 1))
        self.report_text.value = (
            f"<div>Overtraining check, Kolmogorov-Smirnov p-value (train vs test): signal "
            f"<b>{_p(s.get('ks_pvalue_signal'))}</b>, background <b>{_p(s.get('ks_pvalue_background'))}</b>"
            f"<table><tr><th>#</th><th>feature</th><th>AUC drop when shuffled</th><th>model's own</th></tr>"
            f"{rows}</table></div>")


def _p(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3g}"
