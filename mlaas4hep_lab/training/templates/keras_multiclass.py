"""model.py template (Keras 3) for a multi-class task (params ``"task": "multiclass"``): one softmax
probability per class.

The training loop calls ``model(idim, n_outputs)`` with the number of input features and the number of
classes K, and trains the model on the class index of each event (0..K-1: the file's label from
labels.txt, or params ``label``), hence the sparse categorical cross-entropy. Predictions are the K class
probabilities (one column per class in ``predict`` and in the served outputs).

Copy this file, change the layers, keep the function name.
"""

import keras


def model(idim, n_outputs):
    """Dense 128 -> 64 with ReLU and dropout, then ``n_outputs`` softmax units."""
    ml_model = keras.Sequential(
        [
            keras.Input(shape=(idim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(n_outputs, activation="softmax"),  # one probability per class
        ]
    )
    ml_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),  # labels are class indices, not one-hot
        metrics=["accuracy"],
    )
    return ml_model
