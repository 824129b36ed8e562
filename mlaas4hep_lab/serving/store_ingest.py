"""Uploads into the model store: a bundle tarball, a SavedModel tarball or a bare ONNX model / TF frozen graph
(the original TFaaS forms), each extracted in one bounded pass, loaded and tested, then activated (see
:mod:`.store` for the store's layout and rules). :class:`StoreIngest` is a part of
:class:`~mlaas4hep_lab.serving.store.ModelStore`, kept apart to keep each file about one thing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from mlaas4hep_lab.serving import BadRequest, TooLarge
from mlaas4hep_lab.serving.archive import extract_upload, file_sha256
from mlaas4hep_lab.serving.files import human_size, private_dirs, tighten, tree_bytes
from mlaas4hep_lab.serving.named import named_inputs_info
from mlaas4hep_lab.serving.runtime import find_exports, onnx_bundle, outputs_info
from mlaas4hep_lab.serving.tfaas import frozen_graph_to_onnx, is_onnx, saved_model_root, savedmodel_bundle
from mlaas4hep_lab.serving.versions import NAME, latest_version, now
from mlaas4hep_lab.untar import TarLimits

__all__ = ["StoreIngest"]

log = logging.getLogger("mlaas4hep_lab.serving.store")
NO_BUNDLE = "the archive holds no model bundle"  # archive.extract_upload's refusal of an archive without manifest


class StoreIngest:
    """The upload half of :class:`~mlaas4hep_lab.serving.store.ModelStore` (its state and locks)."""

    def ingest(self, user: str, archive: str | Path, name: str | None = None, version: str | None = None,
               shared: bool | None = None, params: dict[str, Any] | None = None,
               labels: list[str] | None = None) -> dict[str, Any]:
        """Extract (one bounded pass), load and test an uploaded bundle tarball, then activate it
        (blocking). ``version`` None takes the next integer; an existing version is replaced. A tarball of
        a TensorFlow SavedModel directory (TFaaS's form: no manifest) is wrapped in a bundle with ``params``
        and ``labels`` (:func:`.tfaas.savedmodel_bundle`), named after its folder unless ``name`` says."""
        archive = Path(archive)
        self.refresh()
        cap = self.quota.room(self._index, user, name, version, self.max_bytes)  # the quota caps it too
        limits = TarLimits(members=self.max_members, member_bytes=min(self.max_member_bytes, cap),
                           total_bytes=cap, ratio=self.max_ratio)
        staging = self.scratch()
        try:
            try:
                bundle_dir = extract_upload(archive, staging / "x", limits)
            except TooLarge as err:
                what = getattr(err, "what", "")
                if (what == "total" and cap < self.max_bytes) or (what == "member" and cap < self.max_member_bytes):
                    # the quota's room was reached, not one of the service's caps
                    raise self.quota.error(self.quota.usage(self._index, user), user,
                                           f"more than {human_size(cap)}") from None
                raise
            except BadRequest as err:
                saved = saved_model_root(staging / "x") if str(err).startswith(NO_BUNDLE) else None
                if saved is None:
                    raise
                name = name or (params or {}).get("name") or (saved.name if saved != staging / "x" else None)
                if not isinstance(name, str) or not name:
                    raise BadRequest("give the SavedModel a 'name' (form field, query or params.json)") from None
                bundle_dir = savedmodel_bundle(staging / "bundle", saved, name, params, labels)
            return self.activate(user, bundle_dir, name, version, shared, archive=archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def ingest_onnx(self, user: str, model_file: str | Path, name: str | None, version: str | None = None,
                    shared: bool | None = None, params: dict[str, Any] | None = None,
                    labels: list[str] | None = None) -> dict[str, Any]:
        """A bare ONNX model of the original TFaaS form, wrapped in a minimal bundle, then activated; a
        TensorFlow frozen graph with params ``inputNode``/``outputNode`` is converted to ONNX first
        (:func:`.tfaas.frozen_graph_to_onnx`)."""
        name = name or (params or {}).get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("give the model a 'name' (form field or params.json)")
        self.refresh()
        self.quota.room(self._index, user, name, version, self.max_bytes)
        staging = self.scratch()
        try:
            if not is_onnx(Path(model_file)):
                if not {"inputNode", "outputNode"} & set(params or {}):
                    raise BadRequest("the uploaded model is neither a bundle tarball nor an ONNX model; a TensorFlow "
                                     "frozen graph (.pb) needs params.json with 'inputNode' and 'outputNode', or "
                                     "send a SavedModel archive (.tar.gz of saved_model.pb and variables/)")
                model_file = frozen_graph_to_onnx(Path(model_file), staging / "converted.onnx", params)
            folder = onnx_bundle(staging / "bundle", Path(model_file), name, params, labels)
            return self.activate(user, folder, name, version, shared, archive=Path(model_file))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def activate(self, user: str, bundle_dir: Path, name: str | None = None, version: str | None = None,
                 shared: bool | None = None, archive: Path | None = None) -> dict[str, Any]:
        """Load and test the bundle in ``bundle_dir`` (moved into the store) and make it the latest."""
        try:
            manifest = json.loads((bundle_dir / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise BadRequest(f"manifest.json is not readable JSON: {err}") from err
        if not isinstance(manifest, dict):
            raise BadRequest("manifest.json must hold an object")
        name = name or manifest.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise BadRequest(f"model name {name!r} is not usable: 1-128 letters, digits, '_', '.', '+', '-', "
                             "starting with a letter or digit (give 'name' with the upload)")
        if version is not None and (not NAME.match(str(version)) or str(version) in self._tag_names()):
            raise BadRequest(f"version {version!r} is not usable (letters, digits, _ . + -; not a tag name)")
        model = self._build(bundle_dir, user, name, "", "")  # the test before anything changes
        digest = file_sha256(archive) if archive is not None else None
        tighten(bundle_dir)  # private before it enters the store (a wrapped ONNX model was written 0644)
        size = tree_bytes(bundle_dir)
        with self._commit():
            old_state = self._index.get((user, name))
            state = json.loads(json.dumps(old_state)) if old_state else {
                "owner": user, "name": name, "shared": False, "tags": {}, "versions": {}, "next_version": 1}
            version = str(version) if version is not None else str(max(
                [state.get("next_version", 1)] + [int(v) + 1 for v in state["versions"] if v.isdigit()]))
            if version in state["tags"]:
                raise BadRequest(f"version {version!r} would be hidden by the tag of the same name")
            self.quota.check(self._index, user, size, state["versions"].get(version))
            final = self.root / user / name / version
            private_dirs(self.root, final.parent)
            trash = None
            if final.exists():
                trash = self.scratch(".trash")
                os.replace(final, trash / "old")
            os.replace(bundle_dir, final)
            model.bundle.path, model.version, model.stamp = final, version, uuid.uuid4().hex
            state["upload_seq"] = state.get("upload_seq", 0) + 1
            state["versions"][version] = {
                "stamp": model.stamp, "uploaded": now(), "uploader": user, "sha256": digest,
                "bytes": size, "seq": state["upload_seq"],
                "bundle_name": manifest.get("name"), "bundle_version": manifest.get("version"),
                "backend": manifest.get("backend"), "created": manifest.get("created"),
                "features": model.features, "labels": manifest.get("labels"),
                "metrics": manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {},
                "runtime": model.runtime.kind, "platform": model.runtime.platform,
                "exports": sorted(find_exports(final, manifest)),
                "input_branches": model.bundle.input_branches(), "tree": model.bundle.specs.tree,
                "identifier": list(model.bundle.specs.identifier or []), **outputs_info(model.runtime.outputs),
                **named_inputs_info(model.bundle)}
            state["tags"]["latest"] = latest_version(state["versions"])
            if version.isdigit():
                state["next_version"] = max(state.get("next_version", 1), int(version) + 1)
            if shared is not None:
                state["shared"] = bool(shared)
            self._write_state(state)
            self._index = {**self._index, (user, name): state}
            old = self._loaded.pop((user, name, version), None)
            self._loaded[(user, name, version)] = model
            self._unloaded.discard((user, name, version))
        if old is not None:
            old.retire()
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        log.info("activated %s:%s version %s (%s)", user, name, version, model.runtime.kind)
        return {**self.summary(state), "version": version, "features": model.features}
