"""model.py template (PyTorch) for the objects layout (params ``"layout": "objects"``): a small attention
model over the objects of every collection (in the spirit of the Particle Transformer, much smaller).

``model(inputs, n_outputs)`` receives the shape of each named input (``{"flat": (F,), "Jet": (k, C),
"Jet_mask": (k,), ...}``) and the number of outputs (1 logit for a binary task, K classes, T targets). Each
collection's objects are embedded to a common width and tagged with a learnt collection embedding; all
objects of an event then attend to each other (a Transformer encoder whose padding mask hides the empty
slots), are averaged over the real ones and joined to the flat inputs.

Copy this file, change the sizes, keep the function name.
"""

import torch  # noqa: TID251 -- a user's model.py imports its framework directly
from torch import nn  # noqa: TID251


class ObjectAttention(nn.Module):
    def __init__(self, inputs, n_outputs=1, width=32, heads=4, layers=2):
        super().__init__()
        self.collections = [name for name, shape in inputs.items() if len(shape) == 2]
        self.embed = nn.ModuleDict({name: nn.Linear(inputs[name][1], width) for name in self.collections})
        self.kind = nn.Parameter(torch.zeros(len(self.collections), width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(inputs["flat"][0] + width, 64), nn.ReLU(), nn.Linear(64, n_outputs))

    def forward(self, x):
        objects = torch.cat([self.embed[name](x[name]) + self.kind[i] for i, name in enumerate(self.collections)],
                            dim=1)                                            # [B, sum k, width]
        real = torch.cat([x[name + "_mask"] for name in self.collections], dim=1)   # [B, sum k]
        # an event with no object at all attends to its first slot rather than to nothing (NaN)
        real = real | (torch.arange(real.shape[1], device=real.device) == 0)[None, :]
        encoded = self.encoder(objects, src_key_padding_mask=~real)
        weight = real.unsqueeze(-1).to(encoded.dtype)
        pooled = (encoded * weight).sum(dim=1) / weight.sum(dim=1)
        return self.head(torch.cat([x["flat"], pooled], dim=1))


def model(inputs, n_outputs=1):
    return ObjectAttention(inputs, n_outputs)


def optimizer(parameters):
    return torch.optim.Adam(parameters, lr=1e-3)
