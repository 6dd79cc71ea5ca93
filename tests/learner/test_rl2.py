import numpy as np
import pytest
import torch

from metaray.learner import rl2
from metaray.tasks import make_family


def make_sampler(family_name="bandit", kwargs=None, slots=8, seed=0, **cfg):
    config = rl2.RL2Config(**{"hidden_size": 16, "slots_per_worker": slots, **cfg})
    family = make_family(family_name, kwargs or {})
    return rl2.RL2Sampler(family, config, slots, seed), config


def recompute_logp(policy, batch):
    spec = policy.spec
    x = torch.from_numpy(rl2.trial_inputs(spec, batch.obs, batch.actions, batch.rewards, batch.dones))
    with torch.no_grad():
        head, _ = policy(x)
        return policy.log_prob(policy.distribution(head), torch.from_numpy(batch.actions)).numpy()


@pytest.mark.parametrize(("progress_input", "previous_obs"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize(("family", "kwargs", "n"), [("bandit", {"num_arms": 5}, 10), ("tabular-mdp", {}, 3), ("point-nav", {}, 2)])
def test_learner_sees_exactly_what_the_worker_sampled(family, kwargs, n, progress_input, previous_obs):
    """Recomputing log-probs over whole trials reproduces the worker's step-by-step ones.

    This holds only if the hidden state is carried across the episodes of a trial, reset between
    trials, and the learner rebuilds the same (obs, prev action, prev reward, done, progress)
    inputs.
    """
    sampler, _ = make_sampler(family, kwargs, episodes_per_trial=n, progress_input=progress_input,
                              previous_obs_input=previous_obs)
    spec = sampler.spec
    assert spec.input_dim == spec.obs_dim * (1 + previous_obs) + spec.act_dim + 2 + progress_input
    sampler.set_weights(3, rl2.get_weights(sampler.policy))
    batch, info = sampler.sample(min_trials=12)  # more trials than slots: slots start new trials
    assert info.num_trials >= 12 and batch.policy_version == 3
    mask = batch.mask
    np.testing.assert_allclose(recompute_logp(sampler.policy, batch)[mask], batch.logp[mask], atol=1e-5)
    # every trial holds exactly n episodes
    assert (batch.dones.sum(1) == n).all()
    if family == "bandit":
        assert batch.mask.all() and batch.obs.shape[1] == n
    if progress_input:  # the last input column counts finished episodes: 0, 1/n, ... within a trial
        x = rl2.trial_inputs(sampler.spec, batch.obs, batch.actions, batch.rewards, batch.dones)
        first = x[:, 0, -1]
        last = x[mask.sum(1) > 0, mask.sum(1) - 1, -1]
        assert (first == 0).all() and np.allclose(last, (n - 1) / n)
        assert (np.diff(x[..., -1], axis=1)[mask[:, 1:]] >= 0).all()
    if previous_obs:  # the last obs_dim columns: zeros at a trial's start, then the step before's
        x = rl2.trial_inputs(spec, batch.obs, batch.actions, batch.rewards, batch.dones)
        prev = x[..., -spec.obs_dim:]
        assert (prev[:, 0] == 0).all()
        np.testing.assert_array_equal(prev[:, 1:][mask[:, 1:]], batch.obs[:, :-1][mask[:, 1:]])


def test_gae_over_a_trial_matches_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])  # 3-step trial, padded to 4
    g, lam = 0.9, 0.5
    d2 = 2.0 - 1.0
    d1 = 0.0 + g * 1.0 - 0.2
    d0 = 1.0 + g * 0.2 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    adv = rl2.trial_gae(rewards, values, mask, g, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))


def test_truncated_bptt_keeps_forward_values_and_cuts_gradients():
    torch.manual_seed(0)
    spec = rl2.SpaceSpec(obs_dim=1, discrete=True, act_dim=3)
    policy = rl2.RL2Policy(spec, rl2.RL2Config(hidden_size=8))
    x = torch.randn(2, 6, spec.input_dim, requires_grad=True)
    full_head, full_v = policy(x)
    cut_head, cut_v = policy(x, bptt_len=2)
    torch.testing.assert_close(full_head, cut_head)
    cut_v[:, 5].sum().backward()
    assert x.grad[:, :4].abs().sum() == 0 and x.grad[:, 4:].abs().sum() > 0


def test_update_changes_weights_and_reports_finite_stats():
    sampler, config = make_sampler(slots=16, trials_per_update=16, minibatches=2, epochs=2)
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    sampler.set_weights(0, rl2.get_weights(learner.policy))
    before = rl2.get_weights(learner.policy)
    batches = [sampler.sample(8)[0], sampler.sample(8)[0]]
    stats = learner.update(batches)
    assert all(np.isfinite(v) for v in stats.values())
    assert stats["num_trials"] == sum(len(b.task_ids) for b in batches) == 32
    after = rl2.get_weights(learner.policy)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("memory", ["gru", "lstm", "transformer"])
def test_bf16_learner_runs_the_bodies_in_bf16_and_keeps_log_probs_close(memory):
    """precision: bf16 autocasts the encoder and memory; heads, weights and losses stay float32,
    so the learner's log-probs stay within bf16's resolution of the worker's float32 ones."""
    sampler, config = make_sampler("tabular-mdp", {}, slots=16, episodes_per_trial=2, memory=memory,
                                   context_length=20, trials_per_update=16, minibatches=2, precision="bf16")
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    sampler.set_weights(0, rl2.get_weights(learner.policy))
    batch = sampler.sample(16)[0]
    x = torch.from_numpy(rl2.trial_inputs(sampler.spec, batch.obs, batch.actions, batch.rewards, batch.dones))
    net = learner.policy.policy_net
    body = [net.encoder[0], net.memory.rnn if memory != "transformer" else
            next(m for m in net.memory.modules() if isinstance(m, torch.nn.Linear))]
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append((o[0] if isinstance(o, tuple) else o).dtype))
             for m in body]
    with torch.no_grad(), learner.autocast():
        head, values = learner.policy(x)
    for hook in hooks:
        hook.remove()
    assert dtypes == [torch.bfloat16, torch.bfloat16] and head.dtype == values.dtype == torch.float32
    logp = learner.policy.log_prob(learner.policy.distribution(head), torch.from_numpy(batch.actions)).numpy()
    gap = np.abs(logp - batch.logp)[batch.mask]
    assert 0 < gap.max() < 0.05  # not float32-exact (bf16 ran), but close
    before = rl2.get_weights(learner.policy)
    stats = learner.update([batch])
    assert all(np.isfinite(v) for v in stats.values()) and stats["clip_frac"] < 0.5
    after = rl2.get_weights(learner.policy)
    assert all(v.dtype == np.float32 for v in after.values() if np.issubdtype(v.dtype, np.floating))
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_optimizer_state_round_trip():
    sampler, config = make_sampler(slots=8)
    policy = rl2.RL2Policy(sampler.spec, config)
    learner = rl2.RL2Learner(policy, config, torch.device("cpu"), 0)
    sampler.set_weights(0, rl2.get_weights(policy))
    learner.update([sampler.sample(8)[0]])
    tensors, meta = learner.optimizer_state()
    other = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    other.load_optimizer_state(tensors, meta)
    for a, b in zip(learner.optimizer.state.values(), other.optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])


def test_the_learning_rate_anneals_linearly_and_resumes_where_it_was():
    sampler, config = make_sampler(slots=8, lr=0.01, lr_anneal_updates=4, epochs=1, minibatches=1)
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    sampler.set_weights(0, rl2.get_weights(learner.policy))
    batch = sampler.sample(8)[0]
    assert [learner.update([batch])["lr"] for _ in range(2)] == pytest.approx([0.01, 0.0075])
    tensors, meta = learner.optimizer_state()
    resumed = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    resumed.load_optimizer_state(tensors, meta)
    lrs = [resumed.update([batch])["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.005, 0.0025, 0.0025])  # then it stays at lr / lr_anneal_updates
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    constant = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config.model_copy(update={"lr_anneal_updates": 0}),
                              torch.device("cpu"), 0)
    assert [constant.update([batch])["lr"] for _ in range(5)] == [0.01] * 5


def test_evaluate_runs_one_trial_per_task():
    family = make_family("bandit", {"num_arms": 3})
    config = rl2.RL2Config(hidden_size=8, episodes_per_trial=4)
    tasks = family.sample(5, np.random.default_rng(1), "test")
    policy = rl2.RL2Policy(rl2.SpaceSpec(1, True, 3), rl2.RL2Config(hidden_size=8))
    results = rl2.evaluate(policy, family, tasks, config, seed=0)
    assert [r["task_id"] for r in results] == [t.task_id for t in tasks]
    assert all(0 <= r["trial_return"] <= 4 for r in results)
    # the trial's return split by episode: n entries (here one pull each) that add up to it
    assert all(len(r["episode_returns"]) == 4 and set(r["episode_returns"]) <= {0.0, 1.0} for r in results)
    assert all(sum(r["episode_returns"]) == pytest.approx(r["trial_return"]) for r in results)


def _sharpened(sampler: rl2.RL2Sampler, scale: float = 20.0) -> None:
    """Scale the head so the untrained policy prefers some actions clearly."""
    with torch.no_grad():
        for name, p in sampler.policy.named_parameters():
            if "head" in name:
                p.mul_(scale)


def _logits_and_mean(policy, batch):
    spec = policy.spec
    x = torch.from_numpy(rl2.trial_inputs(spec, batch.obs, batch.actions, batch.rewards, batch.dones))
    with torch.no_grad():
        head, _ = policy(x)
    return head.numpy()


@pytest.mark.parametrize(("family", "kwargs"), [("tabular-mdp", {}), ("point-nav", {})])
def test_temperature_zero_takes_the_most_likely_action_and_one_is_training_sampling(family, kwargs):
    """At temperature 0 every action is the policy's argmax (or mean) given the trial so far;
    at 1 the sampler draws exactly what a sampler without the setting draws."""
    default, config = make_sampler(family, kwargs, slots=6, seed=3, episodes_per_trial=2)
    weights = rl2.get_weights(default.policy)
    tasks = default.family.sample(6, np.random.default_rng(0), "test")
    runs = {}
    for temperature in (None, 1.0, 0.0):
        extra = {} if temperature is None else {"temperature": temperature}
        sampler = rl2.RL2Sampler(default.family, config, 6, 3, split="test", tasks=tasks, **extra)
        sampler.set_weights(0, weights)
        _sharpened(sampler)
        runs[temperature] = (sampler, sampler.sample(min_trials=6)[0])
    np.testing.assert_array_equal(runs[None][1].actions, runs[1.0][1].actions)
    sampler, batch = runs[0.0]
    head, mask = _logits_and_mean(sampler.policy, batch), batch.mask.astype(bool)
    if sampler.spec.discrete:
        np.testing.assert_array_equal(batch.actions[mask], head.argmax(-1)[mask])
        assert not np.array_equal(runs[1.0][1].actions[mask], head.argmax(-1)[mask])  # 1 does sample
    else:
        np.testing.assert_allclose(batch.actions[mask], head[mask], atol=1e-5)


def test_a_lower_temperature_takes_the_likely_action_more_often():
    """Tempered sampling sits between argmax and the policy's own distribution."""
    share = {}
    for temperature in (1.0, 0.3):
        family = make_family("tabular-mdp", {})
        config = rl2.RL2Config(hidden_size=16, episodes_per_trial=2)
        tasks = family.sample(64, np.random.default_rng(0), "test")
        sampler = rl2.RL2Sampler(family, config, 64, 5, split="test", tasks=tasks, temperature=temperature)
        torch.manual_seed(0)
        sampler.set_weights(0, rl2.get_weights(rl2.RL2Policy(sampler.spec, config)))
        _sharpened(sampler, 100.0)
        batch = sampler.sample(min_trials=64)[0]
        head, mask = _logits_and_mean(sampler.policy, batch), batch.mask.astype(bool)
        share[temperature] = float((batch.actions[mask] == head.argmax(-1)[mask]).mean())
    assert share[0.3] > share[1.0] + 0.1, share


def test_evaluate_acts_at_the_configured_temperature():
    """`rl2.evaluate` uses `eval_temperature`: at 0 it scores what an argmax sampler collects."""
    family = make_family("tabular-mdp", {})
    tasks = family.sample(8, np.random.default_rng(2), "test")
    config = rl2.RL2Config(hidden_size=8, episodes_per_trial=2)
    greedy = config.model_copy(update={"eval_temperature": 0.0})
    direct = rl2.RL2Sampler(family, greedy, 8, 0, split="test", tasks=tasks, temperature=0.0)
    _sharpened(direct)
    weights = rl2.get_weights(direct.policy)
    batch = direct.sample(min_trials=8)[0]
    expected = dict(zip(batch.task_ids.tolist(), batch.rewards.sum(1).tolist(), strict=True))
    policy = rl2.RL2Policy(direct.spec, config)
    policy.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    scored = {r["task_id"]: r["trial_return"] for r in rl2.evaluate(policy, family, tasks, greedy, seed=0)}
    assert scored == pytest.approx(expected, abs=1e-4)
    sampled = {r["task_id"]: r["trial_return"] for r in rl2.evaluate(policy, family, tasks, config, seed=0)}
    assert sampled != pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="eval_temperature"):
        rl2.RL2Config(eval_temperature=-0.1)


def test_episode_returns_split_a_trial_at_its_episode_ends():
    sampler, config = make_sampler("tabular-mdp", {"episode_length": 4}, slots=4, episodes_per_trial=3)
    batch = sampler.sample(4)[0]
    split = np.array(rl2.episode_returns(batch, 3))
    np.testing.assert_allclose(split, batch.rewards.reshape(len(split), 3, 4).sum(2), atol=1e-4)


def test_target_kl_stops_the_epochs_early():
    sampler, config = make_sampler(slots=16, epochs=8, minibatches=2, lr=0.05, target_kl=1e-6)
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), 0)
    sampler.set_weights(0, rl2.get_weights(learner.policy))
    batch = sampler.sample(16)[0]
    assert learner.update([batch])["ppo_minibatch_steps"] < 16
    free = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config.model_copy(update={"target_kl": 0.0}),
                          torch.device("cpu"), 0)
    assert free.update([batch])["ppo_minibatch_steps"] == 16


NEAR_GOALS = {"horizon": 10, "goal_low": 0.09, "goal_high": 0.1}  # many episodes end early: slots drift apart


def fail_on_third_step(sampler, slots):
    """The sampler's env reports a failure of `slots` on its third step (the slot envs are fine:
    the sampler drops those trials and starts new ones)."""
    real, calls = sampler.env.step, []

    def step(actions):
        obs, reward, terminated, truncated, info = real(actions)
        calls.append(1)
        if len(calls) == 3:
            info = {**info, "env_failure": np.isin(np.arange(sampler.slots), slots)}
        return obs, reward, terminated, truncated, info

    sampler.env.step = step


@pytest.mark.parametrize(("family", "kwargs"), [("point-nav", NEAR_GOALS), ("tabular-mdp", {}),
                                                ("halfcheetah-dir", {"horizon": 5})])
def test_sampler_state_carries_the_trials_in_flight(family, kwargs):
    """A sampler restored from `get_state` (weights set separately) returns the same trials as
    the one the state was taken from, although its trials were mid-way."""
    sampler, _ = make_sampler(family, kwargs, slots=6, seed=1, episodes_per_trial=2)
    weights = rl2.get_weights(sampler.policy)
    sampler.set_weights(0, weights)
    fail_on_third_step(sampler, [0, 1])  # their trials restart: they lag the other slots
    sampler.sample(min_trials=4)
    meta, arrays = sampler.get_state()
    assert meta["in_flight"] and (sampler.t > 0).any() and (sampler.t != sampler.t[0]).any()
    expected = [sampler.sample(min_trials=4)[0] for _ in range(2)]

    other, _ = make_sampler(family, kwargs, slots=6, seed=2, episodes_per_trial=2)
    other.set_weights(0, weights)
    other.set_state(meta, arrays)
    got = [other.sample(min_trials=4)[0] for _ in range(2)]
    for e, g in zip(expected, got, strict=True):
        for name in rl2.Trials._fields:
            np.testing.assert_array_equal(getattr(e, name), getattr(g, name), err_msg=name)


def test_sampler_state_without_env_state_restarts_trials():
    """An env that cannot save its state (a make_env family without get_env_state): the sampler
    keeps the random state only and says so; its trials restart."""
    sampler, _ = make_sampler("faulty", {}, slots=4, episodes_per_trial=2)
    sampler.set_weights(0, rl2.get_weights(sampler.policy))
    sampler.sample(min_trials=2)
    meta, arrays = sampler.get_state()
    assert not meta["in_flight"] and set(arrays) == {"torch_gen"}
    other, _ = make_sampler("faulty", {}, slots=4, seed=5, episodes_per_trial=2)
    other.set_state(meta, arrays)
    assert other.rng.bit_generator.state == sampler.rng.bit_generator.state


def memory_grad_norms(policy, loss) -> tuple[float, float]:
    """Gradient norms that `loss` puts on the policy's memory and on the value function's."""
    policy.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)

    def norm(module) -> float:
        grads = [p.grad.norm() ** 2 for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).sum().sqrt()) if grads else 0.0

    value = 0.0 if policy.value_net is None else norm(policy.value_net.memory)
    return norm(policy.policy_net.memory), value


@pytest.mark.parametrize("shared", [False, True])
def test_the_policy_gradient_reaches_the_memory_the_policy_reads(shared):
    """With its own memory the policy's gradient is all the policy memory gets (the value loss
    trains the value memory); with one shared memory the value loss's gradient swamps it."""
    sampler, config = make_sampler("tabular-mdp", slots=16, hidden_size=32, shared_memory=shared,
                                   episodes_per_trial=10)
    batch, _ = sampler.sample(min_trials=16)
    policy = rl2.RL2Policy(sampler.spec, config)
    x = torch.from_numpy(rl2.trial_inputs(sampler.spec, batch.obs, batch.actions, batch.rewards, batch.dones))
    head, values = policy(x)
    logp = policy.log_prob(policy.distribution(head), torch.from_numpy(batch.actions))
    returns = torch.from_numpy(batch.rewards).flip(1).cumsum(1).flip(1)  # reward-to-go, unnormalised
    policy_loss = -(logp * (returns - returns.mean())).mean()
    value_loss = config.value_coef * torch.nn.functional.huber_loss(values, returns)
    from_policy, _ = memory_grad_norms(policy, policy_loss)
    from_value, value_memory = memory_grad_norms(policy, value_loss)
    assert from_policy > 0
    share = from_policy / (from_policy + from_value)
    if shared:
        assert share < 0.5  # the value loss dominates what the shared memory learns
    else:
        assert share == 1.0 and value_memory > 0  # the value loss trains its own memory only


def test_popart_moves_the_return_statistics_without_changing_the_values():
    sampler, config = make_sampler(slots=8, hidden_size=16)
    policy = rl2.RL2Policy(sampler.spec, config)
    learner = rl2.RL2Learner(policy, config, torch.device("cpu"), 0)
    x = torch.randn(4, 6, sampler.spec.input_dim)
    with torch.no_grad():
        for returns in (torch.full((50,), 60.0) + torch.randn(50) * 10, torch.full((50,), 80.0) + torch.randn(50)):
            before = policy.denormalize(policy(x)[1])
            learner._update_value_stats(returns)
            torch.testing.assert_close(policy.denormalize(policy(x)[1]), before, rtol=1e-4, atol=1e-3)
    assert 60.0 < float(policy.value_mean) < 80.0 and int(policy.value_updates) == 2  # first batch taken as is, then EMA
