"""MAML family, worker side (MAMLSampler.collect) and the two sides together on point-nav."""

import numpy as np
import pytest
import torch

from metaray.learner import adversarial, maml
from metaray.tasks import Task, make_family

torch.set_num_threads(1)

FAMILY = make_family("point-nav")


def make_sampler(seed=0, **cfg):
    config = maml.MAMLConfig(**{"hidden_sizes": [16], "episodes_per_task": 4, **cfg})
    sampler = maml.MAMLSampler(FAMILY, config, 8, seed)
    torch.manual_seed(seed)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, maml.get_weights(policy))
    return sampler, policy, config


def recompute_logp(policy, params, obs, actions):
    with torch.no_grad():
        mean, log_std = maml.policy_forward(policy, params, torch.from_numpy(obs))
        return maml.gaussian_log_prob(mean, log_std, torch.from_numpy(actions)).numpy()


def test_collect_returns_numpy_episodes_per_task_with_behaviour_log_probs():
    sampler, policy, config = make_sampler(num_inner_steps=2)
    tasks = FAMILY.sample(3, np.random.default_rng(1))
    results = sampler.collect(tasks, 0)
    assert len(results) == 3
    horizon = FAMILY.max_episode_steps
    for task, r in zip(tasks, results, strict=True):
        assert all(isinstance(a, np.ndarray) for ep in r.stages.values() for a in ep if a is not None)
        assert r.task_id == task.task_id and r.policy_version == 0
        for stage in ("inner_0", "inner_1", "post"):
            assert r.stages[stage].obs.shape == (4, horizon, 2) and r.stages[stage].actions.shape == (4, horizon, 2)
            for key in ("rewards", "mask", "logp"):
                assert getattr(r.stages[stage], key).shape == (4, horizon)
            assert r.stages[stage].mask.dtype == bool and r.stages[stage].mask[:, 0].all()
        assert r.metrics["return_pre"] == pytest.approx(r.stages["inner_0"].rewards.sum(-1).mean())
        assert r.metrics["return_post"] == pytest.approx(r.stages["post"].rewards.sum(-1).mean())
        # the pre-update episodes were sampled with θ
        m = r.stages["inner_0"].mask
        theta = dict(policy.named_parameters())
        np.testing.assert_allclose(recompute_logp(policy, theta, r.stages["inner_0"].obs, r.stages["inner_0"].actions)[m], r.stages["inner_0"].logp[m], atol=1e-5)
    # the post-update episodes were sampled with each task's own adapted parameters
    for i, r in enumerate(results):
        own = {k: v[i] for k, v in sampler.adapted_params.items()}
        m = r.stages["post"].mask
        np.testing.assert_allclose(recompute_logp(policy, own, r.stages["post"].obs, r.stages["post"].actions)[m], r.stages["post"].logp[m], atol=1e-5)
    with pytest.raises(ValueError, match="version"):
        sampler.collect(tasks, 1)


def test_post_update_rollout_uses_each_tasks_own_parameters():
    sampler, policy, _ = make_sampler()
    tasks = FAMILY.sample(2, np.random.default_rng(2))
    sampler.collect(tasks, 0)  # builds the env for these tasks
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    other = {k: v + 0.5 * torch.randn_like(v) for k, v in theta.items()}
    other["mu.bias"] = other["mu.bias"] + torch.tensor([0.3, -0.3])
    other["log_std"] = theta["log_std"] - 1.5
    stacked = {k: torch.stack([theta[k], other[k]]) for k in theta}
    with torch.no_grad():
        arrays = sampler.rollout(stacked, per_task=True, num_tasks=2).episodes
    for i, own in enumerate([theta, other]):
        m = arrays.mask[i]
        logp = recompute_logp(policy, own, arrays.obs[i], arrays.actions[i])
        np.testing.assert_allclose(logp[m], arrays.logp[i][m], atol=1e-5)
        wrong = recompute_logp(policy, [other, theta][i], arrays.obs[i], arrays.actions[i])
        assert np.abs(wrong[m] - arrays.logp[i][m]).max() > 0.1
    assert arrays.actions[1].std() < arrays.actions[0].std()  # task 1 acts with std e^-1.5


@pytest.mark.parametrize("steps", [1, 2])
def test_worker_adapted_parameters_equal_the_learners_recomputation(steps):
    sampler, policy, config = make_sampler(num_inner_steps=steps)
    results = sampler.collect(FAMILY.sample(3, np.random.default_rng(3)), 0)
    learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
    inner, post = learner.stages(results)
    params = dict(learner.policy.named_parameters())
    adapted = maml.adapt(learner.policy, params, inner, config.inner_lr)[-1]  # with a graph
    assert adapted["mu.weight"].requires_grad
    with torch.no_grad():
        curvature = maml.KLCurvature(learner.policy, params, inner, post, config)
    for k, worker in sampler.adapted_params.items():
        torch.testing.assert_close(adapted[k].detach(), worker, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(curvature.adapted[k], worker, atol=1e-5, rtol=1e-5)
    # they really moved: the check above compares adapted parameters, not θ
    assert (sampler.adapted_params["mu.weight"][0] - params["mu.weight"]).abs().max() > 1e-4
    stats = learner.update(results)
    assert stats["behaviour_logp_err"] < 1e-4


@pytest.mark.parametrize(("outer", "first_order"), [("trpo", False), ("trpo", True), ("ppo-clip", True)])
def test_learned_post_std_is_the_adapted_policies_sigma_on_worker_and_learner(outer, first_order):
    # (ProMP's inner KL penalty is off: it would move the exploring σ by its own gradient)
    sampler, policy, config = make_sampler(post_std="learned", outer=outer, first_order=first_order, init_log_std=-0.5,
                                           inner_kl_coef=0.0)
    with torch.no_grad():
        policy.post_log_std.fill_(-2.0)
    sampler.set_weights(0, maml.get_weights(policy))
    results = sampler.collect(FAMILY.sample(3, np.random.default_rng(3)), 0)
    # the pre-update episodes explored with log σ = -0.5, the adapted policies acted with -2
    torch.testing.assert_close(sampler.adapted_params["log_std"], torch.full((3, 2), -2.0))
    theta = dict(policy.named_parameters())
    for i, r in enumerate(results):
        own = {k: v[i] for k, v in sampler.adapted_params.items()}
        for stage, params in (("inner_0", theta), ("post", own)):
            m = r.stages[stage].mask
            np.testing.assert_allclose(recompute_logp(policy, params, r.stages[stage].obs, r.stages[stage].actions)[m],
                                       r.stages[stage].logp[m], atol=1e-5)
    learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    stats = learner.update(results)
    assert stats["post_log_std"] != pytest.approx(-2.0) and stats["log_std"] == pytest.approx(policy.log_std.mean().item())
    if outer == "trpo":
        assert stats["behaviour_logp_err"] < 1e-4 and stats["step_accepted"] == 1.0
    assert (policy.post_log_std - before["post_log_std"]).abs().min() > 1e-6
    # first-order, the post-update objective's gradient reaches post_log_std only; second-order,
    # the exploring σ moves too (through the inner step's dependence on it)
    assert torch.equal(policy.log_std, before["log_std"]) == first_order


def test_episodes_that_end_early_are_masked_and_the_learner_handles_mixed_lengths():
    near = Task("point-nav", "train", 1, (0.005, 0.005))  # within tolerance after the first move
    far = Task("point-nav", "train", 2, (0.4, -0.3))
    sampler, policy, config = make_sampler()
    with torch.no_grad():
        policy.mu.weight.zero_()
        policy.mu.bias.zero_()
        policy.log_std.fill_(-10.0)  # (almost) standing still
    sampler.set_weights(1, maml.get_weights(policy))
    results = sampler.collect([near, far], 1)
    pre_near, pre_far = results[0].stages["inner_0"].mask, results[1].stages["inner_0"].mask
    assert pre_near[:, 0].all() and not pre_near[:, 1:].any()
    assert pre_far.all()
    assert (results[0].stages["inner_0"].rewards[:, 1:] == 0).all() and (results[0].stages["inner_0"].obs[:, 1:] == 0).all()
    with torch.no_grad():
        policy.log_std.fill_(0.0)
    sampler.set_weights(2, maml.get_weights(policy))
    results = sampler.collect([near, far, near], 2)
    for outer in ("trpo", "ppo-clip", "reptile"):
        cfg = config.model_copy(update={"outer": outer})
        stats = maml.MAMLLearner(maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, cfg), cfg, torch.device("cpu"), 0).update(results)
        assert all(np.isfinite(v) for v in stats.values()), (outer, stats)


def test_collect_is_reproducible_from_the_seed():
    outs = []
    for _ in range(2):
        sampler, _, _ = make_sampler(seed=5)
        outs.append(sampler.collect(FAMILY.sample(2, np.random.default_rng(0)), 0))
    for a, b in zip(*outs, strict=True):
        assert a.stages.keys() == b.stages.keys() and a.metrics == b.metrics
        assert all(np.array_equal(x, y) for s in a.stages for x, y in zip(a.stages[s], b.stages[s], strict=True) if x is not None)


def test_evaluate_reports_pre_and_post_returns_per_task():
    _, policy, config = make_sampler()
    tasks = FAMILY.sample(3, np.random.default_rng(4), "test")
    out = maml.evaluate(policy, FAMILY, tasks, config.model_copy(update={"meta_batch_size": 2}), seed=0)
    assert [r["task_id"] for r in out] == [t.task_id for t in tasks]
    assert all(set(r) == {"task_id", "return_pre", "return_post"} and r["return_pre"] < 0 for r in out)


def test_short_point_nav_run_learns_to_adapt():
    """5 meta-iterations of MAML-TRPO, 10 tasks × 10 episodes, serial: the loop the runtime runs.

    After training, the adapted policy on held-out tasks must beat the untrained policy's
    pre-update return by a wide margin, and adaptation itself must help (post > pre).
    """
    config = maml.MAMLConfig(episodes_per_task=10, meta_batch_size=10)
    sampler = maml.MAMLSampler(FAMILY, config, 10, seed=0)
    torch.manual_seed(0)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
    rng = np.random.default_rng(0)
    test_tasks = FAMILY.sample(10, np.random.default_rng(1000), "test")
    before = maml.evaluate(learner.policy, FAMILY, test_tasks, config, seed=0)
    history = []
    for version in range(5):
        sampler.set_weights(version, maml.get_weights(learner.policy))
        results = sampler.collect(FAMILY.sample(10, rng), version)
        stats = learner.update([r.for_learner() for r in results])
        assert stats["step_accepted"] == 1.0 and stats["kl"] <= config.max_kl
        history.append({k: np.mean([r.metrics[k] for r in results]) for k in ("return_pre", "return_post")})
    after = maml.evaluate(learner.policy, FAMILY, test_tasks, config, seed=0)
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    assert mean(after, "return_post") > mean(before, "return_pre") + 10
    assert mean(after, "return_post") > mean(after, "return_pre") + 2
    assert np.mean([h["return_post"] - h["return_pre"] for h in history[-3:]]) > 0


def test_collect_reuses_its_envs_and_switches_every_slot_to_the_new_tasks():
    sampler, _, _ = make_sampler()
    rng = np.random.default_rng(5)
    first, second = FAMILY.sample(3, rng), FAMILY.sample(3, rng)
    sampler.collect(first, sampler.version)
    env = sampler.env
    results = sampler.collect(second, sampler.version)
    assert sampler.env is env  # same slot count: no rebuild
    per = sampler.config.episodes_per_task
    assert [t.task_id for t in env.tasks] == [t.task_id for t in second for _ in range(per)]
    assert [r.task_id for r in results] == [t.task_id for t in second]
    sampler.collect(second[:2], sampler.version)
    assert sampler.env is not env and sampler.env.num_envs == 2 * per


@pytest.mark.parametrize("outer", ["trpo", "ppo-clip", "reptile"])
def test_zero_inner_steps_is_multi_task_training_of_theta(outer):
    """num_inner_steps = 0: one stage of θ's own episodes (return_pre = return_post), and every
    outer step updates θ from it."""
    sampler, policy, config = make_sampler(num_inner_steps=0, outer=outer)
    results = sampler.collect(FAMILY.sample(2, np.random.default_rng(4)), 0)
    assert list(results[0].stages) == ["post"]
    for r in results:
        assert r.metrics["return_pre"] == r.metrics["return_post"]
        np.testing.assert_allclose(r.stages["post"].logp, recompute_logp(policy, dict(policy.named_parameters()),
                                                                  r.stages["post"].obs, r.stages["post"].actions), atol=1e-5)
    before = maml.flat(p.detach().clone() for p in policy.parameters())
    stats = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0).update(results)
    assert np.isfinite(stats["grad_norm"])
    assert not torch.equal(before, maml.flat(p.detach() for p in policy.parameters()))
    with pytest.raises(ValueError, match="num_inner_steps"):
        adversarial.AdversarialConfig(num_inner_steps=0)  # adversarial imitation adapts: k >= 1
