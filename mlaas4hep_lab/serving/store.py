"""The model store on disk: ``<root>/<owner>/<name>/<version>/`` (one extracted bundle each).

``<root>/<owner>/<name>/model.json`` holds the model's state: versions (with metadata from the manifest,
their size and a ``stamp`` that changes on every upload), tags and whether the model is shared. All state
is on disk, written atomically (temporary file + rename), so a restarted server serves what it served
before; ``<root>/.generation`` changes on every change, so several server processes over one store see
each other's uploads.

``latest`` is the highest version number, as Triton's ``latest`` version policy has it: versions that are
numbers compare as numbers (10 after 9), so uploading version 3 after 5 leaves ``latest`` at 5, and
deleting 5 moves it to the next highest. Versions that are not numbers (``?version=test``) are served
under their name but become ``latest`` only while the model has no numbered version; then the most
recently uploaded of them is. An upload without a version gets the next number. Other tags (``prod``...)
are set by the owner and stay on the version they were set on.

An upload is extracted into ``<root>/.staging`` in one bounded pass (:func:`.archive.extract_upload`:
member count, bytes per member and in all, compression ratio; manifest.json checked as it arrives),
loaded (runtime built and a test prediction made), and only then moved into place and activated: until
that moment the previous version keeps serving, and a model that cannot be served is refused with the
reason. Whatever fails, the upload's staging files are removed; at start-up, those of dead processes too.

Each owner has a quota of bytes (the unpacked bundles) and of model versions (``quota_bytes``,
``quota_versions``; 0: no limit). An upload that would go over it is refused with 413 (a 4xx: the user
can fix it by deleting versions, and clients do not retry it), saying what is used and what the limit
is; a version replaced by an upload is not counted twice, and deleting frees its share at once.

The store is private to the service: folders are created 0700 and files 0600, whatever modes an archive
gives (and an older store is brought to these modes at start-up).

Models belong to their uploader. Others may read (predict, metadata) a model only when it is shared, and
address it as ``owner:name`` (``owner/name`` is accepted in request bodies, ``owner%2Fname`` in URLs).
Only the owner may delete, tag or share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.bundle import Bundle
from mlaas4hep_lab.errors import MLaaSError
from mlaas4hep_lab.serving import BadRequest, Forbidden, NotFound
from mlaas4hep_lab.serving.archive import check_bundle_sizes
from mlaas4hep_lab.serving.files import (
    atomic_write,
    clear_scratch,
    private_dir,
    private_dirs,
    scratch_dir,
    tighten,
    tree_bytes,
)
from mlaas4hep_lab.serving.quota import Quota, QuotaExceeded
from mlaas4hep_lab.serving.runtime import (
    PLATFORMS,
    RUNTIME_ORDER,
    Runtime,
    build_runtime,
    probe_runtime,
)
from mlaas4hep_lab.serving.store_ingest import StoreIngest
from mlaas4hep_lab.serving.tfaas import (
    PositionalKeys,
    positional_features,
)
from mlaas4hep_lab.serving.versions import NAME, NAME_PATTERN, latest_version, split_ref, version_key

__all__ = ["ModelStore", "LoadedModel", "QuotaExceeded", "latest_version", "split_ref", "NAME_PATTERN"]

log = logging.getLogger(__name__)
_STATE = "model.json"
_GENERATION = ".generation"
_MANAGED_TAGS = ("latest",)


@dataclass
class LoadedModel:
    """A version ready to serve: its bundle (preprocessing), runtime and, once used, its batcher."""

    owner: str
    name: str
    version: str
    stamp: str
    bundle: Bundle
    runtime: Runtime
    features: list[str]
    raw_order: np.ndarray | None = None  # columns of Bundle.vectorize output in the model's input order
    batcher: Any = None
    named: Any = None  # the named-input runtime of an objects-layout model, loaded on first use
    stats: Any = None  # its inference statistics (.stats.ModelStats), set with the batcher
    index: dict[str, int] = field(default_factory=dict)
    key_orders: dict[tuple, Any] = field(default_factory=dict)  # /json keys -> column order (cache)

    def __post_init__(self) -> None:
        self.index = {f: i for i, f in enumerate(self.features)}

    @property
    def ref(self) -> str:
        return f"{self.owner}:{self.name}"

    def retire(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class ModelStore(StoreIngest):
    """Versions, tags and sharing of models on disk, and the loaded runtimes of those being served.

    Args:
        root: the store's folder (created when missing).
        runtime: ``auto``, ``onnx`` or ``tf``; runtime_threads: intra-op threads of each runtime.
        max_members, max_bytes: caps on an uploaded archive (members; unpacked bytes in all).
        max_member_bytes: cap on one member (default: ``max_bytes``); max_ratio: unpacked per packed byte
            above which an archive is taken for a compression bomb (0: no check).
        quota_bytes, quota_versions: per owner, over all their models (0: no limit).
    """

    def __init__(self, root: str | Path, runtime: str = "auto", runtime_threads: int = 1,
                 max_members: int = 10_000, max_bytes: int = 2 << 30, *, max_member_bytes: int | None = None,
                 max_ratio: float = 0.0, quota_bytes: int = 0, quota_versions: int = 0):
        self.root = Path(root).resolve()
        self.runtime, self.runtime_threads = runtime, runtime_threads
        self.max_members, self.max_bytes = max_members, max_bytes
        self.max_member_bytes, self.max_ratio = max_member_bytes or max_bytes, max_ratio
        self.quota = Quota(quota_bytes, quota_versions)
        private_dir(self.root, parents=True)
        tighten(self.root)  # a store written by an older version had 0755/0644
        clear_scratch(self.root / ".staging")  # what killed processes left, not other workers' uploads
        clear_scratch(self.root / ".trash", everything=True)
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._index: dict[tuple[str, str], dict[str, Any]] = {}
        self._loaded: dict[tuple[str, str, str], LoadedModel] = {}
        self._unloaded: set[tuple[str, str, str]] = set()  # dropped from memory by their owner (not ready)
        self._generation: tuple | None = None
        self._generation_file = str(self.root / _GENERATION)
        self._sizes: dict[tuple, int] = {}  # (owner, name, version, stamp) -> bytes, for states without them
        self.reload()

    @classmethod
    def from_settings(cls, settings) -> ModelStore:
        """The store of a service's :class:`~mlaas4hep_lab.serving.settings.Settings`."""
        return cls(settings.store_dir, settings.runtime, settings.runtime_threads, settings.max_tar_members,
                   settings.max_tar_bytes, max_member_bytes=settings.max_tar_member_bytes,
                   max_ratio=settings.max_tar_ratio, quota_bytes=settings.quota_bytes,
                   quota_versions=settings.quota_versions)

    def scratch(self, kind: str = ".staging") -> Path:
        """A new private folder for one upload (or one deletion, ``.trash``), named after this process."""
        return scratch_dir(self.root / kind)

    # -- state on disk ----------------------------------------------------------------------------
    def _stat_generation(self) -> tuple | None:
        try:
            st = os.stat(self._generation_file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Re-read the state when another process changed it (cheap: one stat)."""
        if self._stat_generation() != self._generation:
            self.reload()

    def reload(self) -> None:
        with self._lock:
            self._generation = self._stat_generation()
            index = {}
            for state_file in sorted(self.root.glob(f"*/*/{_STATE}")):
                owner, name = state_file.parent.parent.name, state_file.parent.name
                try:
                    state = json.loads(state_file.read_text())
                    state.update(owner=owner, name=name)
                    state.setdefault("tags", {}), state.setdefault("versions", {})
                    state.setdefault("shared", False)
                    self._fill_sizes(state)
                except (OSError, ValueError, AttributeError, TypeError) as err:
                    log.error("skipping %s: %s", state_file, err)
                    continue
                # a store written before latest meant the highest version: the rule applies at once
                latest = latest_version(state["versions"])
                if latest is not None:
                    state["tags"]["latest"] = latest
                index[(owner, name)] = state
            self._index = index
            for key, model in list(self._loaded.items()):
                info = index.get(key[:2], {}).get("versions", {}).get(key[2])
                if info is None or info.get("stamp") != model.stamp:
                    self._loaded.pop(key).retire()

    def _fill_sizes(self, state: dict[str, Any]) -> None:
        """The ``bytes`` of versions stored before sizes were kept (measured once per stamp)."""
        for version, info in state["versions"].items():
            if not isinstance(info.get("bytes"), int):
                key = (state["owner"], state["name"], version, info.get("stamp"))
                if key not in self._sizes:
                    self._sizes[key] = tree_bytes(self.root / state["owner"] / state["name"] / version)
                info["bytes"] = self._sizes[key]

    def _write_state(self, state: dict[str, Any]) -> None:
        folder = self.root / state["owner"] / state["name"]
        private_dirs(self.root, folder)
        atomic_write(folder / _STATE, json.dumps(state, indent=1))
        self._bump()

    def _bump(self) -> None:
        atomic_write(self.root / _GENERATION, uuid.uuid4().hex)
        self._generation = self._stat_generation()

    # -- lookup -----------------------------------------------------------------------------------
    def find(self, user: str, ref: str, version: str | None = None) -> tuple[dict[str, Any], str]:
        """(model state, version) of ``ref`` as ``user`` sees it; ``version`` may be a tag (default
        ``latest``). Raises NotFound for models that do not exist or are not shared with ``user``."""
        owner, name = split_ref(ref, user)
        state = self._index.get((owner, name))
        if state is None or (owner != user and not state.get("shared")):
            hint = ""
            if owner == user and ":" not in ref and "/" not in ref:
                others = sorted(f"{o}:{n}" for (o, n), s in self._index.items()
                                if n == name and o != user and s.get("shared"))
                if others:
                    hint = f"; models of other users are addressed as owner:name, e.g. {others[0]!r}"
            raise NotFound(f"model {ref!r} not found (or not shared with you){hint}")
        want = "latest" if version in (None, "") else str(version)
        resolved = state["tags"].get(want, want)
        if resolved not in state["versions"]:
            raise NotFound(f"model {ref!r} has no version or tag {want!r}; versions "
                           f"{sorted(state['versions'], key=version_key)}, tags {state['tags']}")
        return state, resolved

    def owned(self, user: str, ref: str) -> dict[str, Any]:
        """The state of a model ``user`` may change (their own); 403 for others' shared models."""
        owner, name = split_ref(ref, user)
        state = self._index.get((owner, name))
        if state is None or (owner != user and not state.get("shared")):
            raise NotFound(f"model {ref!r} not found (or not shared with you)")
        if owner != user:
            raise Forbidden(f"model {ref!r} belongs to {owner!r}; only the owner may change it")
        return state

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    def loaded(self, owner: str, name: str, version: str) -> LoadedModel | None:
        """The loaded model when it is current, without blocking; None when it must be loaded."""
        model = self._loaded.get((owner, name, version))
        if model is None:
            return None
        info = self._index.get((owner, name), {}).get("versions", {}).get(version)
        return model if info is not None and info.get("stamp") == model.stamp else None

    @property
    def index_token(self) -> object:
        """An object that stays the same exactly as long as the store's state does (every change, here or
        seen by :meth:`refresh` from another process, replaces it): lookups may be cached against it."""
        return self._index

    def still_current(self, model: LoadedModel, token: object) -> bool:
        """Whether ``model``, looked up while :attr:`index_token` was ``token``, is what a lookup gives now."""
        return self._index is token and self._loaded.get((model.owner, model.name, model.version)) is model

    def is_unloaded(self, owner: str, name: str, version: str) -> bool:
        """Whether the owner unloaded this version (and nothing loaded it since)."""
        return (owner, name, version) in self._unloaded

    def unload(self, owner: str, name: str) -> list[str]:
        """Drop every loaded version of a model from memory (the files stay; the next request or
        :meth:`load` loads a version again; until then it counts as unloaded). Returns those dropped."""
        with self._lock:
            state = self._index.get((owner, name), {})
            self._unloaded.update((owner, name, v) for v in state.get("versions", {}))
            keys = [k for k in self._loaded if k[:2] == (owner, name)]
            models = [self._loaded.pop(k) for k in keys]
        for model in models:
            model.retire()
        return sorted((k[2] for k in keys), key=version_key)

    def load(self, owner: str, name: str, version: str) -> LoadedModel:
        """Load a stored version (blocking: run it in a thread)."""
        key = (owner, name, version)
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            self._unloaded.discard(key)
            model = self.loaded(*key)
            if model is not None:
                return model
            info = self._index.get((owner, name), {}).get("versions", {}).get(version)
            if info is None:
                raise NotFound(f"model {owner}:{name} has no version {version!r}")
            model = self._build(self.root / owner / name / version, owner, name, version, info["stamp"])
            with self._lock:
                if self.loaded(*key) is None and self._index.get((owner, name), {}).get(
                        "versions", {}).get(version, {}).get("stamp") == model.stamp:
                    old = self._loaded.get(key)
                    self._loaded[key] = model
                    if old is not None:
                        old.retire()
            return self._loaded.get(key, model)

    def preload(self) -> None:
        """Load the tagged versions of every model (errors are logged; those models answer 4xx)."""
        for (owner, name), state in list(self._index.items()):
            for version in sorted(set(state["tags"].values())):
                try:
                    self.load(owner, name, version)
                except Exception as err:  # one broken model must not stop the server
                    log.error("cannot load %s:%s version %s: %s", owner, name, version, err)

    def _build(self, path: Path, owner: str, name: str, version: str, stamp: str) -> LoadedModel:
        check_bundle_sizes(path)
        try:
            bundle = Bundle(path)
            features = bundle.manifest.get("features")
            if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
                raise BadRequest("manifest 'features' must be a non-empty list of names")
            names = bundle.vectorizer.names
        except BadRequest:
            raise
        except (MLaaSError, KeyError, TypeError, ValueError, AttributeError, OSError) as err:
            raise BadRequest(f"not a usable model bundle: {type(err).__name__}: {err}") from err
        if sorted(names) != sorted(features) or len(set(features)) != len(features):
            raise BadRequest("manifest 'features' do not match the bundle's specs.json")
        order = None if names == features else np.array([names.index(f) for f in features])
        runtime = build_runtime(path, bundle.manifest, len(features), self.runtime, self.runtime_threads)
        probe_runtime(runtime)
        model = LoadedModel(owner, name, version, stamp, bundle, runtime, list(features), order)
        if positional_features(bundle.manifest, model.features):
            model.key_orders = PositionalKeys(model.features)
        return model

    # -- listing ----------------------------------------------------------------------------------
    def visible(self, user: str, name: str | None = None, tag: str | None = None,
                owner: str | None = None) -> list[dict[str, Any]]:
        """Models ``user`` may use: their own and those shared with everyone; ``name`` matches a part of
        the name (case-insensitive), ``tag`` keeps models with that tag, ``owner`` one owner's."""
        out = []
        for (o, n), state in sorted(self._index.items()):
            if o != user and not state.get("shared"):
                continue
            if (name and name.lower() not in n.lower()) or (tag and tag not in state["tags"]) or (
                    owner and owner != o):
                continue
            out.append(self.summary(state))
        return out

    def served_runtime(self, state: dict[str, Any], version: str) -> tuple[str | None, str]:
        """(runtime kind, OIP platform) serving a version in this process: the loaded one, else the one
        the runtime preference would pick among the bundle's exports."""
        model = self.loaded(state["owner"], state["name"], version)
        if model is not None:
            return model.runtime.kind, model.runtime.platform
        info = state["versions"].get(version, {})
        exports = info.get("exports") or [info.get("runtime")]
        kind = next((k for k in RUNTIME_ORDER[self.runtime] if k in exports), None)
        return kind, PLATFORMS.get(kind, "")

    def summary(self, state: dict[str, Any]) -> dict[str, Any]:
        versions = sorted(state["versions"], key=version_key)
        latest = state["tags"].get("latest")
        info = state["versions"].get(latest, {})
        return {"name": state["name"], "owner": state["owner"], "ref": f"{state['owner']}:{state['name']}",
                "shared": bool(state.get("shared")), "tags": dict(state["tags"]), "versions": versions,
                "latest": latest, "backend": info.get("backend"),
                "runtime": self.served_runtime(state, latest)[0] if latest else None,
                "n_features": len(info.get("features") or []), "created": info.get("created"),
                "uploaded": info.get("uploaded")}

    # -- changes (uploads: store_ingest.StoreIngest) ---------------------------------------------
    def usage(self, owner: str) -> dict[str, int]:
        """What ``owner`` stores (bytes of unpacked bundles, versions) and their quota (0: none)."""
        self.refresh()
        return self.quota.usage(self._index, owner)

    def _tag_names(self) -> set[str]:
        return {"latest", "prod"}

    @contextlib.contextmanager
    def _commit(self):
        """Serialise changes: between threads (a lock) and between server processes (a file lock)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        with self._lock, os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self.refresh()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def delete(self, user: str, ref: str, version: str | None = None) -> dict[str, Any]:
        """Delete a model (every version) or one version (or the version a tag points to)."""
        with self._commit():
            state = json.loads(json.dumps(self.owned(user, ref)))
            key = (state["owner"], state["name"])
            folder = self.root / key[0] / key[1]
            if version is not None:
                _, version = self.find(user, ref, version)
                del state["versions"][version]
            trash = self.scratch(".trash")  # after the lookups that may refuse: nothing left behind then
            if version is None or not state["versions"]:  # the whole model goes
                removed = [version] if version is not None else sorted(state["versions"], key=version_key)
                self._index = {k: v for k, v in self._index.items() if k != key}
                if folder.exists():
                    os.replace(folder, trash / "model")
                self._bump()
                remaining = None
            else:
                removed = [version]
                state["tags"] = {t: v for t, v in state["tags"].items() if v != version}
                state["tags"]["latest"] = latest_version(state["versions"])
                if (folder / version).exists():
                    os.replace(folder / version, trash / "version")
                self._write_state(state)
                self._index = {**self._index, key: state}
                remaining = state
            for v in removed:
                model = self._loaded.pop((*key, v), None)
                if model is not None:
                    model.retire()
        shutil.rmtree(trash, ignore_errors=True)
        return {"deleted": f"{key[0]}:{key[1]}", "versions": removed,
                "model": self.summary(remaining) if remaining else None}

    def set_tag(self, user: str, ref: str, tag: str, version: str | None) -> dict[str, Any]:
        """Point ``tag`` at ``version`` (a version or another tag); None removes the tag."""
        if not isinstance(tag, str) or not NAME.match(tag) or tag in _MANAGED_TAGS:
            raise BadRequest(f"tag {tag!r} cannot be set: 'latest' moves by itself; names are letters, digits, "
                             "_ . + -")
        with self._commit():
            state = json.loads(json.dumps(self.owned(user, ref)))
            if tag in state["versions"]:
                raise BadRequest(f"tag {tag!r} would hide the version of the same name")
            if version is None:
                state["tags"].pop(tag, None)
            else:
                _, resolved = self.find(user, ref, version)
                state["tags"][tag] = resolved
            self._write_state(state)
            self._index = {**self._index, (state["owner"], state["name"]): state}
        return self.summary(state)

    def set_shared(self, user: str, ref: str, shared: bool) -> dict[str, Any]:
        with self._commit():
            state = json.loads(json.dumps(self.owned(user, ref)))
            state["shared"] = bool(shared)
            self._write_state(state)
            self._index = {**self._index, (state["owner"], state["name"]): state}
        return self.summary(state)
