"""model.py template (PyTorch) for a multi-class task (params ``"task": "multiclass"``): one logit per
class, trained with ``CrossEntropyLoss`` on the class index (0..K-1) of each event.

The training loop calls ``model(idim, n_outputs)`` with the number of input features and the number of
classes K. Predictions are the softmax of the logits: K class probabilities per event.

Copy this file, change the layers, keep the function name.
"""

import torch  # noqa: TID251 -- a user's model.py imports its framework directly
from torch import nn  # noqa: TID251


def model(idim, n_outputs):
    """Linear 128 -> 64 with ReLU and dropout, then ``n_outputs`` logits."""
    return nn.Sequential(
        nn.Linear(idim, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, n_outputs),  # logits; the backend applies the softmax
    )


def optimizer(parameters):
    return torch.optim.Adam(parameters, lr=1e-3)


# Optional: loss = nn.CrossEntropyLoss(label_smoothing=0.05)   (params "class_weights" weigh the classes)
