"""A memory-augmented network for RL² (Santoro et al. 2016): an LSTM controller with an
external memory it writes with least-recently-used access and reads by content.

Each step, from the controller's output h (its input: x and the previous read vector):
- key k = tanh(W h), key strength beta = 1 + softplus(w h), write gate sigmoid(alpha);
- least-used weights w_lu (from the previous usage): one-hot on the slot of lowest usage,
  ties going to the lowest index (`argmin`), so an all-zero memory starts writing at slot 0
  and the symmetry between empty slots breaks deterministically (a soft version would spread
  writes evenly over equal slots and never break it);
- the least-used slot is erased, then written: M = M (1 - w_lu) + w_w k^T with
  w_w = sigmoid(alpha) w_r(prev) + (1 - sigmoid(alpha)) w_lu;
- read: w_r = softmax(beta cos(k, M_i)), r = w_r M; cosine with an epsilon inside the norms,
  so empty (zero) slots give similarity 0 and finite gradients;
- usage = 0.95 usage + w_r + w_w.
The output is [h, r] (out_dim = hidden_size + mann_width), layer-normed like the recurrent
memories. The state (h, c, memory, usage, read weights, read vector) is all zero at a trial
start. `forward` loops over time with the same cell as `step`.

Caveat: the least-used slot is a hard choice. Two slots whose usages differ by float rounding
only could pick differently in a worker batch and a learner batch of another size; usages are
sums of softmax weights, so such near-ties are rare outside the exact ties argmin settles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metaray.learner.rl2.memory import Memory, State

USAGE_DECAY = 0.95  # gamma of Santoro et al.
COSINE_EPS = 1e-6


class MANNMemory(Memory):
    """LSTM controller + external memory [B, slots, width] with LRU writes and content reads."""

    def __init__(self, input_dim: int, hidden_size: int, slots: int = 32, width: int = 32, layer_norm: bool = True):
        super().__init__()
        self.hidden_size, self.slots, self.width = hidden_size, slots, width
        self.out_dim = hidden_size + width
        self.controller = nn.LSTMCell(input_dim + width, hidden_size)
        self.controller.bias_ih.data[hidden_size : 2 * hidden_size] = 0.5  # forget bias 1, as RecurrentMemory
        self.controller.bias_hh.data[hidden_size : 2 * hidden_size] = 0.5
        self.interface = nn.Linear(hidden_size, width + 2)  # key, key strength, write gate
        self.norm = nn.LayerNorm(self.out_dim) if layer_norm else nn.Identity()

    def initial_state(self, batch: int) -> State:
        zeros = torch.zeros
        return {"h": zeros(batch, self.hidden_size), "c": zeros(batch, self.hidden_size),
                "memory": zeros(batch, self.slots, self.width), "usage": zeros(batch, self.slots),
                "read_weights": zeros(batch, self.slots), "read": zeros(batch, self.width)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = self.controller(torch.cat([x, state["read"]], dim=-1), (state["h"], state["c"]))
        key, strength, gate = self.interface(h).split([self.width, 1, 1], dim=-1)
        key, beta, write_gate = torch.tanh(key), 1 + F.softplus(strength), torch.sigmoid(gate)
        usage = state["usage"]
        least_used = F.one_hot(usage.argmin(dim=-1), self.slots).to(x.dtype)
        write = write_gate * state["read_weights"] + (1 - write_gate) * least_used
        memory = state["memory"] * (1 - least_used)[..., None] + write[..., None] * key[:, None]
        dots = (memory @ key[..., None])[..., 0]  # [B, slots]
        norms = ((memory * memory).sum(-1) + COSINE_EPS**2).sqrt() * ((key * key).sum(-1, keepdim=True) + COSINE_EPS**2).sqrt()
        read_weights = torch.softmax(beta * dots / norms, dim=-1)
        read = (read_weights[:, None] @ memory)[:, 0]
        usage = USAGE_DECAY * usage + read_weights + write
        state = {"h": h, "c": c, "memory": memory, "usage": usage, "read_weights": read_weights, "read": read}
        return self.norm(torch.cat([h, read], dim=-1)), state

    def forward(self, x: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        """Loops `step` over time; with `bptt_len` > 0 the state is detached every that many steps."""
        state = {k: v.to(x.device, x.dtype) for k, v in self.initial_state(x.shape[0]).items()}
        outs = []
        for t in range(x.shape[1]):
            if bptt_len > 0 and t > 0 and t % bptt_len == 0:
                state = {k: v.detach() for k, v in state.items()}
            y, state = self.step(x[:, t], state)
            outs.append(y)
        return torch.stack(outs, dim=1)
