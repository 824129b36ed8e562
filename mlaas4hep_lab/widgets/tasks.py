"""The Training panel's task logic (plain Python, no widgets): which templates a task offers, the task
fields of the form as params changes (checked against labels.txt, the files' branches and the sampled
events), which curves the live plots draw, and the end-of-run numbers and plots of each task.

The checks are the engine's where it has them (:class:`~mlaas4hep_lab.params.Params`,
:func:`~mlaas4hep_lab.data.validation.check_labels`, :class:`~mlaas4hep_lab.data.truth.Truth`), so
the panel says before training, in one line, what training would refuse.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.task import TASK_KINDS
from mlaas4hep_lab.training.model_file import TEMPLATES
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["TASK_OPTIONS", "CLASS_WEIGHTS", "LAYOUT_OPTIONS", "OBJECTS_TEMPLATES", "templates_for", "template_for", "split_classes", "split_targets",
           "task_changes", "one_line", "curve_keys", "summary_of", "result_html", "report_html", "task_pngs",
           "plot_title", "auc_html", "curve_labels"]

TASK_OPTIONS = (("binary", "binary"), ("multi-class", "multiclass"), ("regression", "regression"))
CLASS_WEIGHTS = ("none", "balanced")
_FRAMEWORKS = tuple(name for name in TEMPLATES if "_" not in name)   # keras, torch, sklearn, xgboost


LAYOUT_OPTIONS = (("flat vector", "flat"), ("objects (a set per collection)", "objects"))
OBJECTS_TEMPLATES = ("torch_deepsets", "torch_attention", "keras_deepsets")   # any task: model(inputs, n_outputs)


def templates_for(task: str, layout: str = "flat") -> list[str]:
    """The model templates of ``task``: ``keras`` ... for binary, ``<framework>_<task>`` for the others; for
    the objects layout the set models, whatever the task."""
    if layout == "objects":
        return [name for name in OBJECTS_TEMPLATES if name in TEMPLATES]
    if task == "binary":
        return list(_FRAMEWORKS)
    return [name for name in (f"{fw}_{task}" for fw in _FRAMEWORKS) if name in TEMPLATES]


def template_for(task: str, current: str, layout: str = "flat") -> str | None:
    """The template of ``task`` (and ``layout``) with the framework of ``current`` (``torch`` ->
    ``torch_multiclass``, or ``torch_deepsets`` for the objects layout); None when ``current`` is no template
    (a model.py path)."""
    framework = current.split("_", 1)[0]
    if current not in TEMPLATES or framework not in _FRAMEWORKS:
        return None
    if layout == "objects":
        return current if current in OBJECTS_TEMPLATES else next(
            (name for name in OBJECTS_TEMPLATES if name.startswith(framework + "_")), OBJECTS_TEMPLATES[0])
    name = framework if task == "binary" else f"{framework}_{task}"
    return name if name in TEMPLATES else None


def split_classes(text: str) -> list[str]:
    """Class names, one per line or comma-separated."""
    return [part.strip() for line in str(text).splitlines() for part in line.split(",") if part.strip()]


def split_targets(text: str) -> list[str]:
    """Targets, one branch or expression per line (an expression may hold commas: ``max(a, b)``)."""
    return [line.strip() for line in str(text).splitlines() if line.strip()]


def one_line(err: BaseException) -> str:
    """An error as the panel shows it: the message's first line (a KeyError's without quotes)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def task_changes(state: LabState, task: str, classes: str = "", label: str = "", target: str = "",
                 class_weights: str = "none", layout: str = "flat") -> dict[str, Any]:
    """The params changes of the form's task fields, checked: ``task`` (binary, multiclass,
    regression), ``classes`` (text: one per line or comma-separated), ``label`` (a per-event class
    expression, multi-class only), ``target`` (text: one per line, regression only) and
    ``class_weights`` ("none", "balanced" or anything else: keep the params' list). Raises
    ConfigError (or the engine's BranchNotFoundError / ExpressionError) with a one-line message."""
    if task not in TASK_KINDS:
        raise ConfigError(f"unknown task {task!r}; tasks: {', '.join(TASK_KINDS)}", "task")
    p = state.params
    weights = {"none": None, "balanced": "balanced"}.get(class_weights, p.class_weights)
    if layout not in dict(LAYOUT_OPTIONS).values():
        raise ConfigError(f"unknown layout {layout!r}; layouts: flat, objects", "layout")
    changes: dict[str, Any] = {"task": task, "label": "", "target": [], "classes": [], "class_weights": weights,
                               "layout": layout, "collections": p.collections if layout == "objects" else None}
    if task == "binary":
        changes["classes"] = list(p.classes) if p.task == "binary" and len(p.classes) == 2 else []
    elif task == "multiclass":
        changes["classes"], changes["label"] = split_classes(classes), label.strip()
        if isinstance(weights, list) and len(weights) != len(changes["classes"]):
            changes["class_weights"] = None   # a list of another task's classes does not carry over
    else:
        changes["target"], changes["class_weights"] = split_targets(target), None
        if not changes["target"]:
            raise ConfigError("a regression needs its target: one branch or expression per line", "target")
    new = p.replace(**changes)   # the params' own rules (two distinct names, targets for a regression...)
    _check_labels(state, new)
    _check_truth(state, new)
    return changes


def _check_labels(state: LabState, params) -> None:
    """labels.txt fits the task: 0/1 for binary; for a multi-class task by file, a named class per label
    and a file per named class."""
    from mlaas4hep_lab.data.validation import check_labels

    if params.task == "regression" or (params.task == "multiclass" and params.label):
        return
    check_labels(state.labels, params.task, source="labels.txt", files=[Path(f).name for f in state.files])
    used = sorted({f"{v:g}" for v in state.labels})
    if params.task == "binary" and used != ["0", "1"]:
        raise ConfigError(f"labels.txt uses only {', '.join(used)}: a binary task needs files of both 1 (signal) "
                          "and 0 (background)", "task")
    names = list(params.classes)
    if params.task != "multiclass" or not names:
        return
    for value, path in zip(state.labels, state.files):
        if value >= len(names):
            raise ConfigError(f"labels.txt gives {value:g} to {Path(path).name} but {len(names)} classes are "
                              f"named ({', '.join(names)}): name one class per label 0..{int(max(state.labels))}",
                              "classes")
    unused = [f"{i} ({name})" for i, name in enumerate(names) if float(i) not in state.labels]
    if unused:
        raise ConfigError(f"no file of labels.txt has the label of class {', '.join(unused)}: each named class "
                          f"needs events; labels.txt uses {', '.join(used)}", "classes")


def _check_truth(state: LabState, params) -> None:
    """The label or target expressions name branches of the files (or new branches) and give one number
    per event; a per-event label gives class indices of the named classes on the sampled events."""
    from mlaas4hep_lab.data.truth import Truth

    truth = Truth.from_params(params)
    if truth is None:
        return
    new_kinds = {name: entry.get("type", "flat") for name, entry in state.preproc_dict.get("new_branch", {}).items()}
    truth.check(state.kinds, new_kinds, "the files")
    if truth.key != "label" or not params.classes:
        return
    pre = state.preproc()
    values = []
    for events in state.sample:
        arrays, keep = pre.apply(events) if pre is not None else (events, None)
        found = truth.evaluate(arrays)
        values.append(found if keep is None else found[keep])
    found = np.concatenate(values) if values else np.zeros(0)
    k = len(params.classes)
    bad = found[~(np.isfinite(found) & (found >= 0) & (found < k) & (found == np.round(found)))]
    if bad.size:
        raise ConfigError(f"{params.label!r} gives {bad[0]:g} on {bad.size:,} of {found.size:,} sampled events; "
                          f"the {k} classes named ({', '.join(params.classes)}) take 0..{k - 1}", "label")


# ---------------------------------------------------------------------------------------- live plots
def curve_keys(task: str) -> tuple[tuple[str, ...], str]:
    """The metric keys of the second live plot and its axis label: AUC (binary), macro one-vs-rest AUC
    (multi-class), validation RMSE and MAE in the targets' units (regression: no AUC)."""
    if task == "regression":
        return ("val_rmse", "val_mae"), "RMSE / MAE (targets' units)"
    if task == "multiclass":
        return ("auc", "val_auc"), "macro AUC (one vs rest)"
    return ("auc", "val_auc"), "AUC"


# ------------------------------------------------------------------------------------ end of the run
def summary_of(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the panel shows of a run's metrics.json (keys: README "Tasks")."""
    if task == "multiclass":
        return {"task": task, "classes": metrics.get("classes", []), "auc_per_class": metrics.get("auc_per_class", {}),
                "auc_macro": metrics.get("auc_macro"), "test_auc": metrics.get("auc_macro"),
                "accuracy": metrics.get("accuracy"), "confusion": metrics.get("confusion", [])}
    if task == "regression":
        return {"task": task, "targets": metrics.get("targets", []), "rmse": metrics.get("rmse", {}),
                "mae": metrics.get("mae", {}), "bias": metrics.get("bias", {})}
    return {"task": "binary", "test_auc": metrics.get("auc"), "test_auc_weighted": metrics.get("auc_weighted"),
            "ams": metrics.get("ams"),
            "ks_pvalue_signal": metrics.get("ks_pvalue_signal"),
            "ks_pvalue_background": metrics.get("ks_pvalue_background"),
            "ranking": metrics.get("ranking", [])[:10], "report_error": metrics.get("report_error")}


def num(value, fmt: str = ".4f") -> str:
    return "n/a" if not isinstance(value, (int, float)) or not math.isfinite(value) else format(value, fmt)


def result_html(s: dict[str, Any]) -> str:
    """The result line beside the ROC: the headline numbers and the bundle."""
    task = s.get("task", "binary")
    if task == "multiclass":
        head = f"macro AUC (one vs rest): <b>{num(s.get('auc_macro'))}</b><br>accuracy: <b>{num(s.get('accuracy'))}</b>"
    elif task == "regression":
        head = "<br>".join(f"RMSE {html.escape(t)}: <b>{num(s['rmse'].get(t), '.4g')}</b>" for t in s["targets"])
    else:
        head = f"{auc_html(s)}<br>best AMS: <b>{num(s.get('ams'))}</b>"
    return (f"<div>{head}<br>bundle: <code>{html.escape(str(s.get('bundle')))}</code>"
            + (" (stopped early)" if s.get("stopped") else "") + "</div>")


def auc_html(s: dict[str, Any]) -> str:
    """The binary test AUC, said weighted and unweighted side by side (the validation curves are weighted
    when a weight branch is set; the unweighted number alone would not compare with them)."""
    if s.get("test_auc_weighted") is not None:
        return (f"test AUC: weighted <b class='m4h-auc-weighted'>{num(s.get('test_auc_weighted'))}</b>, "
                f"unweighted <b class='m4h-auc-unweighted'>{num(s.get('test_auc'))}</b>")
    return f"test AUC (unweighted, no weight branch): <b class='m4h-auc-unweighted'>{num(s.get('test_auc'))}</b>"


_CURVE_NAMES = {"loss": "train loss", "val_loss": "validation loss", "auc": "train AUC", "val_auc": "validation AUC",
                "val_rmse": "validation RMSE", "val_mae": "validation MAE"}


def curve_labels(series: dict[str, Any], weighted: bool) -> dict[str, Any]:
    """The live plots' legend: ``val_auc`` -> "validation AUC (weighted)" (weighted: params ``weight`` set, as
    the trainer's loss and AUC are then)."""
    suffix = " (weighted)" if weighted else ""
    return {_CURVE_NAMES.get(key, key) + suffix: value for key, value in series.items()}


def _table(head: list[str], rows: list[list[str]], cls: str) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{th}</tr>{body}</table>"


def report_html(s: dict[str, Any]) -> str:
    """The numbers above the report's plots for a multi-class or regression run (binary: the panel's)."""
    if s.get("task") == "multiclass":
        names = [html.escape(str(c)) for c in s.get("classes", [])]
        aucs = s.get("auc_per_class", {})
        per_class = _table(["class", "AUC (one vs rest)"],
                           [[n, num(aucs.get(c))] for n, c in zip(names, s.get("classes", []))]
                           + [["<b>macro</b>", f"<b>{num(s.get('auc_macro'))}</b>"]], "m4h-auc-per-class")
        confusion = _table(["true \\ predicted", *names],
                           [[n, *(f"{int(v):,}" for v in row)] for n, row in zip(names, s.get("confusion", []))],
                           "m4h-confusion")
        return (f"<div>Test split: accuracy <b>{num(s.get('accuracy'))}</b>, macro AUC "
                f"<b>{num(s.get('auc_macro'))}</b>{per_class}Confusion matrix (events, argmax){confusion}</div>")
    if s.get("task") == "regression":
        rows = [[html.escape(t), num(s["rmse"].get(t), ".4g"), num(s["mae"].get(t), ".4g"),
                 num(s["bias"].get(t), ".4g")] for t in s.get("targets", [])]
        return ("<div>Test split, in the targets' units"
                f"{_table(['target', 'RMSE', 'MAE', 'bias (mean of prediction - truth)'], rows, 'm4h-regression')}"
                "</div>")
    return ""


def task_pngs(plots_dir: str | Path, task: str, names: list[str]) -> dict[str, Path]:
    """The plots the workflow wrote for a multi-class (``roc_multiclass``, ``confusion``,
    ``rejection_<class>`` in class order) or regression run (``regression_<target>`` then
    ``response_<target>`` per target), by name."""
    plots_dir = Path(plots_dir)

    def order(prefix: str) -> list[str]:
        found = sorted(p.stem for p in plots_dir.glob(f"{prefix}_*.png"))
        rank = {_stem(f"{prefix}_{n}"): i for i, n in enumerate(names)}
        return sorted(found, key=lambda stem: rank.get(stem, len(rank)))

    if task == "multiclass":
        stems = [s for s in ("roc_multiclass", "confusion") if (plots_dir / f"{s}.png").is_file()]
        stems += order("rejection")
    elif task == "regression":
        stems = [s for pair in zip(order("regression"), order("response")) for s in pair]
        stems = stems or [*order("regression"), *order("response")]
    else:
        stems = []
    return {stem: plots_dir / f"{stem}.png" for stem in stems}


def _stem(name: str) -> str:   # how the workflow names a plot file after a class or a target
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def plot_title(name: str) -> str:
    """A report tab's title for a plot file's name."""
    fixed = {"roc_multiclass": "ROC (one vs rest)", "confusion": "Confusion"}
    if name in fixed:
        return fixed[name]
    for prefix, title in (("rejection_", "Rejection: "), ("regression_", "Pred. vs truth: "),
                          ("response_", "Response: ")):
        if name.startswith(prefix):
            return title + name[len(prefix):]
    return name
