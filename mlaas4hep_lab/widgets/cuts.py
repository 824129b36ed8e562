"""Cuts tab: new branches, flat and jagged cuts, validated as you type, with a live preview.

A thin view over :mod:`mlaas4hep_lab.widgets.preview` (validation, preproc.json edits, the preview with
the engine's Preproc) and :class:`~mlaas4hep_lab.widgets.state.LabState` (import/export of preproc.json).
"""

from __future__ import annotations

import html

import ipywidgets as w

from mlaas4hep_lab.widgets import preview as logic
from mlaas4hep_lab.widgets.histograms import distribution_png, empty_png
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["CutsPanel"]


class CutsPanel:
    """The Cuts tab. Actions are methods (``add()``, ``remove(item)``, ``import_preproc()``...) that the
    buttons call, so a test can drive the panel like a user."""

    def __init__(self, state: LabState):
        self.state = state
        self.kind = w.Dropdown(options=list(logic.CUT_KINDS), value="flat cut", description="Kind")
        self.name = w.Text(description="Name", placeholder="new branch name, e.g. log_met")
        self.branch_type = w.Dropdown(options=["auto", "flat", "jagged"], value="auto", description="Type")
        self.expression = w.Text(description="Expression", placeholder="e.g. PRI_jet_num >= 1",
                                 continuous_update=True, layout=w.Layout(width="520px"))
        self.mode = w.Dropdown(options=["any", "all"], value="any", description="Mode")
        self.message = w.HTML("type an expression")
        self.add_button = w.Button(description="Add", button_style="primary", icon="plus")
        self.list = w.VBox()
        self.preview_table = w.HTML()
        self.preview_plot = w.Image(format="png", value=empty_png("type an expression to see its distribution"))
        self.path = w.Text(description="preproc.json", value=str(state.workdir / "preproc.json"),
                           layout=w.Layout(width="520px"))
        self.import_button = w.Button(description="Import")
        self.export_button = w.Button(description="Export")
        self.file_status = w.HTML()
        for widget, cls in ((self.kind, "m4h-cut-kind"), (self.name, "m4h-cut-name"),
                            (self.branch_type, "m4h-cut-type"), (self.expression, "m4h-cut-expression"),
                            (self.mode, "m4h-cut-mode"), (self.message, "m4h-cut-message"),
                            (self.add_button, "m4h-cut-add"), (self.list, "m4h-cut-list"),
                            (self.preview_table, "m4h-preview-table"), (self.preview_plot, "m4h-preview-plot"),
                            (self.path, "m4h-preproc-path"), (self.import_button, "m4h-preproc-import"),
                            (self.export_button, "m4h-preproc-export"), (self.file_status, "m4h-preproc-status")):
            widget.add_class(cls)
        self.validation = logic.Validation(False, "type an expression")
        self.last_preview: logic.Preview | None = None
        for widget in (self.kind, self.name, self.branch_type, self.expression, self.mode):
            widget.observe(self._on_edit, "value")
        self.kind.observe(self._show_fields, "value")
        self.add_button.on_click(lambda _: self.add())
        self.import_button.on_click(lambda _: self.import_preproc())
        self.export_button.on_click(lambda _: self.export_preproc())
        state.on("preproc", self._on_preproc)
        self._show_fields()
        self._on_preproc()
        self.widget = w.VBox([
            w.HBox([self.kind, self.name, self.branch_type, self.mode]),
            w.HBox([self.expression, self.add_button]),
            self.message,
            w.HTML("<b>Current preprocessing</b> (all cuts AND together)"),
            self.list,
            w.HBox([w.VBox([w.HTML("<b>Pass fraction on the sample</b>"), self.preview_table]),
                    self.preview_plot]),
            w.HBox([self.path, self.import_button, self.export_button]),
            self.file_status,
        ])
        self.widget.add_class("m4h-cuts")

    # -- the draft ------------------------------------------------------------------------------------
    def draft(self) -> logic.CutDraft:
        return logic.CutDraft(self.kind.value, self.expression.value, self.name.value, self.mode.value,
                              self.branch_type.value)

    def _show_fields(self, *_) -> None:
        new = self.kind.value == "new branch"
        self.name.layout.display = "" if new else "none"
        self.branch_type.layout.display = "" if new else "none"
        self.mode.layout.display = "" if self.kind.value == "jagged cut" else "none"

    def _on_edit(self, *_) -> None:
        """Validate as the user types; preview the draft when it is valid."""
        self.validation = v = logic.validate(self.state, self.draft())
        css = "m4h-ok" if v.ok else "m4h-error"
        self.message.value = f"<pre class='{css}' style='margin:0'>{html.escape(v.message)}</pre>"
        self.add_button.disabled = not v.ok
        if v.ok:
            self.show_preview(v.preproc, v.variable)

    # -- actions --------------------------------------------------------------------------------------
    def add(self) -> bool:
        """Add the draft to the preprocessing; False (and the message) when it is invalid."""
        v = logic.validate(self.state, self.draft())
        if not v.ok:
            self.message.value = f"<pre class='m4h-error' style='margin:0'>{html.escape(v.message)}</pre>"
            return False
        self.state.set_preproc(v.preproc)
        self.expression.value = ""
        self.name.value = ""
        self.show_preview(None, v.variable)
        self.message.value = f"added: {html.escape(v.message.removeprefix('ok: '))}"
        return True

    def remove(self, item: logic.CutItem) -> None:
        self.state.set_preproc(logic.remove_item(self.state.preproc_dict, item))

    def import_preproc(self) -> None:
        try:
            self.state.import_preproc(self.path.value)
            self.file_status.value = f"imported {html.escape(self.path.value)}"
        except (OSError, KeyError, ValueError) as err:
            self.file_status.value = _error_html(err)

    def export_preproc(self) -> None:
        try:
            target = self.state.export_preproc(self.path.value or None)
            self.file_status.value = f"exported {html.escape(str(target))}"
        except (OSError, ValueError) as err:
            self.file_status.value = _error_html(err)

    # -- views ----------------------------------------------------------------------------------------
    def _on_preproc(self) -> None:
        rows = []
        for item in logic.items(self.state.preproc_dict):
            button = w.Button(description="remove", icon="trash", layout=w.Layout(width="100px"))
            button.add_class("m4h-cut-remove")
            button.on_click(lambda _, item=item: self.remove(item))
            rows.append(w.HBox([button, w.HTML(html.escape(item.label))]))
        self.list.children = rows or [w.HTML("<i>no cuts: every event is used</i>")]
        if not self.validation.ok:
            self.show_preview(None, None)

    def show_preview(self, data, variable) -> None:
        """Pass fraction per file and the distribution of ``variable`` before/after the cuts."""
        result = logic.preview(self.state, data, variable)
        self.last_preview = result
        self.preview_table.value = result.table_html()
        if result.variable is not None and result.before is not None:
            self.preview_plot.value = distribution_png(result.before, result.after, result.variable)


def _error_html(err: BaseException) -> str:
    """One message (an expression error keeps its caret line under the expression)."""
    return f"<pre class='m4h-error' style='margin:0; white-space: pre-wrap'>error: {html.escape(logic._message(err))}</pre>"
