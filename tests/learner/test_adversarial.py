"""Meta adversarial imitation: the learner never sees the true reward, worker and learner adapt
the discriminator alike, the discriminator's steps match their formulas, and a run evaluates
to a normalised score."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaray.cli import main
from metaray.cluster.checkpoint import read_progress
from metaray.core import stack_episodes
from metaray.learner import adversarial as adv
from metaray.learner import maml
from metaray.tasks import make_family

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
N_TASKS, PER = 3, 3
META_SGD_MU_BIAS = "generator.inner_optimizer.log_lr.mu_bias"


def small_config(**changes) -> adv.AdversarialConfig:
    base = dict(meta_batch_size=N_TASKS, episodes_per_task=PER, hidden_sizes=[8], disc_hidden_sizes=[8],
                num_demos=2, num_query_demos=2, first_order=True, disc_inner_steps=2)
    return adv.AdversarialConfig(**{**base, **changes})


def collect(config: adv.AdversarialConfig, reward_noise: int | None = None):
    """One worker step on 3 point-nav tasks from fixed initial weights; optionally with the env's
    reward replaced by noise."""
    family = make_family("point-nav", {"horizon": 20})
    tasks = family.sample(N_TASKS, np.random.default_rng(3))
    sampler = adv.AdversarialSampler(family, config, N_TASKS * PER, seed=0)
    if reward_noise is not None:
        noise, step = np.random.default_rng(reward_noise), sampler.env.step

        def noisy_step(actions):
            obs, reward, terminated, truncated, info = step(actions)
            return obs, noise.normal(0.0, 5.0, reward.shape).astype(reward.dtype), terminated, truncated, info

        sampler.env.step = noisy_step
    torch.manual_seed(0)
    agent = adv.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, {k: v.numpy().copy() for k, v in agent.state_dict().items()})
    return agent, sampler, sampler.collect(tasks, 0)


def learner_batch(results):
    return [r.for_learner() for r in results]


@pytest.mark.parametrize(("discriminator", "optimizer", "learned_key"), [
    ("airl", {}, None), ("gail", {}, None),
    ("gail", {"learn_inner_lr": True}, META_SGD_MU_BIAS),  # an old config's name for meta-sgd
    ("gail", {"inner_optimizer": "lstm"}, "generator.inner_optimizer.head.weight"),
])
def test_replacing_the_env_reward_with_noise_leaves_the_update_identical(discriminator, optimizer, learned_key):
    config = small_config(discriminator=discriminator, **optimizer)
    updated, true_post = [], []
    for noise in (None, 1, 2):
        agent, _, results = collect(config, reward_noise=noise)
        true_post.append([r.metrics["return_post"] for r in results])
        learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
        stats = learner.update(learner_batch(results))
        assert stats["step_accepted"] == 1.0 and np.isfinite(stats["disc_loss"])
        updated.append({k: v.clone() for k, v in agent.state_dict().items()})
    assert true_post[0] != true_post[1] != true_post[2]  # the rewards did change...
    for other in updated[1:]:  # ...the update did not
        assert all(torch.equal(updated[0][k], other[k]) for k in updated[0])
    initial = adv.make_policy(*spaces(), config).state_dict()
    assert not torch.equal(updated[0]["discriminator.g.0.weight"], initial["discriminator.g.0.weight"])
    if learned_key:  # the inner optimizer is learned too, from the same reward-free batch
        assert not torch.equal(updated[0][learned_key], initial[learned_key])


def spaces():
    env = make_family("point-nav", {"horizon": 20}).make_env()
    return env.observation_space, env.action_space


def test_learner_refuses_batches_that_carry_the_true_reward():
    config = small_config()
    agent, _, results = collect(config)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    with pytest.raises(ValueError, match="true-reward metrics"):
        learner.update(results)


@pytest.mark.parametrize(("demo_advantage", "post_std"), [(0.0, "shared"), (1.0, "shared"), (1.0, "learned")])
def test_learner_recomputes_the_workers_adapted_generator_and_discriminator(demo_advantage, post_std):
    config = small_config(num_inner_steps=2, demo_advantage=demo_advantage, post_std=post_std)
    agent, sampler, results = collect(config)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    batch = learner_batch(results)
    phi = learner.adapted_discriminators(batch, dict(agent.discriminator.named_parameters()))
    for k, p in phi.items():
        torch.testing.assert_close(p, sampler.adapted_disc[k], atol=1e-5, rtol=1e-5)
    inner, _ = learner.gen.stages(batch)
    if demo_advantage:
        support = stack_episodes([r.extras["support"] for r in batch])
        inner = [adv.with_demos(stage, support, demo_advantage) for stage in inner]
    theta = maml.adapt(agent.generator, dict(agent.generator.named_parameters()), inner, config.inner_lr)[-1]
    for k, p in theta.items():
        torch.testing.assert_close(p, sampler.adapted_params[k], atol=1e-5, rtol=1e-5)
    if post_std == "learned":
        torch.testing.assert_close(theta["log_std"], agent.generator.post_log_std.detach().expand(N_TASKS, -1))
    stats = learner.update(batch)  # the TRPO step re-checks the post episodes' behaviour log-probs
    assert np.isfinite(stats["disc_loss"]) and stats["behaviour_logp_err"] < 1e-4


def test_demo_episodes_add_a_behaviour_cloning_term_to_the_inner_step():
    """With c > 0 the inner gradient is (E·g_pg + K·c·g_bc) / (E + K), g_bc = −∇ mean_demo
    ep-mean log π(a_demo|s_demo); it raises the demos' likelihood where the pure r̂ step does not."""
    config = small_config(demo_advantage=2.0)
    agent, sampler, results = collect(config)
    batch = learner_batch(results)
    policy = agent.generator
    theta = dict(policy.named_parameters())
    stage = maml.MAMLLearner(policy, config, torch.device("cpu"), 0).stages(batch)[0][0]
    support = stack_episodes([r.extras["support"] for r in batch])
    both = adv.with_demos(stage, support, 2.0)
    e, k = stage.obs.shape[1], support.obs.shape[1]
    stepped = maml.inner_step(policy, theta, both, config.inner_lr, per_task=False)
    plain = maml.inner_step(policy, theta, stage, config.inner_lr, per_task=False)
    demo_obs, demo_act = torch.as_tensor(support.obs), torch.as_tensor(support.actions)
    demo_mask = torch.as_tensor(support.mask).float()
    for i in range(N_TASKS):
        g_pg = torch.autograd.grad(maml.inner_loss(policy, theta, stage.obs[i], stage.actions[i], stage.advantages[i], stage.mask[i]),
                                   list(theta.values()))
        bc = -maml.episode_mean(maml.gaussian_log_prob(*policy(demo_obs[i]), demo_act[i]), demo_mask[i])
        g_bc = torch.autograd.grad(bc, list(theta.values()))
        for (name, p), gp, gb in zip(theta.items(), g_pg, g_bc, strict=True):
            expected = p - config.inner_lr * (e * gp + k * 2.0 * gb) / (e + k)
            torch.testing.assert_close(stepped[name][i], expected, atol=1e-5, rtol=1e-4)

    def demo_nll(params):
        mean, log_std = maml.per_task_forward(policy, params, demo_obs)
        return -maml.episode_mean(maml.gaussian_log_prob(mean, log_std, demo_act), demo_mask)

    with torch.no_grad():
        assert (demo_nll(stepped) < demo_nll(plain)).all()


def query_loglik(policy, inner, query, inner_lr) -> float:
    """Mean log-likelihood of the query demos under the adapted policies θ'_i of the current θ."""
    with torch.no_grad():
        theta = maml.adapt(policy, dict(policy.named_parameters()), inner, inner_lr)[-1]
        mean, log_std = maml.per_task_forward(policy, theta, query.obs)
        return maml.episode_mean(maml.gaussian_log_prob(mean, log_std, query.actions), query.mask.float()).mean().item()


@pytest.mark.parametrize("outer", ["trpo", "ppo-clip"])
def test_query_demos_add_a_behaviour_cloning_term_to_the_meta_objective(outer):
    """With c_q > 0 the outer step also raises the adapted policies' likelihood of the query
    demos; their behaviour log-probs are the old adapted policies' (TRPO's check stays ~0)."""
    gains = {}
    for c in (0.0, 20.0):
        config = small_config(query_demo_advantage=c, outer=outer, demo_advantage=1.0, max_kl=0.05, ppo_lr=0.01)
        agent, _, results = collect(config)
        batch = learner_batch(results)
        learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
        inner, _ = learner.gen.stages(batch)
        support = stack_episodes([r.extras["support"] for r in batch])
        inner = [adv.with_demos(stage, support, 1.0) for stage in inner]
        query = adv.Demos(*(None if a is None else torch.as_tensor(a) for a in stack_episodes([r.extras["query"] for r in batch])))
        before = query_loglik(agent.generator, inner, query, config.inner_lr)
        stats = learner.update(batch)
        gains[c] = query_loglik(agent.generator, inner, query, config.inner_lr) - before
        if outer == "trpo":
            assert stats["step_accepted"] == 1.0 and stats["behaviour_logp_err"] < 1e-4
    assert gains[20.0] > 0 and gains[20.0] > gains[0.0] + 0.1


def random_transitions(n: int, e: int, t: int, gen: torch.Generator, dtype=torch.float32) -> adv.Transitions:
    mask = torch.ones(n, e, t, dtype=dtype)
    mask[:, 0, t - 2:] = 0.0  # one shorter episode
    return adv.Transitions(torch.randn(n, e, t, 2, generator=gen, dtype=dtype), torch.randn(n, e, t, 2, generator=gen, dtype=dtype),
                           torch.randn(n, e, t, 2, generator=gen, dtype=dtype), mask, -torch.rand(n, e, t, generator=gen, dtype=dtype))


def test_airl_logits_rewards_and_inner_step_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    disc = adv.Discriminator(2, 2, [5], "airl", gamma=0.9)
    phi = dict(disc.named_parameters())
    demos, policy = random_transitions(2, 3, 4, gen), random_transitions(2, 3, 4, gen)
    one = adv.Transitions(*(x[0] for x in policy))
    f = (disc.g(torch.cat([one.obs, one.actions], -1)) + 0.9 * disc.h(one.next_obs) - disc.h(one.obs)).squeeze(-1)
    logit = f - one.logp
    torch.testing.assert_close(adv.disc_logits(disc, phi, one), logit)
    d = torch.sigmoid(logit)  # r̂ = log D − log(1 − D), zero on padding
    torch.testing.assert_close(adv.relabel(disc, {k: p.expand(2, *p.shape) for k, p in phi.items()}, policy)[0],
                               (d.log() - (1 - d).log()) * one.mask, atol=1e-5, rtol=1e-5)
    beta = 0.3
    stepped = adv.disc_adapt(disc, phi, demos, policy, beta, steps=1, stacked=False)
    for i in range(2):
        de, po = adv.Transitions(*(x[i] for x in demos)), adv.Transitions(*(x[i] for x in policy))
        le, lb = adv.disc_logits(disc, phi, de), adv.disc_logits(disc, phi, po)
        minus_v = -(F.logsigmoid(le) * de.mask).sum() / de.mask.sum() - (torch.log1p(-torch.sigmoid(lb)) * po.mask).sum() / po.mask.sum()
        grads = torch.autograd.grad(minus_v, list(phi.values()))
        for (k, p), g in zip(phi.items(), grads, strict=True):
            torch.testing.assert_close(stepped[k][i], p - beta * g, atol=1e-5, rtol=1e-4)


def test_gail_logits_ignore_the_policy_log_prob():
    gen = torch.Generator().manual_seed(1)
    disc = adv.Discriminator(2, 2, [5], "gail", gamma=0.9)
    batch = adv.Transitions(*(x[0] for x in random_transitions(1, 2, 3, gen)))
    phi = dict(disc.named_parameters())
    torch.testing.assert_close(adv.disc_logits(disc, phi, batch), adv.disc_logits(disc, phi, batch._replace(logp=batch.logp * 7)))
    assert disc.h is None


def test_second_order_discriminator_meta_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(2)
    disc = adv.Discriminator(2, 2, [4], "airl", gamma=0.9).double()
    support, inner = random_transitions(2, 2, 3, gen, torch.float64), random_transitions(2, 2, 3, gen, torch.float64)
    q_demo, q_pol = random_transitions(2, 2, 3, gen, torch.float64), random_transitions(2, 2, 3, gen, torch.float64)
    names = [k for k, _ in disc.named_parameters()]

    def objective(flat_phi: torch.Tensor) -> torch.Tensor:
        phi = maml.unflat(flat_phi, dict(disc.named_parameters()))
        adapted = adv.disc_adapt(disc, phi, support, inner, lr=0.5, steps=2, stacked=False)
        return torch.vmap(partial(adv.disc_loss, disc))(adapted, q_demo, q_pol).mean()

    x = maml.flat(p.detach() for p in disc.parameters()).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x), x)
    eps = 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            fd = (objective(x + eps * v) - objective(x - eps * v)) / (2 * eps)
        assert float(grad @ v) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
    assert len(names) == 8  # g and h: two linear layers each
    # and the first-order gradient differs from it (the inner steps matter)
    with torch.no_grad():
        adapted = adv.disc_adapt(disc, maml.unflat(x.detach(), dict(disc.named_parameters())), support, inner, 0.5, 2, False)
    first = torch.vmap(torch.func.grad(partial(adv.disc_loss, disc)))(adapted, q_demo, q_pol)
    assert not torch.allclose(maml.flat(first[k].mean(0) for k in names), grad, atol=1e-6)


@pytest.mark.parametrize("disc_outer", ["first-order", "reptile"])
def test_discriminator_meta_update_matches_its_formula(disc_outer):
    config = small_config(disc_outer=disc_outer, outer="reptile", disc_lr=0.01, disc_reptile_lr=0.5)
    agent, _, results = collect(config)
    batch = learner_batch(results)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    phi0 = {k: p.detach().clone() for k, p in agent.discriminator.named_parameters()}
    adapted = learner.adapted_discriminators(batch, phi0)
    learner.update(batch)
    new = dict(agent.discriminator.named_parameters())
    if disc_outer == "reptile":
        expected = {k: p + 0.5 * (adapted[k] - p).mean(0) for k, p in phi0.items()}
    else:  # Adam's first step from the mean query gradient at φ_i^k
        demo, pol = learner._stage_data(batch, "post", "query")
        grads = torch.vmap(torch.func.grad(partial(adv.disc_loss, agent.discriminator)))(adapted, demo, pol)
        params = [p.clone().requires_grad_(True) for p in phi0.values()]
        opt = torch.optim.Adam(params, lr=0.01)
        for p, k in zip(params, phi0, strict=True):
            p.grad = grads[k].mean(0)
        opt.step()
        expected = dict(zip(phi0, (p.detach() for p in params), strict=True))
    for k in phi0:
        torch.testing.assert_close(new[k].detach(), expected[k], atol=1e-6, rtol=1e-5)
        assert not torch.equal(new[k].detach(), phi0[k])


def test_serial_run_and_eval_report_normalised_score(tmp_path, capsys):
    run = tmp_path / "adv"
    assert main(["train", str(CONFIGS / "adversarial-point-nav.yaml"), "--serial", "--run-dir", str(run),
                 "--iterations", "2", "--set", "adversarial.meta_batch_size=4", "--set", "adversarial.episodes_per_task=4",
                 "--set", "task.kwargs.horizon=30"]) == 0
    row = read_progress(run)[-1]
    assert {"return_pre", "return_post", "disc_loss"} <= set(row) and row["iteration"] == 2
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--num-tasks", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["tasks"]) == 5
    for t in result["tasks"]:
        expected = (t["return_post"] - t["random_return"]) / (t["expert_return"] - t["random_return"])
        assert t["normalised_score"] == pytest.approx(expected)
        assert t["expert_return"] > t["random_return"]  # the scripted expert beats random actions
    assert result["normalised_score"] == pytest.approx(np.mean([t["normalised_score"] for t in result["tasks"]]))
    assert result["mean_return"] == result["return_post"]


def test_a_family_without_an_expert_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", str(CONFIGS / "adversarial-point-nav.yaml"), "--serial", "--run-dir", str(tmp_path / "x"),
                 "--set", "task.family=halfcheetah-dir", "--set", "task.kwargs={}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no expert(task)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("switch", ["adapt_generator", "adapt_discriminator"])
def test_ablation_switches_freeze_one_side_on_worker_and_learner(switch):
    config = small_config(**{switch: False})
    agent, sampler, results = collect(config)
    frozen = agent.generator if switch == "adapt_generator" else agent.discriminator
    adapted = sampler.adapted_params if switch == "adapt_generator" else sampler.adapted_disc
    for k, p in frozen.named_parameters():  # every task kept the meta-parameters
        assert torch.equal(adapted[k], p.detach().expand_as(adapted[k]))
    other = sampler.adapted_disc if switch == "adapt_generator" else sampler.adapted_params
    assert any(not torch.allclose(v[0], v[1]) for v in other.values())  # the other side still adapts per task
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    stats = learner.update(learner_batch(results))
    assert np.isfinite(stats["disc_loss"]) and stats["behaviour_logp_err"] < 1e-4  # learner saw the same θ_i


def test_wrong_demos_control_gives_each_task_its_neighbours_demos():
    right = collect(small_config())[2]
    more = collect(small_config(num_demos=3))[2]
    assert [r.metrics["expert_return"] for r in more] == [r.metrics["expert_return"] for r in right]  # not a function of K
    wrong = collect(small_config(wrong_demos=True))[2]
    for i in range(N_TASKS):
        assert np.array_equal(wrong[i].extras["support"].actions, right[(i + 1) % N_TASKS].extras["support"].actions)
        assert wrong[i].task_id == right[i].task_id
        assert wrong[i].metrics["expert_return"] == right[i].metrics["expert_return"]  # scored against its own expert


def test_discriminator_judges_executed_actions_and_demos_do_not_depend_on_k():
    disc = adv.Discriminator(2, 2, [5], "gail", 0.9, np.full(2, -0.1), np.full(2, 0.1))
    phi = dict(disc.named_parameters())
    obs = torch.zeros(1, 3, 2)
    inside = adv.Transitions(obs, torch.full((1, 3, 2), 0.1), obs, torch.ones(1, 3), torch.zeros(1, 3))
    outside = inside._replace(actions=torch.full((1, 3, 2), 5.0))  # clipped to 0.1 by the env
    torch.testing.assert_close(adv.disc_logits(disc, phi, inside), adv.disc_logits(disc, phi, outside))
    family = make_family("point-nav", {"horizon": 20})
    tasks = family.sample(2, np.random.default_rng(0))
    few, many = adv.expert_demos(family, tasks, 3, 0.01, 7)[0], adv.expert_demos(family, tasks, 6, 0.01, 7)[0]
    np.testing.assert_array_equal(few.actions, many.actions[:, :3])  # demo j is the same for any count
    assert adv.evaluation_chunks(21, 20) == [range(0, 19), range(19, 21)]
    assert adv.evaluation_chunks(40, 20) == [range(0, 20), range(20, 40)]


def test_executed_log_prob_is_the_clipped_gaussians_likelihood():
    low, high = torch.full((2,), -0.1), torch.full((2,), 0.1)
    mean, log_std = torch.tensor([0.05, -0.3]), torch.tensor([-2.0, -1.0])
    inside = torch.tensor([0.02, -0.05])
    torch.testing.assert_close(adv.executed_log_prob(mean, log_std, inside, low, high),
                               maml.gaussian_log_prob(mean, log_std, inside))
    # beyond a bound: the probability that the clipped sample lands on that bound (Monte Carlo)
    gen = torch.Generator().manual_seed(0)
    samples = mean + log_std.exp() * torch.randn(400_000, 2, generator=gen)
    at_high_x, at_low_y = (samples[:, 0] >= 0.1).double().mean(), (samples[:, 1] <= -0.1).double().mean()
    got = adv.executed_log_prob(mean, log_std, torch.tensor([0.7, -0.1]), low, high)
    assert float(got) == pytest.approx(float((at_high_x * at_low_y).log()), abs=0.01)
    # a wider Gaussian cannot buy AIRL's entropy bonus: the executed action's −log π stays bounded
    wide = torch.full((2,), 5.0)
    corner = torch.tensor([3.0, -40.0])
    assert -float(adv.executed_log_prob(torch.zeros(2), wide, corner, low, high)) < 2 * np.log(2) + 0.01
    assert -float(maml.gaussian_log_prob(torch.zeros(2), wide, corner)) > 10


def test_state_only_reward_ignores_actions():
    gen = torch.Generator().manual_seed(4)
    batch = adv.Transitions(*(x[0] for x in random_transitions(1, 2, 3, gen)))
    for kind in ("gail", "airl"):
        disc = adv.Discriminator(2, 2, [5], kind, 0.9, state_only=True)
        phi = dict(disc.named_parameters())
        other = batch._replace(actions=batch.actions + 3.0)
        torch.testing.assert_close(adv.disc_logits(disc, phi, batch), adv.disc_logits(disc, phi, other))
        if kind == "gail":  # d(s') alone
            torch.testing.assert_close(adv.disc_logits(disc, phi, batch), disc.g(batch.next_obs).squeeze(-1))


@pytest.mark.parametrize(("discriminator", "disc_reward"), [("gail", "logit"), ("airl", "logit"), ("gail", "log-d")])
def test_post_episodes_are_relabelled_by_the_discriminator_refitted_on_them(discriminator, disc_reward):
    config = small_config(discriminator=discriminator, disc_inner_steps=3, disc_reward=disc_reward)
    agent, sampler, results = collect(config)
    batch = learner_batch(results)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    disc = agent.discriminator
    with torch.no_grad():
        phi_k = learner.adapted_discriminators(batch, dict(disc.named_parameters()))
        demo, pol = learner._stage_data(batch, "post", "query")
        refit = adv.disc_adapt(disc, phi_k, demo, pol, config.disc_inner_lr, config.disc_inner_steps, stacked=True)
        post_rewards = torch.stack([torch.as_tensor(r.stages["post"].rewards) for r in batch])
        torch.testing.assert_close(post_rewards, adv.relabel(disc, refit, pol, disc_reward), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(post_rewards, adv.relabel(disc, phi_k, pol, disc_reward), atol=1e-4)
        if disc_reward == "log-d":  # log D: a cost at every valid step, the logit's −softplus(−·)
            logits = torch.vmap(partial(adv.disc_logits, disc))(refit, pol)
            torch.testing.assert_close(post_rewards, -F.softplus(-logits) * pol.mask, atol=1e-5, rtol=1e-5)
            assert (post_rewards <= 0).all()
        # the refit is a step of the max over φ: it tells the query demos from the post episodes better
        before = torch.vmap(partial(adv.disc_loss, disc))(phi_k, demo, pol)
        after = torch.vmap(partial(adv.disc_loss, disc))(refit, demo, pol)
    assert bool((after < before).all())


def test_halfcheetah_vel_demos_come_from_the_shipped_expert():
    """The worker demonstrates halfcheetah-vel tasks with the shipped expert (real MuJoCo): the
    demos hold each task's target velocity, and the learner's batch carries them without it."""
    family = make_family("halfcheetah-vel", {"horizon": 60})
    tasks = [family.task("test", 0), family.task("test", 1)]
    config = small_config(meta_batch_size=2, episodes_per_task=1, num_demos=1, num_query_demos=1)
    sampler = adv.AdversarialSampler(family, config, 2, seed=0)
    agent = adv.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, {k: v.numpy().copy() for k, v in agent.state_dict().items()})
    results = sampler.collect(tasks, 0)
    assert sampler.env.single_observation_space.shape == (17,)  # the target stays hidden
    for task, result in zip(tasks, results, strict=True):
        demos, _ = adv.expert_demos(family, [task], 1, 0.0, seed=0)
        velocity = demos.obs[0, 0, -20:, 8].mean()  # qvel[0]: the cheetah's x velocity
        assert abs(velocity - task.params[0]) < 0.35
        # the expert's return is far above the adapted random policy's
        assert result.metrics["expert_return"] > result.metrics["return_post"] + 20


def test_batched_expert_acts_like_the_per_task_expert():
    """Demos use the family's batched expert (one forward per step); row i must act as tasks[i]'s
    expert does. (Whole demos differ in the last float bits, which MuJoCo's dynamics amplify.)"""
    family = make_family("halfcheetah-vel", {"horizon": 15})
    tasks = [family.task("train", i) for i in range(3)]
    demos, _ = adv.expert_demos(family, tasks, 2, 0.0, seed=5)
    obs = demos.obs.reshape(-1, 15, 17)[:, 7]  # real mid-episode observations, 6 slots
    slot_tasks = [task for task in tasks for _ in range(2)]
    batched = family.batched_expert(slot_tasks)(obs)
    single = np.stack([family.expert(task)(o) for task, o in zip(slot_tasks, obs, strict=True)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    same_obs = family.batched_expert(tasks[:2])(np.stack([obs[0], obs[0]]))
    assert tasks[0].params != tasks[1].params and not np.allclose(same_obs[0], same_obs[1])  # the target matters



def test_meta_sgd_step_sizes_reach_the_workers_and_descend_the_meta_objective():
    """Meta-SGD (`learn_inner_lr`, an old config's name for inner_optimizer: meta-sgd): α per
    parameter entry travels with the weights, the workers adapt with it,
    the learner recomputes the same θ'_i, and its Adam step on log α lowers the post-stage
    policy-gradient loss of the adapted policies (θ held fixed)."""
    config = small_config(learn_inner_lr=True, inner_lr_lr=0.01, demo_advantage=1.0)
    family = make_family("point-nav", {"horizon": 20})
    tasks = family.sample(N_TASKS, np.random.default_rng(3))
    sampler = adv.AdversarialSampler(family, config, N_TASKS * PER, seed=0)
    torch.manual_seed(0)
    agent = adv.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    with torch.no_grad():  # a different α for every entry
        for p in agent.generator.inner_optimizer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    sampler.set_weights(0, {k: v.numpy().copy() for k, v in agent.state_dict().items()})
    alpha = {k: a.detach() for k, a in agent.generator.inner_optimizer.step_sizes().items()}
    for k, a in alpha.items():
        torch.testing.assert_close(sampler.policy.inner_optimizer.step_sizes()[k], a)
    batch = learner_batch(sampler.collect(tasks, 0))
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    inner, post = learner.gen.stages(batch)
    support = stack_episodes([r.extras["support"] for r in batch])
    inner = [adv.with_demos(stage, support, 1.0) for stage in inner]
    theta = {k: p.detach().clone() for k, p in agent.generator.theta().items()}
    adapted = maml.adapt(agent.generator, theta, inner, alpha)[-1]
    for k, p in adapted.items():
        torch.testing.assert_close(p, sampler.adapted_params[k], atol=1e-5, rtol=1e-5)
    scalar = maml.adapt(agent.generator, theta, inner, config.inner_lr)[-1]
    assert not torch.allclose(scalar["mu.bias"], adapted["mu.bias"])  # α per entry did change the step

    def post_loss(lr):
        with torch.no_grad():
            new = maml.adapted_params(agent.generator, theta, inner, N_TASKS, lr)
            mean, log_std = maml.per_task_forward(agent.generator, new, post.obs)
            logp = maml.gaussian_log_prob(mean, log_std, post.actions)
            return -maml.episode_mean(logp * post.advantages, post.mask).mean().item()

    learner.config = learner.config.model_copy(update={"outer": "reptile", "reptile_lr": 0.0})  # θ stays put
    learner.gen.config = learner.gen.outer.config = learner.gen.config.model_copy(update={"outer": "reptile", "reptile_lr": 0.0})
    stats = learner.update(batch)
    assert stats["inner_lr_grad_norm"] > 0
    assert all(torch.equal(theta[k], p) for k, p in agent.generator.theta().items())
    new_alpha = {k: a.detach() for k, a in agent.generator.inner_optimizer.step_sizes().items()}
    assert post_loss(new_alpha) < post_loss(alpha)
    tensors, meta = learner.optimizer_state()  # Adam's state of log α is checkpointed
    assert any(k.startswith("generator/inner_optimizer/") for k in tensors) and "inner_optimizer" in meta["generator"]
    fresh = adv.AdversarialLearner(adv.make_policy(*spaces(), config), config, torch.device("cpu"), seed=0)
    fresh.load_optimizer_state(tensors, meta)
    assert fresh.gen.outer.learned_optimizer.state_dict()["state"][0]["step"] == 1


def test_meta_sgd_weights_without_step_sizes_are_refused():
    config = small_config(learn_inner_lr=True)
    family = make_family("point-nav", {"horizon": 20})
    sampler = adv.AdversarialSampler(family, config, N_TASKS * PER, seed=0)
    plain = adv.make_policy(*spaces(), small_config())
    with pytest.raises(RuntimeError, match="inner_optimizer.log_lr"):
        sampler.set_weights(0, {k: v.numpy() for k, v in plain.state_dict().items()})
