"""The cut and new-branch builder's logic: drafts, validation as you type, preproc.json edits, preview.

Validation uses the engine's own compiler (:func:`~mlaas4hep_lab.data.expressions.compile_expression`)
and :meth:`Preproc.validate`, so the messages are the ones the CLI would print, then runs the draft on the
first sampled events (an expression that compiles can still fail on the data: ``a > 3 & b < 2`` means
``a > (3 & b) < 2``). A syntax error gets a hint for what users of ROOT, C++ or Python most often type
(:func:`syntax_hint`). The preview applies the engine's :class:`~mlaas4hep_lab.data.preprocess.Preproc` to
the sampled events of each file: its pass fractions are the engine's by construction.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.data.expressions import compile_expression
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.errors import ConfigError, MLaaSError
from mlaas4hep_lab.widgets.state import LabState

__all__ = ["CUT_KINDS", "CutDraft", "Validation", "CutItem", "Preview", "validate", "add_draft", "items",
           "remove_item", "preview", "syntax_hint"]

CUT_KINDS = ("new branch", "flat cut", "jagged cut")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CUT_KEY = re.compile(r"^cut(?:_(\d+))?$")
_TRIAL_EVENTS = 200     # validate runs a draft on this many sampled events of the first file
_OPERATORS = "and: && or and; or: || or or; not: ! or not; compare with == != < <= > >=; a range: 1 <= x <= 16"
_HINTS = (  # (pattern in the user's text, hint), the first that matches is given
    (re.compile(r"(&&|\|\||&|\||!|\band|\bor|\bnot|[<>=!]=?|[-+*/])\s*$"),
     "the expression ends with an operator: complete it, e.g. PRI_met > 20 && PRI_jet_num >= 1"),
    (re.compile(r"=>|=<"), "write >= and <= (the = comes second)"),
    (re.compile(r"(?<![<>=!])=(?!=)"), "to compare, write == (a single = assigns)"),
    (re.compile(r"\b(AND|OR|NOT)\b"), "and, or, not are lower case (or write &&, ||, !)"),
    (re.compile(r"\?.*:"), "no ?: operator: write where(condition, value_if_true, value_if_false)"),
    (re.compile(r"&&&|\|\|\||&\s+&|\|\s+\|"), "write && (or and) and || (or or), in one piece"),
)


@dataclass
class CutDraft:
    """What the user is typing: ``kind`` is one of :data:`CUT_KINDS`."""

    kind: str = "flat cut"
    expression: str = ""
    name: str = ""            # new branch only
    mode: str = "any"         # jagged cut only: "any" or "all"
    branch_type: str = "auto"  # new branch only: "auto" (what the expression gives), "flat" or "jagged"


@dataclass
class Validation:
    ok: bool
    message: str
    preproc: dict[str, Any] | None = None   # the preproc.json content with the draft added
    variable: str | None = None             # the branch to histogram in the preview


@dataclass
class CutItem:
    """One entry of the current preproc: a new branch, or one cut of a flat_cut/jagged_cut branch."""

    section: str     # "new_branch", "flat_cut", "jagged_cut"
    branch: str
    key: str = ""    # "cut", "cut_2"... for cuts; "" for a whole new branch
    text: str = ""

    @property
    def label(self) -> str:
        if self.section == "new_branch" and self.key:
            return f"cut on new branch {self.branch} ({self.key}): {self.text}"
        if self.section == "new_branch":
            return f"new branch {self.branch} = {self.text}"
        return f"{self.section.replace('_', ' ')} on {self.branch}: {self.text}"


@dataclass
class Preview:
    rows: list[dict[str, Any]] = field(default_factory=list)   # file, events, passed, fraction
    variable: str | None = None
    before: Any = None
    after: Any = None
    error: str = ""

    def table_html(self) -> str:
        if self.error:
            return f"<div class='m4h-error'>error: {_esc(self.error)}</div>"
        head = "<tr><th>file</th><th>sampled</th><th>pass</th><th>fraction</th></tr>"
        body = "".join(
            f"<tr><td>{_esc(Path(r['file']).name)}</td><td>{r['events']}</td><td>{r['passed']}</td>"
            f"<td>{r['fraction']:.4f}</td></tr>" for r in self.rows)
        return f"<table class='m4h-preview'>{head}{body}</table>"


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _names_in_order(text: str, names) -> list[str]:
    return list(dict.fromkeys(m.group(0) for m in _NAME.finditer(text) if m.group(0) in names))


def _next_cut_key(entry: dict[str, Any]) -> str:
    used = [k for k in entry if _CUT_KEY.match(k)]
    if not used:
        return "cut"
    numbers = [int(m.group(1)) for k in used if (m := _CUT_KEY.match(k)) and m.group(1)]
    return f"cut_{max([1, *numbers]) + 1}"


def add_draft(current: dict[str, Any], draft: CutDraft, kinds: dict[str, str]) -> tuple[dict[str, Any], str]:
    """(the preproc.json content with ``draft`` added, the branch to histogram); ConfigError when the
    draft cannot be placed (no name, no branch of the right kind in a cut)."""
    data = copy.deepcopy(current)
    text = draft.expression.strip()
    all_kinds = {**kinds, **{n: e.get("type", "flat") for n, e in data.get("new_branch", {}).items()}}
    expr = compile_expression(text, all_kinds, where=draft.kind)
    if draft.kind == "new branch":
        name = draft.name.strip()
        if not name:
            raise ConfigError("give the new branch a name", key="new_branch")
        if name in data.get("new_branch", {}):
            raise ConfigError(f"a new branch {name!r} exists already; remove it first", key=f"new_branch.{name}")
        kind = draft.branch_type if draft.branch_type in ("flat", "jagged") else expr.kind(all_kinds)
        data.setdefault("new_branch", {})[name] = {"def": text, "type": kind, "remove": False}
        return data, name
    if draft.kind not in ("flat cut", "jagged cut"):
        raise ConfigError(f"unknown kind {draft.kind!r}; one of {', '.join(CUT_KINDS)}", key="kind")
    wanted = "flat" if draft.kind == "flat cut" else "jagged"
    candidates = [n for n in _names_in_order(text, expr.names) if all_kinds.get(n) == wanted]
    if not candidates:
        hint = ("a flat cut is filed under a flat branch it uses; for a condition on a list, use a jagged cut "
                "or a new flat branch (e.g. sum(Jet_pt > 30))" if wanted == "flat"
                else "a jagged cut needs a jagged branch (a list per event) in the expression")
        raise ConfigError(f"no {wanted} branch in {text!r}: {hint}", key=draft.kind.replace(" ", "_"))
    branch = candidates[0]
    section = "flat_cut" if wanted == "flat" else "jagged_cut"
    entry = data.setdefault(section, {}).setdefault(branch, {"remove": False})
    if draft.mode not in ("any", "all") and wanted == "jagged":
        raise ConfigError(f"mode must be 'any' or 'all', got {draft.mode!r}", key=section)
    entry[_next_cut_key(entry)] = text if wanted == "flat" else [text, draft.mode]
    return data, branch


def syntax_hint(text: str, message: str) -> str:
    """A hint for a syntax error of ``text`` (the compiler's ``message``): a trailing operator, ``=`` for
    ``==``, ``=>``, upper-case ``AND``, C's ``?:``...; else the operators expressions take. "" for other
    errors."""
    if "syntax error" not in message:
        return ""
    for pattern, hint in _HINTS:
        if pattern.search(text):
            return f"hint: {hint}"
    return f"hint: {_OPERATORS}"


def _evaluation_hint(text: str, message: str) -> str:
    if re.search(r"'[&|]' failed", message):
        return ("hint: & and | bind tighter than comparisons (a > 3 & b < 2 is a > (3 & b) < 2): write "
                "(a > 3) & (b < 2), or a > 3 && b < 2")
    return ""


def validate(state: LabState, draft: CutDraft) -> Validation:
    """Check ``draft`` against the files' branches and the current preproc, then run it on the first
    sampled events; the message is the compiler's (or the preproc checker's, or the evaluation's), with a
    hint for the common slips."""
    if not draft.expression.strip():
        return Validation(False, "type an expression")
    try:
        data, variable = add_draft(state.preproc_dict, draft, state.kinds)
        pre = Preproc.from_json(data)
        pre.validate(state.kinds, "the files")
        if state.sample and len(state.sample[0]):
            pre.apply(state.sample[0][:_TRIAL_EVENTS])
    except (MLaaSError, KeyError, ValueError) as err:
        message = _message(err)
        hint = syntax_hint(draft.expression, message) or _evaluation_hint(draft.expression, message)
        return Validation(False, f"{message}\n{hint}" if hint else message)
    if draft.kind == "new branch":
        kind = data["new_branch"][variable]["type"]
        what = f"{kind} new branch {variable}"
    else:
        what = f"{draft.kind} on {variable}" + (f" ({draft.mode})" if draft.kind == "jagged cut" else "")
    return Validation(True, f"ok: {what}", data, variable)


def _message(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, KeyError) and err.args:   # BranchNotFoundError is a KeyError: str() adds quotes
        text = str(err.args[0])
    return text


def _cut_text(value: Any) -> str:
    return value if isinstance(value, str) else f"{value[0]} ({value[1]})"


def items(data: dict[str, Any]) -> list[CutItem]:
    """Every new branch and every cut of a preproc.json content, in file order: a new branch's own cuts
    (``cut``, ``cut_1``... inside its ``new_branch`` entry) right after it."""
    out: list[CutItem] = []
    for name, entry in data.get("new_branch", {}).items():
        out.append(CutItem("new_branch", name, "", str(entry.get("def", ""))))
        out += [CutItem("new_branch", name, key, _cut_text(value)) for key, value in entry.items()
                if _CUT_KEY.match(key)]
    for section in ("flat_cut", "jagged_cut"):
        for branch, entry in data.get(section, {}).items():
            out += [CutItem(section, branch, key, _cut_text(value)) for key, value in entry.items()
                    if _CUT_KEY.match(key)]
    return out


def remove_item(data: dict[str, Any], item: CutItem) -> dict[str, Any]:
    """The preproc.json content without ``item`` (an emptied branch entry or section is dropped; a new
    branch's cut goes alone, the branch stays)."""
    data = copy.deepcopy(data)
    section = data.get(item.section, {})
    if item.section == "new_branch" and item.key:
        section.get(item.branch, {}).pop(item.key, None)
    elif item.section == "new_branch":
        section.pop(item.branch, None)
    else:
        entry = section.get(item.branch, {})
        entry.pop(item.key, None)
        if not any(_CUT_KEY.match(k) for k in entry):
            section.pop(item.branch, None)
    if not section:
        data.pop(item.section, None)
    return data


def preview(state: LabState, data: dict[str, Any] | None = None, variable: str | None = None) -> Preview:
    """Apply the preprocessing ``data`` (default: the state's) to each file's sampled events with the
    engine's :meth:`Preproc.apply`; pass counts per file and ``variable`` before/after the cuts."""
    data = state.preproc_dict if data is None else data
    try:
        pre = Preproc.from_json(data)
        pre.validate(state.kinds, "the files")
        rows, before, after = [], [], []
        for path, events in zip(state.files, state.sample):
            arrays, keep = pre.apply(events)
            passed = int(np.count_nonzero(keep))
            rows.append({"file": path, "events": len(keep), "passed": passed,
                         "fraction": passed / len(keep) if len(keep) else float("nan")})
            if variable is not None and variable in arrays.fields:
                values = arrays[variable]
                before.append(values)
                after.append(values[keep])
    except (MLaaSError, KeyError, ValueError) as err:
        return Preview(error=_message(err))
    return Preview(rows, variable, _concat(before), _concat(after))


def _concat(parts: list) -> Any:
    return ak.concatenate(parts) if parts else None
