"""The model bundle: everything needed to reproduce and serve a trained model.

A directory (and its ``.tar.gz``)::

    manifest.json   name, version, backend, created, features, input shape, labels, metrics,
                    software versions, data provenance, inference export
    specs.json preproc.json params.json metrics.json history.json model.py
    model/          the backend's native format
    inference/      TF SavedModel (Keras) or ONNX where a converter exists
    plots/          ROC, scores, efficiency/purity, AMS, feature distributions

In the tarball the small JSON files come first, manifest.json leading, so that a service can check them
before it unpacks the model (:mod:`mlaas4hep_lab.untar` extracts tarballs in one bounded pass).

:class:`Bundle` loads one and scores raw events with the bundle's own preprocessing and specs, so a
score computed from a bundle equals the one computed in the notebook for the same event.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab import __version__
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.data.vectorize import Vectorizer
from mlaas4hep_lab.errors import ConfigError, InputFileError
from mlaas4hep_lab.task import Task
from mlaas4hep_lab.untar import BUNDLE_JSON, TarLimits, extract

__all__ = ["write_bundle", "Bundle", "safe_extract", "tar_bundle", "BUNDLE_VERSION"]

BUNDLE_VERSION = 1
_FRAMEWORK_DISTS = {"keras": ["keras", "tensorflow-cpu", "tensorflow"], "torch": ["torch"],
                    "sklearn": ["scikit-learn"], "xgboost": ["xgboost-cpu", "xgboost"]}


def _versions(backend: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "mlaas4hep-lab": __version__}
    for dist in ["numpy", "awkward", "uproot", *_FRAMEWORK_DISTS.get(backend, []), "onnxruntime"]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_bundle(directory: str | Path, *, name: str, backend, backend_name: str, specs: Specs, params,
                 preproc=None, metrics: dict[str, Any] | None = None, history: list | None = None,
                 model_source: str = "", files: list[dict[str, Any]] | None = None,
                 labels: dict[str, str] | None = None, plots_dir: str | Path | None = None,
                 version: int = 1, export: bool = True, task: Task | None = None, layout=None) -> Path:
    """Write a bundle directory and ``<directory>.tar.gz``; return the directory."""
    task = task or Task()
    out = Path(directory)
    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    native = backend.save(out / "model")
    inference: dict[str, Any] = {"format": None, "reason": "export skipped"}
    if export:
        (out / "inference").mkdir()
        try:
            inference = backend.export(out / "inference")
        except Exception as err:  # an export failure must not lose the trained model
            inference = {"format": None, "reason": f"{type(err).__name__}: {err}"}
        if inference.get("path"):
            inference["path"] = os.path.relpath(inference["path"], out)
    specs.save(out / "specs.json")
    (out / "params.json").write_text(json.dumps(params.to_dict(), indent=1))
    (out / "preproc.json").write_text(json.dumps(preproc.to_dict() if preproc is not None else {}, indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics or {}, indent=1, default=float))
    (out / "history.json").write_text(json.dumps(history or [], default=float))
    if model_source:
        (out / "model.py").write_text(model_source)
    if plots_dir and Path(plots_dir).is_dir() and Path(plots_dir).resolve() != (out / "plots").resolve():
        shutil.copytree(plots_dir, out / "plots", dirs_exist_ok=True)
    manifest = {
        "bundle_version": BUNDLE_VERSION, "name": name, "version": int(version), "backend": backend_name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": specs.features, "input_shape": [None, specs.n_features],
        # the objects layout: which columns of the features make each named input the model takes
        "layout": layout.to_dict() if layout is not None else {"layout": "flat"},
        "output": _output_text(task), "outputs": task.output_names, "task": task.to_dict(),
        "labels": labels or ({str(i): c for i, c in enumerate(task.classes)} if task.is_classification else {}),
        "identifier": specs.identifier, "tree": specs.tree,
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))},
        "software": _versions(backend_name), "data": {"files": files or specs.files, "events": specs.events},
        "model": native, "inference": inference,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    tar_bundle(out, Path(f"{out}.tar.gz"))
    return out


def _output_text(task: Task) -> str:
    if task.kind == "binary":
        return "probability of label 1 (signal)"
    if task.kind == "multiclass":
        return f"probability of each class ({', '.join(task.classes)}), one column per class"
    return f"the regression targets ({', '.join(task.targets)}), in their own units"


def safe_extract(archive: str | Path, target: str | Path, max_members: int = 10_000,
                 max_bytes: int = 4 << 30) -> Path:
    """Extract a bundle tarball in one bounded pass (:func:`mlaas4hep_lab.untar.extract`): absolute or
    ``..`` paths, links, devices and duplicates are refused, and the copy stops at the first byte over
    ``max_bytes``. Returns the bundle folder (the archive's one top folder, else ``target``)."""
    return extract(archive, target, TarLimits(members=max_members, member_bytes=max_bytes,
                                              total_bytes=max_bytes)).root


def tar_bundle(folder: str | Path, target) -> None:
    """``folder`` as a gzipped tarball (written to the path or binary file object ``target``) with the small
    JSON files first, manifest.json leading: a service reads and checks them before it unpacks the model
    itself. Links and special files are left out (a service refuses them)."""
    folder = Path(folder)
    def plain(info: tarfile.TarInfo):
        if not (info.isfile() or info.isdir()):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    opened = tarfile.open(fileobj=target, mode="w:gz") if hasattr(target, "write") else tarfile.open(target, "w:gz")
    with opened as tar:
        tar.add(folder, arcname=folder.name, recursive=False, filter=plain)
        first = [folder / name for name in BUNDLE_JSON if (folder / name).is_file()]
        for child in first + sorted(p for p in folder.iterdir() if p not in first):
            tar.add(child, arcname=f"{folder.name}/{child.name}", filter=plain)


class Bundle:
    """A loaded model bundle. ``Bundle.load(path)`` takes the directory or its ``.tar.gz``.

    Example::

        b = Bundle.load("out/bundle")
        scores, keep = b.predict_arrays(uproot.open("new.root")["events"].arrays())
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_file = self.path / "manifest.json"
        if not manifest_file.is_file():
            raise InputFileError(f"{self.path} is not a model bundle (no manifest.json)", str(self.path))
        self.manifest = json.loads(manifest_file.read_text())
        self.specs = Specs.from_dict(json.loads((self.path / "specs.json").read_text()), str(self.path))
        from mlaas4hep_lab.params import LEGACY_DEFAULTS, load_params

        # a key missing from an older bundle's params.json means what it meant when the bundle was written
        self.params = load_params(LEGACY_DEFAULTS | json.loads((self.path / "params.json").read_text()))
        preproc = json.loads((self.path / "preproc.json").read_text())
        self.preproc = None
        if preproc:
            from mlaas4hep_lab.data.preprocess import Preproc

            self.preproc = Preproc.from_json(preproc)
        # the specs fix the layout (padding included: "zeros" in specs written before padding was configurable)
        self.vectorizer = Vectorizer.from_specs(self.specs, self.params.normalization, self.params.missing_values)
        self._backend = None
        self._tmp = None

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            tmp = tempfile.mkdtemp(prefix="mlaas4hep-bundle-")
            try:
                bundle = cls(safe_extract(path, tmp))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            bundle._tmp = tmp
            return bundle
        if not path.exists():
            raise InputFileError(f"bundle not found: {path}", str(path))
        return cls(path)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def features(self) -> list[str]:
        return self.manifest["features"]

    @property
    def task(self) -> Task:
        """What the model predicts (a bundle written before tasks existed: binary)."""
        return Task.from_dict(self.manifest.get("task"))

    @property
    def layout(self):
        """The objects layout the model takes (:class:`~mlaas4hep_lab.data.objects.ObjectsLayout`), or None."""
        data = self.manifest.get("layout") or {}
        if data.get("layout") != "objects":
            return None
        from mlaas4hep_lab.data.objects import ObjectsLayout

        return ObjectsLayout.from_dict(data)

    @property
    def output_names(self) -> list[str]:
        """One name per output column: ``score``; ``p_<class>``; the regression targets."""
        return self.task.output_names

    @property
    def backend(self):
        if self._backend is None:
            from mlaas4hep_lab.backends.base import get_backend

            cls = get_backend(self.manifest["backend"])
            self._backend = cls.load(self.path / "model", self.specs.n_features,
                                     {"task": self.task, "layout": self.layout})
        return self._backend

    def input_branches(self) -> list[str]:
        """The branches a raw event must provide."""
        needed = set(self.specs.fkeys) | set(self.specs.jkeys)
        if self.preproc is not None:
            needed -= set(self.preproc.new_branch_kinds())
            needed |= set(self.preproc.input_branches())
        return sorted(needed)

    def vectorize(self, arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, mask, keep) of raw records with the bundle's preprocessing and normalisation."""
        if not isinstance(arrays, ak.Array):
            arrays = ak.Array(arrays)
        missing = [b for b in self.input_branches() if b not in arrays.fields]
        if missing:
            raise ConfigError(f"events lack branches {missing} that model {self.name!r} needs "
                              f"(it needs {self.input_branches()})", key="inputs")
        keep = np.ones(len(arrays), bool)
        if self.preproc is not None:
            arrays, keep = self.preproc.apply(arrays)
        X, mask = self.vectorizer(arrays, None)
        return X, mask, np.asarray(keep, bool)

    def predict_arrays(self, arrays) -> tuple[np.ndarray, np.ndarray]:
        """(outputs for every event, keep) — events failing the cuts are scored too; ``keep`` says
        which ones training would have used. Outputs: ``float32[n]`` scores (binary), ``[n, K]`` class
        probabilities or ``[n, T]`` regression values (:attr:`output_names` names the columns)."""
        X, _, keep = self.vectorize(arrays)
        return self.backend.predict(X).astype(np.float32), keep

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
