"""A user's inner-loop optimizer for the MAML family, written outside metaray: one meta-learned
step size per parameter tensor, between MAML's single α and Meta-SGD's one per entry.

Name it in a config (`examples/per-tensor-sgd-point-nav.yaml`), run from the repository root:

    maml:
      inner_optimizer: "examples.per_tensor_sgd:PerTensorSGD"
      inner_optimizer_kwargs: {max_scale: 10.0}

The contract is `metaray.learner.maml.InnerOptimizer`'s docstring: an `nn.Module` built as
`Class(shapes, inner_lr, **inner_optimizer_kwargs)` whose parameters the outer step trains,
with `update(params, grads, losses, memory)` making every task's adapted parameters at once.
This rule also says its update in linear form (`linear_coefficients`), so the TRPO step takes
its KL curvature in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metaray.learner.maml import InnerOptimizer

Params = dict[str, torch.Tensor]


class PerTensorSGD(InnerOptimizer):
    """θ'_k = θ_k − α_k g_k, α_k = inner_lr · exp(log(max_scale) · tanh(a_k)) for each parameter
    tensor k: exactly SGD before meta-training (a_k = 0), never more than max_scale times
    larger or smaller than inner_lr after."""

    def __init__(self, shapes: dict[str, torch.Size], inner_lr: float, max_scale: float = 10.0):
        super().__init__()
        if not max_scale > 1:
            raise ValueError(f"max_scale must be above 1, got {max_scale}")
        self.names = list(shapes)
        self.inner_lr = float(inner_lr)
        self.log_max_scale = math.log(max_scale)
        self.raw = nn.Parameter(torch.zeros(len(self.names)))

    def tensor_step_sizes(self) -> torch.Tensor:
        """α_k, one per parameter tensor, in the order of `shapes`."""
        return self.inner_lr * torch.exp(self.log_max_scale * torch.tanh(self.raw))

    def linear_coefficients(self, params: Params, grads: Params, losses: torch.Tensor,
                            memory: dict[str, torch.Tensor]) -> tuple[Params, None]:
        steps = self.tensor_step_sizes()
        return {name: steps[i] for i, name in enumerate(self.names)}, None  # a scalar per tensor broadcasts

    def update(self, params: Params, grads: Params, losses: torch.Tensor, memory: dict[str, torch.Tensor]) -> Params:
        steps, _ = self.linear_coefficients(params, grads, losses, memory)
        return {k: p - steps[k] * grads[k] for k, p in params.items()}

    def summary(self) -> dict[str, float]:
        with torch.no_grad():
            steps = self.tensor_step_sizes()
        return {"inner_lr_min": steps.min().item(), "inner_lr_max": steps.max().item()}
