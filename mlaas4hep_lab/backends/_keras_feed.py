"""How :meth:`KerasBackend.fit_parts <mlaas4hep_lab.backends.keras.KerasBackend.fit_parts>` feeds the
trainer's chunks to Keras through one ``tf.data`` pipeline, each chunk's features handed over without a copy.

Two ways, chosen by model.py's ``fit_options``:

* without ``callbacks`` of the model's own (the usual case): one ``model.fit`` per epoch on a part, the
  trainer's per-chunk work between them. No callback runs after each batch, so Keras dispatches the
  training steps without waiting for each step's logs: a callback with ``on_train_batch_end`` costs
  ~0.9 ms per batch of 256 (measured with an in-memory ``model.fit`` of the ttH-like example, 2 cores:
  8.0-8.1 s against 6.0-7.5 s for 3 epochs), more than a ``model.fit`` call (~7 ms) per chunk;
* with them: one ``model.fit`` per pass over the stream, as the callbacks expect (an EarlyStopping counts
  passes), and the trainer's per-chunk work in a callback after each chunk's last batch.
"""

from __future__ import annotations

import collections
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from mlaas4hep_lab import extras
from mlaas4hep_lab.backends.base import TrainPart
from mlaas4hep_lab.data._buffers import ALIGNMENT
from mlaas4hep_lab.errors import ConfigError

__all__ = ["PartFeeder"]

_PREFETCH_BATCHES = 4   # batches the pipeline prepares ahead of the training step
_ORDER_ENTRIES = 1 << 24   # at most this many row numbers (epochs x rows) in one pipeline element


def tensor(X: np.ndarray):
    """``X`` as a TensorFlow tensor: sharing its memory (DLPack) where TensorFlow can, i.e. a C-contiguous
    array starting on a 64-byte boundary (the stream's chunks are), else a copy. The tensor keeps ``X``
    alive, so the stream does not reuse the memory of a chunk TensorFlow still reads. A [100k, 331]
    float32 matrix costs ~0.2 s to copy."""
    tf = extras.tensorflow()
    if X.size and X.flags.c_contiguous and X.flags.writeable and X.ctypes.data % ALIGNMENT == 0:
        try:
            return tf.experimental.dlpack.from_dlpack(X.__dlpack__())
        except (AttributeError, BufferError, TypeError, ValueError):   # no DLPack export: copy it
            pass
    return tf.convert_to_tensor(X)


class _Pending:
    """A part whose batches are in the pipeline: ``ends`` are the counts of batches trained (in this
    ``model.fit``) at the end of each of its epochs."""

    __slots__ = ("part", "ends")

    def __init__(self, part: TrainPart, ends: list[int]):
        self.part, self.ends = part, ends


class PartFeeder:
    """:meth:`KerasBackend.fit_parts`: the parts' batches through one ``tf.data`` pipeline.

    The pipeline's source (``tf.data`` runs it in its own thread, a few batches ahead of the training)
    hands over a part's arrays with orders of its training rows; ``flat_map`` batches each part inside
    TensorFlow (``tf.gather`` of ``batch_size`` rows per step) until the source gives an empty element,
    which ends the ``model.fit``. Without callbacks of the model's own (:meth:`_run_parts`) the source
    (:meth:`_one`) gives one epoch on one part per ``model.fit``. With them (:meth:`_run_groups`), it
    (:meth:`_element`) pulls the parts itself and ends the ``model.fit`` at the first part of the next
    group, kept for the next one; a callback counts the batches trained and calls ``on_part`` after
    each part's last one.
    """

    def __init__(self, backend, parts: Iterator[TrainPart], batch_size: int,
                 on_part: Callable[[TrainPart, dict[str, float]], None]):
        self.backend, self.model = backend, backend.model
        self.parts, self.batch_size, self.on_part = parts, batch_size, on_part
        self.shuffle = bool(backend._fit_options.get("shuffle", True))
        self.lock = threading.Lock()         # held while the source is advanced; close() waits for it
        self.closed = False                  # the parts are exhausted (or closed)
        self.next: TrainPart | None = None   # taken, not yet fed: the first part of the next model.fit
        self.pending: collections.deque[_Pending] = collections.deque()
        self.scheduled = 0                   # batches fed to the pipeline in this model.fit
        self.trained = 0                     # batches trained in this model.fit
        self.error: BaseException | None = None
        self.group: int | None = None        # the group of this model.fit
        self.current: tuple | None = None    # (X, y, weight, rows) of the part being fed
        self.epochs_left = 0                 # epochs on it not yet handed to the pipeline
        self.element: tuple | Callable | None = None   # _run_parts: what the next model.fit trains on

    # -- the source, in a tf.data thread ----------------------------------------------------------
    def _take(self) -> TrainPart | None:
        """The part kept from the last group, else the next one of ``parts``; None at their end."""
        with self.lock:
            if self.next is not None:
                part, self.next = self.next, None
                return part
            if self.closed:
                return None
            try:
                return next(self.parts)
            except StopIteration:
                self.closed = True
            except BaseException as err:  # a read error...: raised by fit_parts once model.fit returns
                self.error, self.closed = err, True
        return None

    def _element(self) -> tuple[np.ndarray, ...]:
        """The pipeline's next element: a part's arrays with the orders of its training rows for each of
        its epochs (``[epochs, rows]``; long runs of epochs on a large part in several elements), or an
        empty order at the end of the group, at the end of the parts, or after an error (kept for
        fit_parts to raise)."""
        try:
            while True:
                if self.epochs_left:
                    X, y, weight, rows = self.current
                    k = min(self.epochs_left, max(1, _ORDER_ENTRIES // max(len(rows), 1)))
                    self.epochs_left -= k
                    if self.shuffle:
                        orders = np.stack([self.backend._order_rng.permutation(rows) for _ in range(k)])
                    else:
                        orders = np.broadcast_to(rows, (k, len(rows)))
                    return X, y, weight, orders
                self.current = None
                part = self._take()
                if part is None:
                    return self._end()
                if self.group is None:
                    self.group = part.group
                elif part.group != self.group:   # the first part of the next model.fit
                    self.next = part
                    return self._end()
                n, epochs = part.size, max(1, int(part.epochs))
                if not n:   # reported after the batch that ends the part before it (or at the end of the fit)
                    self.pending.append(_Pending(part, [self.scheduled]))
                    continue
                self.current = self._arrays(part)
                per_epoch = -(-n // self.batch_size)
                self.pending.append(_Pending(part, [self.scheduled + per_epoch * (e + 1) for e in range(epochs)]))
                self.scheduled += per_epoch * epochs
                self.epochs_left = epochs
        except BaseException as err:
            self.error = err
            return self._end()

    def _end(self) -> tuple[np.ndarray, ...]:
        empty = np.zeros(0, np.float32)
        return (np.zeros((0, self.backend.n_features), np.float32), self.backend._targets(self.backend.task.empty_y()),
                empty, np.zeros((0, 0), np.int32))

    def _one(self) -> tuple:
        """:meth:`_run_parts`' source: the element set for this ``model.fit`` (or what the callable set
        returns), then the end."""
        element, self.element = self.element, None
        if callable(element):
            element = element()
        return self._end() if element is None else element

    def _arrays(self, part: TrainPart):
        X = tensor(self.backend._inputs(part.X))   # float32, C-contiguous: no copy when it already is
        y = self.backend._targets(part.y)   # a regression's targets standardised
        rows = (np.arange(len(y), dtype=np.int32) if part.rows is None
                else np.ascontiguousarray(part.rows, dtype=np.int32))
        class_weight = self.backend._fit_options.get("class_weight")
        if class_weight is not None and y.ndim == 1:  # as model.fit turns it into sample weights
            if part.weight is not None:
                raise ConfigError("fit_options class_weight cannot be combined with sample weights (params "
                                  "weight): Keras takes one or the other", key="fit_options")
            labels = np.rint(y).astype(np.int64)
            weight = np.ones(len(y), np.float32)
            for label, value in class_weight.items():
                weight[labels == int(label)] = float(value)
        elif part.weight is None:
            # events without weights weigh 1 (the same loss and metrics as none: the pipeline's structure
            # is fixed before the first part is known)
            weight = np.ones(len(y), np.float32)
        else:
            weight = np.ascontiguousarray(part.weight, dtype=np.float32).reshape(-1)
        return X, y, weight, rows

    def _dataset(self, source: Callable[[], tuple], once: bool = False):
        """Elements from ``source`` (``tf.py_function``: ``Dataset.from_generator`` would set glibc's
        M_TRIM_THRESHOLD for the whole process, which slows numpy's large allocations, the chunk
        building's among them), one per iterator if ``once``, else until an empty one; each cut into
        batches of its order's rows."""
        tf = extras.tensorflow()
        plain = tf.autograph.experimental.do_not_convert   # TensorFlow ops only: no AutoGraph pass needed
        n_features, batch_size = self.backend.n_features, self.batch_size
        types = [tf.float32, tf.float32, tf.float32, tf.int32]   # X, y, weight, orders
        y_shape = (None,) if self.backend.task.is_classification else (None, self.backend.task.n_outputs)

        @plain
        def load(_):
            X, y, weight, orders = tf.py_function(source, [], Tout=types)
            X.set_shape((None, n_features))
            y.set_shape(y_shape)
            weight.set_shape((None,))
            orders.set_shape((None, None))
            return X, y, weight, orders

        @plain
        def batches(X, y, weight, orders):
            # X goes into TensorFlow once per element; each epoch's order is cut into batches of rows
            return (tf.data.Dataset.from_tensor_slices(orders)
                    .flat_map(plain(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)))
                    .map(plain(lambda rows: (tf.gather(X, rows), tf.gather(y, rows), tf.gather(weight, rows)))))

        if once:   # one element per iterator: nothing asked of the source beyond it
            dataset = tf.data.Dataset.from_tensors(np.int64(0)).map(load)
        else:
            dataset = (tf.data.Dataset.from_tensors(np.int64(0)).repeat().map(load)
                       .take_while(plain(lambda *element: tf.size(element[-1]) > 0)))
        # no autotuning: nothing here asks for it (fixed prefetch), and an iterator left before its end
        # (model.fit told its number of batches) took ~0.5 s to delete, one time in three, with it on
        options = tf.data.Options()
        options.autotune.enabled = False
        return dataset.flat_map(batches).prefetch(_PREFETCH_BATCHES).with_options(options)

    # -- the training, in the caller's thread ---------------------------------------------------------
    def run(self) -> None:
        if self.backend._fit_options.get("callbacks"):
            self._run_groups()
        else:
            self._run_parts()

    def _run_parts(self) -> None:
        """One ``model.fit`` per epoch on a part, with no callback after each batch (see the module's
        docstring); ``on_part`` after the part's last; the stop event checked before each batch (Keras
        then ends the ``model.fit`` after it; the part is not reported).

        The first part is taken by :meth:`_prime`, so that the first chunk is read while Keras traces its
        train step; that ``model.fit``'s pipeline waits for it. The others are told their
        number of batches (``steps_per_epoch``): a ``model.fit`` that runs into the end of its data adds
        one to the optimizer's ``iterations`` (Keras' last, failing step), which Adam's bias correction
        reads. The next part is taken once this one is done, as the stream builds one chunk ahead: taken
        earlier, it would have the stream build a second one, in memory the training has not freed."""
        self._prime()
        dataset = self._dataset(self._one, once=True)
        taken: dict = {}

        def first():   # in the pipeline's thread: waits for the part _prime takes
            try:
                taken["part"] = prepared = self._prepared()
            except BaseException as err:   # what _arrays raised (class_weight with sample weights)
                taken["error"] = err
                return None
            return self._epoch(prepared[1]) if prepared is not None and prepared[0].size else None

        metrics = self._fit(dataset, first, None)
        if metrics is None:   # stopped
            return
        if not taken:   # the pipeline did not ask (never seen; cheap to be sure)
            first()
        if "error" in taken:
            raise taken["error"]
        prepared, done = taken["part"], 1
        while prepared is not None:
            part, arrays = prepared
            for _ in range(max(1, int(part.epochs)) - done if part.size else 0):
                metrics = self._fit(dataset, self._epoch(arrays), -(-part.size // self.batch_size))
                if metrics is None:
                    return
            self.on_part(part, metrics if part.size else {})
            if self.backend.stop_requested():
                return
            prepared, done = self._prepared(), 0
        self._raise()   # what the parts raised (a read error), once the parts before it are done

    def _prepared(self) -> tuple | None:
        """The next part and its arrays, or None after the last."""
        part = self._take()
        return None if part is None else (part, self._arrays(part))

    def _epoch(self, arrays: tuple) -> tuple:
        X, y, weight, rows = arrays
        order = self.backend._order_rng.permutation(rows) if self.shuffle else rows
        return X, y, weight, order[np.newaxis]

    def _fit(self, dataset, element, steps: int | None) -> dict[str, float] | None:
        """One ``model.fit`` on ``element`` (or what it returns, called by the pipeline): its metrics, or
        None if it was stopped."""
        self.element = element
        with warnings.catch_warnings():  # the first one's number of batches is not known before it ends
            warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
            history = self.model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False,
                                     verbose=self.backend._fit_options.get("verbose", 0),
                                     callbacks=[_stop_callback(self)])
        if self.model.stop_training or self.backend.stop_requested():
            return None
        return {k: float(v[-1]) for k, v in history.history.items()
                if v and isinstance(v[-1], (int, float, np.number))}

    def _run_groups(self) -> None:
        """One ``model.fit`` per group (pass), for the model's own callbacks; ``on_part`` in a callback
        after each part's last batch, the stop event checked after every batch."""
        self._prime()
        dataset = self._dataset(self._element)
        options = self.backend._fit_options
        callbacks = [*(options.get("callbacks") or []), _part_callback(self)]
        verbose = options.get("verbose", 0)
        while True:
            self.scheduled = self.trained = 0
            self.group = None
            self.pending.clear()
            # the pipeline reads the first part while Keras traces its train step (the first call)
            with warnings.catch_warnings():  # a pass's number of batches is not known before it ends
                warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
                self.model.fit(dataset, epochs=1, verbose=verbose, callbacks=callbacks, shuffle=False)
            self._raise()
            if self.model.stop_training:   # the stop event, or the model's own callbacks
                return
            while self.pending:            # parts without events at the end of the group
                self._end_part(self.pending.popleft(), {})
                self._raise()
            if self.backend.stop_requested() or self.next is None:   # no next group
                return

    def _prime(self) -> None:
        """Take the first part in a thread of its own, started before ``model.fit``: ``tf.data`` asks for
        its first element only once Keras has traced the train step, so the first chunk is read and built
        while that runs instead of after it. The lock is held from here until the part is kept (a
        ``threading.Lock`` may be released by another thread): the source's first :meth:`_take` waits for
        it and gets it, and :meth:`close` waits for it too."""
        self.lock.acquire()

        def take() -> None:
            try:
                if self.next is None and not self.closed:
                    try:
                        self.next = next(self.parts)
                    except StopIteration:
                        self.closed = True
                    except BaseException as err:  # raised by fit_parts once model.fit returns, as _take's
                        self.error, self.closed = err, True
            finally:
                self.lock.release()

        threading.Thread(target=take, name="mlaas4hep-keras-first-part", daemon=True).start()

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def _end_part(self, entry: _Pending, metrics: dict[str, float]) -> None:
        try:
            self.on_part(entry.part, metrics)
        except BaseException as err:
            self.error = err
            self.model.stop_training = True

    def batch_end(self, logs: dict | None) -> None:
        """After every training batch: the stop event, then the parts whose last batch this was."""
        self.trained += 1
        if self.backend.stop_requested():
            self.model.stop_training = True
            return
        while self.pending and self.pending[0].ends[0] <= self.trained:
            entry = self.pending[0]
            if len(entry.ends) > 1:   # an epoch on the part ended: the metrics of the next one start afresh
                entry.ends.pop(0)
                self.model.reset_metrics()
                continue
            self.pending.popleft()
            metrics = {}
            if entry.part.size:
                metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.number))}
                self.model.reset_metrics()
            self._end_part(entry, metrics)
            if self.error is not None or self.backend.stop_requested():
                self.model.stop_training = True
                return

    def close(self) -> None:
        """Wait until the source is not advancing the parts (a tf.data thread may be), then close them."""
        with self.lock:
            self.closed = True
            self.next = None
            self.pending.clear()
            close = getattr(self.parts, "close", None)
            if callable(close):
                close()


def _stop_callback(feeder: PartFeeder):
    keras = extras.keras()

    class StopCheck(keras.callbacks.Callback):   # before each batch: no wait for the batch's logs
        def on_train_batch_begin(self, batch, logs=None):
            if feeder.backend.stop_requested():
                feeder.model.stop_training = True

    return StopCheck()


def _part_callback(feeder: PartFeeder):
    keras = extras.keras()

    class PartEnds(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            feeder.batch_end(logs)

    return PartEnds()
