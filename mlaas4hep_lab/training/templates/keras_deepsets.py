"""model.py template (Keras 3) for the objects layout (params ``"layout": "objects"``): a Deep Sets model.

The training loop calls ``model(inputs, n_outputs)``: ``inputs`` maps each named input to its shape without
the event axis, e.g. ``{"flat": (30,), "Jet": (12, 13), "Jet_mask": (12,), ...}`` (one entry per collection
of jagged branches, padded to the specs' length, and its mask), and ``n_outputs`` is 1 for a binary task, K
classes or T targets otherwise. Return a compiled Keras model whose inputs are named like the keys of
``inputs`` (a dict of ``keras.Input``).

Each collection's objects go through the same Dense layers (phi), are summed over the real objects (the
mask), so the result does not depend on their order or number; the sums and the flat inputs then go
through rho. The output and the loss follow the task (``task``: binary, multiclass or regression).

Copy this file, change the layers, keep the function name.
"""

import keras


def model(inputs, n_outputs=1, task="binary"):
    named = {name: keras.Input(shape, name=name, dtype="bool" if name.endswith("_mask") else "float32")
             for name, shape in inputs.items()}
    parts = [named["flat"]]
    for name, shape in inputs.items():
        if len(shape) != 2:
            continue
        phi = keras.Sequential([keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu")],
                               name=f"phi_{name}")
        mask = keras.ops.expand_dims(keras.ops.cast(named[name + "_mask"], "float32"), -1)   # 1 for a real object
        parts.append(keras.ops.sum(phi(named[name]) * mask, axis=1))                         # padding adds nothing
    h = keras.layers.Concatenate()(parts)
    h = keras.layers.Dense(128, activation="relu")(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    if task == "multiclass":   # class probabilities; labels are class indices
        out, loss = keras.layers.Dense(n_outputs, activation="softmax")(h), "sparse_categorical_crossentropy"
    elif task == "regression":   # values (trained on standardised targets)
        out, loss = keras.layers.Dense(n_outputs)(h), "mse"
    else:
        out, loss = keras.layers.Dense(1, activation="sigmoid")(h), "binary_crossentropy"
    ml_model = keras.Model(named, out)
    ml_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return ml_model
