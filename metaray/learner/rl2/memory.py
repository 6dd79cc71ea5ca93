"""The memories RL² can use: sequence models over a trial whose state starts at zero with each
trial (Duan et al. 2016 used a GRU; Mishra et al. 2018 SNAIL; Santoro et al. 2016 an external
memory).

Every memory runs two ways with the same maths:
- `step(x, state)`: one env step for all slots of a worker, the state carried between calls;
- `forward(x)`: whole trials [B, T, D] from the initial state (the learner).
A test holds the two equal for every memory, so the learner's log-probs are the worker's.

The state is a dict of batch-first tensors that are all zero at the start of a trial, so a
worker resets a slot by zeroing its rows (`reset`) and a checkpoint saves it as named arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from metaray.learner.rl2.config import RL2Config

State = dict[str, torch.Tensor]


class Memory(nn.Module):
    """A sequence model over the trial; see the module docstring for the contract."""

    out_dim: int

    def initial_state(self, batch: int) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x [B, D] -> (y [B, out_dim], next state)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        """x [B, T, D] from the initial state -> y [B, T, out_dim]. `bptt_len` > 0 truncates
        backpropagation through time where the memory is recurrent (same forward values)."""
        raise NotImplementedError

    @staticmethod
    def reset(state: State, slots: torch.Tensor) -> None:
        """Start new trials in `slots` (indices or a bool mask): their state rows become zero."""
        for value in state.values():
            value[slots] = 0


class RecurrentMemory(Memory):
    """torch's fused GRU or LSTM, with layer norm on its output (Ba et al. 2016): the heads see
    features of a steady scale however long the trial."""

    def __init__(self, kind: str, input_dim: int, hidden_size: int, layer_norm: bool = True,
                 gru_update_bias: float = 0.0):
        super().__init__()
        self.kind, self.out_dim = kind, hidden_size
        self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(input_dim, hidden_size, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size) if layer_norm else nn.Identity()
        # gates' biases (torch's order: LSTM i, f, g, o; GRU r, z, n), split over the input and
        # hidden bias vectors, which are summed
        if kind == "lstm":  # forget-gate bias 1 (Jozefowicz et al. 2015): remember by default
            for name in ("bias_ih_l0", "bias_hh_l0"):
                getattr(self.rnn, name).data[hidden_size : 2 * hidden_size] = 0.5
        elif gru_update_bias:  # h' = (1 - z) n + z h: z near 1 keeps what the memory holds
            for name in ("bias_ih_l0", "bias_hh_l0"):
                getattr(self.rnn, name).data[hidden_size : 2 * hidden_size] = gru_update_bias / 2

    def initial_state(self, batch: int) -> State:
        state = {"h": torch.zeros(batch, self.out_dim)}
        if self.kind == "lstm":
            state["c"] = torch.zeros(batch, self.out_dim)
        return state

    def _hidden(self, state: State) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = state["h"][None].contiguous()
        return h if self.kind == "gru" else (h, state["c"][None].contiguous())

    def _state(self, hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> State:
        if self.kind == "gru":
            return {"h": hidden[0]}
        return {"h": hidden[0][0], "c": hidden[1][0]}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, hidden = self.rnn(x[:, None], self._hidden(state))
        return self.norm(out[:, 0]), self._state(hidden)

    def forward(self, x: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # autocast leaves a float32 input's RNN in float32
            x = x.to(torch.get_autocast_dtype(x.device.type))
        hidden = self._hidden(self.initial_state(x.shape[0]))
        hidden = hidden.to(x.device, x.dtype) if isinstance(hidden, torch.Tensor) else \
            tuple(h.to(x.device, x.dtype) for h in hidden)
        if bptt_len <= 0 or bptt_len >= x.shape[1]:
            out, _ = self.rnn(x, hidden)
        else:
            outs = []
            for start in range(0, x.shape[1], bptt_len):
                o, hidden = self.rnn(x[:, start : start + bptt_len], hidden)
                outs.append(o)
                hidden = hidden.detach() if isinstance(hidden, torch.Tensor) else tuple(h.detach() for h in hidden)
            out = torch.cat(outs, dim=1)
        return self.norm(out)


def make_memory(config: RL2Config, input_dim: int) -> Memory:
    """The memory `config.memory` names, over inputs of `input_dim` features."""
    if config.memory in ("gru", "lstm"):
        return RecurrentMemory(config.memory, input_dim, config.hidden_size, config.layer_norm, config.gru_update_bias)
    if config.memory == "transformer":
        from metaray.learner.rl2.attention import TransformerMemory
        return TransformerMemory(input_dim, config.hidden_size, config.context_length, config.num_layers, config.num_heads)
    if config.memory == "snail":
        from metaray.learner.rl2.attention import SnailMemory
        return SnailMemory(input_dim, config.context_length, config.snail_filters, config.layer_norm)
    if config.memory == "mann":
        from metaray.learner.rl2.mann import MANNMemory
        return MANNMemory(input_dim, config.hidden_size, config.mann_slots, config.mann_width, config.layer_norm)
    raise ValueError(f"rl2.memory: unknown memory {config.memory!r}")
