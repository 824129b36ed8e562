"""Behaviour of the neural-network backends beyond the common contract (tests/test_backend_contract.py).

PyTorch: the module really trains (weights move, the loss falls over chunks), model.py's ``loss`` and
``optimizer`` are the ones used, the output rule (logit / probability / two columns) gives the right
scores, a saved model resumes training exactly, the ONNX export has a free batch dimension.
Keras: two-unit softmax and logit outputs, metrics per chunk, both exports, a clear error for an
uncompiled model. Both: a seeded run is reproducible.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_backend_contract import IDIM, build, make_data, onnx_scores, rank_auc, savedmodel_scores

from mlaas4hep_lab.backends.base import seed_frameworks
from mlaas4hep_lab.errors import ConfigError

torch = pytest.importorskip("torch")  # the torch extra; the contract suite fails loudly if it is missing
keras = pytest.importorskip("keras")


def write_model(tmp_path, body: str, name: str = "model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def chunks(X, y, n):
    return [(X[i], y[i]) for i in np.array_split(np.arange(len(X)), n)]


# -- PyTorch ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_updates_weights_and_the_loss_falls_over_chunks():
    X, y = make_data(3200)
    backend = build("torch")
    before = [p.detach().clone() for p in backend.model.parameters()]
    losses = [backend.fit_chunk(Xc, yc, None, epochs=1, batch_size=64)["loss"] for Xc, yc in chunks(X, y, 4)]
    after = list(backend.model.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after)), "some parameters never moved"
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert backend.output == "logit" and isinstance(backend._loss, torch.nn.BCEWithLogitsLoss)


@pytest.mark.slow
def test_torch_uses_the_loss_and_optimizer_of_model_py(tmp_path):
    path = write_model(tmp_path, """
        import torch
        from torch import nn

        class CountingBCE(nn.BCEWithLogitsLoss):
            calls = 0
            shapes = set()

            def forward(self, output, target):
                CountingBCE.calls += 1
                CountingBCE.shapes.add((tuple(output.shape), tuple(target.shape)))
                return super().forward(output, target)

        loss = CountingBCE(reduction="mean")

        def optimizer(parameters):
            return torch.optim.SGD(parameters, lr=0.05, momentum=0.9)

        def model(idim):
            return nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), nn.Linear(16, 1))
    """)
    X, y = make_data(2000)
    backend = build("torch", path=path)
    loss = backend.options["loss"]
    backend.fit_chunk(X[:1000], y[:1000], np.ones(1000, np.float32), epochs=2, batch_size=100)
    assert type(loss).calls == 20  # 2 epochs x 10 batches
    assert type(loss).shapes == {((100,), (100,))}
    assert loss.reduction == "none"  # switched so that per-event weights apply
    assert isinstance(backend.optimizer, torch.optim.SGD)
    assert backend.optimizer.param_groups[0]["lr"] == 0.05
    assert rank_auc(backend.predict(X[1000:]), y[1000:]) > 0.85


def test_torch_loss_factories_and_functions():
    F = torch.nn.functional
    X, y = make_data(600)
    w = np.where(y == 1, 2.0, 1.0).astype(np.float32)
    for loss in (torch.nn.BCEWithLogitsLoss, lambda: torch.nn.BCEWithLogitsLoss()):
        backend = build("torch", loss=loss)
        assert np.isfinite(backend.fit_chunk(X, y, w, epochs=1, batch_size=200)["loss"])
    # a function returning one number per batch: fine without weights, an error with unequal ones
    backend = build("torch", loss=lambda out, target: F.binary_cross_entropy_with_logits(out, target))
    assert np.isfinite(backend.fit_chunk(X, y, None, epochs=1, batch_size=200)["loss"])
    assert np.isfinite(backend.fit_chunk(X, y, np.ones_like(w), epochs=1, batch_size=200)["loss"])
    with pytest.raises(ConfigError, match="sample weights"):
        backend.fit_chunk(X, y, w, epochs=1, batch_size=200)
    with pytest.raises(ConfigError, match="optimizer"):
        build("torch", optimizer=123).fit_chunk(X, y, None, epochs=1, batch_size=200)
    with pytest.raises(ConfigError, match="fit_options"):
        build("torch", fit_options={"epochs": 3})


@pytest.mark.parametrize("head, output, loss_type", [
    ("nn.Linear(16, 1)", "logit", "BCEWithLogitsLoss"),
    ("nn.Linear(16, 1), nn.Sigmoid()", "probability", "BCELoss"),
    ("nn.Linear(16, 2)", "logit", "CrossEntropyLoss"),
    ("nn.Linear(16, 2), nn.Softmax(dim=1)", "probability", "NLLLoss"),
    ("nn.Linear(16, 2), nn.LogSoftmax(dim=1)", "log_probability", "NLLLoss"),
])
def test_torch_output_rule(tmp_path, head, output, loss_type):
    path = write_model(tmp_path, f"""
        from torch import nn

        def model(idim):
            return nn.Sequential(nn.Linear(idim, 16), nn.ReLU(), {head})
    """)
    X, y = make_data(2400)
    backend = build("torch", path=path)
    assert backend.output == output
    for Xc, yc in chunks(X[:1600], y[:1600], 2):
        backend.fit_chunk(Xc, yc, None, epochs=3, batch_size=32)
    assert backend.loss_name.startswith(loss_type)
    backend.model.eval()
    with torch.no_grad():
        raw = backend.model(torch.from_numpy(X[1600:]))
    expected = {("logit", 1): lambda r: torch.sigmoid(r[:, 0]), ("probability", 1): lambda r: r[:, 0],
                ("logit", 2): lambda r: torch.softmax(r, 1)[:, 1], ("probability", 2): lambda r: r[:, 1],
                ("log_probability", 2): lambda r: torch.exp(r[:, 1])}[(output, raw.shape[1])](raw).numpy()
    scores = backend.predict(X[1600:])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert rank_auc(scores, y[1600:]) > 0.85


def test_torch_output_can_be_forced_and_bad_widths_are_refused(tmp_path):
    backend = build("torch", fit_options={"output": "probability"})
    assert backend.output == "probability"
    with pytest.raises(ConfigError, match="output"):
        build("torch", fit_options={"output": "odds"})
    path = write_model(tmp_path, """
        from torch import nn

        def model(idim):
            return nn.Linear(idim, 3)
    """)
    with pytest.raises(ConfigError, match="one value per event"):
        build("torch", path=path).predict(np.zeros((4, IDIM), np.float32))


@pytest.mark.slow
def test_torch_save_load_resumes_training_exactly(tmp_path):
    X, y = make_data(2000)
    w = np.random.default_rng(1).uniform(0.5, 1.5, 2000).astype(np.float32)
    a = build("torch")
    a.fit_chunk(X[:1000], y[:1000], w[:1000], epochs=1, batch_size=64)
    a.save(tmp_path / "m")
    b = type(a).load(tmp_path / "m", IDIM, {})
    assert b.optimizer.state_dict()["state"], "the optimizer state was not restored"
    for backend in (a, b):
        torch.manual_seed(11)  # dropout draws from the global generator
        backend.fit_chunk(X[1000:], y[1000:], w[1000:], epochs=1, batch_size=64)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_torch_load_without_source_uses_the_pickled_module(tmp_path):
    X, y = make_data(500)
    backend = build("torch", model_source=None, model_path=None)
    backend.fit_chunk(X, y, None, epochs=1, batch_size=100)
    saved = backend.save(tmp_path / "m")
    assert saved["files"] == ["model.pt", "module.pt"]
    loaded = type(backend).load(tmp_path / "m", IDIM)
    np.testing.assert_array_equal(loaded.predict(X), backend.predict(X))


def test_torch_subclassed_module_is_detected_saved_and_rebuilt(tmp_path):
    path = write_model(tmp_path, """
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, idim):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(idim, 16), nn.Tanh())
                self.head = nn.Linear(16, 1)

            def forward(self, x):
                return self.head(self.body(x)).squeeze(-1)  # one logit per event, shape [n]

        def model(idim):
            return Net(idim)
    """)
    X, y = make_data(1200)
    backend = build("torch", path=path)
    assert backend.name == "torch" and backend.output == "logit" and backend.width == 1
    backend.fit_chunk(X[:800], y[:800], None, epochs=3, batch_size=32)
    assert rank_auc(backend.predict(X[800:]), y[800:]) > 0.85
    backend.save(tmp_path / "m")
    path.unlink()  # the bundle carries its own copy of model.py
    loaded = type(backend).load(tmp_path / "m", IDIM)
    assert type(loaded.model).__name__ == "Net"
    np.testing.assert_array_equal(loaded.predict(X), backend.predict(X))


@pytest.mark.slow
def test_torch_onnx_export_has_a_free_batch_dimension(tmp_path):
    X, y = make_data(1000)
    backend = build("torch")
    backend.fit_chunk(X, y, None, epochs=1, batch_size=100)
    result = backend.export(tmp_path)
    assert result["format"] == "onnx" and result["max_abs_diff"] <= 1e-5, result
    import onnxruntime as ort

    (inp,) = ort.InferenceSession(result["path"]).get_inputs()
    assert inp.name == "features" and not isinstance(inp.shape[0], int) and inp.shape[1] == IDIM
    for n in (1, 7, 1000):
        np.testing.assert_allclose(onnx_scores(result["path"], X[:n], result), backend.predict(X[:n]), atol=1e-5)


# -- Keras --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("head, loss", [
    ('keras.layers.Dense(2, activation="softmax")', '"sparse_categorical_crossentropy"'),
    ("keras.layers.Dense(1)", "keras.losses.BinaryCrossentropy(from_logits=True)"),
])
def test_keras_softmax_and_logit_outputs(tmp_path, head, loss):
    path = write_model(tmp_path, f"""
        import keras

        def model(idim):
            m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(32, activation="relu"), {head}])
            m.compile(optimizer=keras.optimizers.Adam(3e-3), loss={loss})
            return m
    """)
    X, y = make_data(2400)
    backend = build("keras", path=path)
    for Xc, yc in chunks(X[:1600], y[:1600], 2):
        backend.fit_chunk(Xc, yc, None, epochs=2, batch_size=64)
    raw = backend.model.predict(X[1600:], verbose=0)
    expected = raw[:, 1] if raw.shape[1] == 2 else 1.0 / (1.0 + np.exp(-raw[:, 0]))
    scores = backend.predict(X[1600:])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert rank_auc(scores, y[1600:]) > 0.85
    result = backend.export(tmp_path / "inference")
    assert {e["format"] for e in result["exports"]} == {"tf-savedmodel", "onnx"}, result
    np.testing.assert_allclose(savedmodel_scores(result["path"], X[1600:]), scores, atol=1e-5)
    onnx = next(e for e in result["exports"] if e["format"] == "onnx")
    np.testing.assert_allclose(onnx_scores(onnx["path"], X[1600:], onnx), scores, atol=1e-5)


@pytest.mark.slow
def test_keras_reports_compiled_metrics_and_passes_fit_options():
    X, y = make_data(1000)
    backend = build("keras", fit_options={"class_weight": {0: 1.0, 1: 3.0}})
    metrics = backend.fit_chunk(X, y, None, epochs=1, batch_size=100)
    assert {"loss", "accuracy", "auc"} <= set(metrics) and all(isinstance(v, float) for v in metrics.values())
    with pytest.raises(ConfigError, match="epochs"):
        build("keras", fit_options={"epochs": 5})


class _Counter(keras.callbacks.Callback):
    """Counts model.fit calls and training batches; sets ``stop`` after batch ``stop_after``."""

    def __init__(self, stop=None, stop_after=None):
        super().__init__()
        self.fits, self.batches, self.stop, self.stop_after = 0, 0, stop, stop_after

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.stop is not None and self.batches == self.stop_after:
            self.stop.set()


def _parts(X, y, sizes, *, epochs=1, poison=True):
    """TrainPart per (group, n_rows, n_other): the part's training rows are ``rows``; its other events are
    NaN (features and weights), so that training on any of them would make the loss NaN."""
    from mlaas4hep_lab.backends.base import TrainPart

    out, start = [], 0
    for group, n_rows, n_other in sizes:
        n = n_rows + n_other
        Xp, yp = X[start:start + n].copy(), y[start:start + n].copy()
        w = np.ones(n, np.float32)
        rows = np.sort(np.random.default_rng(start).permutation(n)[:n_rows])
        other = np.setdiff1d(np.arange(n), rows)
        if poison:
            Xp[other], w[other] = np.nan, np.nan
        out.append(TrainPart(Xp, yp, w, rows, epochs=epochs, group=group, tag=len(out)))
        start += n
    return out


def closing(parts, closed: list):
    """``parts`` through a generator that notes in ``closed`` when it is closed."""
    try:
        yield from parts
    finally:
        closed.append(True)


@pytest.mark.slow
@pytest.mark.parametrize("order_entries", [None, 700])
def test_keras_fit_parts_one_fit_per_group_and_each_part_reported_after_its_last_batch(monkeypatch, order_entries):
    if order_entries:  # a part's epochs in several pipeline elements
        monkeypatch.setattr("mlaas4hep_lab.backends._keras_feed._ORDER_ENTRIES", order_entries)
    X, y = make_data(2400)
    counter = _Counter()
    backend = build("keras", fit_options={"callbacks": [counter]})
    # group 0: 500 training rows of 600, a part without training rows, 300 of 300; group 1: 400 of 500
    parts = _parts(X, y, [(0, 500, 100), (0, 0, 50), (0, 300, 0), (1, 400, 100)], epochs=2)
    seen = []
    backend.fit_parts(iter(parts), batch_size=64,
                      on_part=lambda part, metrics: seen.append((part.tag, counter.batches, metrics)))
    assert [t for t, _, _ in seen] == [0, 1, 2, 3]
    # batches: 2 epochs x ceil(500/64)=8, none, 2 x 5, 2 x 7; on_part right after each part's last one
    assert [b for _, b, _ in seen] == [16, 16, 26, 40]
    assert counter.batches == 40 and counter.fits == 2
    assert seen[1][2] == {}
    for _, _, metrics in (seen[0], seen[2], seen[3]):
        assert {"loss", "accuracy", "auc"} <= set(metrics)
        assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())  # no NaN row trained
    assert rank_auc(backend.predict(X[2000:]), y[2000:]) > 0.85


@pytest.mark.slow
def test_keras_fit_parts_stop_errors_and_fallback():
    import threading

    X, y = make_data(2400)
    # a stop during the second part's batches: it returns after that batch, the part is not reported, the
    # parts' generator is closed
    stop = threading.Event()
    counter = _Counter(stop, stop_after=12)
    backend = build("keras", fit_options={"callbacks": [counter]})
    backend.stop_event = stop
    closed = []

    seen = []
    backend.fit_parts(closing(_parts(X, y, [(0, 640, 0), (0, 640, 0), (0, 640, 0)]), closed), batch_size=64,
                      on_part=lambda part, metrics: seen.append(part.tag))
    assert seen == [0] and counter.batches == 12 and closed == [True]

    # what on_part raises ends the training there and is raised
    counter = _Counter()
    backend = build("keras", fit_options={"callbacks": [counter]})

    def fail_on_second(part, metrics):
        if part.tag == 1:
            raise RuntimeError("from on_part")

    with pytest.raises(RuntimeError, match="from on_part"):
        backend.fit_parts(iter(_parts(X, y, [(0, 640, 0), (0, 640, 0), (0, 640, 0)])), batch_size=64,
                          on_part=fail_on_second)
    assert counter.batches == 20

    # so does an error of the parts' source (a read error), once the parts before it are done
    def broken():
        yield from _parts(X, y, [(0, 640, 0)])
        raise OSError("unreadable chunk")

    seen = []
    with pytest.raises(OSError, match="unreadable chunk"):
        build("keras").fit_parts(broken(), batch_size=64, on_part=lambda part, metrics: seen.append(part.tag))
    assert seen == [0]

    # fit_options the pipeline does not handle: part by part through fit_chunk (model.fit on arrays)
    counter = _Counter()
    backend = build("keras", fit_options={"callbacks": [counter], "validation_split": 0.1})
    seen = []
    parts = _parts(X, y, [(0, 500, 100), (0, 300, 0)], poison=False)
    backend.fit_parts(iter(parts), batch_size=64, on_part=lambda part, metrics: seen.append((part.tag, metrics)))
    # 450 and 270 training events once model.fit kept 10% of each for its validation
    assert [t for t, _ in seen] == [0, 1] and counter.fits == 2 and counter.batches == 8 + 5
    assert all("loss" in m and "val_loss" in m for _, m in seen)


@pytest.mark.slow
def test_keras_fit_parts_class_weight():
    X, y = make_data(2400)

    def mean_score(class_weight):
        backend = build("keras", fit_options={"class_weight": class_weight})
        parts = _parts(X, y, [(0, 2000, 0)], epochs=2)
        parts[0].weight = None
        backend.fit_parts(iter(parts), batch_size=64, on_part=lambda part, metrics: None)
        return float(backend.predict(X[2000:]).mean())

    # signal events weigh nothing: every event looks like background, and the other way round
    assert mean_score({0: 1.0, 1: 0.0}) + 0.3 < mean_score({0: 0.0, 1: 1.0})
    with pytest.raises(ConfigError, match="class_weight cannot be combined"):
        build("keras", fit_options={"class_weight": {0: 1.0, 1: 2.0}}).fit_parts(
            iter(_parts(X, y, [(0, 500, 0)])), batch_size=64, on_part=lambda part, metrics: None)


@pytest.mark.slow
def test_keras_checkpoints_resume_training_exactly(tmp_path):
    from mlaas4hep_lab.backends.base import get_backend
    from mlaas4hep_lab.training.checkpoint import Checkpoint

    X, y = make_data(2400)
    w = np.ones(len(y), np.float32)
    options = {"seed": 3, "fit_options": {"shuffle": False}}
    a = build("keras", **options)
    checkpoint = Checkpoint(tmp_path)
    a.fit_chunk(X[:800], y[:800], w[:800], epochs=1, batch_size=64)
    checkpoint.save(a, {"chunk": 0})   # the run's first: model.save
    assert sorted(p.name for p in (tmp_path / "checkpoint" / "model").iterdir()) == ["model.keras"]
    a.fit_chunk(X[800:1600], y[800:1600], w[800:1600], epochs=1, batch_size=64)
    checkpoint.save(a, {"chunk": 1})   # the same model.keras (linked), the variables' values beside it
    model_dir = tmp_path / "checkpoint" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.keras", "variables.npz"]
    b = get_backend("keras").load(model_dir, IDIM, options)
    np.testing.assert_array_equal(b.predict(X[2000:]), a.predict(X[2000:]))
    assert int(b.model.optimizer.iterations.numpy()) == int(a.model.optimizer.iterations.numpy()) == 26
    # the optimizer's moments and the dropout seeds come back too: training goes on identically
    for backend in (a, b):
        backend.fit_chunk(X[1600:2000], y[1600:2000], w[1600:2000], epochs=1, batch_size=64)
    np.testing.assert_allclose(b.predict(X[2000:]), a.predict(X[2000:]), atol=1e-6)
    # a variables.npz that does not fit the model is refused
    np.savez(model_dir / "variables.npz", np.zeros(3))
    with pytest.raises(ConfigError, match="does not match"):
        get_backend("keras").load(model_dir, IDIM, options)


def test_keras_uncompiled_model_is_a_clear_error(tmp_path):
    path = write_model(tmp_path, """
        import keras

        def model(idim):
            return keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    """)
    X, y = make_data(100)
    with pytest.raises(ConfigError, match="compile"):
        build("keras", path=path).fit_chunk(X, y, None, epochs=1, batch_size=10)


# -- both ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "keras"])
def test_seeded_runs_are_reproducible(name):
    X, y = make_data(1600)

    def run(seed):
        seed_frameworks(seed)  # before model(idim) builds the weights, as the trainer does
        backend = build(name, seed=seed)
        for Xc, yc in chunks(X[:1200], y[:1200], 2):
            backend.fit_chunk(Xc, yc, None, epochs=1, batch_size=64)
        return backend.predict(X[1200:])

    first, again, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4  # the seed matters, so the equality above means something
