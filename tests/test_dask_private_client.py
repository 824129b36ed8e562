"""A client that is not Dask's default one, as Dask Gateway's (``connect("gateway")`` keeps it private):
the specs pass, the chunks built on the workers and XGBoost across them find their client themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dask_support import local_cluster  # noqa: F401  (fixtures)
from test_dask_stream import assert_same_chunks, toy_inputs

from mlaas4hep_lab.cluster.connect import Cluster
from mlaas4hep_lab.cluster.stream import DaskChunkStream
from mlaas4hep_lab.data import datasets
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream


@pytest.fixture
def private_client(local_cluster):  # noqa: F811
    """A second client of the session's cluster that never becomes the default, and no default client at
    all while the test runs (the session's own client is set aside)."""
    import distributed
    from distributed import client as dclient

    saved = dict(dclient._global_clients)
    dclient._global_clients.clear()
    client = distributed.Client(local_cluster.client.scheduler.address, set_as_default=False)
    try:
        with pytest.raises(ValueError):
            distributed.default_client()
        yield Cluster(client, "private")
    finally:
        client.close()
        dclient._global_clients.update(saved)


def test_specs_and_chunks_on_a_client_that_is_not_the_default(private_client, toy_data):
    files, labels, params, preproc = toy_inputs(toy_data)
    specs = compute_specs(files, params, preproc, progress=False)
    on_cluster = compute_specs(files, params, preproc, progress=False, dask=private_client)
    assert json.dumps(on_cluster.to_dict(), sort_keys=True) == json.dumps(specs.to_dict(), sort_keys=True)
    with ChunkStream(files, labels, params, specs, preproc) as local:
        want = list(local.iterate_passes(2))
    with DaskChunkStream(files, labels, params, specs, preproc, dask=private_client) as remote:
        got = list(remote.iterate_passes(2))
    assert_same_chunks(want, got)


def test_xgboost_on_a_client_that_is_not_the_default(private_client, tmp_path):
    pytest.importorskip("xgboost")
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.model_file import template_path
    from mlaas4hep_lab.training.workflow import train

    ds = datasets.higgs(tmp_path / "higgs", n_events=6000, seed=2)
    params = json.loads(Path(ds.params_json).read_text()) | {"verbose": 0, "chunk_size": 3000}
    inputs = load_inputs(ds.files_txt, ds.labels_txt, params)
    specs = ensure_specs(inputs, dask=private_client)
    out = train(inputs, specs, template_path("xgboost"), tmp_path / "out", plots=False, dask=private_client)
    assert 0.6 < out.metrics["auc"] <= 1.0
