"""The ``torch.nn.Module`` wrappers of the PyTorch adapter: the objects layout's named inputs gathered from X,
and the task's outputs computed from the user's module (shared by predict and the ONNX export)."""

from __future__ import annotations

import functools

from mlaas4hep_lab import extras

__all__ = ["objects_module_class", "score_module_class", "named_inputs_module_class"]


@functools.cache
def objects_module_class():
    """``nn.Module`` feeding the user's module the named inputs of the objects layout, gathered from the
    rows of ``X`` (:class:`~mlaas4hep_lab.data.objects.ObjectsLayout`): ``flat`` [B, F], per collection
    [B, k, C] and its mask [B, k] (slot j < the collection's multiplicity, or its mask features set). Its
    ``state_dict`` is the user module's under ``model.`` plus the index tensors."""
    torch = extras.torch()

    class ObjectsInputs(torch.nn.Module):
        def __init__(self, model, layout):
            super().__init__()
            self.model = model
            self.register_buffer("flat_index", torch.as_tensor(layout.flat_columns, dtype=torch.long))
            self.collections = []
            for i, c in enumerate(layout.collections):
                self.register_buffer(f"values_{i}", torch.as_tensor(c.columns.reshape(-1), dtype=torch.long))
                if c.mask_columns is not None:
                    self.register_buffer(f"masks_{i}", torch.as_tensor(c.mask_columns.reshape(-1), dtype=torch.long))
                self.register_buffer(f"slots_{i}", torch.arange(c.k, dtype=torch.float32))
                self.collections.append((c.name, c.mask_name, c.k, len(c.branches), c.count))

        def forward(self, x):
            inputs = {"flat": x.index_select(1, self.flat_index)}
            for i, (name, mask_name, k, width, count) in enumerate(self.collections):
                inputs[name] = x.index_select(1, getattr(self, f"values_{i}")).reshape(-1, k, width)
                if count is not None:
                    col, scale, offset = count
                    n = torch.round(x[:, col] / scale + offset)
                    inputs[mask_name] = getattr(self, f"slots_{i}")[None, :] < n[:, None]
                else:
                    flags = x.index_select(1, getattr(self, f"masks_{i}")).reshape(-1, k, width)
                    inputs[mask_name] = (flags > 0.5).any(dim=2)
            return self.model(inputs)

    return ObjectsInputs


@functools.cache
def score_module_class():
    """``nn.Module`` mapping the user's output to the score ``float32[n]`` (shared by predict and ONNX)."""
    torch = extras.torch()

    class ScoreModule(torch.nn.Module):
        def __init__(self, model, width: int, output: str, kind: str = "binary", scale=None):
            super().__init__()
            self.model, self.width, self.output, self.kind = model, width, output, kind
            if scale is not None:   # a regression's standardisation, undone
                self.register_buffer("mean", torch.as_tensor(scale[0], dtype=torch.float32))
                self.register_buffer("std", torch.as_tensor(scale[1], dtype=torch.float32))
            self.scaled = scale is not None

        def forward(self, x):
            out = self.model(x)
            if self.kind == "regression":
                out = out.reshape(-1, self.width)
                return out * self.std + self.mean if self.scaled else out
            if self.kind == "multiclass":
                out = out.reshape(-1, self.width)
                if self.output == "logit":
                    return torch.softmax(out, dim=1)
                return torch.exp(out) if self.output == "log_probability" else out
            if self.width == 1:
                out = out.reshape(-1)
                return torch.sigmoid(out) if self.output == "logit" else out
            out = out.reshape(-1, 2)
            if self.output == "logit":
                return torch.softmax(out, dim=1)[:, 1]
            if self.output == "log_probability":
                return torch.exp(out[:, 1])
            return out[:, 1]

    return ScoreModule


@functools.cache
def named_inputs_module_class():
    """``nn.Module`` taking the objects layout's named inputs as positional tensors (what an ONNX graph's
    inputs are) and handing them to ``scorer`` as the dict the user's module reads."""
    torch = extras.torch()

    class NamedInputs(torch.nn.Module):
        def __init__(self, scorer, names):
            super().__init__()
            self.scorer, self.names = scorer, list(names)

        def forward(self, *tensors):
            return self.scorer(dict(zip(self.names, tensors)))

    return NamedInputs
