"""preproc.json entries and their parsing: from JSON text or a decoded dict to checked objects.

The entries of the file are :class:`Cut`, :class:`NewBranch` and :class:`BranchCut`;
:func:`parse_preproc` turns the decoded JSON into them, checking the structure, every key and value
and compiling each expression, with the key path of any problem (``new_branch.log_E.cut_1``) in the
error. :func:`load_json` and :func:`loads_json` read the JSON itself, rejecting duplicate keys. The
format is described in :mod:`mlaas4hep_lab.data.preprocess`, the import path of the public names.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep_lab.data.expressions import ALLOWED_FUNCTIONS, CONSTANTS, Expression, compile_expression
from mlaas4hep_lab.errors import ConfigError, InputFileError

__all__ = [
    "KINDS",
    "MODES",
    "SECTIONS",
    "BranchCut",
    "Cut",
    "NewBranch",
    "load_json",
    "loads_json",
    "parse_preproc",
]

KINDS = ("flat", "jagged")
MODES = ("any", "all")
SECTIONS = ("new_branch", "flat_cut", "jagged_cut")
_CUT_KEY = re.compile(r"^cut(?:_(\d+))?$")
_NEW_BRANCH_KEYS = ("def", "type", "cut", "cut_1 ... cut_N", "remove", "keys_to_remove")
_CUT_ENTRY_KEYS = ("cut", "cut_1 ... cut_N", "remove")


@dataclass(frozen=True)
class Cut:
    """One cut: ``mode`` None for a per-event (flat) condition, ``"any"``/``"all"`` for a jagged one.

    ``key`` is the key path in preproc.json, e.g. ``new_branch.log_E.cut_1``.
    """

    expression: Expression
    mode: str | None = None
    key: str = "cut"

    @property
    def local_key(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def to_json(self) -> str | list[str]:
        return self.expression.text if self.mode is None else [self.expression.text, self.mode]


@dataclass
class NewBranch:
    """``new_branch.<name>`` of preproc.json."""

    name: str
    expression: Expression
    kind: str
    cuts: list[Cut] = field(default_factory=list)
    remove: bool = False
    keys_to_remove: list[str] = field(default_factory=list)


@dataclass
class BranchCut:
    """``flat_cut.<branch>`` or ``jagged_cut.<branch>`` of preproc.json."""

    branch: str
    cuts: list[Cut] = field(default_factory=list)
    remove: bool = False


# --------------------------------------------------------------------------------------------------
# parsing


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _where(path: str, source: str | None) -> str:
    return f"{path} of {source}" if source else path


def _parse_remove(value: Any, path: str, source: str | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(
        f'expected true/false (or the strings "True"/"False"), got {value!r}', key=path, source=source
    )


def _parse_keys_to_remove(value: Any, path: str, source: str | None) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"expected a list of branch names, got {value!r}", key=path, source=source)
    return list(dict.fromkeys(value))


def _parse_cut(value: Any, path: str, source: str | None) -> Cut:
    where = _where(path, source)
    if isinstance(value, str):
        return Cut(compile_expression(value, where=where), None, path)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(
                f'a jagged cut is a list of two items [expression, "any"|"all"], got {len(value)} items: {value!r}',
                key=path,
                source=source,
            )
        expr, mode = value
        if not isinstance(expr, str):
            raise ConfigError(
                f"the first item must be an expression string, got {expr!r}", key=path, source=source
            )
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise ConfigError(
                f'the second item (mode) must be "any" or "all", got {mode!r}', key=path, source=source
            )
        return Cut(compile_expression(expr, where=where), mode.strip().lower(), path)
    raise ConfigError(
        f'expected an expression string (flat cut) or [expression, "any"|"all"] (jagged cut), got {_type_name(value)}',
        key=path,
        source=source,
    )


def _parse_cuts(entry: Mapping[str, Any], path: str, source: str | None) -> list[Cut]:
    found = []
    for key, value in entry.items():
        m = _CUT_KEY.match(key)
        if m:
            order = (0, 0) if m.group(1) is None else (1, int(m.group(1)))
            found.append((order, key, value))
    found.sort(key=lambda t: (t[0], t[1]))
    return [_parse_cut(value, f"{path}.{key}", source) for _, key, value in found]


def _check_keys(
    entry: Any, allowed: set[str], listed: tuple[str, ...], path: str, source: str | None
) -> None:
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"expected an object with keys {', '.join(listed)}, got {_type_name(entry)}",
            key=path,
            source=source,
        )
    for key in entry:
        if key not in allowed and not _CUT_KEY.match(str(key)):
            raise ConfigError(
                f"unknown key; valid keys are {', '.join(listed)}", key=f"{path}.{key}", source=source
            )


def _check_new_name(name: str, path: str, source: str | None) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(
            "a new branch name must be an identifier (letters, digits and '_', not starting with a digit) "
            "so that expressions can use it",
            key=path,
            source=source,
        )
    if name.startswith("_"):
        raise ConfigError("a new branch name must not start with '_'", key=path, source=source)
    if name in ALLOWED_FUNCTIONS or name in CONSTANTS:
        raise ConfigError(
            f"{name!r} is the name of a function or constant of expressions", key=path, source=source
        )


def _parse_new_branch(name: str, entry: Any, source: str | None) -> NewBranch:
    path = f"new_branch.{name}"
    _check_new_name(name, path, source)
    _check_keys(entry, {"def", "type", "remove", "keys_to_remove"}, _NEW_BRANCH_KEYS, path, source)
    if "def" not in entry:
        raise ConfigError("missing 'def' (the expression that defines the branch)", key=path, source=source)
    definition = entry["def"]
    if not isinstance(definition, str):
        raise ConfigError(
            f"expected an expression string, got {_type_name(definition)}", key=f"{path}.def", source=source
        )
    if "type" not in entry:
        raise ConfigError('missing \'type\' ("flat" or "jagged")', key=path, source=source)
    kind = entry["type"]
    if not isinstance(kind, str) or kind.strip().lower() not in KINDS:
        raise ConfigError(f'expected "flat" or "jagged", got {kind!r}', key=f"{path}.type", source=source)
    expression = compile_expression(definition, where=_where(f"{path}.def", source))
    return NewBranch(
        name=name,
        expression=expression,
        kind=kind.strip().lower(),
        cuts=_parse_cuts(entry, path, source),
        remove=_parse_remove(entry.get("remove", False), f"{path}.remove", source),
        keys_to_remove=_parse_keys_to_remove(
            entry.get("keys_to_remove", []), f"{path}.keys_to_remove", source
        ),
    )


def _parse_branch_cut(section: str, branch: str, entry: Any, source: str | None) -> BranchCut:
    path = f"{section}.{branch}"
    _check_keys(entry, {"remove"}, _CUT_ENTRY_KEYS, path, source)
    return BranchCut(
        branch=branch,
        cuts=_parse_cuts(entry, path, source),
        remove=_parse_remove(entry.get("remove", False), f"{path}.remove", source),
    )


def parse_preproc(data: Any, source: str | None) -> tuple[list[NewBranch], list[BranchCut], list[BranchCut]]:
    """Parse the decoded preproc.json ``data`` into (new branches, flat cuts, jagged cuts).

    Checks the structure, keys and values and compiles every expression; checks against a
    tree's branches are left to :meth:`~mlaas4hep_lab.data.preprocess.Preproc.validate`.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be an object with keys {', '.join(SECTIONS)}, got {_type_name(data)}",
            source=source,
        )
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown key; valid keys are {', '.join(SECTIONS)}", key=str(key), source=source
            )
    sections: dict[str, Mapping[str, Any]] = {}
    for key in SECTIONS:
        value = data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"expected an object mapping branch names to settings, got {_type_name(value)}",
                key=key,
                source=source,
            )
        sections[key] = value
    new = [_parse_new_branch(name, entry, source) for name, entry in sections["new_branch"].items()]
    flat = [_parse_branch_cut("flat_cut", b, e, source) for b, e in sections["flat_cut"].items()]
    jagged = [_parse_branch_cut("jagged_cut", b, e, source) for b, e in sections["jagged_cut"].items()]
    return new, flat, jagged


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate key {k!r} in a JSON object (the first value would be lost)", key=k)
        out[k] = v
    return out


def load_json(path: Path) -> Any:
    if not path.exists():
        raise InputFileError(f"preproc file {str(path)!r} not found", str(path))
    if path.is_dir():
        raise InputFileError(f"preproc file {str(path)!r} is a directory, not a JSON file", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read preproc file {str(path)!r}: {exc}", str(path)) from exc
    return loads_json(text, str(path))


def loads_json(text: str, source: str | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
        ) from None
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source) from None
