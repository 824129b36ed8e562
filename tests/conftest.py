"""Shared fixtures of the core tests: small real ROOT files written with uproot.

Fixtures defined here are prefixed ``toy_`` so that they do not clash with those of other test files.

* ``toy_data`` (session): a signal (3,000 entries) and a background (7,000 entries) TTree ``events`` with
  flat branches of every numeric type, an ``EventId`` identifier, a ``Weight``, a ``MET`` branch holding the
  ``-999.0`` sentinel in about a fifth of the events, two jagged collections of 0-10 elements
  (``Jet_pt`` float32 and ``Trk_nhits`` int32, with their ``nJet_pt``/``nTrk_nhits`` counters), plus
  files.txt (comment, blank line, relative paths), labels.txt and an original-format params.json.
  The same signal data is also written as an RNTuple. ``toy_data.raw`` keeps the generated arrays so that
  tests compare what the package reads with what was written.
* ``toy_copy`` (function): the same files copied into the test's own folder, for tests that change them.
* ``toy_write_tree`` (session): a helper that writes an arbitrary small tree and returns its path.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

TOY_NUMERIC_TYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                     "float32", "float64")
TOY_FLAT = tuple(f"f_{t}" for t in TOY_NUMERIC_TYPES)
TOY_JAGGED = ("Jet_pt", "Trk_nhits")
TOY_COUNTERS = ("nJet_pt", "nTrk_nhits")
TOY_SIG_N, TOY_BKG_N = 3000, 7000
TOY_SIG_ID0, TOY_BKG_ID0 = 1_000_000, 2_000_000
TOY_SENTINEL = -999.0
TOY_BASKET = 1000  # entries per extend() call, so reads cross basket boundaries

# the params.json of the toy data, in the original format (original keys only, strings for lists)
TOY_PARAMS = {
    "nevts": -1,
    "shuffle": True,
    "chunk_size": 1000,
    "epochs": 1,
    "batch_size": 256,
    "identifier": "EventId",
    "branch": "events",
    "selected_branches": "",
    "exclude_branches": "",
    "hist": "",
    "redirector": "",
    "verbose": 0,
}


def toy_events(n: int, seed: int, id0: int, shift: float = 0.0) -> dict[str, object]:
    """Deterministic toy events: numpy arrays for flat branches, awkward arrays for jagged ones."""
    rng = np.random.default_rng(seed)
    out: dict[str, object] = {"EventId": id0 + np.arange(n, dtype=np.int64)}
    out["f_bool"] = rng.random(n) < 0.3 + shift / 10
    out["f_int8"] = rng.integers(-100, 100, n).astype(np.int8)
    out["f_uint8"] = rng.integers(0, 250, n).astype(np.uint8)
    out["f_int16"] = rng.integers(-30_000, 30_000, n).astype(np.int16)
    out["f_uint16"] = rng.integers(0, 60_000, n).astype(np.uint16)
    out["f_int32"] = rng.integers(-1_000_000, 1_000_000, n).astype(np.int32)
    out["f_uint32"] = rng.integers(0, 4_000_000_000, n).astype(np.uint32)
    out["f_int64"] = rng.integers(-(10**12), 10**12, n).astype(np.int64)
    out["f_uint64"] = rng.integers(0, 2**40, n).astype(np.uint64)
    out["f_float32"] = (rng.normal(shift, 1.0, n)).astype(np.float32)
    out["f_float64"] = rng.normal(10 * shift, 100.0, n).astype(np.float64)
    out["Weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
    met = rng.exponential(50.0 + 10 * shift, n).astype(np.float32)
    met[rng.random(n) < 0.2] = TOY_SENTINEL
    out["MET"] = met
    counts = rng.integers(0, 11, n)
    out["Jet_pt"] = ak.unflatten((20 + rng.exponential(30.0, counts.sum())).astype(np.float32), counts)
    counts = rng.integers(0, 11, n)
    out["Trk_nhits"] = ak.unflatten(rng.integers(0, 30, counts.sum()).astype(np.int32), counts)
    return out


def _branch_type(values):
    if isinstance(values, ak.Array):
        return f"var * {ak.type(values).content.content}"
    values = np.asarray(values)
    return values.dtype if values.ndim == 1 else np.dtype((values.dtype, values.shape[1:]))


def toy_write(path: Path, data: dict, tree: str = "events", rntuple: bool = False,
              step: int = TOY_BASKET) -> Path:
    """Write ``data`` (branch -> array) as a TTree (in baskets of ``step`` entries) or an RNTuple."""
    path = Path(path)
    with uproot.recreate(path) as f:
        if rntuple:
            f[tree] = {k: (v if isinstance(v, ak.Array) else np.asarray(v)) for k, v in data.items()}
            return path
        f.mktree(tree, {k: _branch_type(v) for k, v in data.items()})
        n = len(next(iter(data.values())))
        for start in range(0, max(n, 1), step):
            f[tree].extend({k: v[start:start + step] for k, v in data.items()})
    return path


@dataclass(frozen=True)
class ToyData:
    dir: Path
    sig: Path
    bkg: Path
    files_txt: Path
    labels_txt: Path
    params_json: Path
    rntuple: Path
    raw: dict  # "sig"/"bkg" -> branch -> array (as written)

    @property
    def files(self) -> list[str]:
        return [str(self.sig), str(self.bkg)]

    @property
    def sizes(self) -> list[int]:
        return [TOY_SIG_N, TOY_BKG_N]

    def raw_of(self, file_index: int) -> dict:
        return self.raw["sig" if file_index == 0 else "bkg"]


def _write_toy_dir(folder: Path, raw: dict) -> ToyData:
    folder.mkdir(parents=True, exist_ok=True)
    sig = toy_write(folder / "sig.root", raw["sig"])
    bkg = toy_write(folder / "bkg.root", raw["bkg"])
    rnt = toy_write(folder / "sig_rntuple.root", raw["sig"], rntuple=True)
    files_txt = folder / "files.txt"
    files_txt.write_text("# toy signal and background\nsig.root\n\nbkg.root   # background\n")
    labels_txt = folder / "labels.txt"
    labels_txt.write_text("1\n0\n")
    params_json = folder / "params.json"
    params_json.write_text(json.dumps(TOY_PARAMS, indent=2))
    return ToyData(folder, sig, bkg, files_txt, labels_txt, params_json, rnt, raw)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> ToyData:
    raw = {
        "sig": toy_events(TOY_SIG_N, seed=1, id0=TOY_SIG_ID0, shift=1.0),
        "bkg": toy_events(TOY_BKG_N, seed=2, id0=TOY_BKG_ID0, shift=0.0),
    }
    return _write_toy_dir(tmp_path_factory.mktemp("toy") / "data", raw)


@pytest.fixture
def toy_copy(toy_data, tmp_path) -> ToyData:
    """The toy files copied into this test's folder (safe to modify or delete)."""
    folder = tmp_path / "data"
    shutil.copytree(toy_data.dir, folder)
    return replace(toy_data, dir=folder, sig=folder / toy_data.sig.name, bkg=folder / toy_data.bkg.name,
                   files_txt=folder / "files.txt", labels_txt=folder / "labels.txt",
                   params_json=folder / "params.json", rntuple=folder / toy_data.rntuple.name)


@pytest.fixture(scope="session")
def toy_write_tree(tmp_path_factory):
    """``toy_write_tree(data, name=None, tree="events", rntuple=False, step=1000) -> Path``."""
    folder = tmp_path_factory.mktemp("toy_trees")
    counter = itertools.count()

    def write(data: dict, name: str | None = None, tree: str = "events", rntuple: bool = False,
              step: int = TOY_BASKET) -> Path:
        path = folder / (name or f"tree_{next(counter)}.root")
        return toy_write(path, data, tree, rntuple, step)

    return write


@pytest.fixture(scope="session")
def example_higgs(tmp_path_factory):
    """The package's Higgs-like example data (30k events, two files) with its files.txt/labels.txt/params.json."""
    from mlaas4hep_lab.data import datasets

    return datasets.higgs(tmp_path_factory.mktemp("higgs"), n_events=30_000, seed=7)


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright: drive the Debian Chromium (tests marked ``browser``), never a downloaded one."""
    from servers import CHROMIUM_ARGS, require_chromium

    return {"executable_path": require_chromium(), "args": CHROMIUM_ARGS}


# -- a local OIDC issuer (own key pair, JWKS on 127.0.0.1) for the token-login tests ------------------
@pytest.fixture(scope="module")
def issuer():
    from mlaas4hep_lab.hub.dev_issuer import DevIssuer

    with DevIssuer() as iss:
        yield iss


@pytest.fixture(scope="module")
def other_issuer():
    """Another issuer, with its own key (kid "other-key")."""
    from mlaas4hep_lab.hub.dev_issuer import DevIssuer

    with DevIssuer(kid="other-key") as iss:
        yield iss
