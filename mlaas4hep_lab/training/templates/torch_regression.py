"""model.py template (PyTorch) for a regression (params ``"task": "regression"``, ``"target": [...]``).

The training loop calls ``model(idim, n_outputs)`` with the number of input features and the number of
targets T, and trains the module with ``MSELoss`` on the targets standardised by the specs pass's mean
and width; ``predict``, the ONNX export and the service give values in the targets' own units.

Copy this file, change the layers or the loss (e.g. ``loss = nn.HuberLoss``), keep the function name.
"""

import torch  # noqa: TID251 -- a user's model.py imports its framework directly
from torch import nn  # noqa: TID251


def model(idim, n_outputs):
    """Linear 128 -> 64 with ReLU, then ``n_outputs`` values (one per target)."""
    return nn.Sequential(
        nn.Linear(idim, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, n_outputs),
    )


def optimizer(parameters):
    return torch.optim.Adam(parameters, lr=1e-3)
