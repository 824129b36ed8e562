"""model.py template (PyTorch): the same MLP as the Keras template, returning one logit per event.

The training loop imports this file by path, calls ``model(idim)`` with the number of input features
and trains the module in shuffled mini-batches of each chunk (``epochs`` and ``batch_size`` from
params.json). Scores are ``sigmoid(logit)``.

What the output means is read from the last layer: ``nn.Sigmoid`` -> a probability (trained with
``BCELoss``), anything else -> a logit (trained with ``BCEWithLogitsLoss``, numerically safer). Two
outputs per event are also accepted (``CrossEntropyLoss``, column 1 = signal). Force the reading with
``fit_options = {"output": "logit"}`` (or ``"probability"``).

Copy this file, change the layers, keep the function name.
"""

import torch  # noqa: TID251 -- a user's model.py imports its framework directly
from torch import nn  # noqa: TID251


def model(idim):
    """Linear 128 -> 64 -> 1 with ReLU and dropout 0.5 between layers; the last layer gives a logit."""
    return nn.Sequential(
        nn.Linear(idim, 128),  # idim = number of features after vectorisation
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 1),  # one logit; append nn.Sigmoid() to return probabilities instead
    )


def optimizer(parameters):
    """Optional: called with the model's parameters; the default is this same Adam."""
    return torch.optim.Adam(parameters, lr=1e-3)


# Optional: the loss, as a module (or a function of no argument returning one). It is called as
# loss(output[B], target[B]) and switched to reduction="none" so that sample weights apply per event.
# loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))

# Optional: fit_options = {"device": "cuda"}   # train on a GPU
