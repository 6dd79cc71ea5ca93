"""Attention memories for RL²: a causal transformer and SNAIL (Mishra et al. 2018).

Both see the whole trial so far instead of compressing it into a recurrent state, so their
reach is bounded by `rl2.context_length` steps: the learner runs whole trials at once (one
causal mask, causal convolutions, no loop over time), the worker steps with caches of what
the learner would recompute (keys/values, convolution taps) plus a per-slot step counter
`pos`. Every cache is zero at a trial start, so `Memory.reset` (zeroing rows) starts a trial.

Without autograd (the worker: no parameter, input or state needs a gradient) `step` writes
its caches in place and returns the same tensors: copying a [slots, context, width] cache per
layer and step tripled the transformer's step time (128 slots, context 200). With autograd it
writes copies, leaving the state passed in untouched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from metaray.learner.rl2.memory import Memory, State

if TYPE_CHECKING:
    from metaray.learner.rl2.config import RL2Config

CONTEXT_MEMORIES = ("transformer", "snail")
SNAIL_KEY_SIZE, SNAIL_VALUE_SIZE = 32, 16  # Mishra et al.'s attention block for the RL tasks


def check_context(config: RL2Config, max_episode_steps: int) -> None:
    """Refuse a run whose trials would outgrow the attention memory's context (a step past it
    raises mid-run otherwise). Recurrent memories have no context: nothing to check."""
    if config.memory not in CONTEXT_MEMORIES:
        return
    steps = config.episodes_per_trial * max_episode_steps
    if config.context_length < steps:
        raise ValueError(
            f"rl2.context_length: a trial is episodes_per_trial x max_episode_steps = {config.episodes_per_trial} x "
            f"{max_episode_steps} = {steps} steps but the {config.memory}'s context holds {config.context_length}; "
            f"set rl2.context_length: {steps}")


def _context_error(kind: str, step: int, context: int) -> ValueError:
    return ValueError(f"rl2.context_length: step {step} of a trial is past the {kind}'s context of {context} steps; "
                      "set rl2.context_length to at least episodes_per_trial x max_episode_steps")


def _used_context(pos: torch.Tensor, kind: str, context: int) -> int:
    """Cache columns this step reads (the furthest slot's steps so far and this one); refuses a
    step past the context rather than wrapping around."""
    used = int(pos.max()) + 1 if pos.numel() else 1
    if used > context:
        raise _context_error(kind, used, context)
    return used


def _needs_grad(module: nn.Module, x: torch.Tensor, state: State) -> bool:
    """Whether this step is part of an autograd graph (then caches are written out of place)."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(v.requires_grad for v in state.values()) or \
        any(p.requires_grad for p in module.parameters())


def _write(buf: torch.Tensor, index: tuple[torch.Tensor, ...], value: torch.Tensor, copy: bool) -> torch.Tensor:
    """buf[index] = value, in place or on a copy (autograd)."""
    return buf.index_put(index, value) if copy else buf.index_put_(index, value)


def _write_step(cache: torch.Tensor, pos: torch.Tensor, value: torch.Tensor, copy: bool) -> torch.Tensor:
    """cache [B, H, context, d] gets value [B, H, d] at each slot's position."""
    b, h = value.shape[:2]
    rows, heads = torch.arange(b, device=pos.device)[:, None], torch.arange(h, device=pos.device)[None]
    return _write(cache, (rows.expand(b, h), heads.expand(b, h), pos[:, None].expand(b, h)), value, copy)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, used: int) -> torch.Tensor:
    """One query per slot and head, q [B, H, d], over the first `used` columns of cached
    keys/values [B, H, context, d], each slot up to its own position. Written out: torch's CPU
    attention kernel is several times slower for a single query."""
    keys, values = keys[:, :, :used], values[:, :, :used]
    scores = (q[:, :, None] @ keys.transpose(-1, -2))[:, :, 0] / math.sqrt(q.shape[-1])  # [B, H, used]
    seen = torch.arange(used, device=q.device)[None, None] <= pos[:, None, None]
    probs = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)
    return (probs[:, :, None] @ values)[:, :, 0]


class _Block(nn.Module):
    """Pre-LN transformer block (Xiong et al. 2020): x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, w = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, self.head_dim).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, T, dh]
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return h + self.mlp(self.ln2(h))

    def step(self, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, used: int,
             copy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, width] at positions pos [B]; keys/values [B, heads, context, dh] cached."""
        b, w = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, 3, self.heads, self.head_dim).unbind(1)
        keys, values = _write_step(keys, pos, k, copy), _write_step(values, pos, v, copy)
        h = h + self.proj(_attend(q, keys, values, pos, used).reshape(b, w))
        return h + self.mlp(self.ln2(h)), keys, values


class TransformerMemory(Memory):
    """A causal pre-LN transformer over the trial with learned absolute position embeddings.

    The state is a key/value cache per layer, [B, heads, context, head_dim] (heads before
    positions: one batched matmul per step reads it without a copy), and each slot's position
    `pos` [B] (int64): the worker attends to the slot's own steps so far only.
    """

    def __init__(self, input_dim: int, width: int, context: int, num_layers: int = 2, num_heads: int = 2):
        super().__init__()
        if context < 1:
            raise ValueError(f"rl2.context_length: the transformer needs a context of at least 1 step, got {context}")
        if width % num_heads:
            raise ValueError(f"rl2.num_heads: hidden_size {width} is not divisible by num_heads {num_heads}")
        self.out_dim, self.context, self.num_heads = width, context, num_heads
        self.embed = nn.Linear(input_dim, width)
        self.position = nn.Embedding(context, width)
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(width, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)

    def initial_state(self, batch: int) -> State:
        dh = self.out_dim // self.num_heads
        state = {"pos": torch.zeros(batch, dtype=torch.int64)}
        for i in range(len(self.blocks)):
            state[f"k{i}"] = torch.zeros(batch, self.num_heads, self.context, dh)
            state[f"v{i}"] = torch.zeros(batch, self.num_heads, self.context, dh)
        return state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = state["pos"]
        used = _used_context(pos, "transformer", self.context)
        copy = _needs_grad(self, x, state)
        h = self.embed(x) + self.position(pos)
        out = {"pos": pos + 1}
        for i, block in enumerate(self.blocks):
            h, out[f"k{i}"], out[f"v{i}"] = block.step(h, state[f"k{i}"], state[f"v{i}"], pos, used, copy)
        return self.norm(h), out

    def forward(self, x: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        """Whole trials at once; `bptt_len` does not apply (nothing is recurrent)."""
        t = x.shape[1]
        if t > self.context:
            raise _context_error("transformer", t, self.context)
        h = self.embed(x) + self.position.weight[:t]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


class _DenseLayer(nn.Module):
    """SNAIL's dense block: a gated (tanh x sigmoid) causal convolution of kernel 2 and
    dilation d whose `filters` outputs are concatenated to its input."""

    def __init__(self, channels: int, filters: int, dilation: int):
        super().__init__()
        self.dilation, self.filters = dilation, filters
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, channels, T] -> [B, channels + filters, T]."""
        f, g = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)
        return torch.cat([x, torch.tanh(f) * torch.sigmoid(g)], dim=1)

    def step(self, x: torch.Tensor, taps: torch.Tensor, pos: torch.Tensor, copy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, channels] at positions pos. `taps` [B, dilation, 2 filters] is a ring of the
        past tap's products W0 x_s + 0 for the last `dilation` steps s: the one at t - d sits
        at t % d (zero while t < d, exactly the convolution's zero padding)."""
        w = self.conv.weight  # [2 filters, channels, 2]: tap 0 sees t - d, tap 1 sees t
        both = x @ torch.cat([w[:, :, 1], w[:, :, 0]]).T  # [B, 4 filters]
        now, later = both[:, : 2 * self.filters], both[:, 2 * self.filters :]
        rows, slot = torch.arange(x.shape[0], device=x.device), pos % self.dilation
        y = now + taps[rows, slot] + self.conv.bias
        taps = _write(taps, (rows, slot), later, copy)
        f, g = y.chunk(2, dim=1)
        return torch.cat([x, torch.tanh(f) * torch.sigmoid(g)], dim=1), taps


class _AttentionLayer(nn.Module):
    """SNAIL's attention block: single-head causal attention (key size k, value size v) whose
    read is concatenated to its input."""

    def __init__(self, channels: int, key_size: int, value_size: int):
        super().__init__()
        self.key_size, self.value_size = key_size, value_size
        self.qkv = nn.Linear(channels, 2 * key_size + value_size)

    def _split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return y.split([self.key_size, self.key_size, self.value_size], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, channels] -> [B, T, channels + value_size]."""
        q, k, v = self._split(self.qkv(x))
        return torch.cat([x, F.scaled_dot_product_attention(q, k, v, is_causal=True)], dim=-1)

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, used: int,
             copy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, channels] at positions pos; keys/values [B, context, key | value size] cached."""
        q, k, v = self._split(self.qkv(x))
        rows = torch.arange(x.shape[0], device=x.device)
        keys, values = _write(keys, (rows, pos), k, copy), _write(values, (rows, pos), v, copy)
        read = _attend(q[:, None], keys[:, None], values[:, None], pos, used)[:, 0]
        return torch.cat([x, read], dim=-1), keys, values


class SnailMemory(Memory):
    """SNAIL (Mishra et al. 2018): two TC blocks then one causal attention block, each
    concatenating its features to its input (out_dim = input + 2 x layers x filters + 16).

    A TC block stacks dense blocks of dilations 1, 2, 4, ... 2^(n-1), n = ceil(log2 context),
    so its receptive field (2^n steps) covers the context. The attention block has the paper's
    sizes for its RL tasks, key 32 and value 16, fixed (not derived from hidden_size). Output
    layer norm (with `layer_norm`) as on the recurrent memories. The worker's state: per dense
    layer a ring of past convolution taps [B, dilation, 2 filters], the attention's keys and
    values [B, context, 32 | 16], and each slot's position `pos` [B] (int64).
    """

    def __init__(self, input_dim: int, context: int, filters: int = 16, layer_norm: bool = True):
        super().__init__()
        if context < 1:
            raise ValueError(f"rl2.context_length: snail needs a context of at least 1 step, got {context}")
        self.context = context
        depth = max(1, math.ceil(math.log2(context)))
        channels, self.dense = input_dim, nn.ModuleList()
        for _ in range(2):
            for i in range(depth):
                self.dense.append(_DenseLayer(channels, filters, 2**i))
                channels += filters
        self.attention = _AttentionLayer(channels, SNAIL_KEY_SIZE, SNAIL_VALUE_SIZE)
        self.out_dim = channels + SNAIL_VALUE_SIZE
        self.norm = nn.LayerNorm(self.out_dim) if layer_norm else nn.Identity()

    def initial_state(self, batch: int) -> State:
        state = {"pos": torch.zeros(batch, dtype=torch.int64)}
        for i, layer in enumerate(self.dense):
            state[f"taps{i}"] = torch.zeros(batch, layer.dilation, 2 * layer.filters)
        state["keys"] = torch.zeros(batch, self.context, SNAIL_KEY_SIZE)
        state["values"] = torch.zeros(batch, self.context, SNAIL_VALUE_SIZE)
        return state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pos = state["pos"]
        used = _used_context(pos, "snail", self.context)
        copy = _needs_grad(self, x, state)
        out = {"pos": pos + 1}
        for i, layer in enumerate(self.dense):
            x, out[f"taps{i}"] = layer.step(x, state[f"taps{i}"], pos, copy)
        x, out["keys"], out["values"] = self.attention.step(x, state["keys"], state["values"], pos, used, copy)
        return self.norm(x), out

    def forward(self, x: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        """Whole trials at once; `bptt_len` does not apply (nothing is recurrent)."""
        if x.shape[1] > self.context:
            raise _context_error("snail", x.shape[1], self.context)
        h = x.transpose(1, 2)
        for layer in self.dense:
            h = layer(h)
        return self.norm(self.attention(h.transpose(1, 2)))
