"""model.py template (PyTorch) for the objects layout (params ``"layout": "objects"``): a Deep Sets model.

The training loop calls ``model(inputs, n_outputs)``: ``inputs`` maps each named input to its shape without
the event axis, e.g. ``{"flat": (30,), "Jet": (12, 13), "Jet_mask": (12,), "Muon": (4, 8), ...}`` (one entry
per collection of jagged branches, padded to the specs' length, and its mask), and ``n_outputs`` is 1 for a
binary task (one logit), K classes or T targets otherwise. The module's ``forward`` receives a dict of
tensors of those shapes (``float32``; masks ``bool``) for a batch of events.

Each collection's objects go through the same small network (phi), are summed over the real objects only
(the mask), so the result does not depend on their order or number (Zaheer et al., *Deep Sets*, 2017);
the sums and the flat inputs then go through a second network (rho).

Copy this file, change the layers, keep the function name.
"""

import torch  # noqa: TID251 -- a user's model.py imports its framework directly
from torch import nn  # noqa: TID251


class DeepSets(nn.Module):
    def __init__(self, inputs, n_outputs=1, width=64):
        super().__init__()
        self.collections = [name for name, shape in inputs.items() if len(shape) == 2]
        self.phi = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(inputs[name][1], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            for name in self.collections
        })
        size = inputs["flat"][0] + width * len(self.collections)
        self.rho = nn.Sequential(nn.Linear(size, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, n_outputs))

    def forward(self, x):
        parts = [x["flat"]]
        for name in self.collections:
            mask = x[name + "_mask"].unsqueeze(-1).to(x[name].dtype)   # [B, k, 1]: 1 for a real object
            parts.append((self.phi[name](x[name]) * mask).sum(dim=1))  # padding adds nothing
        return self.rho(torch.cat(parts, dim=1))


def model(inputs, n_outputs=1):
    return DeepSets(inputs, n_outputs)


def optimizer(parameters):
    return torch.optim.Adam(parameters, lr=1e-3)
