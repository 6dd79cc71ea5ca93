"""Experts shipped with metaray: task-conditioned policies that demonstrate a family's tasks.

An expert is one safetensors file, `<family>.safetensors`, in this folder: the Gaussian MLP
policy's weights plus metadata (layer sizes, activation, action bounds, the config that trained
it and its measured return). It is loaded without pickle. `benchmarks/halfcheetah_vel_expert.py`
trains one with `metaray train` on the true reward and writes it here with `save_expert`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

EXPERTS_DIR = Path(__file__).resolve().parent
REQUIRED_METADATA = ("obs_dim", "act_dim", "hidden_sizes", "activation", "action_low", "action_high")


class ExpertError(RuntimeError):
    """A shipped expert is missing or not a valid expert file."""


class ExpertPolicy:
    """The mean action of a trained Gaussian MLP policy, clipped to the action bounds.

    The MLP is evaluated straight from its weights (`body.{2i}` hidden layers, `mu` the mean
    layer, as the MAML family's policy names them), so tasks/ needs nothing from the learner."""

    def __init__(self, weights: dict[str, torch.Tensor], metadata: dict[str, Any]):
        self.metadata = metadata
        self.obs_dim, act_dim = int(metadata["obs_dim"]), int(metadata["act_dim"])
        sizes = [self.obs_dim, *(int(h) for h in metadata["hidden_sizes"]), act_dim]
        names = [f"body.{2 * i}" for i in range(len(sizes) - 2)] + ["mu"]
        expected = {f"{n}.{p}": shape for n, (a, b) in zip(names, zip(sizes, sizes[1:], strict=False), strict=True)
                    for p, shape in (("weight", (b, a)), ("bias", (b,)))}
        wrong = [k for k, shape in expected.items() if k not in weights or tuple(weights[k].shape) != shape]
        if wrong or metadata["activation"] not in ("tanh", "relu"):
            raise ExpertError(f"expert weights do not fit its metadata (layers {wrong or ''}, activation "
                              f"{metadata['activation']!r})")
        self.layers = [(weights[f"{n}.weight"].float(), weights[f"{n}.bias"].float()) for n in names]
        self.activation = torch.tanh if metadata["activation"] == "tanh" else torch.relu
        self.low = np.asarray(metadata["action_low"], np.float32)
        self.high = np.asarray(metadata["action_high"], np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action for one observation [obs_dim] or a batch [N, obs_dim]."""
        x = torch.as_tensor(np.asarray(obs, np.float32))
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"expert expects observations of size {self.obs_dim}, got shape {tuple(x.shape)}")
        with torch.no_grad():
            *hidden, (w, b) = self.layers
            for hw, hb in hidden:
                x = self.activation(torch.nn.functional.linear(x, hw, hb))
            mean = torch.nn.functional.linear(x, w, b)
        return np.clip(mean.numpy(), self.low, self.high)


def expert_path(name: str) -> Path:
    return EXPERTS_DIR / f"{name}.safetensors"


@functools.cache
def load_expert(name: str, path: Path | None = None) -> ExpertPolicy:
    """The shipped expert `name` (or the expert file at `path`); cached per process."""
    path = Path(path) if path is not None else expert_path(name)
    if not path.is_file():
        raise ExpertError(f"no expert {name!r}: {path} is missing (benchmarks/halfcheetah_vel_expert.py makes it)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            weights = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as err:
        raise ExpertError(f"{path}: not a safetensors file ({err})") from None
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as err:
        raise ExpertError(f"{path}: metadata is not JSON ({err})") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing or metadata.get("family") != name:
        raise ExpertError(f"{path}: not an expert for {name!r} (family {metadata.get('family')!r}, missing {missing})")
    return ExpertPolicy(weights, metadata)


def save_expert(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write an expert file: weights plus JSON-encoded metadata (must name its `family`)."""
    missing = [key for key in (*REQUIRED_METADATA, "family") if key not in metadata]
    if missing:
        raise ValueError(f"expert metadata lacks {missing}")
    tmp = Path(path).with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp),
              metadata={key: json.dumps(value) for key, value in metadata.items()})
    tmp.replace(path)
