"""Inner-loop optimizers of the MAML family: how the adapted θ'_i is made from θ and task i's
inner gradient (`maml.inner_optimizer`).

- `sgd`: θ' = θ − α g, α = `inner_lr` (MAML). No module: the policy carries nothing.
- `meta-sgd` (Li et al. 2017): θ' = θ − α ⊙ g with one α per parameter entry, kept as log α.
- `lstm` (Ravi & Larochelle 2017; Andrychowicz et al. 2016): a small LSTM, shared by every
  parameter entry (coordinate-wise), reads each entry's gradient, the task's inner loss and the
  entry's previous update, and outputs how much of the gradient to take and how much of the old
  value to keep: θ' = f ⊙ θ − i ⊙ g. Its state is per task and per entry and runs across the
  inner steps of one adaptation.

The contract (`InnerOptimizer`), which a user's own optimizer follows too (named in a config as
`inner_optimizer: "package.module:ClassName"`; examples/per_tensor_sgd.py is one):
- it is built as `Class(shapes, inner_lr, **inner_optimizer_kwargs)`, `shapes` the shapes of θ's
  parameters by name (those `update` gets in `params` and `grads`);
- it is an `nn.Module` with at least one parameter, all meta-parameters: the policy holds it as
  `policy.inner_optimizer`, so it is published to the workers with the policy's weights and
  checkpointed with them (keys `inner_optimizer.*`);
- `update(params, grads, losses, memory)` takes one inner step for all tasks at once: `params`
  is θ (one set, shared by every task) or stacked per task [N, ...], `grads` and `losses` are
  stacked per task; it returns stacked [N, ...] parameters. `memory` is a dict it may keep state
  in across the inner steps of one adaptation (empty at the first step);
- it is deterministic and differentiable: the workers run it without a graph, the learner
  recomputes it with one, and the two must give the same θ'_i;
- optionally, `linear_coefficients` says how it moves each entry as θ' = (1 − d) ⊙ θ − s ⊙ g
  (both per task and entry, whatever they depend on): the TRPO step then takes its KL curvature
  in closed form with (s, d) held fixed (`curvature`): the LSTM's learner step 2.0x (point-nav)
  and 1.4x (halfcheetah-vel) cheaper than autograd's double backward through the rule, the same
  return (benchmarks/README.md); without it the curvature goes through the rule by autograd;
- the learner trains its parameters with Adam (`inner_optimizer_lr`) on the post-update
  objective at θ_old, through the inner steps (first-order in θ's inner gradients when
  `first_order`), while θ takes the configured outer step with the optimizer held fixed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metaray.networks import Params
from metaray.plugins import PluginError, check_settings, first_line, import_class

PREPROCESS_P = 10.0  # Andrychowicz et al.'s p: magnitudes below e^-p are passed linearly
LOG_SCALE_RANGE = 3.0  # the LSTM's step size stays within α·e^±3
DECAY_RANGE = 0.1  # and its decay f within 1 ± 0.1


def lr_key(name: str) -> str:
    """ParameterDict keys may not contain dots: parameter name -> its key."""
    return name.replace(".", "_")


class InnerOptimizer(nn.Module):
    """One inner step for all tasks: θ'_i from θ (or θ_i), task i's inner gradient and loss."""

    def update(self, params: Params, grads: Params, losses: torch.Tensor, memory: dict[str, torch.Tensor]) -> Params:
        raise NotImplementedError

    def linear_coefficients(self, params: Params, grads: Params, losses: torch.Tensor,
                            memory: dict[str, torch.Tensor]) -> tuple[Params, Params | None] | None:
        """(s, d) per task and entry, stacked [N, ...] or broadcastable, with which `update`
        makes θ' = (1 − d) ⊙ θ − s ⊙ g (d None: no decay), advancing `memory` as `update`
        does; None (the default) when the rule is not of that form."""
        return None

    def step_sizes(self) -> Params | None:
        """α per parameter entry when the update is θ − α ⊙ g with α independent of the
        gradient (Meta-SGD): the closed-form TRPO path can then use it. None otherwise."""
        return None

    def summary(self) -> dict[str, float]:
        """A few numbers for the progress log."""
        return {}


class MetaSGD(InnerOptimizer):
    """θ' = θ − α ⊙ g, one meta-learned α per parameter entry (log α kept, initialised to log inner_lr)."""

    def __init__(self, shapes: dict[str, torch.Size], inner_lr: float):
        super().__init__()
        self.names = list(shapes)
        self.log_lr = nn.ParameterDict({lr_key(n): nn.Parameter(torch.full(s, math.log(inner_lr))) for n, s in shapes.items()})

    def step_sizes(self) -> Params:
        return {n: self.log_lr[lr_key(n)].exp() for n in self.names}

    def linear_coefficients(self, params: Params, grads: Params, losses: torch.Tensor,
                            memory: dict[str, torch.Tensor]) -> tuple[Params, None]:
        return self.step_sizes(), None

    def update(self, params: Params, grads: Params, losses: torch.Tensor, memory: dict[str, torch.Tensor]) -> Params:
        alpha = self.step_sizes()
        return {k: p - alpha[k] * grads[k] for k, p in params.items()}

    def summary(self) -> dict[str, float]:
        with torch.no_grad():
            alpha = torch.cat([p.reshape(-1) for p in self.log_lr.values()]).exp()
        return {"inner_lr_mean": alpha.mean().item(), "inner_lr_min": alpha.min().item(), "inner_lr_max": alpha.max().item()}


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P) -> tuple[torch.Tensor, torch.Tensor]:
    """Andrychowicz et al. (2016)'s input scaling: (log|x| / p, sign x) where |x| ≥ e^-p, else
    (−1, e^p x): magnitudes over many orders become O(1) inputs, the sign kept apart."""
    big = x.abs() >= math.exp(-p)
    magnitude = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, torch.full_like(x, -1.0))
    sign = torch.where(big, torch.sign(x), x * math.exp(p))
    return magnitude, sign


class LSTMInnerOptimizer(InnerOptimizer):
    """A coordinate-wise LSTM update rule (see the module docstring).

    Inputs per entry: the preprocessed gradient g, the task's inner loss, and the entry's
    previous update divided by α (zero at the first step). Outputs per entry: a log step-size
    multiplier a (plus a learned one per parameter tensor) and a decay d:
        i = α · exp(3 tanh((a + s_tensor) / 3)),   f = 1 − 0.1 tanh(d),   θ' = f ⊙ θ − i ⊙ g.
    The output layer and the per-tensor multipliers start at zero, so before meta-training
    the rule is exactly SGD with α = inner_lr; meta-training can only move it from there.
    """

    def __init__(self, shapes: dict[str, torch.Size], inner_lr: float, hidden_size: int):
        super().__init__()
        self.names = list(shapes)
        self.shapes = dict(shapes)
        self.sizes = [math.prod(s) for s in shapes.values()]
        self.register_buffer("alpha", torch.tensor(float(inner_lr)))
        self.register_buffer("tensor_index", torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes)))
        self.cell = nn.LSTMCell(6, hidden_size)
        self.head = nn.Linear(hidden_size, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.log_scale = nn.Parameter(torch.zeros(len(self.sizes)))

    def flat(self, tensors: Params, n: int) -> torch.Tensor:
        """Per-task tensors (or θ shared by all) as [N, P] rows in this optimizer's entry order."""
        return torch.cat([tensors[k].reshape(n, -1) if tensors[k].dim() > len(self.shapes[k]) else
                          tensors[k].reshape(1, -1).expand(n, -1) for k in self.names], 1)

    def coefficients(self, grads: Params, losses: torch.Tensor, memory: dict[str, torch.Tensor],
                     g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(i, 1 − f) per task and entry, [N, P], advancing the LSTM state in `memory`; `g`:
        the gradients already flattened by `flat`, if the caller has them."""
        n = losses.shape[0]
        g = self.flat(grads, n) if g is None else g
        previous = memory.get("previous")
        previous = torch.zeros_like(g) if previous is None else previous / self.alpha
        inputs = torch.stack([*preprocess(g), *preprocess(losses[:, None].expand_as(g)), *preprocess(previous)], -1)
        state = (memory["h"], memory["c"]) if "h" in memory else None
        h, c = self.cell(inputs.reshape(-1, 6), state)
        memory["h"], memory["c"] = h, c
        out = self.head(h).view(n, -1, 2)
        log_mult = out[..., 0] + self.log_scale[self.tensor_index]
        step = self.alpha * torch.exp(LOG_SCALE_RANGE * torch.tanh(log_mult / LOG_SCALE_RANGE))
        return step, DECAY_RANGE * torch.tanh(out[..., 1])

    def unflat(self, rows: torch.Tensor) -> Params:
        """[N, P] rows back to per-task tensors [N, *shape] by parameter name."""
        n = rows.shape[0]
        return {k: part.view(n, *self.shapes[k]) for k, part in zip(self.names, rows.split(self.sizes, 1), strict=True)}

    def linear_coefficients(self, params: Params, grads: Params, losses: torch.Tensor,
                            memory: dict[str, torch.Tensor]) -> tuple[Params, Params]:
        n = losses.shape[0]
        g = self.flat(grads, n)
        step, decay = self.coefficients(grads, losses, memory, g)
        memory["previous"] = -step * g - decay * self.flat(params, n)
        return self.unflat(step), self.unflat(decay)

    def update(self, params: Params, grads: Params, losses: torch.Tensor, memory: dict[str, torch.Tensor]) -> Params:
        step, decay = self.linear_coefficients(params, grads, losses, memory)
        return {k: (1 - decay[k]) * p - step[k] * grads[k] for k, p in params.items()}

    def summary(self) -> dict[str, float]:
        with torch.no_grad():
            scale = torch.exp(LOG_SCALE_RANGE * torch.tanh(self.log_scale / LOG_SCALE_RANGE))
        return {"inner_lr_scale_min": scale.min().item(), "inner_lr_scale_max": scale.max().item()}


def has_linear_form(rule: InnerOptimizer) -> bool:
    """Whether `rule` says its update as θ' = (1 − d) ⊙ θ − s ⊙ g (overrides `linear_coefficients`)."""
    return type(rule).linear_coefficients is not InnerOptimizer.linear_coefficients


def resolve_inner_optimizer(spec: str, key: str = "maml.inner_optimizer") -> type[InnerOptimizer]:
    """A user's inner optimizer class ('package.module:ClassName'), checked to follow the
    contract; ValueError with one line (starting with `key`) when it cannot be used."""
    builtin = "sgd, meta-sgd, lstm"
    if ":" not in spec:
        raise ValueError(f"{key}: unknown {spec!r} ({builtin}, or your own as 'package.module:ClassName')")
    try:
        cls = import_class(spec, "inner optimizer", f"{spec!r} must be one of {builtin} or 'package.module:ClassName'")
    except PluginError as error:
        raise ValueError(f"{key}: {error}") from None
    if not issubclass(cls, InnerOptimizer):
        raise ValueError(f"{key}: {spec!r} is not a subclass of metaray.learner.maml.InnerOptimizer")
    if cls.update is InnerOptimizer.update:
        raise ValueError(f"{key}: {spec!r} does not implement update(params, grads, losses, memory)")
    return cls


def check_inner_optimizer_settings(spec: str, settings: dict[str, Any], key: str) -> None:
    """Whether the user's class takes these settings after (shapes, inner_lr); one line if not."""
    try:
        check_settings(resolve_inner_optimizer(spec), settings, key, fixed=2)
    except PluginError as error:
        raise ValueError(str(error)) from None


def make_inner_optimizer(kind: str, shapes: dict[str, torch.Size], inner_lr: float,
                         lstm_hidden_size: int = 16, settings: dict[str, Any] | None = None) -> InnerOptimizer | None:
    """The `maml.inner_optimizer` named by `kind` for parameters of these shapes (None for sgd):
    a built-in one, or a user's class built as Class(shapes, inner_lr, **settings)."""
    if kind == "sgd":
        return None
    if kind == "meta-sgd":
        return MetaSGD(shapes, inner_lr)
    if kind == "lstm":
        return LSTMInnerOptimizer(shapes, inner_lr, lstm_hidden_size)
    cls = resolve_inner_optimizer(kind)
    try:
        rule = cls(dict(shapes), inner_lr, **(settings or {}))
    except Exception as error:  # a user's constructor may fail in any way
        raise ValueError(f"inner optimizer {kind!r} cannot be built with inner_optimizer_kwargs {settings or {}}: "
                         f"{type(error).__name__}: {first_line(error)}") from None
    if not any(True for _ in rule.parameters()):
        raise ValueError(f"inner optimizer {kind!r} has no parameters: nothing for the outer step to learn "
                         "(a fixed rule is maml.inner_optimizer: sgd, or give it a learned scale)")
    return rule
