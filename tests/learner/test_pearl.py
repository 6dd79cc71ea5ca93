"""PEARL's parts against closed forms and independent computations, its sampler's rounds, and
its learner's replay."""

import numpy as np
import pytest
import torch
from torch.distributions import (
    Normal,
    TanhTransform,
    TransformedDistribution,
    kl_divergence,
)

from metaray.learner import pearl
from metaray.learner.pearl.buffer import Ring, TaskReplay, check_buffer_fits, transition_bytes
from metaray.learner.pearl.networks import TanhGaussianActor
from metaray.tasks import make_family


def small_config(**overrides):
    base = {"num_train_tasks": 6, "meta_batch": 4, "batch_size": 16, "context_batch": 8, "hidden_size": 16,
            "encoder_hidden_size": 16, "latent_size": 3, "prior_episodes": 1, "posterior_episodes": 0,
            "extra_posterior_episodes": 2, "slots_per_worker": 3, "rounds_per_update": 3, "warmup_steps": 0,
            "buffer_size_per_task": 1000}
    return pearl.PEARLConfig(**{**base, **overrides})


def point_nav(horizon=10):
    return make_family("point-nav", {"horizon": horizon})


# ---------------------------------------------------------------- the encoder's posterior and KL


def test_product_of_gaussians_matches_the_normalised_product_of_densities():
    """1-D factors multiplied on a fine grid and normalised: the product's mean and variance."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(6, 1))
    var = rng.uniform(0.3, 2.0, size=(6, 1))
    grid = np.linspace(-8, 8, 200_001)
    log_density = (-0.5 * (grid[None, :] - mu) ** 2 / var).sum(0)
    density = np.exp(log_density - log_density.max())
    density /= density.sum()
    grid_mean = (grid * density).sum()
    grid_var = ((grid - grid_mean) ** 2 * density).sum()
    mean, post_var = pearl.product_of_gaussians(torch.from_numpy(mu), torch.from_numpy(var))
    assert float(mean[0]) == pytest.approx(grid_mean, abs=1e-6)
    assert float(post_var[0]) == pytest.approx(grid_var, rel=1e-5)


def test_the_posterior_is_permutation_invariant_and_tightens_with_more_context():
    torch.manual_seed(0)
    encoder = pearl.PEARLAgent(pearl.pearl_spec(*spaces(point_nav()), small_config()), small_config()).encoder
    context = torch.randn(2, 20, encoder.net[0].in_features)
    mean, var = encoder.posterior(context)
    perm = torch.randperm(20)
    mean_p, var_p = encoder.posterior(context[:, perm])
    torch.testing.assert_close(mean, mean_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_p, rtol=1e-5, atol=1e-6)
    _, var_half = encoder.posterior(context[:, :10])
    assert (var < var_half).all()  # precisions add: more transitions, a narrower posterior


def test_kl_to_the_unit_prior_equals_torch_distributions():
    mean = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]])
    var = torch.tensor([[0.5, 1.5, 0.1], [1.0, 1.0, 1.0]])
    expected = kl_divergence(Normal(mean, var.sqrt()), Normal(torch.zeros(3), torch.ones(3))).sum(-1)
    torch.testing.assert_close(pearl.kl_to_unit_gaussian(mean, var), expected)
    assert float(pearl.kl_to_unit_gaussian(mean, var)[1]) == 0.0  # the prior itself


# ---------------------------------------------------------------- SAC


def test_the_actor_log_prob_equals_torch_s_squashed_gaussian():
    spec = pearl.pearl_spec(*spaces(point_nav()), small_config())  # actions in [-0.1, 0.1]^2
    torch.manual_seed(1)
    actor = TanhGaussianActor(spec, 16)
    obs, z = torch.randn(64, spec.obs_dim), torch.randn(64, spec.latent_size)
    u, logp, mean, log_std = actor(obs, z)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    torch.testing.assert_close(logp, dist.log_prob(u).sum(-1), rtol=1e-4, atol=1e-4)
    assert (u.abs() <= 1).all()
    env_action = actor.to_env(u)  # the env's box, and back
    assert (env_action.abs() <= 0.1 + 1e-7).all()
    torch.testing.assert_close(actor.from_env(env_action), u, rtol=1e-5, atol=1e-6)


def test_the_critic_target_by_hand():
    rewards = torch.tensor([1.0, -2.0])
    terminals = torch.tensor([False, True])
    next_q = torch.tensor([[3.0, 2.5], [10.0, 11.0]])
    next_logp = torch.tensor([-1.0, 4.0])
    target = pearl.critic_target(rewards, terminals, next_q, next_logp, alpha=0.2, gamma=0.9, reward_scale=5.0)
    # 5*1 + 0.9*(min(3, 2.5) - 0.2*(-1)) = 5 + 0.9*2.7; terminal: no bootstrap
    torch.testing.assert_close(target, torch.tensor([5.0 + 0.9 * 2.7, -10.0]))


# ---------------------------------------------------------------- replay


def test_the_ring_wraps_around_keeping_the_newest():
    ring = Ring(5, obs_dim=1, act_dim=1)

    def add(values):
        v = np.asarray(values, np.float32)
        ring.add(v[:, None], v[:, None], v, v[:, None], np.zeros(len(v), bool))

    add([1, 2, 3])
    add([4, 5, 6, 7])
    assert ring.size == 5 and ring.ordered()["rewards"].tolist() == [3, 4, 5, 6, 7]
    add(list(range(10, 22)))  # more than the capacity at once: the newest 5
    assert ring.ordered()["rewards"].tolist() == [17, 18, 19, 20, 21]
    assert ring.ordered()["obs"][:, 0].tolist() == [17, 18, 19, 20, 21]
    idx = ring.sample(np.random.default_rng(0), 1000)
    assert idx.min() >= 0 and idx.max() < 5


def test_a_round_replaces_its_task_s_context_and_adds_to_its_rl_buffer():
    replay = TaskReplay(capacity=100, obs_dim=1, act_dim=1)

    def round_fields(start, n):
        v = np.arange(start, start + n, dtype=np.float32)
        return {"obs": v[:, None], "actions": v[:, None], "rewards": v, "next_obs": v[:, None], "terminals": np.zeros(n, bool)}

    replay.add_round(7, round_fields(0, 6), np.array([1, 1, 1, 0, 0, 0], bool))
    replay.add_round(7, round_fields(100, 6), np.array([1, 1, 0, 0, 0, 0], bool))
    assert replay.rl[7].size == 12
    assert replay.context[7].ordered()["rewards"].tolist() == [100, 101]  # only the newest round's
    assert replay.tasks() == [7]
    batch = replay.gather(replay.context, [7, 7, 7], 4, np.random.default_rng(0))
    assert batch["obs"].shape == (3, 4, 1) and set(batch["rewards"].ravel().tolist()) <= {100.0, 101.0}


def test_a_replay_that_cannot_fit_is_refused_with_the_estimate():
    assert transition_bytes(17, 6) == 4 * (17 + 17 + 6 + 1) + 1
    with pytest.raises(ValueError, match=r"pearl.buffer_size_per_task: 100 tasks x 10000000 transitions x 165 B = 153.7 GiB"):
        check_buffer_fits(100, 10_000_000, 17, 6, memory_bytes=24 * 2**30)
    assert check_buffer_fits(100, 100_000, 17, 6, memory_bytes=24 * 2**30) == 100 * 100_000 * 165


# ---------------------------------------------------------------- the sampler's rounds


def spaces(family):
    env = family.make_env(family.sample(1, np.random.default_rng(0))[0])
    return env.observation_space, env.action_space


def episode_index(terminals, horizon):
    """Each step's episode within a round: an episode ends at a terminal or after `horizon` steps."""
    out, episode, k = [], 0, 0
    for term in terminals:
        out.append(episode)
        k += 1
        if term or k == horizon:
            episode, k = episode + 1, 0
    return np.array(out)


def test_rounds_follow_the_paper_s_schedule():
    family, config = point_nav(horizon=10), small_config(prior_episodes=2, posterior_episodes=1, extra_posterior_episodes=2)
    sampler = pearl.PEARLSampler(family, config, slots=3, seed=0)
    sampler.set_weights(4, pearl.get_weights(sampler.agent))
    batch, info = sampler.sample(min_trials=5)
    assert info.num_trials == len(batch.task_ids) >= 5
    assert set(batch.round_versions.tolist()) == {4}
    train_ids = {t.task_id for t in pearl.train_task_set(family, config)}
    assert set(batch.task_ids.tolist()) <= train_ids  # only the fixed train set
    for r in range(len(batch.task_ids)):
        rows = batch.round_index == r
        episode = episode_index(batch.terminals[rows], 10)
        assert episode[-1] == 4  # 2 prior + 1 posterior + 2 extra episodes
        np.testing.assert_array_equal(batch.to_context[rows], episode < 3)  # prior and posterior ones
        returns = np.bincount(episode, batch.rewards[rows], minlength=5)
        np.testing.assert_allclose(batch.episode_returns[r], returns, rtol=1e-5, atol=1e-5)
    # s' of a step is the next step's s within an episode (rounds are contiguous in the batch)
    episode = np.concatenate([episode_index(batch.terminals[batch.round_index == r], 10) for r in range(len(batch.task_ids))])
    steps = np.flatnonzero((batch.round_index[1:] == batch.round_index[:-1]) & (episode[1:] == episode[:-1]))
    assert steps.size > 100
    np.testing.assert_array_equal(batch.next_obs[steps], batch.obs[steps + 1])


def test_prior_episodes_act_with_z_from_the_prior_and_later_ones_from_the_context():
    family, config = point_nav(horizon=5), small_config()  # 1 prior episode, then 2 with the posterior
    sampler = pearl.PEARLSampler(family, config, slots=64, seed=1)
    assert abs(sampler.z.mean()) < 0.2 and sampler.z.var() == pytest.approx(1.0, rel=0.25)  # N(0, I)
    with torch.no_grad():  # an encoder that is certain: every factor N((0.7, -0.3, 0.2), ~0)
        sampler.agent.encoder.net[-1].weight.zero_()
        sampler.agent.encoder.net[-1].bias.copy_(torch.tensor([0.7, -0.3, 0.2, -30.0, -30.0, -30.0]))
    prior_z = sampler.z.copy()
    for _ in range(4):
        sampler.step()
    np.testing.assert_array_equal(sampler.z, prior_z)  # one z per episode
    sampler.step()  # every slot's prior episode ends (horizon 5; none reaches its goal so soon)
    assert (sampler.episode == 1).all()
    np.testing.assert_allclose(sampler.z, np.broadcast_to([0.7, -0.3, 0.2], sampler.z.shape), atol=1e-3)


def test_evaluation_reports_every_episode_of_the_protocol():
    family, config = point_nav(horizon=10), small_config(eval_adaptation_episodes=2, eval_episodes=2)
    agent = pearl.PEARLAgent(pearl.pearl_spec(*spaces(family), config), config)
    tasks = family.sample(7, np.random.default_rng(3), "test")
    rows = pearl.evaluate(agent, family, tasks, config, seed=0)
    assert [r["task_id"] for r in rows] == [t.task_id for t in tasks]
    for r in rows:
        assert len(r["episode_returns"]) == 4
        assert r["return_pre"] == pytest.approx(r["episode_returns"][0], abs=1e-4)
        assert r["return_post"] == pytest.approx(np.mean(r["episode_returns"][2:]), abs=1e-4)
    again = pearl.evaluate(agent, family, tasks, config, seed=0)
    assert again == rows  # seeded


def test_discrete_actions_are_refused_with_one_line():
    family = make_family("bandit", {"num_arms": 3})
    with pytest.raises(ValueError, match="algo pearl needs a continuous") as info:
        pearl.PEARL().check_family(family, small_config())
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the learner


def make_learner(config, family, seed=0):
    agent = pearl.PEARLAgent(pearl.pearl_spec(*spaces(family), config), config)
    return pearl.PEARLLearner(agent, config, torch.device("cpu"), seed)


def test_the_replay_ratio_is_kept_across_updates():
    family, config = point_nav(horizon=10), small_config(updates_per_step=0.25, warmup_steps=60)
    learner = make_learner(config, family)
    sampler = pearl.PEARLSampler(family, config, slots=3, seed=0)
    sampler.set_weights(0, pearl.get_weights(learner.agent))
    held, owed, taken = 0, 0.0, 0
    for _ in range(4):
        batch, _ = sampler.sample(min_trials=3)
        stats = learner.update([batch])
        held += len(batch.rewards)
        assert stats["replay_transitions"] == held
        if held >= 60:  # no step before the warmup; then a quarter step per env step, fractions carried
            owed += 0.25 * len(batch.rewards)
        assert stats["grad_steps"] == int(owed) - taken
        taken = int(owed)
    assert learner.grad_steps == taken > 0


def test_the_encoder_learns_from_the_critic_and_the_kl_never_from_the_actor():
    family, config = point_nav(horizon=10), small_config()
    learner = make_learner(config, family)
    sampler = pearl.PEARLSampler(family, config, slots=3, seed=0)
    batch, _ = sampler.sample(min_trials=3)
    learner.update([batch])
    encoder = list(learner.agent.encoder.parameters())
    at_step = []
    step = learner.encoder_opt.step
    learner.encoder_opt.step = lambda: (at_step.append([p.grad.clone() for p in encoder]), step())[1]
    learner._step()
    assert any(float(g.abs().sum()) > 0 for g in at_step[0])  # the critic's loss and the KL reached it
    # the actor's backward ran after the encoder's step and added nothing to its gradients
    for before, p in zip(at_step[0], encoder, strict=True):
        torch.testing.assert_close(p.grad, before, rtol=0, atol=0)


def test_serial_learning_is_reproducible_from_the_seed():
    family, config = point_nav(horizon=10), small_config()

    def run():
        torch.manual_seed(123)  # the agent's initialisation
        learner = make_learner(config, family, seed=5)
        sampler = pearl.PEARLSampler(family, config, slots=3, seed=9)
        for version in range(3):
            sampler.set_weights(version, pearl.get_weights(learner.agent))
            batch, _ = sampler.sample(min_trials=3)
            stats = learner.update([batch])
        return stats, pearl.get_weights(learner.agent)

    (a, wa), (b, wb) = run(), run()
    assert a == b and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_bf16_learner_keeps_outputs_and_losses_in_float32():
    family, config = point_nav(horizon=10), small_config(precision="bf16")
    learner = make_learner(config, family)
    agent = learner.agent
    obs, act, z = torch.randn(32, 2), torch.rand(32, 2) * 2 - 1, torch.randn(32, config.latent_size)
    q_bf16 = agent.critic(obs, act, z)
    agent.set_bf16(False)
    q_fp32 = agent.critic(obs, act, z)
    agent.set_bf16(True)
    assert q_bf16.dtype == torch.float32 and not torch.equal(q_bf16, q_fp32)  # the hidden layers ran in bf16
    torch.testing.assert_close(q_bf16, q_fp32, rtol=0.05, atol=0.02)
    sampler = pearl.PEARLSampler(family, config, slots=3, seed=0)
    assert not sampler.agent.critic.bf16 and not sampler.agent.actor.bf16  # workers run float32
    batch, _ = sampler.sample(min_trials=3)
    stats = learner.update([batch])
    assert stats["grad_steps"] > 0 and all(np.isfinite(stats[k]) for k in ("critic_loss", "actor_loss", "kl"))


def test_training_success_counts_the_posterior_episodes_like_the_return():
    family, config = point_nav(horizon=5), small_config()  # 1 prior episode, then 2 with the posterior
    sampler = pearl.PEARLSampler(family, config, slots=3, seed=0)
    sampler.set_weights(1, pearl.get_weights(sampler.agent))
    env_step = sampler.env.step

    def step(action):  # an env that reports success in the prior episode only
        obs, reward, terminated, truncated, info = env_step(action)
        return obs, reward, terminated, truncated, {**info, "success": (sampler.episode == 0).astype(np.float64)}

    sampler.env.step = step
    batch, info = sampler.sample(min_trials=3)
    assert [s.tolist() for s in sampler.last_successes] == [[True, False, False]] * len(batch.task_ids)
    assert info.success_rate == 0.0  # as the return: the posterior's episodes, not the prior's 1 in 3
