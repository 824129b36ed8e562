"""Branches tab: the tree's branches in a searchable table; tick, wildcards and identifiers become params,
and so do the weight branch, the missing-value sentinels, the normalisation and the split.

A thin view over :class:`~mlaas4hep_lab.widgets.state.LabState`: every rule (wildcards, what a tick does
to ``selected_branches``/``exclude_branches``) lives in the state.
"""

from __future__ import annotations

import html

import ipywidgets as w

from mlaas4hep_lab.widgets.state import BranchRow, LabState

__all__ = ["BranchesPanel"]

_CELL = {"type": "110px", "kind": "110px", "entries": "80px", "min": "90px", "max": "90px", "spark": "150px"}
NO_WEIGHT = "(no weight)"
NORMALIZATIONS = ("minmax", "standard", "none")


def _fmt(value: float) -> str:
    return "" if value != value else f"{value:.4g}"


def _cell(text: str, width: str, cls: str = "") -> w.HTML:
    return w.HTML(f"<span class='m4h-cell {cls}' title='{html.escape(text)}'>{html.escape(text)}</span>",
                  layout=w.Layout(width=width, overflow="hidden"))


class BranchesPanel:
    """The Branches tab. ``panel.widget`` is the view; ``panel.rows[name]`` each branch's row."""

    def __init__(self, state: LabState):
        self.state = state
        self._syncing = False
        p = state.params
        self._missing_shown = tuple(p.missing_values)
        self.search = w.Text(placeholder="search: substring or wildcard (Jet_*)", description="Search",
                             continuous_update=True)
        self.include = w.Text(value=", ".join(p.selected_branches), description="Select",
                              placeholder="wildcards, comma separated; empty = all", continuous_update=False)
        self.exclude = w.Text(value=", ".join(p.exclude_branches), description="Exclude",
                              placeholder="wildcards, comma separated", continuous_update=False)
        self.identifier = w.Text(value=", ".join(p.identifier), description="Identifier",
                                 placeholder="e.g. EventId (kept beside the features)", continuous_update=False)
        flat = [name for name, kind in state.kinds.items() if kind == "flat"]
        self.weight = w.Dropdown(options=[NO_WEIGHT, *flat], value=p.weight or NO_WEIGHT, description="Weight")
        self.missing = w.Text(value=_numbers_text(p.missing_values), description="Missing values",
                              placeholder="sentinels, e.g. -999 (masked, not normalised)", continuous_update=False)
        self.normalization = w.Dropdown(options=list(NORMALIZATIONS), value=p.normalization,
                                        description="Normalisation")
        self.split = w.Text(value=_numbers_text(p.split), description="Split", continuous_update=False,
                            placeholder="train, validation, test: 0.64, 0.16, 0.2")
        self.summary = w.HTML()
        self.message = w.HTML()
        for widget, cls in ((self.search, "m4h-branch-search"), (self.include, "m4h-branch-include"),
                            (self.exclude, "m4h-branch-exclude"), (self.identifier, "m4h-branch-identifier"),
                            (self.weight, "m4h-branch-weight"), (self.missing, "m4h-branch-missing"),
                            (self.normalization, "m4h-branch-normalization"), (self.split, "m4h-branch-split"),
                            (self.summary, "m4h-branch-summary"), (self.message, "m4h-branch-message")):
            widget.add_class(cls)
        self.checks: dict[str, w.Checkbox] = {}
        self.rows: dict[str, w.HBox] = {}
        header = w.HBox([w.HTML("<b>branch</b>", layout=w.Layout(width="260px"))]
                        + [w.HTML(f"<b>{k}</b>", layout=w.Layout(width=v)) for k, v in _CELL.items()],
                        layout=w.Layout(flex="0 0 auto"))
        self.table = w.VBox([header], layout=w.Layout(max_height="420px", overflow="auto"))
        self.table.add_class("m4h-branch-table")
        self._build_rows()
        self.search.observe(self._on_search, "value")
        self.include.observe(lambda ch: self._apply(self.state.set_include, ch["new"]), "value")
        self.exclude.observe(lambda ch: self._apply(self.state.set_exclude, ch["new"]), "value")
        self.identifier.observe(lambda ch: self._apply(self.state.set_identifier, ch["new"]), "value")
        self.weight.observe(lambda ch: self._apply(self.state.set_weight,
                                                   "" if ch["new"] == NO_WEIGHT else ch["new"]), "value")
        self.missing.observe(lambda ch: self._apply(self.state.set_missing_values, ch["new"]), "value")
        self.normalization.observe(lambda ch: self._apply(self.state.set_normalization, ch["new"]), "value")
        self.split.observe(lambda ch: self._apply(self.state.set_split, ch["new"]), "value")
        state.on("params", self.sync)
        state.on("specs", self.refresh_rows)
        self.sync()
        self.widget = w.VBox([w.HBox([self.search, self.summary]), w.HBox([self.include, self.exclude]),
                              w.HBox([self.identifier, self.weight]),
                              w.HBox([self.missing, self.normalization, self.split]), self.message, self.table])
        self.widget.add_class("m4h-branches")

    # -- table ----------------------------------------------------------------------------------------
    def _row_cells(self, row: BranchRow) -> list[w.HTML]:
        kind = row.kind if row.mean_length is None else f"{row.kind}, <n>={row.mean_length:.1f}"
        return [_cell(row.typename, _CELL["type"]), _cell(kind, _CELL["kind"]),
                _cell(str(row.entries), _CELL["entries"]), _cell(_fmt(row.minimum), _CELL["min"]),
                _cell(_fmt(row.maximum), _CELL["max"]), _cell(row.spark, _CELL["spark"], "m4h-spark")]

    def _build_rows(self) -> None:
        for row in self.state.branch_rows():
            check = w.Checkbox(value=False, description=row.name, indent=False, layout=w.Layout(width="260px"))
            check.add_class("m4h-branch-check")
            check.observe(self._on_check, "value")
            self.checks[row.name] = check
            # rows keep their height inside the scrolling table (flex items shrink by default)
            self.rows[row.name] = w.HBox([check, *self._row_cells(row)], layout=w.Layout(flex="0 0 auto"))
            self.rows[row.name].add_class("m4h-branch-row")
        self.table.children = (*self.table.children[:1], *self.rows.values())

    def refresh_rows(self) -> None:
        """Redraw min/max (from the specs once they are computed)."""
        for row in self.state.branch_rows():
            box = self.rows.get(row.name)
            if box is not None:
                box.children = (box.children[0], *self._row_cells(row))

    # -- events ---------------------------------------------------------------------------------------
    def _on_search(self, change) -> None:
        shown = set(self.state.filter_names(change["new"]))
        for name, box in self.rows.items():
            box.layout.display = "" if name in shown else "none"

    def _apply(self, setter, value) -> None:
        if self._syncing:
            return
        try:
            setter(value)
            self.message.value = ""
        except (KeyError, ValueError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            self.message.value = f"<span class='m4h-error'>error: {html.escape(str(text))}</span>"

    def _on_check(self, change) -> None:
        if self._syncing:
            return
        self._apply(lambda v: self.state.set_checked(change["owner"].description, v), change["new"])
        if self.message.value:
            self.sync()   # the tick was refused: show the state as it is

    def sync(self) -> None:
        """Show the state's params: ticks, pattern fields, summary."""
        self._syncing = True
        try:
            p = self.state.params
            chosen = set(self.state.selected())
            for name, check in self.checks.items():
                check.value = name in chosen
            self.include.value = ", ".join(p.selected_branches)
            self.exclude.value = ", ".join(p.exclude_branches)
            self.identifier.value = ", ".join(p.identifier)
            self.weight.value = p.weight if p.weight in self.weight.options else NO_WEIGHT
            self.missing.value = _numbers_text(p.missing_values)
            self.normalization.value = p.normalization
            self.split.value = _numbers_text(p.split)
            self.summary.value = self.state.summary()
        finally:
            self._syncing = False
        if tuple(p.missing_values) != self._missing_shown:   # min/max and sparklines leave the sentinels out
            self._missing_shown = tuple(p.missing_values)
            self.refresh_rows()


def _numbers_text(values) -> str:
    return ", ".join(f"{v:g}" for v in values)
