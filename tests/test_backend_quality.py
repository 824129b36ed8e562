"""What the paper's Fig. 8 shows, on the Higgs-like example data: a model trained chunk by chunk through
the stream reaches the test AUC of the same model trained in memory on the same events (within 0.01),
for Keras and XGBoost; and every backend's template learns (test AUC well above 0.5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
from mlaas4hep_lab.training import evaluation
from mlaas4hep_lab.training.loop import Trainer
from mlaas4hep_lab.training.model_file import load_model_file, template_path

pytestmark = pytest.mark.slow


def _inputs(ds, **overrides):
    params = json.loads(Path(ds.params_json).read_text())
    params.update(verbose=0, weight="", **overrides)
    return load_inputs(ds.files_txt, ds.labels_txt, params)


def _in_memory(inputs, specs):
    """Every event of the stream, with its split: the same events the trainer sees."""
    parts = list(ChunkStream(inputs.files, inputs.labels, inputs.params, specs))
    X = np.concatenate([c.X for c in parts])
    y = np.concatenate([c.y for c in parts])
    split = np.concatenate([c.split for c in parts])
    return X, y, split


def test_keras_streamed_matches_in_memory(example_higgs, tmp_path):
    inputs = _inputs(example_higgs, chunk_size=5_000, epochs=10, training="epochs", batch_size=128,
                     normalization="standard")
    specs = ensure_specs(inputs, progress=False)
    streamed = Trainer(inputs, specs, load_model_file(template_path("keras"), specs.n_features, seed=1),
                       tmp_path / "s", checkpoints=False).run()
    X, y, split = _in_memory(inputs, specs)
    model = load_model_file(template_path("keras"), specs.n_features, seed=1).model
    model.fit(X[split == 0], y[split == 0], epochs=10, batch_size=128, verbose=0, shuffle=True)
    auc_memory = evaluation.auc(y[split == 2], model.predict(X[split == 2], verbose=0).ravel())
    auc_stream = streamed.metrics["auc"]
    print(f"keras: streamed AUC {auc_stream:.4f}, in memory {auc_memory:.4f}")
    assert auc_stream > 0.75 and auc_memory > 0.75
    assert abs(auc_stream - auc_memory) < 0.01


def test_xgboost_streamed_matches_in_memory(example_higgs, tmp_path):
    from mlaas4hep_lab import extras

    xgboost = extras.xgboost()
    inputs = _inputs(example_higgs, chunk_size=5_000, epochs=1)
    specs = ensure_specs(inputs, progress=False)
    streamed = Trainer(inputs, specs, load_model_file(template_path("xgboost"), specs.n_features, seed=1),
                       tmp_path / "s", checkpoints=False).run()
    X, y, split = _in_memory(inputs, specs)
    params = load_model_file(template_path("xgboost"), specs.n_features).model.get_params()
    model = xgboost.XGBClassifier(**params).fit(X[split == 0], y[split == 0])
    auc_memory = evaluation.auc(y[split == 2], model.predict_proba(X[split == 2])[:, 1])
    auc_stream = streamed.metrics["auc"]
    print(f"xgboost: streamed AUC {auc_stream:.4f}, in memory {auc_memory:.4f}")
    assert auc_stream > 0.8
    assert abs(auc_stream - auc_memory) < 0.01


@pytest.mark.parametrize("backend", ["keras", "torch", "sklearn", "xgboost"])
def test_every_backend_learns_the_higgs_example(example_higgs, tmp_path, backend):
    inputs = _inputs(example_higgs, chunk_size=10_000, epochs=5, training="epochs")
    specs = ensure_specs(inputs, progress=False)
    result = Trainer(inputs, specs, load_model_file(template_path(backend), specs.n_features, seed=1),
                     tmp_path / "o", checkpoints=False).run()
    print(f"{backend}: test AUC {result.metrics['auc']:.4f} on {result.metrics['n_events']} events")
    assert result.metrics["auc"] > 0.75
