"""A classifier's logits from whatever its forward returns (issue 30, "Models").

The audit accepts any ``nn.Module`` whose output is, in this order of precedence:

1. a tensor: taken as the logits;
2. an object with a ``.logits`` tensor: Hugging Face's ``ModelOutput``
   (``ViTForImageClassification``, ``BertForSequenceClassification``, ...);
3. a tuple or list whose first element is a tensor: Hugging Face with ``return_dict=False``
   (called without labels, so no loss comes first), and other models that return extras.

Anything else is a one-line ``ValueError`` naming the output's type. :func:`as_classifier` wraps a
model so that attacks, kernels and dattri see plain logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's ``output``: the tensor itself, its ``.logits``, or its first
    element (tuple or list); else a ValueError naming the output's type."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"model: expected its output to be a tensor, an object with .logits, or a "
                     f"tuple whose first element is the logits, got {type(output).__name__}")


def logit_count(model: nn.Module, x: torch.Tensor) -> int:
    """C, the number of logits ``model`` gives per example (1 for (n,) scores), on ``x[:1]``."""
    with torch.no_grad():
        logits = logits_of(model(x[:1]))
    return 1 if logits.ndim <= 1 else int(logits.shape[-1])


def check_labels(labels: torch.Tensor, outputs: int, name: str) -> None:
    """Class indices ``labels`` (called ``name``) in 0..C−1 for a model of C = ``outputs``
    logits (0/1 for one output, its logistic loss); else a one-line ValueError."""
    top = max(outputs, 2)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= top):
        raise ValueError(f"{name}: expected labels in 0..{top - 1} for a model with "
                         f"{outputs} output(s), got {int(labels.min())}..{int(labels.max())}")


class Classifier(nn.Module):
    """``model`` with its output replaced by :func:`logits_of` it.

    The wrapped model is ``.model``: its parameters are shared (training the wrapper trains it),
    and its names gain the prefix ``model.``; a submodule the user names is
    ``classifier.model.get_submodule(name)``, a checkpoint of the user's model loads with
    ``classifier.model.load_state_dict``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))


def as_classifier(model: nn.Module) -> Classifier:
    """``model`` as a module that returns logits (a :class:`Classifier`; one already is
    returned as is)."""
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return Classifier(model)
