"""Training throughput: the streamed Keras model beside the same model fed from memory, in paired runs.

    python benchmarks/train.py                       # 400k Higgs-like (flat) + 200k ttH-like (jagged), 3 pairs
    python benchmarks/train.py --scale 0.25 --repeat 1   # quick look
    python benchmarks/train.py --datasets tth        # one of them

For each example dataset both runs train the same architecture (the Keras template, same seed) with the
same batch size and epochs on the same training events (the examples' params.json and preproc.json,
``padding: multiplicity``; the ttH-like example's jagged collections become 331 columns):

* **in memory** -- the honest best a user would do by hand: every training event in one float32 numpy
  array (and the validation events in another), gathered before the clock starts (not timed), then one
  ``model.fit(X, y, sample_weight=w, batch_size, epochs, validation_data=(Xv, yv), shuffle=True)``.
  Validation: Keras' ``evaluate`` once per epoch on every validation event, in batches of batch_size
  (loss and the compiled accuracy and AUC).
* **streamed** -- the package's trainer (``training: epochs``, the user's workflow): chunks read,
  preprocessed and normalised in background threads while the model trains; Keras gets every chunk's
  training events through one ``tf.data`` pipeline and one ``model.fit`` per pass (epoch). Validation:
  after each chunk, that chunk's validation events (so every validation event once per epoch, as in
  memory) predicted in batches of 8192 and scored in numpy (loss, accuracy, AUC); plus a metric event
  and a checkpoint after every chunk. Timed from ``Trainer.run()`` to the last epoch's event: reading
  the first chunk is counted, scoring the test split after training is not.

Each pair runs in memory then streamed, one after the other, after an untimed warm-up fit (TensorFlow's
one-time start-up); the VM's speed drifts, so the figure of merit is the median over pairs of
streamed / in-memory (target >= 95%). Events/s count training events x epochs. ``--prebuilt`` adds a
diagnostic third run to each pair: the same trainer fed with every chunk of every pass built before
the clock starts, i.e. the streamed training without the cost of building chunks (what is left of the
gap is the training side's).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _examples import dataset

TARGET = 0.95


def bench(kind: str, n: int, args) -> list[float]:
    import numpy as np

    from mlaas4hep_lab import extras
    from mlaas4hep_lab.data.stream import ChunkStream
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.events import EventBus
    from mlaas4hep_lab.training.loop import Trainer, balanced_weights
    from mlaas4hep_lab.training.model_file import load_model_file, template_path

    info = dataset(kind, n)
    folder = Path(info["params"]).parent
    params = json.loads(Path(info["params"]).read_text())
    params.update(chunk_size=args.chunk_size, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                  training="epochs", prefetch=1, padding="multiplicity")
    preproc = folder / "preproc.json"
    inputs = load_inputs(folder / "files.txt", folder / "labels.txt", params,
                         preproc if preproc.exists() else None)
    specs = ensure_specs(inputs, progress=False)

    # in memory: the same training and validation events, gathered first (not timed); the training weights
    # as the trainer gives them (params balance_weights: rescaled per label)
    train_X, train_y, train_w, val_X, val_y = [], [], [], [], []
    with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
        n_chunks = stream.n_chunks
        for chunk in stream:
            tr, va = chunk.subset("train"), chunk.subset("validation")
            train_X.append(tr.X), train_y.append(tr.y), train_w.append(tr.weight)
            val_X.append(va.X), val_y.append(va.y)
    X = np.ascontiguousarray(np.concatenate(train_X), dtype=np.float32)
    y = np.concatenate(train_y).astype(np.float32)
    w = np.concatenate(train_w) if train_w[0] is not None else None
    Xv, yv = np.ascontiguousarray(np.concatenate(val_X), dtype=np.float32), np.concatenate(val_y).astype(np.float32)
    del train_X, train_y, train_w, val_X, val_y
    template = template_path("keras")
    w = balanced_weights(y, w, inputs.params.balance_weights)
    n_train = len(y)

    keras = extras.keras()

    def in_memory() -> float:
        keras.backend.clear_session()
        gc.collect()
        model = load_model_file(template, specs.n_features, seed=1).model
        t0 = time.perf_counter()
        model.fit(X, y, sample_weight=w, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                  validation_data=(Xv, yv), shuffle=True)
        return n_train * args.epochs / (time.perf_counter() - t0)

    prebuilt: list = []
    if args.prebuilt:  # every chunk of every pass, built once (the diagnostic run's stream)
        with ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc) as stream:
            prebuilt = list(stream.iterate_passes(args.epochs))

    def streamed(chunks: list | None = None) -> float:
        keras.backend.clear_session()
        gc.collect()
        user = load_model_file(template, specs.n_features, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            bus = EventBus()
            marks: list[float] = []
            last_epoch = args.epochs - 1
            bus.subscribe(lambda e: marks.append(time.perf_counter())
                          if e.kind == "epoch" and e.epoch == last_epoch else None)
            trainer = Trainer(inputs, specs, user, tmp, bus=bus)
            if chunks:
                trainer.stream.iterate_passes = lambda passes, start_epoch=0, start=0: iter(chunks)
            t0 = time.perf_counter()
            trainer.run()
            seconds = marks[0] - t0
        if trainer.events_seen != n_train * args.epochs:
            raise SystemExit(f"the streamed run saw {trainer.events_seen:,} training events, "
                             f"the in-memory run {n_train * args.epochs:,}")
        return trainer.events_seen / seconds

    print(f"{kind}: {n:,} events -> {n_train:,} training, {len(yv):,} validation; {specs.n_features} features, "
          f"{n_chunks} chunks of {args.chunk_size:,}", flush=True)
    # untimed: the process' one-time TensorFlow / Keras start-up, which would otherwise fall on the first run
    warm = load_model_file(template, specs.n_features, seed=1).model
    warm.fit(X[:20 * args.batch_size], y[:20 * args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0,
             validation_data=(Xv[:2 * args.batch_size], yv[:2 * args.batch_size]))
    del warm
    ratios = []
    for r in range(args.repeat):
        mem = in_memory()
        st = streamed()
        ratios.append(st / mem)
        extra = ""
        if prebuilt:
            pre = streamed(prebuilt)
            extra = f"   [trainer on pre-built chunks {pre:>9,.0f} events/s = {pre / mem:6.1%}]"
        print(f"  pair {r + 1}: in memory (model.fit) {mem:>9,.0f} events/s   streamed (trainer) {st:>9,.0f} "
              f"events/s   ratio {st / mem:6.1%}{extra}", flush=True)
    median = statistics.median(ratios)
    print(f"  {kind}: median streamed / in-memory {median:.1%}   (target >= {TARGET:.0%}: "
          f"{'met' if median >= TARGET else 'NOT met'})", flush=True)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="higgs,tth", help="comma-separated: higgs (flat), tth (jagged)")
    ap.add_argument("--higgs-events", type=int, default=400_000)
    ap.add_argument("--tth-events", type=int, default=200_000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies both event counts")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="pairs of (in memory, streamed) runs, alternating")
    ap.add_argument("--prebuilt", action="store_true",
                    help="diagnostic: a third run per pair, the trainer fed chunks built before the clock starts "
                         "(the training side alone, without the cost of building chunks)")
    args = ap.parse_args()

    # through the package: it loads the XRootD client before TensorFlow (the other order crashes)
    from mlaas4hep_lab import extras

    keras, tf = extras.keras(), extras.tensorflow()

    print(f"python {sys.version.split()[0]}; keras {keras.__version__}, tensorflow {tf.__version__}; "
          f"{os.cpu_count()} CPUs; {args.epochs} epochs, batch {args.batch_size}, chunk {args.chunk_size:,}, "
          f"{args.repeat} pairs", flush=True)
    summary = {}
    for kind in [k.strip() for k in args.datasets.split(",") if k.strip()]:
        n = int(round(getattr(args, f"{kind}_events") * args.scale))
        summary[kind] = statistics.median(bench(kind, n, args))
    print("summary: " + "; ".join(f"{k} median {v:.1%}" for k, v in summary.items())
          + f" (target >= {TARGET:.0%}: {'met' if all(v >= TARGET for v in summary.values()) else 'NOT met'})")


if __name__ == "__main__":
    main()
