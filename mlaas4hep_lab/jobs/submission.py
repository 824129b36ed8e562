"""Checks of a submission, in the service, before anything is queued: every mistake a user can make in
files, labels, params, preproc or model.py is answered at once with a 4xx naming it, not minutes later in
a failed job.

* files: ``root://``, ``roots://``, ``http(s)://`` URLs, or local paths that resolve (symbolic links
  followed) inside one of the service's data roots; ``..`` is refused outright; a relative path is looked
  up in each data root; a local path not found there is sent to params ``redirector`` when one is set
  (the original files.txt rule), otherwise refused. A URL (and the redirector) must name a host whose
  addresses are all public, or one of the service's ``allowed_hosts``
  (:mod:`mlaas4hep_lab.jobs.netpolicy`): a job never reads from this machine or its private network;
* labels: one per file, checked as the engine checks them (binary task: 1 signal, 0 background;
  :mod:`mlaas4hep_lab.data.validation`);
* params: :func:`mlaas4hep_lab.params.load_params` (unknown keys come back as warnings);
* preproc: :meth:`mlaas4hep_lab.data.preprocess.Preproc.from_json` (expressions compiled by the safe
  compiler, never evaluated);
* model: a template name, or model.py source that parses (``ast.parse``: it is *not* run here) and
  defines ``model``.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mlaas4hep_lab.errors import ConfigError, ExpressionError, MLaaSError
from mlaas4hep_lab.jobs.netpolicy import AddressPolicy, AddressRefused
from mlaas4hep_lab.serving import BadRequest, ServingError

__all__ = ["Submission", "check_submission", "resolve_files", "check_model", "MAX_MODEL_SOURCE"]

MAX_MODEL_SOURCE = 256 * 1024
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_SCHEMES = ("root", "roots", "http", "https")


class Invalid(ServingError, ValueError):
    """A submission that is well-formed JSON but cannot be run (422)."""

    status = 422


@dataclass
class Submission:
    files: list[str]
    labels: list[float]
    params: dict[str, Any]
    preproc: dict[str, Any] | None
    model_kind: str            # template name, or "model.py" for submitted source
    model_source: str
    warnings: list[str]


def _lines(text: str) -> list[str]:
    return [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")]


def _local_candidates(path: str, roots: tuple[Path, ...]) -> list[Path]:
    p = Path(path)
    return [p] if p.is_absolute() else [root / p for root in roots]


def resolve_files(files: list[str], roots: tuple[Path, ...], redirector: str = "",
                  allowed_hosts: tuple[str, ...] | AddressPolicy = ()) -> list[str]:
    """Each entry as the worker will open it (see the module docstring); BadRequest names the bad one.

    ``allowed_hosts``: the service's setting (or a policy made from it) that lets URLs name hosts on
    loopback or private addresses."""
    policy = allowed_hosts if isinstance(allowed_hosts, AddressPolicy) else AddressPolicy(allowed_hosts)
    out = []
    for i, raw in enumerate(files):
        where = f"files[{i}] {raw!r}"
        if not isinstance(raw, str) or not raw.strip():
            raise BadRequest(f"{where}: an empty file name")
        entry = raw.strip()
        if "\x00" in entry or any(ord(c) < 32 for c in entry):
            raise BadRequest(f"{where}: control characters in a file name")
        match = _URL.match(entry)
        if match and match.group(1).lower() != "file":
            if match.group(1).lower() not in _SCHEMES:
                raise BadRequest(f"{where}: scheme {match.group(1)!r} is not read by this service; use "
                                 f"{', '.join(s + '://' for s in _SCHEMES)} or a path below a data root")
            _check_address(policy, entry, where)
            out.append(entry)
            continue
        local = entry[len("file://"):] if entry.startswith("file://") else entry
        if ".." in PurePosixPath(local).parts:
            raise BadRequest(f"{where}: '..' is not allowed in paths; give the path below a data root")
        found = None
        for candidate in _local_candidates(os.path.expanduser(local) if local.startswith("~") else local, roots):
            real = Path(os.path.realpath(candidate))
            inside = any(real == r or r in real.parents for r in roots)
            if inside and real.is_file():
                found = real
                break
            if inside and real.exists():
                raise BadRequest(f"{where}: not a file")
            if real.exists() and not inside:
                raise BadRequest(f"{where}: outside the data roots this service reads "
                                 f"({', '.join(map(str, roots)) or 'none: give root:// or http(s):// URLs'})")
        if found is not None:
            out.append(str(found))
        elif redirector:
            url = redirector.rstrip("/") + "//" + local.lstrip("/")
            _check_address(policy, url, f"{where} (not found locally, so read through params 'redirector')")
            out.append(url)
        elif not roots:
            raise BadRequest(f"{where}: this service reads no local files (it has no data roots); "
                             f"give root:// or http(s):// URLs")
        else:
            raise BadRequest(f"{where}: file not found below the data roots ({', '.join(map(str, roots))}); "
                             "check the path, or set params 'redirector' to read it remotely")
    return out


def _check_address(policy: AddressPolicy, url: str, where: str) -> None:
    try:
        policy.check_url(url, where)
    except AddressRefused as err:
        raise BadRequest(str(err)) from None


def check_model(model: str) -> tuple[str, str]:
    """(kind, source): a template's name and text, or ``("model.py", source)`` for submitted source."""
    from mlaas4hep_lab.training.model_file import TEMPLATES, template_path

    name = model.strip()
    if name in TEMPLATES:
        return name, template_path(name).read_text()
    if "\n" not in model and len(model) < 64:
        raise Invalid(f"model {name!r} is neither a template ({', '.join(TEMPLATES)}) nor model.py source "
                      "(send the file's text, which defines model(idim))")
    if len(model.encode()) > MAX_MODEL_SOURCE:
        raise Invalid(f"model.py source is {len(model.encode())} bytes, more than {MAX_MODEL_SOURCE}")
    try:
        tree = ast.parse(model, filename="model.py")   # parsed only: the source runs in the job's process
    except SyntaxError as err:
        raise Invalid(f"model.py: syntax error at line {err.lineno}, column {err.offset}: {err.msg}") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if "model" not in defined:
        raise Invalid("model.py defines no function `model`; it must define `def model(idim)` returning the "
                      "model")
    return "model.py", model


def _labels(labels: list[float] | str | None, n_files: int, task: str = "binary") -> list[float]:
    """The labels checked by the rule the engine applies (:func:`mlaas4hep_lab.data.validation.check_labels`):
    binary task, 1 signal and 0 background; an error names the line (or position) and the value. A
    regression needs none (its truth is params ``target``)."""
    from mlaas4hep_lab.data.validation import check_labels

    if labels is None:
        if task == "regression":
            return [0.0] * n_files
        raise Invalid(f"labels: the {task} task needs one label per file (only a regression needs none)")
    values = _lines(labels) if isinstance(labels, str) else list(labels)
    if len(values) != n_files:
        raise Invalid(f"{len(values)} labels for {n_files} files: give one label per file")
    try:
        return check_labels(values, task, source="labels")
    except MLaaSError as err:
        raise Invalid(str(err)) from None


def check_submission(req, roots: tuple[Path, ...], max_files: int = 1000,
                     allowed_hosts: tuple[str, ...] = ()) -> Submission:
    """Validate a :class:`~mlaas4hep_lab.jobs.schemas.SubmitRequest`; raises a 4xx ServingError.

    ``allowed_hosts``: the service's setting of that name (hosts input URLs may name although private)."""
    from mlaas4hep_lab.params import load_params

    files = _lines(req.files) if isinstance(req.files, str) else list(req.files)
    if not files:
        raise Invalid("files: no file given")
    if len(files) > max_files:
        raise Invalid(f"files: {len(files)} files, more than this service's limit of {max_files}")
    labels = _labels(req.labels, len(files), str(req.params.get("task", "binary")))
    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            params = load_params(dict(req.params))
        caught = [str(w.message) for w in seen]
    except (MLaaSError, TypeError, ValueError) as err:
        raise Invalid(f"params: {err}") from None
    if params.redirector and not _URL.match(params.redirector):
        raise Invalid(f"params: key 'redirector': {params.redirector!r} is not a root:// or http(s):// URL")
    policy = AddressPolicy(allowed_hosts)
    if params.redirector:
        try:
            policy.check_url(params.redirector, f"params: key 'redirector' {params.redirector!r}")
        except AddressRefused as err:
            raise Invalid(str(err)) from None
    resolved = resolve_files(files, roots, params.redirector, policy)
    preproc = None
    if req.preproc:
        from mlaas4hep_lab.data.preprocess import Preproc

        try:
            pre = Preproc.from_json(dict(req.preproc))
        except (ExpressionError, ConfigError, MLaaSError, TypeError, ValueError) as err:
            raise Invalid(f"preproc: {err}") from None
        preproc = None if pre.is_empty() else dict(req.preproc)
    kind, source = check_model(req.model)
    known = {k: v for k, v in req.params.items() if k in params.to_dict()}
    return Submission(resolved, labels, known, preproc, kind, source, caught)
