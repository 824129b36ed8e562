"""model.py template (Keras 3) for a regression (params ``"task": "regression"``, ``"target": [...]``).

The training loop calls ``model(idim, n_outputs)`` with the number of input features and the number of
targets T. The model trains on the targets standardised with the specs pass's mean and width (so that
an output of order 1 is right whatever the targets' units); ``predict``, the exports and the service
turn its outputs back into the targets' units.

Copy this file, change the layers or the loss (e.g. ``keras.losses.Huber()`` against outliers), keep the
function name.
"""

import keras


def model(idim, n_outputs):
    """Dense 128 -> 64 with ReLU, then ``n_outputs`` linear units (one per target)."""
    ml_model = keras.Sequential(
        [
            keras.Input(shape=(idim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(n_outputs),  # no activation: values, not probabilities
        ]
    )
    ml_model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    return ml_model
