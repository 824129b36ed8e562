"""Quoted names and ROOT's logical operators: the text of an expression rewritten before it is parsed.

Expressions are parsed with Python's own parser, which knows neither branch names containing ``.`` or
``/`` nor C++'s ``&&``, ``||`` and ``!``. A small scanner rewrites them first, token by token (never
inside a string literal, and ``!=`` stays not-equal):

* `` `Info/runNum` `` (a name between backticks, as in SQL) becomes a placeholder identifier that
  stands for the quoted name;
* ``&&`` becomes ``and``, ``||`` becomes ``or``;
* ``!`` becomes ``~``, which binds as tightly as C's ``!`` (``!a == b`` is ``(!a) == b`` in C, while
  Python's ``not a == b`` is ``not (a == b)``); the compiler turns a ``~`` written as ``!`` into a
  logical not, so ``!n`` is ``n == 0`` for integers too.

The rewritten text keeps a map from each of its characters to the user's text, so that an error
points at what the user wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlaas4hep_lab.errors import ExpressionError

__all__ = ["Rewritten", "rewrite", "quote_name"]


@dataclass(frozen=True)
class Rewritten:
    """``body``: the text to parse; ``quoted``: placeholder -> quoted name; ``source_col[i]``: the
    column of the user's text that character ``i`` of ``body`` comes from (one more entry for the end)."""

    body: str
    quoted: dict[str, str]
    source_col: list[int]


def quote_name(name: str) -> str:
    """``name`` as an expression writes it: bare when it is an identifier, else between backticks."""
    return name if name.isidentifier() else f"`{name}`"


def _placeholder_prefix(text: str) -> str:
    # identifiers starting with "_" are refused in expressions, so a user cannot write (or clash with) one
    prefix = "_q"
    while prefix in text:
        prefix += "q"
    return prefix


def rewrite(text: str, where: str | None = None) -> Rewritten:
    """Rewrite ``text`` (leading blanks dropped, since the parser would read them as an indent)."""
    lead = len(text) - len(text.lstrip(" \t"))
    prefix = _placeholder_prefix(text)
    quoted: dict[str, str] = {}
    by_name: dict[str, str] = {}
    out: list[str] = []
    cols: list[int] = []

    def emit(chunk: str, col: int) -> None:
        out.append(chunk)
        cols.extend([col] * len(chunk))

    i, n = lead, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":  # a string literal is copied as it is (and refused later, with its position)
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            for k in range(i, j):
                emit(text[k], k)
            i = j
        elif ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise ExpressionError(text, "unclosed backtick: write a name as `Muon.PT`", col=i, where=where)
            name = text[i + 1:j]
            if not name.strip() or "\n" in name:
                raise ExpressionError(text, "a name between backticks must be a branch name, such as "
                                      "`Info/runNum`", col=i, where=where)
            if name not in by_name:
                by_name[name] = f"{prefix}{len(by_name)}"
                quoted[by_name[name]] = name
            emit(by_name[name], i)
            i = j + 1
        elif text.startswith("&&", i) or text.startswith("||", i):
            emit(" and " if ch == "&" else " or ", i)
            i += 2
        elif ch == "!" and not text.startswith("!=", i):
            emit("~", i)
            i += 1
        else:
            emit(ch, i)
            i += 1
    cols.append(n)
    return Rewritten("".join(out), quoted, cols)
