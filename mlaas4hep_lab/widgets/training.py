"""Training tab: params form (with the task: binary, multi-class or regression), model choice, Start/Stop,
live loss and AUC (regression: RMSE and MAE) plots, ROC and AMS at the end, and the training report
(binary: variable ranking, overtraining check, input correlations, learning curve; multi-class: AUC per
class, confusion matrix, rejections; regression: RMSE, MAE, bias, prediction vs truth, response).

Training runs in a background thread (:class:`~mlaas4hep_lab.widgets.run.TrainingRun`), so the kernel
answers the Stop button while it trains; "Run on" picks this kernel, a local Dask cluster or, on the hub, Dask
Gateway (the run opens the cluster, links its dashboard and closes it at the end); the plots are redrawn from the trainer's metric events at most
every ``interval`` seconds, and once more at the end.
"""

from __future__ import annotations

import html

import ipywidgets as w

from mlaas4hep_lab.errors import ConfigError, MLaaSError
from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.training.report import REPORT_PLOTS
from mlaas4hep_lab.widgets import tasks
from mlaas4hep_lab.widgets.histograms import curves_png, empty_png, roc_png
from mlaas4hep_lab.widgets.run import TrainingRun
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["TrainingPanel", "MODEL_FILE"]

MODEL_FILE = "model.py path"
_REPORT_TITLES = {"variable_ranking": "Ranking", "overtraining": "Overtraining", "correlation_signal":
                  "Correlations (S)", "correlation_background": "Correlations (B)", "learning_curve": "Learning curve"}


_num = tasks.num


class TrainingPanel:
    """The Training tab. ``start()``/``stop()`` are what the buttons call; ``run`` is the current run."""

    def __init__(self, state: LabState, interval: float = 0.5):
        self.state, self.interval = state, interval
        p = state.params
        self.task = w.Dropdown(options=list(tasks.TASK_OPTIONS), value=p.task, description="Task")
        self.layout = w.Dropdown(options=list(tasks.LAYOUT_OPTIONS), value=p.layout, description="Layout")
        template = tasks.template_for(p.task, state.model, p.layout) or MODEL_FILE
        self.model = w.Dropdown(options=[*tasks.templates_for(p.task, p.layout), MODEL_FILE], value=template,
                                description="Model")
        self.model_path = w.Text(value="" if state.model in TEMPLATES else state.model, description="model.py",
                                 placeholder="/path/to/model.py")
        # the task's fields (shown for the tasks they belong to); a bad value: one line in task_message
        self.classes = w.Textarea(value="\n".join(p.classes) if p.task == "multiclass" else "",
                                  description="Classes", placeholder="one per line or comma-separated",
                                  continuous_update=False, rows=3)
        self.label = w.Text(value=p.label, description="Label", continuous_update=False,
                            placeholder="optional: per-event class, e.g. (nb >= 3) + (nb >= 4)")
        self.target = w.Textarea(value="\n".join(p.target), description="Target(s)", continuous_update=False,
                                 placeholder="one branch or expression per line", rows=2)
        weights = list(tasks.CLASS_WEIGHTS)
        if isinstance(p.class_weights, list):
            weights.append(f"as in params: {', '.join(f'{v:g}' for v in p.class_weights)}")
        self.class_weights = w.Dropdown(options=weights, description="Class weights",
                                        value=weights[-1] if isinstance(p.class_weights, list)
                                        else p.class_weights or "none")
        self.task_message = w.HTML("")
        self.epochs = w.IntText(value=p.epochs, description="Epochs")
        self.chunk_size = w.IntText(value=p.chunk_size, description="Chunk size")
        self.batch_size = w.IntText(value=p.batch_size, description="Batch size")
        self.mode = w.Dropdown(options=["per_chunk", "epochs"], value=p.training, description="Mode")
        self.run_on = w.Dropdown(options=list(state.run_on_options()), value=state.run_on(), description="Run on")
        self.dashboard = w.HTML("")
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML("idle")
        self.progress = w.IntProgress(value=0, min=0, max=100, description="Progress")
        self.rate = w.HTML("")
        self.loss_plot = w.Image(format="png", value=empty_png("loss: start a training"))
        self.loss_points = w.HTML("0")
        self.auc_plot = w.Image(format="png", value=empty_png(f"{tasks.curve_keys(p.task)[1]}: start a training"))
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
        self._drawn: tuple[TrainingRun | None, int] = (None, 0)   # the run and points the live plots show
        for widget, cls in ((self.task, "m4h-train-task"), (self.layout, "m4h-train-layout"),
                            (self.classes, "m4h-train-classes"),
                            (self.label, "m4h-train-label"), (self.target, "m4h-train-target"),
                            (self.class_weights, "m4h-train-class-weights"),
                            (self.task_message, "m4h-train-task-message"),
                            (self.model, "m4h-train-model"), (self.model_path, "m4h-train-model-path"),
                            (self.epochs, "m4h-train-epochs"), (self.chunk_size, "m4h-train-chunk-size"),
                            (self.batch_size, "m4h-train-batch-size"), (self.mode, "m4h-train-mode"),
                            (self.run_on, "m4h-train-run-on"), (self.dashboard, "m4h-train-dashboard"),
                            (self.start_button, "m4h-train-start"), (self.stop_button, "m4h-train-stop"),
                            (self.status, "m4h-train-status"), (self.progress, "m4h-train-progress"),
                            (self.rate, "m4h-train-rate"), (self.loss_plot, "m4h-loss-plot"),
                            (self.loss_points, "m4h-loss-points"), (self.auc_plot, "m4h-auc-plot"),
                            (self.roc_plot, "m4h-roc-plot"), (self.result, "m4h-train-result")):
            widget.add_class(cls)
        self.run: TrainingRun | None = None
        self.model.observe(self._show_path, "value")
        self.task.observe(self._on_task, "value")
        self.layout.observe(self._on_task, "value")
        for field in (self.classes, self.label, self.target, self.class_weights):
            field.observe(lambda _: self.apply_task(), "value")
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self._show_path()
        self._show_task_fields()
        self.widget = w.VBox([
            w.HBox([self.task, self.layout, self.class_weights]),
            w.HBox([self.classes, self.label]), self.target, self.task_message,
            w.HBox([self.model, self.model_path]),
            w.HBox([self.epochs, self.chunk_size]),
            w.HBox([self.batch_size, self.mode]),
            w.HBox([self.run_on, self.dashboard]),
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

    def _show_task_fields(self) -> None:
        task = self.task.value
        for widget, shown in ((self.classes, task == "multiclass"), (self.label, task == "multiclass"),
                              (self.target, task == "regression"), (self.class_weights, task != "regression")):
            widget.layout.display = "" if shown else "none"

    def _on_task(self, change) -> None:
        """Another task or layout: its templates (same framework), its fields, its live plot; then the params."""
        task, layout = self.task.value, self.layout.value
        keep = tasks.template_for(task, self.model.value, layout) or MODEL_FILE
        self.model.options = [*tasks.templates_for(task, layout), MODEL_FILE]
        self.model.value = keep
        self._show_task_fields()
        if self.run is None or not self.run.running:
            self.auc_plot.value = empty_png(f"{tasks.curve_keys(task)[1]}: start a training")
        self.apply_task()

    def _task_form(self) -> dict:
        return {"task": self.task.value, "classes": self.classes.value, "label": self.label.value,
                "target": self.target.value, "class_weights": self.class_weights.value,
                "layout": self.layout.value}

    # -- actions --------------------------------------------------------------------------------------
    def apply_task(self) -> bool:
        """Write the task fields into the state's params; a bad value leaves them unchanged and shows the
        one-line reason in the panel. True when written."""
        try:
            changes = tasks.task_changes(self.state, **self._task_form())
        except (MLaaSError, KeyError, ValueError) as err:
            self.task_message.value = f"<span class='m4h-error'>error: {html.escape(tasks.one_line(err))}</span>"
            return False
        self.state.params = self.state.params.replace(**changes)
        self.task_message.value = ""
        self.state.emit("params")
        return True

    def apply_form(self) -> None:
        """Write the form into the state's params and model choice (validated by Params and, for the task
        fields, against labels.txt and the files' branches: :func:`tasks.task_changes`)."""
        try:
            changes = tasks.task_changes(self.state, **self._task_form())
        except (MLaaSError, KeyError, ValueError) as err:
            self.task_message.value = f"<span class='m4h-error'>error: {html.escape(tasks.one_line(err))}</span>"
            raise ConfigError(tasks.one_line(err)) from None
        self.state.params = self.state.params.replace(
            epochs=int(self.epochs.value), chunk_size=int(self.chunk_size.value),
            batch_size=int(self.batch_size.value), training=self.mode.value, **changes)
        self.state.model = self.model.value if self.model.value != MODEL_FILE else self.model_path.value.strip()
        self.state.set_run_on(self.run_on.value)
        self.state.model_path()   # a missing model.py is an error now, not in the thread

    def start(self) -> TrainingRun | None:
        """Start a training run in the background with the form's settings."""
        if self.run is not None and self.run.running:
            return self.run
        try:
            self.apply_form()
        except (OSError, KeyError, ValueError) as err:
            self.status.value = f"failed: {html.escape(tasks.one_line(err))}"
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
        self.dashboard.value = _cluster_html(run)
        n = len(run.curves)
        if n and self._drawn != (run, n):   # a new run redraws even at the last run's count
            self._drawn = (run, n)
            keys, label = tasks.curve_keys(run.task)
            suffix = " (weighted)" if run.weighted else ""
            self.loss_plot.value = curves_png(tasks.curve_labels(run.curves.series("loss", "val_loss"), run.weighted),
                                              "loss" + suffix, "chunk")
            self.auc_plot.value = curves_png(tasks.curve_labels(run.curves.series(*keys), run.weighted),
                                             label + suffix, "chunk")
        self.loss_points.value = str(n)
        if not busy and run.summary:
            self.result.value = tasks.result_html(run.summary)
            if run.roc is not None:
                weighted = run.weighted and run.summary.get("test_auc_weighted") is not None
                self.roc_plot.value = roc_png(run.roc[0], run.roc[1],
                                              run.summary.get("test_auc_weighted" if weighted else "test_auc"),
                                              label="AUC (weighted)" if weighted else "AUC (unweighted)")
            elif run.task == "multiclass" and "roc_multiclass" in run.report:
                self.roc_plot.value = run.report["roc_multiclass"].read_bytes()
            elif run.task == "regression":
                self.roc_plot.value = empty_png("a regression has no ROC: see the report below", 4, 4)
            if self._report_of is not run:
                self._report_of = run
                self.show_report(run)
        elif run.status == "failed":
            self.result.value = (f"<pre class='m4h-error m4h-train-error' style='white-space: pre-wrap'>"
                                 f"{html.escape(run.error)}</pre>")

    def _report_tabs(self, names: list[str], titles: list[str]) -> None:
        """One tab per plot (the binary report's five, or the plots of the run's task)."""
        if list(self.report_plots) == names:
            return
        waiting = empty_png("the training report: at the end of a training")
        self.report_plots = {name: w.Image(format="png", value=waiting, layout=w.Layout(max_width="100%"))
                             for name in names}
        self.report.children = list(self.report_plots.values())
        self.report.titles = titles

    def show_report(self, run: TrainingRun) -> None:
        """The report's plots and, above them, its numbers: binary, the KS p-values and the top of the
        variable ranking; multi-class, the AUC per class, the accuracy and the confusion matrix;
        regression, RMSE, MAE and bias per target."""
        if run.task == "binary":
            self._report_tabs(list(REPORT_PLOTS), [_REPORT_TITLES[n] for n in REPORT_PLOTS])
        else:
            self._report_tabs(list(run.report), [tasks.plot_title(n) for n in run.report])
        for name, image in self.report_plots.items():
            path = run.report.get(name)
            title = _REPORT_TITLES.get(name) or tasks.plot_title(name)
            image.value = path.read_bytes() if path is not None else empty_png(f"{title}: not made")
        s = run.summary
        if run.task != "binary":
            self.report_text.value = tasks.report_html(s)
            return
        if s.get("report_error"):
            self.report_text.value = f"<pre class='m4h-error'>report failed: {html.escape(s['report_error'])}</pre>"
            return
        rows = "".join(f"<tr><td>{i}</td><td>{html.escape(r['feature'])}</td><td>{_num(r.get('importance'))}</td>"
                       f"<td>{_num(r.get('native'))}</td></tr>" for i, r in enumerate(s.get("ranking", []), 1))
        self.report_text.value = (
            f"<div>Overtraining check, Kolmogorov-Smirnov p-value (train vs test): signal "
            f"<b>{_num(s.get('ks_pvalue_signal'), '.3g')}</b>, background "
            f"<b>{_num(s.get('ks_pvalue_background'), '.3g')}</b>"
            f"<table><tr><th>#</th><th>feature</th><th>AUC drop when shuffled</th><th>model's own</th></tr>"
            f"{rows}</table></div>")


def _cluster_html(run: TrainingRun) -> str:
    """The run's cluster: starting, its dashboard's link while open, closed at the end; nothing in-kernel."""
    if run.cluster_state == "starting":
        return f"starting a Dask cluster ({html.escape(str(run.dask))})..."
    if run.cluster_state == "open":
        link = (f"<a href='{html.escape(run.dashboard_link, quote=True)}' target='_blank' rel='noopener' "
                "style='color: #1f77b4; text-decoration: underline'>Dask dashboard</a>"
                if run.dashboard_link else "no dashboard")
        return f"{link} ({run.workers} worker{'s' if run.workers != 1 else ''})"
    if run.cluster_state == "closed":
        return "the Dask cluster was closed at the end of the run"
    return ""
