"""``predict --dask``: files scored in parts on real Dask workers (a ``LocalCluster`` of processes, and a
``dask scheduler`` with ``dask worker`` processes) give the very files the local path writes: the scores
CSV byte for byte, the .root output's arrays, the Higgs submission; failures keep the local error type."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
from dask_support import local_cluster, scheduler_processes
from distributed import get_task_stream

from mlaas4hep_lab.errors import InputFileError
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.predict import file_parts, score_files
from mlaas4hep_lab.training.workflow import train

FIXTURES = (local_cluster, scheduler_processes)  # used by name below (a bare import would trip ruff F811)
CHUNK = 4_000  # parts of at most 4,000 entries: 9 parts over the two files below
XGB_SMALL = """
import xgboost

def model():
    return xgboost.XGBClassifier(n_estimators=20, max_depth=3, tree_method="hist", random_state=0)
"""
KERAS_SMALL = """
import keras

def model(idim):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model
"""


def _bundle(ds, folder: Path, source: str, **params) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    settings = json.loads(Path(ds.params_json).read_text()) | {"verbose": 0, "epochs": 1, "chunk_size": 10_000}
    inputs = load_inputs(ds.files_txt, ds.labels_txt, settings | params)
    specs = ensure_specs(inputs, progress=False)
    return train(inputs, specs, folder / "model.py", folder / "out", progress=False, plots=False).bundle


@pytest.fixture(scope="module")
def xgb_bundle(example_higgs, tmp_path_factory) -> Path:
    return _bundle(example_higgs, tmp_path_factory.mktemp("xgb"), XGB_SMALL)


def _rewrite(src: Path, dst: Path, step: int) -> Path:
    """``src``'s tree written again with one cluster per ``step`` entries (uproot: one per extend)."""
    tree = uproot.open(src)["events"]
    arrays = tree.arrays(library="np")
    with uproot.recreate(dst) as f:
        out = f.mktree("events", {k: v.dtype for k, v in arrays.items()})
        for start in range(0, tree.num_entries, step):
            out.extend({k: v[start:start + step] for k, v in arrays.items()})
    return dst


@pytest.fixture(scope="module")
def files(example_higgs, tmp_path_factory) -> list[str]:
    """The signal in clusters of 1,500 entries (parts cut at cluster boundaries), then the background
    as written by the package (one cluster of 19,500 entries: cut in equal parts)."""
    folder = tmp_path_factory.mktemp("clustered")
    signal = _rewrite(example_higgs.files[0], folder / "signal.root", 1_500)
    return [str(signal), str(example_higgs.files[1])]


def _both(bundle, files, folder: Path, dask, suffix=".csv", submission=False) -> tuple[Path, Path]:
    """Score ``files`` here, then on ``dask``: ``folder``/local.csv and dask.csv (and *_sub.csv)."""
    for name, where in (("local", None), ("dask", dask)):
        score_files(bundle, files, folder / f"{name}{suffix}", chunk_size=CHUNK, dask=where,
                    submission=str(folder / f"{name}_sub.csv") if submission else None)
    return folder / f"local{suffix}", folder / f"dask{suffix}"


def test_file_parts_cut_at_clusters_and_cover_every_entry():
    assert file_parts([0, 300, 600, 2000], 700) == [(0, 600), (600, 1300), (1300, 2000)]
    assert file_parts([0, 1000, 2000, 3000], 2500) == [(0, 2000), (2000, 3000)]
    assert file_parts([0, 10], 3) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert file_parts([0], 5) == []
    rng = np.random.default_rng(1)
    bounds = np.unique(np.r_[0, rng.integers(1, 100_000, 40), 100_000])
    for chunk in (1, 997, 5_000, 200_000):
        parts = file_parts(bounds, chunk)
        starts, stops = np.array(parts).T
        assert starts[0] == 0 and stops[-1] == 100_000 and (starts[1:] == stops[:-1]).all()
        assert ((stops - starts) <= chunk).all() and ((stops - starts) > 0).all()
        # a cut inside a cluster only where the cluster is longer than a chunk
        inside = ~np.isin(stops, bounds)
        right = bounds[np.searchsorted(bounds, stops[inside])]
        left = bounds[np.searchsorted(bounds, stops[inside]) - 1]
        assert ((right - left) > chunk).all()


def test_local_cluster_writes_the_same_csv_and_submission(xgb_bundle, files, local_cluster, tmp_path):
    tarball = f"{xgb_bundle}.tar.gz"  # a tarball on the client; the workers get its bytes
    with get_task_stream(local_cluster.client) as stream:
        local, remote = _both(tarball, files, tmp_path, local_cluster, submission=True)
    assert local.read_bytes() == remote.read_bytes()
    rows = local.read_text().splitlines()
    assert rows[0] == "file,entry,EventId,score,passes_cuts" and len(rows) == 30_001
    assert (tmp_path / "local_sub.csv").read_bytes() == (tmp_path / "dask_sub.csv").read_bytes()
    parts = [t for t in stream.data if t["key"].startswith("_score_task")]
    assert len(parts) == 4 + 5  # 10,500 entries in clusters of 1,500 (parts of 3,000), 19,500 in one cluster
    assert len({t["worker"] for t in parts}) == 2  # both workers scored parts
    # an XGBoost bundle: the workers never imported TensorFlow
    loaded = local_cluster.client.run(lambda: sorted({"tensorflow", "torch"} & set(sys.modules)))
    assert set(map(tuple, loaded.values())) == {()}


def test_scheduler_processes_write_the_same_root_arrays(xgb_bundle, files, scheduler_processes, tmp_path):
    local, remote = _both(xgb_bundle, files, tmp_path, scheduler_processes, suffix=".root")
    a, b = uproot.open(local)["scores"].arrays(library="np"), uproot.open(remote)["scores"].arrays(library="np")
    assert list(a) == list(b) == ["file", "entry", "EventId", "score", "passes_cuts"]
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name])
    assert len(a["entry"]) == 30_000 and np.all(np.diff(a["file"]) >= 0)


def _loaded_bundles() -> list[str]:
    from mlaas4hep_lab.cluster import predict

    return [str(b.path) for b in predict._LOADED.values() if b.path.is_dir()]


def test_parts_in_flight_are_bounded(xgb_bundle, files, local_cluster, request):
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.cluster.predict import score_parts

    bundle = Bundle.load(xgb_bundle)
    parts = score_parts(local_cluster, bundle, files * 3, "events", 2_000, in_flight=3)
    request.addfinalizer(parts.close)  # a failed assertion must not leave tasks running
    first = next(parts)
    assert first["file"][0] == 0 and first["entry"][0] == 0
    client = local_cluster.client
    submitted = [k for k in client.futures if str(k).startswith("_score_task")]
    assert 0 < len(submitted) <= 3
    # one bundle unpacked and loaded per worker process, kept for the parts to come, dropped at the end
    loaded = list(client.run(_loaded_bundles).values())
    assert max(map(len, loaded)) == 1 and len({Path(p).parent.name.split("-")[0] for p in sum(loaded, [])}) == 1
    n = len(first["entry"]) + sum(len(cols["entry"]) for cols in parts)
    assert n == 3 * 30_000
    assert set().union(*client.run(_loaded_bundles).values()) == set()
    deadline = time.monotonic() + 10  # futures are released by the client's event loop, a moment later
    while [k for k in client.futures if str(k).startswith(("_score_task", "_plan_task"))]:
        assert time.monotonic() < deadline, list(client.futures)
        time.sleep(0.05)


def test_missing_file_is_the_local_error_naming_the_file(xgb_bundle, files, local_cluster, tmp_path):
    missing = str(tmp_path / "gone.root")
    with pytest.raises(InputFileError, match="ROOT file not found") as local:
        score_files(xgb_bundle, [files[0], missing], tmp_path / "local.csv", chunk_size=CHUNK)
    with get_task_stream(local_cluster.client) as stream, pytest.raises(InputFileError, match="not found") as remote:
        score_files(xgb_bundle, [files[0], missing], tmp_path / "dask.csv", chunk_size=CHUNK, dask=local_cluster)
    assert str(local.value) in str(remote.value) and missing in str(remote.value)
    assert "on a Dask worker" in str(remote.value) and "3 tries" in str(remote.value)
    [failed] = [t["key"] for t in stream.data if t.get("status") == "error"]
    story = local_cluster.client.story(failed)  # what the scheduler and the workers did with the task
    assert sum(len(s) > 3 and s[2] == "executing" for s in story) == 3  # run, then retried twice
    assert not (tmp_path / "dask.csv").exists()  # no partial scores that look like a result


def _corrupt_basket(src: str, dst: Path, branch: str, basket: int) -> tuple[int, int]:
    """A copy of ``src`` with the compressed bytes of one basket of ``branch`` scrambled; its entries."""
    shutil.copy(src, dst)
    b = uproot.open(dst)["events"][branch]
    seek, first, last = int(b.member("fBasketSeek")[basket]), *map(int, b.member("fBasketEntry")[basket:basket + 2])
    keylen = b.basket_key(basket).fKeylen
    with open(dst, "r+b") as f:
        f.seek(seek + keylen + 9)  # past the key and the 9-byte compression header: into the zlib stream
        f.write(bytes(range(7, 7 + 200)))
    return first, last


def test_corrupt_part_is_the_local_error_naming_the_entries(xgb_bundle, files, local_cluster, tmp_path):
    first, last = _corrupt_basket(files[0], tmp_path / "broken.root", "DER_mass_vis", 3)
    assert (first, last) == (4_500, 6_000)
    broken = [str(tmp_path / "broken.root")]
    with pytest.raises(InputFileError, match="cannot read entries") as local:
        score_files(xgb_bundle, broken, tmp_path / "local.csv", chunk_size=CHUNK)
    with pytest.raises(InputFileError, match="cannot read entries 3000-6000") as remote:
        score_files(xgb_bundle, broken, tmp_path / "dask.csv", chunk_size=CHUNK, dask=local_cluster)
    assert broken[0] in str(local.value) and "entries 3000-6000; 3 tries" in str(remote.value)


def test_cli_predict_dask_local_2(xgb_bundle, files, tmp_path):
    local = tmp_path / "local.csv"
    score_files(xgb_bundle, files, local)
    cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "predict", str(xgb_bundle), "--files", *files,
           "--out", str(tmp_path / "dask.csv"), "--dask", "local:2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "scored 30,000 events from 2 files" in run.stdout
    assert (tmp_path / "dask.csv").read_bytes() == local.read_bytes()


def test_keras_bundle_scores_the_same_on_workers(example_higgs, files, local_cluster, tmp_path):
    pytest.importorskip("keras")  # the keras extra
    bundle = _bundle(example_higgs, tmp_path / "keras", KERAS_SMALL)
    local, remote = _both(bundle, files, tmp_path, local_cluster)
    assert local.read_bytes() == remote.read_bytes()
