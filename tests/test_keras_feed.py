"""Keras fed without callbacks of the model's own (the usual case): one model.fit per epoch on a part, no
callback after each batch, the next part prepared meanwhile, chunks handed to TensorFlow without a copy.
The path with the model's own callbacks (one model.fit per pass) is tested in test_backends_nn.py."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from test_backend_contract import build, make_data, rank_auc
from test_backends_nn import _parts, closing, write_model

keras = pytest.importorskip("keras")


def _with_callback(fit, callback):
    def wrapped(*args, callbacks=(), **kwargs):
        return fit(*args, callbacks=[callback, *callbacks], **kwargs)
    return wrapped


def _iterations(backend) -> int:
    return int(backend.model.optimizer.iterations.numpy())


@pytest.mark.slow
def test_each_part_reported_right_after_its_last_batch_with_its_last_epochs_metrics():
    X, y = make_data(2400)
    backend = build("keras")
    # group 0: 500 training rows of 600, a part without training rows, 300 of 300; group 1: 400 of 500
    parts = _parts(X, y, [(0, 500, 100), (0, 0, 50), (0, 300, 0), (1, 400, 100)], epochs=2)
    seen = []
    backend.fit_parts(iter(parts), batch_size=64,
                      on_part=lambda part, metrics: seen.append((part.tag, _iterations(backend), metrics)))
    assert [t for t, _, _ in seen] == [0, 1, 2, 3]
    # batches: 2 epochs x ceil(500/64)=8, none, 2 x 5, 2 x 7 (the poisoned rows never trained: no NaN); the
    # optimizer counts one more, once: the first model.fit does not know its number of batches and Keras
    # counts its last, failing step
    assert [b for _, b, _ in seen] == [17, 17, 27, 41]   # + 1: the first model.fit ran into its end
    assert seen[1][2] == {}
    for _, _, metrics in (seen[0], seen[2], seen[3]):
        assert {"loss", "accuracy", "auc"} <= set(metrics)
        assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert rank_auc(backend.predict(X[2000:]), y[2000:]) > 0.85


PLAIN = """
import keras


def model(idim):
    m = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
    # SGD: the paths' model.fit calls end differently, and Keras counts one more iteration at the end of a
    # model.fit that runs into the end of its data, which Adam's bias correction would read
    m.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy",
              metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return m
"""


@pytest.mark.slow
def test_the_same_training_as_with_the_models_own_callbacks(tmp_path):
    """Same parts, orders and batches as the one-fit-per-pass path: the same weights and metrics."""

    class Quiet(keras.callbacks.Callback):   # any callback of the model's own selects the other path
        pass

    X, y = make_data(2400)
    parts = _parts(X, y, [(0, 500, 100), (0, 300, 0), (1, 640, 0)], epochs=2)
    path = write_model(tmp_path, PLAIN)
    fast, grouped = build("keras", seed=3, path=path), build("keras", seed=3, path=path,
                                                              fit_options={"callbacks": [Quiet()]})
    grouped.model.set_weights(fast.model.get_weights())
    reports = {}
    for name, backend in (("fast", fast), ("grouped", grouped)):
        reports[name] = []
        backend.fit_parts(iter(parts), batch_size=64,
                          on_part=lambda part, metrics, out=reports[name]: out.append((part.tag, metrics)))
    assert [t for t, _ in reports["fast"]] == [t for t, _ in reports["grouped"]] == [0, 1, 2]
    for (_, a), (_, b) in zip(reports["fast"], reports["grouped"]):
        assert set(a) == set(b) == {"loss", "accuracy", "auc"}
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-4)
    for a, b in zip(fast.model.get_weights(), grouped.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_stop_errors_and_the_parts_closed():
    X, y = make_data(2400)
    # a stop after part 0: part 1 never starts; the parts' generator is closed
    backend = build("keras")
    stop = threading.Event()
    backend.stop_event = stop
    closed = []
    seen = []

    def on_part(part, metrics):
        seen.append(part.tag)
        stop.set()

    backend.fit_parts(closing(_parts(X, y, [(0, 640, 0), (0, 640, 0), (0, 640, 0)]), closed), batch_size=64,
                      on_part=on_part)
    assert seen == [0] and closed == [True]
    assert _iterations(backend) == 10 + 1   # + 1: the first model.fit ran into its end

    # a stop while a part trains: Keras ends that model.fit after the batch in progress, the part is not
    # reported (the trainer redoes it on --resume)
    backend = build("keras")
    stop = threading.Event()
    backend.stop_event = stop

    class StopAt(keras.callbacks.Callback):   # the test's own clock: not part of the backend's callbacks
        def on_train_batch_begin(self, batch, logs=None):
            if _iterations(backend) >= 15:
                stop.set()

    backend.model.fit = _with_callback(backend.model.fit, StopAt())
    seen = []
    backend.fit_parts(iter(_parts(X, y, [(0, 640, 0), (0, 640, 0), (0, 640, 0)])), batch_size=64,
                      on_part=lambda part, metrics: seen.append(part.tag))
    assert seen == [0] and _iterations(backend) == 16

    # what on_part raises ends the training there and is raised
    backend = build("keras")

    def fail_on_second(part, metrics):
        if part.tag == 1:
            raise RuntimeError("from on_part")

    with pytest.raises(RuntimeError, match="from on_part"):
        backend.fit_parts(iter(_parts(X, y, [(0, 640, 0), (0, 640, 0), (0, 640, 0)])), batch_size=64,
                          on_part=fail_on_second)
    assert _iterations(backend) == 20 + 1

    # so does an error of the parts' source (a read error), once the parts before it are done; also when
    # it comes before any part
    def broken(n):
        yield from _parts(X, y, [(0, 640, 0)] * n)
        raise OSError("unreadable chunk")

    for n in (1, 0):
        reported: list = []
        with pytest.raises(OSError, match="unreadable chunk"):
            build("keras").fit_parts(broken(n), batch_size=64,
                                     on_part=lambda part, metrics, out=reported: out.append(part.tag))
        assert reported == list(range(n))

    # no parts at all: nothing trained, nothing reported
    backend = build("keras")
    weights = backend.model.get_weights()
    seen = []
    backend.fit_parts(iter([]), batch_size=64, on_part=lambda part, metrics: seen.append(part))
    assert seen == [] and all(np.array_equal(a, b) for a, b in zip(weights, backend.model.get_weights()))


def test_chunks_reach_tensorflow_without_a_copy_and_their_memory_is_not_reused_meanwhile():
    pytest.importorskip("tensorflow")
    from mlaas4hep_lab.backends._keras_feed import tensor
    from mlaas4hep_lab.data._buffers import Buffers

    buffers = Buffers(100, 7)
    X, _ = buffers.matrices(100, 7)
    X[:] = np.arange(700, dtype=np.float32).reshape(100, 7)
    t = tensor(X)
    X[3, 4] = -1.0
    assert float(t[3, 4]) == -1.0   # shared
    base = X.base
    del X
    assert sys.getrefcount(base) > 2   # the tensor keeps the chunk's memory lent
    again, _ = buffers.matrices(100, 7)
    assert again.base is not base
    np.testing.assert_array_equal(t.numpy()[3, :4], [21, 22, 23, 24])

    # memory TensorFlow cannot share (not 64-byte aligned, not contiguous, read-only): copied
    raw = np.zeros(701, np.float32)
    odd = raw[1:] if raw.ctypes.data % 64 == 0 else raw[:700]
    if odd.ctypes.data % 64 == 0:
        odd = raw[1:]
    odd = odd.reshape(100, 7)
    frozen = np.ones((100, 7), np.float32)
    frozen.flags.writeable = False
    for array in (odd, np.ones((7, 100), np.float32).T, frozen):
        t = tensor(array)
        expected = array.copy()
        if array.flags.writeable:
            array[0, 0] = 5.0
        np.testing.assert_array_equal(t.numpy(), expected)
