"""model.py template (Keras 3): the MLP of the original MLaaS4HEP examples.

The training loop imports this file by path, calls ``model(idim)`` with the number of input features
and trains what it returns on the stream of chunks (the chunks' batches through one ``tf.data`` pipeline,
one ``model.fit`` per chunk, or per pass over the stream when ``fit_options`` has ``callbacks``; ``epochs``
and ``batch_size`` from params.json). Contract: return a **compiled** Keras model with one sigmoid output (the signal
probability) or two softmax outputs (column 1 = signal).

Copy this file, change the layers, keep the function name.
"""

import keras


def model(idim):
    """Dense 128 -> 64 -> 1 with ReLU, dropout 0.5 between layers (as the original), sigmoid output."""
    ml_model = keras.Sequential(
        [
            keras.Input(shape=(idim,)),  # idim = number of features after vectorisation
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),  # the original's regularisation; lower it for small data sets
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),  # signal probability in [0, 1]
        ]
    )
    ml_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=keras.losses.BinaryCrossentropy(),  # sample weights (params "Weight") apply per event
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return ml_model


# Optional: extra keyword arguments for model.fit (not x, y, sample_weight, epochs or batch_size), e.g.
# fit_options = {"class_weight": {0: 1.0, 1: 5.0}}
