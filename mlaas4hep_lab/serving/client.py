"""A small client of the mlaas4hep inference service (TFaaS routes, Open Inference Protocol v2, raw events).

Standard library only at import time (``http.client``), so it works in any notebook, script or batch job;
numpy (and awkward, for jagged events) are imported when a method needs them::

    from mlaas4hep_lab.serving.client import Client
    c = Client("http://127.0.0.1:8083")            # token from MLAAS4HEP_TOKEN or JUPYTERHUB_API_TOKEN
    c.upload("out/bundle")                          # a bundle directory (tarred on the fly) or its .tar.gz
    c.infer("higgs-keras", X)                       # float32[n, n_features] -> float32[n] scores
    c.predict_events("higgs-keras", {"PRI_met": [...], ...})   # raw branches, the bundle's own preprocessing

A multi-class or regression model answers ``float32[n, W]`` instead (W class probabilities or targets,
named by :meth:`Client.output_names`).

Every refusal of the service raises :class:`ServiceError` with the HTTP status and the server's own
``error`` message; an unreachable service raises it with ``status=None``.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import InputFileError, MLaaSError

__all__ = ["Client", "ServiceError", "default_token", "score_files", "tar_directory"]

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)


class ServiceError(MLaaSError, OSError):
    """The inference service refused a request (``status`` is the HTTP status; ``None``: no answer)."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None,
                 error: str | None = None, body: Any = None):
        super().__init__(message)
        self.status, self.url, self.error, self.body = status, url, error, body


def default_token() -> tuple[str | None, str]:
    """``(token, scheme)`` from the environment: ``MLAAS4HEP_TOKEN`` (Bearer), else the JupyterHub
    ``JUPYTERHUB_API_TOKEN`` of a single-user server (sent as ``token``), else ``(None, "Bearer")``."""
    if os.environ.get("MLAAS4HEP_TOKEN"):
        return os.environ["MLAAS4HEP_TOKEN"], "Bearer"
    if os.environ.get("JUPYTERHUB_API_TOKEN"):
        return os.environ["JUPYTERHUB_API_TOKEN"], "token"
    return None, "Bearer"


def _quote(name: str) -> str:
    """A model reference as one URL path segment: ``owner/name`` is sent as ``owner:name``."""
    name = str(name)
    if "/" in name and ":" not in name:
        name = name.replace("/", ":", 1)
    return urllib.parse.quote(name, safe=":")


def _tolist(values):
    """JSON-ready nested lists from numpy/awkward arrays, scalars or lists."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        return values.tolist()
    if type(values).__module__.startswith("awkward"):
        import awkward as ak

        return ak.to_list(values)
    if isinstance(values, (list, tuple)):
        return [_tolist(v) for v in values]
    return values


def _error_message(payload: Any, raw: bytes) -> str:
    if isinstance(payload, dict):
        for key in ("error", "detail", "message"):
            if key in payload:
                value = payload[key]
                return value if isinstance(value, str) else json.dumps(value)
    text = raw.decode("utf-8", "replace").strip()
    return text[:500] if text else "(empty answer)"


def tar_directory(directory: str | Path) -> bytes:
    """A gzipped tarball (bytes) of the bundle folder ``directory``, its name the single top folder and
    manifest.json first (:func:`mlaas4hep_lab.bundle.tar_bundle`)."""
    from mlaas4hep_lab.bundle import tar_bundle

    buf = io.BytesIO()
    tar_bundle(directory, buf)
    return buf.getvalue()


class Client:
    """Client of one inference service.

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8083`` or ``https://hub/services/tfaas``.
        token: the user's token. Default: ``MLAAS4HEP_TOKEN``, else ``JUPYTERHUB_API_TOKEN``.
        scheme: ``"Bearer"`` or ``"token"`` (default: Bearer, or ``token`` for a JupyterHub token).
        timeout: seconds per request (uploads get ``upload_timeout``).
        verify: HTTPS: ``True`` (system CAs), ``False`` (no check) or a CA bundle path.

    The client keeps one keep-alive connection per thread and is safe to share between threads.
    """

    def __init__(self, url: str, token: str | None = None, *, scheme: str | None = None, timeout: float = 60.0,
                 upload_timeout: float = 600.0, verify: bool | str = True):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(f"service URL {url!r} is not an http(s)://host[:port][/prefix] URL", url=url)
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        if token is None:
            token, env_scheme = default_token()
            scheme = scheme or env_scheme
        self.token, self.scheme = token, scheme or "Bearer"
        self.timeout, self.upload_timeout, self.verify = timeout, upload_timeout, verify
        self._local = threading.local()
        self._features: dict[str, list[str]] = {}
        self._outputs: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'set' if self.token else 'none'})"

    # ------------------------------------------------------------------ transport

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                ctx = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
                if self.verify is False:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._local.conn = conn
            self._local.used = False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        """Close this thread's connection (a later request opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                query: Mapping[str, Any] | None = None, content_type: str | None = None,
                auth: bool = True, timeout: float | None = None, raw: bool = False) -> Any:
        """Send one request; return the decoded JSON answer (text if not JSON, bytes if ``raw``).

        Raises :class:`ServiceError` for a status >= 400 or when the service does not answer."""
        target = self._prefix + path
        if query:
            q = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in query.items() if v is not None}
            if q:
                target += "?" + urllib.parse.urlencode(q)
        headers = {"Accept": "application/json"}
        if auth and self.token:
            headers["Authorization"] = f"{self.scheme} {self.token}"
        body = data
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        url = f"{self.url}{path}"
        timeout = self.timeout if timeout is None else timeout
        once_only = path.startswith("/upload")
        if once_only:  # never on a kept-alive connection the server may close while we send: no retry allowed
            self.close()
        for attempt in (0, 1):
            conn = self._connection(timeout)
            reused = self._local.used
            try:
                try:
                    conn.request(method, target, body=body, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    # the service may have answered before reading the whole body (413) and closed the
                    # connection: its answer is still there to read; if not, the error below applies
                    pass
                resp = conn.getresponse()
                payload = resp.read()
            except _RETRYABLE as err:
                self.close()
                # a keep-alive connection the server had closed while idle: once more on a new one (not for
                # uploads, which must never be applied twice)
                if reused and attempt == 0 and not once_only:
                    continue
                raise ServiceError(f"{method} {url}: the service closed the connection ({err})", url=url) from err
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise ServiceError(f"{method} {url}: no answer from the service ({type(err).__name__}: {err})",
                                   url=url) from err
            self._local.used = True
            if resp.will_close:
                self.close()
            break
        ctype = resp.getheader("Content-Type", "") or ""
        decoded: Any = payload
        if not raw:
            if "json" in ctype:
                try:
                    decoded = json.loads(payload) if payload else None
                except ValueError:
                    decoded = payload.decode("utf-8", "replace")
            else:
                decoded = payload.decode("utf-8", "replace")
        if resp.status >= 400:
            parsed = decoded
            if raw:
                try:
                    parsed = json.loads(payload)
                except ValueError:
                    parsed = None
            message = _error_message(parsed, payload)
            raise ServiceError(f"{method} {url} -> {resp.status} {resp.reason}: {message}", status=resp.status,
                               url=url, error=message, body=parsed)
        return decoded

    # ------------------------------------------------------------------ model store (TFaaS routes)

    def upload(self, bundle: str | Path, name: str | None = None, version: int | str | None = None,
               shared: bool = False) -> Any:
        """Upload a model bundle (directory, tarred on the fly, or ``.tar.gz``); return the server's answer
        (name, owner, version, ...). ``name`` overrides the manifest's name, ``version`` its version;
        ``shared=True`` lets every user of the service predict with it."""
        path = Path(bundle)
        if path.is_dir():
            data = tar_directory(path)
        elif path.is_file():
            data = path.read_bytes()
        else:
            raise InputFileError(f"bundle {path} not found (give a bundle directory or its .tar.gz)", str(path))
        answer = self.request("POST", "/upload", data=data, content_type="application/gzip",
                              query={"name": name, "version": version, "shared": bool(shared) or None},
                              timeout=self.upload_timeout)
        self._features.clear()
        self._outputs.clear()
        return answer

    def models(self, name: str | None = None, tag: str | None = None) -> Any:
        """The models this user can see (own and shared), optionally filtered by name or tag."""
        return self.request("GET", "/models", query={"name": name, "tag": tag})

    def delete(self, name: str, version: int | str | None = None) -> Any:
        """Delete one of this user's models (every version), or only ``version``."""
        self._features.pop(name, None)
        self._outputs.pop(name, None)
        if version is not None:
            return self.request("DELETE", self._model_path(name, version))
        return self.request("DELETE", f"/delete/{_quote(name)}")

    def share(self, name: str, shared: bool = True) -> Any:
        """Let every user of the service read (predict, metadata) this model of yours, or stop it."""
        return self.request("POST", f"{self._model_path(name)}/share", json_body={"shared": bool(shared)})

    def tag(self, name: str, tag: str, version: int | str | None) -> Any:
        """Point ``tag`` (e.g. ``prod``) at ``version`` of your model; ``version=None`` removes the tag."""
        return self.request("POST", f"{self._model_path(name)}/tags",
                            json_body={"tag": tag, "version": None if version is None else str(version)})

    def params(self, name: str, version: int | str | None = None) -> Any:
        """The model's manifest, params, preproc and specs (default: the latest version)."""
        return self.request("GET", f"/params/{_quote(name)}", query={"version": version})

    # ------------------------------------------------------------------ predictions

    def features(self, name: str) -> list[str]:
        """The model's ordered input feature names (from its metadata; cached)."""
        if name not in self._features:
            meta = self.metadata(name)
            feats = meta.get("features") or (meta.get("parameters") or {}).get("features")
            if not feats:
                inputs = meta.get("inputs") or []
                feats = (inputs[0].get("parameters") or {}).get("features") if inputs else None
            if not feats:
                raise ServiceError(f"the metadata of model {name!r} lists no feature names; pass keys=",
                                   url=self.url)
            self._features[name] = list(feats)
        return self._features[name]

    def output_names(self, name: str) -> list[str]:
        """The names of the model's outputs (from its metadata; cached): ``["score"]`` for a binary model,
        ``p_<class>`` per class or the regression targets, one per column of what it answers."""
        if name not in self._outputs:
            self._outputs[name] = _output_columns(self.metadata(name))
        return self._outputs[name]

    def predict(self, name: str, X=None, *, keys: Sequence[str] | None = None, values=None):
        """Scores through the TFaaS ``/json`` route: ``predict(name, X)`` with ``X`` float[n, n_features]
        in the model's feature order, ``predict(name, {feature: value(s)})``, or
        ``predict(name, keys=[...], values=[...] or [[...], ...])``. Returns float32[n] scores (a
        multi-class or regression model: float32[n, W])."""
        import numpy as np

        if X is not None and values is not None:
            raise ValueError("give X or keys/values, not both")
        if isinstance(X, Mapping):
            keys, values = list(X), [_tolist(v) for v in X.values()]
            if values and isinstance(values[0], list):  # columns -> rows
                values = [list(row) for row in zip(*values)]
        elif X is not None:
            values = _tolist(np.asarray(X, dtype=np.float64))
            keys = list(keys) if keys is not None else self.features(name)
        elif values is None:
            raise ValueError("predict needs X or values")
        else:
            values = _tolist(values)
            keys = list(keys) if keys is not None else self.features(name)
        answer = self.request("POST", "/json", json_body={"keys": list(keys), "values": values, "model": name})
        if isinstance(answer, dict):
            answer = answer.get("scores", answer.get("predictions", answer))
        return _values(answer)

    def infer(self, name: str, X, version: int | str | None = None, *, input_name: str = "features"):
        """Scores through the Open Inference Protocol v2 ``infer`` route (float32[n] from float[n, F]; a
        multi-class or regression model: float32[n, W])."""
        import numpy as np

        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        body = {"inputs": [{"name": input_name, "shape": list(X.shape), "datatype": "FP32",
                            "data": X.reshape(-1).tolist()}]}
        answer = self.request("POST", f"{self._model_path(name, version)}/infer", json_body=body)
        outputs = answer.get("outputs") or []
        if not outputs:
            raise ServiceError(f"infer on {name!r} answered no outputs: {answer}", url=self.url)
        shape = outputs[0].get("shape") or [-1]
        data = np.asarray(outputs[0]["data"], dtype=np.float32)
        return data.reshape(shape) if len(shape) == 2 else data.reshape(-1)

    def predict_events(self, name: str, events, *, version: int | str | None = None, with_keep: bool = False,
                       batch_size: int | None = None):
        """Scores of raw events (``{branch: per-event values or lists}``, an awkward record array, or the
        output of ``tree.arrays()``): the service applies the bundle's own cuts, new branches and
        normalisation, so the scores equal ``Bundle.predict_arrays`` in a notebook (float32[n], or [n, W]
        for a multi-class or regression model). With ``with_keep``, return ``(scores, keep)`` (``keep``:
        the events passing the bundle's cuts).

        Events are sent in requests of ``batch_size`` events (default: all in one); a request the service
        refuses as too large (413) is split in halves."""
        if hasattr(events, "fields") and not isinstance(events, Mapping):  # awkward record array
            events = {f: events[f] for f in events.fields}
        if not events:
            raise ValueError("no branches in events")
        n = len(next(iter(events.values())))
        state = {"batch": max(1, batch_size or n)}
        scores, keep = _predict_batches(self, name, dict(events), n, version, state)
        return (scores, keep) if with_keep else scores

    def _events_request(self, name: str, events: Mapping, version: int | str | None):
        import numpy as np

        body = {"events": {str(k): _tolist(v) for k, v in events.items()}}
        answer = self.request("POST", self._events_path(name, version), json_body=body)
        keep = None
        if isinstance(answer, dict):
            keep = answer.get("keep", answer.get("passes_cuts"))
            answer = answer.get("scores", answer.get("predictions"))
        scores = _values(answer)
        return scores, (np.asarray(keep, dtype=bool) if keep is not None else np.ones(len(scores), bool))

    # ------------------------------------------------------------------ metadata and health

    def _model_path(self, name: str, version: int | str | None = None) -> str:
        path = f"/v2/models/{_quote(name)}"
        return path if version is None else f"{path}/versions/{_quote(str(version))}"

    def _events_path(self, name: str, version: int | str | None = None) -> str:
        return f"{self._model_path(name, version)}/events"

    def metadata(self, name: str, version: int | str | None = None) -> dict:
        """The model's OIP metadata (name, versions, platform, inputs, outputs, features, ...)."""
        return self.request("GET", self._model_path(name, version))

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        try:
            self.request("GET", f"{self._model_path(name, version)}/ready")
        except ServiceError as err:
            if err.status in (404, 503):
                return False
            raise
        return True

    def server(self) -> dict:
        """The service's OIP server metadata (``GET /v2``)."""
        return self.request("GET", "/v2")

    def health(self) -> dict[str, bool]:
        """``{"live": ..., "ready": ...}`` (no token needed); ``live`` is False when nothing answers."""
        out = {}
        for key in ("live", "ready"):
            try:
                self.request("GET", f"/v2/health/{key}", auth=False, timeout=min(self.timeout, 10.0))
                out[key] = True
            except ServiceError:
                out[key] = False
        return out

    def echo(self, body: Any) -> Any:
        return self.request("POST", "/echo", json_body=body)


def _values(answer):
    """float32[n] scores, or float32[n, W] when each event has a list of values."""
    import numpy as np

    values = np.asarray(answer, dtype=np.float32)
    return values if values.ndim == 2 else values.reshape(-1)


def _output_columns(meta: dict) -> list[str]:
    """A model's output names from its metadata (``columns``; an older service: ``["score"]``)."""
    columns = meta.get("columns")
    if not columns:
        outputs = meta.get("outputs") or [{}]
        columns = (outputs[0].get("parameters") or {}).get("columns")
    return list(columns) if columns else ["score"]


def _model_inputs(client: Client, name: str) -> tuple[list[str] | None, str | None, list[str], list[str]]:
    """(input branches, tree, identifier branches, output names) of a served model, from what the service
    tells."""
    meta = client.metadata(name)
    params = meta.get("parameters") or {}
    branches = meta.get("input_branches") or meta.get("branches") or params.get("input_branches")
    tree = meta.get("tree") or params.get("tree")
    ids = meta.get("identifier") or params.get("identifier") or []
    return ((list(branches) if branches else None), tree, ([ids] if isinstance(ids, str) else list(ids)),
            _output_columns(meta))


def _predict_batches(client: Client, name: str, events: dict, n: int, version, state: dict):
    """Scores and keep of ``n`` events, sent in requests of at most ``state["batch"]`` events; a request
    the service refuses as too large (413) is split in halves, and later requests stay that small."""
    import numpy as np

    scores, keeps, start = [], [], 0
    while start < n:
        stop = min(n, start + state["batch"])
        try:
            s, k = client._events_request(name, {b: v[start:stop] for b, v in events.items()}, version)
        except ServiceError as err:
            if err.status == 413 and stop - start > 1:
                state["batch"] = max(1, (stop - start) // 2)
                continue
            raise
        if len(s) != stop - start:
            raise ServiceError(f"{name!r} answered {len(s)} scores for {stop - start} events", url=client.url)
        scores.append(s)
        keeps.append(k)
        start = stop
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    return np.concatenate(scores), np.concatenate(keeps)


def score_files(client: Client, name: str, files: Sequence[str], out: str | Path, *, tree: str | None = None,
                batch_size: int = 2_000, version: int | str | None = None,
                max_events: int | None = None) -> dict[str, Any]:
    """Read ROOT files locally, send their raw events in batches to the service's raw-events route and
    write one CSV row per event: ``file, entry, <identifiers>, score, passes_cuts`` (a multi-class or
    regression model: one column per output, ``p_<class>`` or the targets, instead of ``score``, as
    ``mlaas4hep predict`` writes them).

    ``files`` are paths/URLs or one files.txt; ``max_events`` caps the events read from each file.
    Only the branches the model needs (as its metadata says) are read and sent; a batch larger than the
    service's body limit is split. Returns ``{"files": n, "events": n}``."""
    import csv

    import numpy as np

    from mlaas4hep_lab.data import sources
    from mlaas4hep_lab.data.reader import TreeReader
    from mlaas4hep_lab.data.vectorize import _flat_numpy

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    files = list(files)
    if len(files) == 1 and str(files[0]).endswith(".txt"):
        files = sources.read_file_list(files[0])
    branches, model_tree, ids, columns = _model_inputs(client, name)
    tree = tree or model_tree or "events"
    total = 0
    state = {"batch": batch_size}
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "entry", *ids, *columns, "passes_cuts"])
        for i, path in enumerate(files):
            with TreeReader(str(path), tree) as reader:
                wanted = sorted(branches) if branches else sorted(reader.branches)
                reader.check(wanted, f"the inputs of model {name!r}")
                present_ids = [b for b in ids if b in reader.branches]
                read = sorted(set(wanted) | set(present_ids))
                stop = reader.num_entries if max_events is None else min(reader.num_entries, max_events)
                for first, arrays in reader.iterate(read, max(batch_size, 1), entry_stop=stop):
                    scores, keep = _predict_batches(client, name, {b: arrays[b] for b in wanted}, len(arrays),
                                                    version, state)
                    cols = [np.full(len(scores), i), np.arange(first, first + len(scores))]
                    cols += [_flat_numpy(arrays[b]) if b in present_ids else np.full(len(scores), "")
                             for b in ids]
                    if scores.ndim == 2 and scores.shape[1] != len(columns):
                        raise ServiceError(f"{name!r} answered {scores.shape[1]} values per event for outputs "
                                           f"{columns}", url=client.url)
                    cols += [*(scores.T if scores.ndim == 2 else [scores]), keep.astype(np.int8)]
                    writer.writerows(zip(*[c.tolist() for c in cols]))
                    total += len(scores)
    return {"files": len(files), "events": total}
