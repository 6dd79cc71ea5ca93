"""Networks shared by the algorithms (torch only): the Gaussian MLP policy and its functional
forms, Gaussian log-probabilities and KL, a plain MLP, and numpy weights in and out.

The MAML family adapts a policy per task, so the policy is also a function of a parameter dict
(`policy_forward`) and of stacked per-task parameters (`per_task_forward`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Params = dict[str, torch.Tensor]  # parameter name -> tensor; "stacked" = a leading task axis
LOG_2PI = math.log(2 * math.pi)
MIN_LOG_STD = math.log(1e-6)  # as pytorch-maml-rl
INNER_OPTIMIZER = "inner_optimizer"  # a GaussianMLPPolicy's submodule holding a learned inner optimizer


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian over actions: MLP mean, state-independent log-std (initialised to 0 unless set).

    Initialisation as pytorch-maml-rl (Xavier-uniform weights, zero biases). `forward` returns
    (mean, log_std) with log_std expanded to the mean's shape, so the outputs broadcast the same
    way whether or not the call is inside `vmap`. With `post_log_std` the policy also holds
    the adapted policies' own log σ (the MAML family's `post_std: learned`).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: list[int], activation: str, init_log_std: float = 0.0,
                 init_output_scale: float = 1.0, post_log_std: float | None = None):
        super().__init__()
        act_cls = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden_sizes:
            layers += [nn.Linear(last, width), act_cls()]
            last = width
        self.activation = activation
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        if post_log_std is not None:
            self.post_log_std = nn.Parameter(torch.full((act_dim,), float(post_log_std)))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.mu.weight.mul_(init_output_scale)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mu(self.body(obs))
        log_std = self.log_std.clamp(min=MIN_LOG_STD).expand_as(mean)
        return mean, log_std

    def theta(self) -> Params:
        """θ, the parameters the policy acts with (named as in `named_parameters`), without
        those of a learned inner optimizer it carries (`inner_optimizer.*`, the MAML family's
        meta-sgd / lstm), which travel and are checkpointed with it but are not θ."""
        return {k: p for k, p in self.named_parameters() if not k.startswith(INNER_OPTIMIZER + ".")}

    def linear_layers(self) -> list[tuple[str, str]]:
        """(weight, bias) parameter names of the linear layers, input to output."""
        names = [f"body.{i}" for i, m in enumerate(self.body) if isinstance(m, nn.Linear)] + ["mu"]
        return [(f"{n}.weight", f"{n}.bias") for n in names]


def policy_forward(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy with parameters `params` (one set, shared by every row of `obs`).

    The layers written out with F.linear: the same values as `functional_call(policy, params,
    (obs,))`, about 4x faster per call on a small batch (a rollout calls it every env step), and
    it composes with torch.func's grad and vmap the same way.
    """
    act = torch.tanh if policy.activation == "tanh" else torch.relu
    *hidden, (w, b) = policy.linear_layers()
    x = obs
    for hw, hb in hidden:
        x = act(F.linear(x, params[hw], params[hb]))
    mean = F.linear(x, params[w], params[b])
    return mean, params["log_std"].clamp(min=MIN_LOG_STD).expand_as(mean)


def per_task_forward(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task i's observations obs[i] through task i's parameters params[·][i], all tasks at once.

    One batched matrix product per layer (baddbmm over the stacked weights): the same values as
    `vmap(policy_forward)`, about 10x faster per call at rollout sizes.
    """
    act = torch.tanh if policy.activation == "tanh" else torch.relu
    n, lead = obs.shape[0], obs.shape[1:-1]
    x = obs.reshape(n, -1, obs.shape[-1])
    *hidden, (w, b) = policy.linear_layers()
    for hw, hb in hidden:
        x = act(torch.baddbmm(params[hb].unsqueeze(1), x, params[hw].transpose(1, 2)))
    mean = torch.baddbmm(params[b].unsqueeze(1), x, params[w].transpose(1, 2)).reshape(n, *lead, -1)
    log_std = params["log_std"].clamp(min=MIN_LOG_STD).reshape(n, *(1,) * len(lead), -1).expand_as(mean)
    return mean, log_std


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.square() - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).square()) / (2 * var_q) - 0.5).sum(-1)


def mlp(inputs: int, hidden: list[int], outputs: int) -> nn.Sequential:
    """Linear layers with tanh between them."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.Tanh()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, outputs))


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as numpy copies (what the parameter server publishes)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy weights (possibly read-only views into the object store) into a module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays; load_state_dict copies
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


def weights_mismatch(module: nn.Module, weights: dict[str, Any]) -> str | None:
    """Why these weights (numpy arrays or tensors, by state-dict key) do not load into `module`,
    in one line (missing and unexpected keys, shape differences), or None when they do. The
    module is left with whatever loaded: call it on a module built to be checked."""
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = module.load_state_dict(tensors, strict=False)  # the module's key-renaming hooks run
    except RuntimeError as err:  # shapes differ: torch names each one on a line of its own
        lines = [line.strip().rstrip(".") for line in str(err).splitlines()[1:] if line.strip()]
        return "; ".join(lines[:3]) + (f"; {len(lines) - 3} more" if len(lines) > 3 else "") if lines else str(err)

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    parts = ([f"missing {names(result.missing_keys)}"] if result.missing_keys else []) + (
        [f"unexpected {names(result.unexpected_keys)}"] if result.unexpected_keys else [])
    return "; ".join(parts) or None


def flat(tensors: Any) -> torch.Tensor:
    """Tensors as one flat vector (parameter order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    """A flat vector back into a parameter dict shaped as `like`."""
    sizes = [p.numel() for p in like.values()]
    return {k: v.view_as(p) for (k, p), v in zip(like.items(), vector.split(sizes), strict=True)}
