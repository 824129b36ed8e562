"""Training with chunks built on Dask workers: PyTorch in the client (same metrics as without the cluster,
resume), XGBoost on the workers (xgboost.dask: weights, AUC, the bundle), and the CLI's ``--dask``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from dask_support import local_cluster, scheduler_processes  # noqa: F401  (fixtures)

from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training.events import EventBus
from mlaas4hep_lab.training.workflow import train

TORCH_SMALL = '''
import torch
from torch import nn

def model(idim):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(idim, 32), nn.ReLU(), nn.Linear(32, 1))
'''

XGB_SMALL = '''
import xgboost

def model(idim):
    return xgboost.XGBClassifier(n_estimators=40, max_depth=4, learning_rate=0.2, early_stopping_rounds=8)
'''


@pytest.fixture(scope="module")
def higgs_20k(tmp_path_factory):
    return datasets.write_example("higgs", tmp_path_factory.mktemp("higgs_dask"), 20_000)


def inputs_for(ds, **overrides):
    params = json.loads(Path(ds.params_json).read_text())
    params.update(verbose=0, **overrides)
    return load_inputs(ds.files_txt, ds.labels_txt, params)


def model_file(tmp_path, text: str) -> Path:
    path = tmp_path / "model.py"
    path.write_text(text)
    return path


def chunk_events(bus: EventBus) -> list:
    seen = []
    bus.subscribe(lambda e: seen.append(e) if e.kind == "chunk" else None)
    return seen


def test_torch_on_dask_chunks_trains_as_without_the_cluster(local_cluster, higgs_20k, tmp_path):  # noqa: F811
    """The same chunks in the same order: PyTorch on CPU, seeded, ends with the same weights, so the same
    validation losses chunk by chunk and the same test metrics."""
    inputs = inputs_for(higgs_20k, chunk_size=6000, epochs=2, training="epochs")
    specs = ensure_specs(inputs, progress=False)
    model = model_file(tmp_path, TORCH_SMALL)
    runs = {}
    for where, dask in (("local", None), ("dask", local_cluster)):
        bus = EventBus()
        seen = chunk_events(bus)
        out = train(inputs, specs, model, tmp_path / where, bus=bus, progress=False, plots=False, dask=dask)
        runs[where] = (out, [(e.epoch, e.chunk, e.metrics["val_loss"]) for e in seen])
    (local, local_chunks), (remote, remote_chunks) = runs["local"], runs["dask"]
    assert len(local_chunks) == 2 * 4 and remote_chunks == local_chunks
    assert remote.metrics["auc"] == local.metrics["auc"] > 0.6
    np.testing.assert_array_equal(remote.result.test["score"], local.result.test["score"])
    assert (remote.bundle / "manifest.json").is_file()


def test_torch_resumes_on_the_cluster_at_the_same_chunk(scheduler_processes, higgs_20k, tmp_path):  # noqa: F811
    inputs = inputs_for(higgs_20k, chunk_size=6000, epochs=2, training="epochs")
    specs = ensure_specs(inputs, progress=False)
    model = model_file(tmp_path, TORCH_SMALL)
    stop, bus = threading.Event(), EventBus()
    seen = chunk_events(bus)
    bus.subscribe(lambda e: stop.set() if e.kind == "chunk" and e.chunk == 1 else None)
    first = train(inputs, specs, model, tmp_path / "o", bus=bus, stop=stop, progress=False, plots=False,
                  dask=scheduler_processes)
    assert first.result.stopped == "requested"
    assert [(e.epoch, e.chunk) for e in seen] == [(0, 0), (0, 1)]
    state = json.loads((tmp_path / "o" / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["next_chunk"]) == (0, 2)
    bus = EventBus()
    seen = chunk_events(bus)
    resumed = train(inputs, specs, model, tmp_path / "o", bus=bus, resume=True, progress=False, plots=False,
                    dask=scheduler_processes)
    assert resumed.result.stopped == ""
    assert [(e.epoch, e.chunk) for e in seen] == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_xgboost_weights_on_the_workers_are_the_trainers(higgs_20k):
    """The weights each partition gets (balanced per label over its chunk's split) are those the local
    trainer gives the same events."""
    from mlaas4hep_lab.cluster.blocks import BlockJob, BlockSetup
    from mlaas4hep_lab.cluster.xgb import _chunk_means, _parts, _summary, _weight
    from mlaas4hep_lab.data.stream import ChunkStream
    from mlaas4hep_lab.training.loop import balanced_weights

    inputs = inputs_for(higgs_20k, chunk_size=7000, shuffle=False)
    specs = ensure_specs(inputs, progress=False)
    assert inputs.params.weight and inputs.params.balance_weights
    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs) as stream:
        setup, k = BlockSetup.of(stream), 1
        jobs = [(k, BlockJob(stream.readers[i].path, i, float(stream.labels[i]), a, b), "")
                for i, (a, b) in enumerate(stream.bounds(k))]
        parts = [_parts(setup, job, 2) for _, job, _ in jobs]
        means = _chunk_means(jobs, [_summary(p) for p in parts], stream.n_chunks)
        chunk = stream.build(k)
    for code, split in ((0, "train"), (1, "validation")):
        got = np.concatenate([_weight(p, code, means[k, code], None, True) for p in parts])
        part = chunk.subset(split)
        want = balanced_weights(part.y, part.weight)
        assert len(got) == len(want) > 1000 and not np.allclose(part.weight, want)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_xgboost_trains_on_the_workers(local_cluster, higgs_20k, tmp_path):  # noqa: F811
    """xgboost.dask on partitions built on the workers: the AUC of the local training within 0.02, every
    round reported (validation AUC over both workers' events), the bundle loads and predicts."""
    import uproot

    from mlaas4hep_lab.bundle import Bundle

    inputs = inputs_for(higgs_20k)
    specs = ensure_specs(inputs, progress=False)
    model = model_file(tmp_path, XGB_SMALL)
    local = train(inputs, specs, model, tmp_path / "local", progress=False, plots=False)
    bus = EventBus()
    rounds = []
    bus.subscribe(lambda e: rounds.append(e.metrics) if e.kind == "round" else None)
    remote = train(inputs, specs, model, tmp_path / "dask", bus=bus, progress=False, plots=False, dask=local_cluster)
    assert abs(remote.metrics["auc"] - local.metrics["auc"]) < 0.02 and remote.metrics["auc"] > 0.8
    assert remote.metrics["events_seen"] == local.metrics["events_seen"] > 10_000
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1)) and len(rounds) >= 9
    assert all(np.isfinite(r["validation_auc"]) and np.isfinite(r["val_loss"]) for r in rounds)
    backend = remote.result.backend
    assert backend.stream_stats["train"]["segments"] >= 2   # boosted in segments, continuing the booster
    best = backend.best_iteration
    assert backend.booster.num_boosted_rounds() == (len(rounds) if best is None else best + 1)
    bundle = Bundle.load(f"{remote.bundle}.tar.gz")
    try:
        arrays = uproot.open(inputs.files[0])["events"].arrays()
        scores, keep = bundle.predict_arrays(arrays)
    finally:
        bundle.close()
    test = remote.result.test
    sel = test["file_index"] == 0
    assert keep.all() and sel.sum() > 500
    np.testing.assert_allclose(scores[test["entry"][sel]], test["score"][sel], atol=1e-6)


@pytest.mark.slow
def test_cli_workflow_with_dask_local(tmp_path):
    ds = datasets.write_example("higgs", tmp_path / "data", 4000)
    params = json.loads(Path(ds.params_json).read_text())
    params.update(verbose=0, chunk_size=1500, epochs=1)
    (tmp_path / "params.json").write_text(json.dumps(params))
    model = model_file(tmp_path, TORCH_SMALL)
    fout = tmp_path / "out"
    cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "workflow", "--files", str(ds.files_txt), "--labels",
           str(ds.labels_txt), "--params", str(tmp_path / "params.json"), "--model", str(model), "--fout",
           str(fout), "--dask", "local:2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dask: 2 workers (local:2)" in done.stdout and "AUC" in done.stdout
    metrics = json.loads((fout / "metrics.json").read_text())
    assert metrics["backend"] == "torch" and metrics["auc"] > 0.5
    assert (fout / "bundle" / "manifest.json").is_file()
