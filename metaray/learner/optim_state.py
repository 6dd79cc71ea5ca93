"""An optimizer's state as flat tensors (for safetensors) plus JSON-able hyperparameters.

Checkpoints never pickle, so torch's nested optimizer state_dict is split into tensors named
"{param_index}.{name}" and the param groups, and put back together on load.
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, pstate in state["state"].items():
        for name, value in pstate.items():
            tensors[f"{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        # copies: the optimizer updates its state in place, and must not write into the caller's tensors
        state.setdefault(int(idx), {})[name] = value.to(device, copy=True) if name != "step" else value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
