"""The RL² memories (gru, lstm, transformer, snail, mann) keep the `Memory` contract: the
worker's step-by-step outputs are the learner's whole-trial ones, `reset` starts a trial in
the given slots only, and information (and gradient) crosses steps."""

import contextlib

import numpy as np
import pydantic
import pytest
import torch

from metaray.learner import rl2
from metaray.learner.rl2.attention import check_context
from metaray.learner.rl2.memory import Memory, make_memory
from metaray.tasks import make_family

MEMORIES = ["gru", "lstm", "transformer", "snail", "mann"]
DIM, CONTEXT = 5, 12


def memory(kind: str, **cfg) -> Memory:
    torch.manual_seed(0)
    return make_memory(rl2.RL2Config(memory=kind, hidden_size=16, context_length=CONTEXT, **cfg), DIM)


@pytest.mark.parametrize("grad", [False, True], ids=["worker", "autograd"])
@pytest.mark.parametrize("kind", MEMORIES)
def test_steps_equal_forward_across_resets(kind, grad):
    """Slots 1 and 3 start a new trial at step 6: until then every slot follows forward over
    its first inputs; after it, slots 1 and 3 follow a fresh forward over their new inputs.
    Both ways of writing caches (in place for the worker, copies under autograd) are covered."""
    mem = memory(kind)
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randn(4, 10, DIM, generator=gen), torch.randn(4, 4, DIM, generator=gen)
    with torch.no_grad():
        want_first, want_second = mem(first), mem(second)
    state, got = mem.initial_state(4), []
    with contextlib.nullcontext() if grad else torch.no_grad():
        for t in range(10):
            if t == 6:
                Memory.reset(state, torch.tensor([1, 3]))
            x = first[:, t].clone()
            if t >= 6:
                x[[1, 3]] = second[[1, 3], t - 6]
            y, state = mem.step(x, state)
            got.append(y.detach())
    got = torch.stack(got, dim=1)
    torch.testing.assert_close(got[[0, 2]], want_first[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[[1, 3], :6], want_first[[1, 3], :6], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[[1, 3], 6:], want_second[[1, 3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", MEMORIES)
def test_reset_zeroes_only_the_given_slots(kind):
    mem = memory(kind)
    state = mem.initial_state(5)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 5 and not v.any() for v in state.values())
    with torch.no_grad():
        for x in torch.randn(3, 5, DIM):
            _, state = mem.step(x, state)
    before = {k: v.clone() for k, v in state.items()}
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 5 for v in state.values())
    Memory.reset(state, torch.tensor([True, False, False, True, False]))
    for name, value in state.items():
        assert not value[[0, 3]].any(), name
        torch.testing.assert_close(value[[1, 2, 4]], before[name][[1, 2, 4]], msg=name)
        assert before[name][[1, 2, 4]].any(), f"{name} carries nothing"


@pytest.mark.parametrize("kind", MEMORIES)
def test_gradient_of_the_last_step_reaches_parameters_and_earlier_inputs(kind):
    mem = memory(kind)
    x = torch.randn(2, 6, DIM, requires_grad=True)
    y = mem(x)
    (y[:, -1] * torch.randn_like(y[:, -1])).sum().backward()  # a plain sum is flat through layer norm
    assert (x.grad[:, :-1].abs().sum(-1) > 0).all()  # every earlier step of every trial
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def recompute_logp(policy, batch):
    x = torch.from_numpy(rl2.trial_inputs(policy.spec, batch.obs, batch.actions, batch.rewards, batch.dones))
    with torch.no_grad():
        head, values = policy(x)
    assert torch.isfinite(values).all()
    return policy.log_prob(policy.distribution(head), torch.from_numpy(batch.actions)).numpy()


@pytest.mark.parametrize(("family", "kwargs", "n"), [("bandit", {"num_arms": 3}, 6),
                                                    ("point-nav", {"horizon": 5, "goal_low": 0.09, "goal_high": 0.1}, 2)])
@pytest.mark.parametrize("kind", MEMORIES)
def test_learner_log_probs_equal_the_workers(kind, family, kwargs, n):
    """The sampler steps the memory for 8 slots (on point-nav near goals, episodes end early and
    the slots start new trials at different times); the learner's forward over the whole (12+)
    trials gives the same log-probs."""
    family = make_family(family, kwargs)
    config = rl2.RL2Config(memory=kind, hidden_size=16, context_length=n * family.max_episode_steps,
                           episodes_per_trial=n, slots_per_worker=8)
    check_context(config, family.max_episode_steps)
    sampler = rl2.RL2Sampler(family, config, 8, seed=0)
    sampler.set_weights(1, rl2.get_weights(sampler.policy))
    batch, info = sampler.sample(min_trials=12)
    assert info.num_trials >= 12
    np.testing.assert_allclose(recompute_logp(sampler.policy, batch)[batch.mask], batch.logp[batch.mask], atol=1e-5)


def one_line(err: pytest.ExceptionInfo) -> str:
    """The message a user sees: the exception's own, or pydantic's for the failing rule."""
    msg = err.value.errors()[0]["msg"] if isinstance(err.value, pydantic.ValidationError) else str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_settings_give_one_line_naming_the_key():
    with pytest.raises(pydantic.ValidationError) as err:
        rl2.RL2Config(memory="lstmm")
    assert err.value.errors()[0]["loc"] == ("memory",) and "transformer" in one_line(err)
    with pytest.raises(ValueError, match=r"^rl2\.memory: unknown memory 'lstmm'$") as err:
        make_memory(rl2.RL2Config.model_construct(memory="lstmm", hidden_size=8), DIM)
    for kind in ("transformer", "snail"):
        with pytest.raises(pydantic.ValidationError) as err:
            rl2.RL2Config(memory=kind)
        assert one_line(err).startswith("Value error, rl2.context_length: memory " + kind)
    with pytest.raises(pydantic.ValidationError) as err:
        rl2.RL2Config(memory="transformer", context_length=4, hidden_size=16, num_heads=3)
    assert "rl2.num_heads" in one_line(err)


@pytest.mark.parametrize("kind", ["transformer", "snail"])
def test_a_trial_longer_than_the_context_is_refused(kind):
    config = rl2.RL2Config(memory=kind, context_length=20, episodes_per_trial=3)
    with pytest.raises(ValueError) as err:
        check_context(config, 10)
    assert one_line(err) == (f"rl2.context_length: a trial is episodes_per_trial x max_episode_steps = 3 x 10 = 30 steps "
                             f"but the {kind}'s context holds 20; set rl2.context_length: 30")
    check_context(config.model_copy(update={"context_length": 30}), 10)
    check_context(rl2.RL2Config(episodes_per_trial=3), 10)  # recurrent memories have no context
    mem = memory(kind)  # context 12: never wraps around, neither stepping nor whole trials
    state = mem.initial_state(2)
    with torch.no_grad():
        for x in torch.randn(CONTEXT, 2, DIM):
            _, state = mem.step(x, state)
        with pytest.raises(ValueError, match="rl2.context_length: step 13 of a trial is past") as err:
            mem.step(torch.randn(2, DIM), state)
        one_line(err)
        with pytest.raises(ValueError, match="rl2.context_length: step 13 of a trial is past"):
            mem(torch.randn(2, CONTEXT + 1, DIM))


def test_the_gru_update_gate_bias_makes_the_memory_keep_its_state():
    """With z's bias at 4 (z ≈ 0.98) a GRU fed zeros keeps nearly all of a state it was given;
    with torch's initialisation (z ≈ 0.5) the state fades within a few steps."""
    kept, plain = memory("gru", gru_update_bias=4.0), memory("gru")  # same seed: same weights
    assert torch.equal(kept.rnn.weight_hh_l0, plain.rnn.weight_hh_l0)  # only the gate biases differ
    h = kept.rnn.bias_hh_l0.detach()
    hidden = h.shape[0] // 3
    assert torch.all(kept.rnn.bias_ih_l0[hidden:2 * hidden] + h[hidden:2 * hidden] == 4.0)
    start = torch.full((1, hidden), 0.5)
    fraction = {}
    with torch.no_grad():
        for name, net in (("kept", kept), ("plain", plain)):
            state = {"h": start.clone()}
            for _ in range(10):
                _, state = net.step(torch.zeros(1, DIM), state)
            fraction[name] = float((state["h"] * start).sum() / (start**2).sum())
    assert fraction["kept"] > 0.7 and fraction["plain"] < 0.3, fraction
