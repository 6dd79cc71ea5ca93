"""MAML family: the math (baseline, advantages, inner step, meta-gradient, KL curvature) and the
learner's outer steps, on tiny hand-made batches. Worker-side tests: test_maml_sampler.py."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from metaray.core import Episodes, TaskResult, finite_mean, get_algorithm
from metaray.learner import maml
from metaray.learner.maml.curvature import adapted_closed_form, line_search_objective
from metaray.tasks import make_family

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# helpers: a tiny float64 policy and a tiny fixed batch whose episodes have different lengths


def tiny_policy(hidden=(4,), activation="tanh", seed=0, post_log_std=None):
    torch.manual_seed(seed)
    policy = maml.GaussianMLPPolicy(2, 2, list(hidden), activation, post_log_std=post_log_std).double()
    with torch.no_grad():  # break the symmetry of the default init (zero biases, log-std 0)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def tiny_stage(n=3, e=2, t=6, seed=0, dtype=torch.float64, config=None):
    """Random episodes [n, e, t, ...] with random valid lengths (>= 1), zero padding after."""
    config = config or maml.MAMLConfig()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n, e), generator=g)
    lengths[0, 0] = t  # at least one full episode
    mask = (torch.arange(t)[None, None] < lengths[..., None]).to(dtype)
    obs = torch.randn(n, e, t, 2, generator=g, dtype=dtype) * 0.5 * mask[..., None]
    actions = torch.randn(n, e, t, 2, generator=g, dtype=dtype) * mask[..., None]
    rewards = torch.randn(n, e, t, generator=g, dtype=dtype) * mask
    adv = maml.compute_advantages(obs, rewards, mask, config.gamma, config.gae_lambda, config.baseline_reg)
    return maml.Stage(obs, actions, rewards, mask, torch.zeros_like(rewards), adv)


def tiny_batch(config, n=3, seed=0):
    inner = [tiny_stage(n=n, seed=seed + j, config=config) for j in range(config.num_inner_steps)]
    return inner, tiny_stage(n=n, seed=seed + 100, config=config)


def old_post_policy(policy, params, inner, post, config, inner_lr=None):
    """The old adapted policies' distributions on the post episodes; post.logp set to theirs."""
    with torch.no_grad():
        lr = config.inner_lr if inner_lr is None else inner_lr
        adapted = maml.adapted_params(policy, params, inner, post.obs.shape[0], lr)
        mean, log_std = maml.per_task_forward(policy, adapted, post.obs)
    return mean, log_std, post._replace(logp=maml.gaussian_log_prob(mean, log_std, post.actions))


def leaf_params(policy):
    return {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}


def loop_meta_gradient(policy, params, inner, post, config):
    """The oracle: one task at a time with plain autograd (create_graph unless first-order).

    Returns the adapted parameters per task and the gradient of the mean post-update surrogate.
    """
    n = post.obs.shape[0]
    total, adapted = 0.0, []
    for i in range(n):
        p = dict(params)
        for stage in inner:
            loss = maml.inner_loss(policy, p, stage.obs[i], stage.actions[i], stage.advantages[i], stage.mask[i])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=not config.first_order)
            p = {k: v - config.inner_lr * g for (k, v), g in zip(p.items(), grads, strict=True)}
        adapted.append(p)
        mean, log_std = maml.policy_forward(policy, p, post.obs[i])
        ratio = (maml.gaussian_log_prob(mean, log_std, post.actions[i]) - post.logp[i]).exp()
        total = total - maml.episode_mean(ratio * post.advantages[i], post.mask[i])
    grads = torch.autograd.grad(total / n, list(params.values()))
    return adapted, dict(zip(params, grads, strict=True))


# ------------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_validation():
    cfg = maml.MAMLConfig()
    assert (cfg.inner_lr, cfg.num_inner_steps, cfg.episodes_per_task, cfg.meta_batch_size) == (0.1, 1, 20, 20)
    assert (cfg.outer, cfg.first_order, cfg.max_kl, cfg.cg_iters, cfg.cg_damping) == ("trpo", False, 0.01, 10, 1e-5)
    assert (cfg.ls_max_steps, cfg.ls_backtrack_ratio, cfg.gamma, cfg.gae_lambda) == (15, 0.8, 0.99, 1.0)
    assert cfg.hidden_sizes == [64, 64] and cfg.activation == "tanh"
    for name, field in maml.MAMLConfig.model_fields.items():
        assert field.description, f"{name} is not documented"
    assert (cfg.init_log_std, cfg.init_output_scale) == (0.0, 1.0)
    for bad in ({"inner_lr": 0}, {"num_inner_steps": -1}, {"outer": "sgd"}, {"max_kl": -1.0},
                {"ls_backtrack_ratio": 1.0}, {"activation": "gelu"}, {"hidden_sizes": []}, {"typo": 1},
                {"init_output_scale": 0.0}, {"init_log_std": 9.0}, {"post_std": "maybe"},
                {"post_std": "learned", "outer": "reptile"}, {"post_std": "learned", "num_inner_steps": 0}):
        with pytest.raises(ValidationError):
            maml.MAMLConfig(**bad)


def test_policy_initialisation_options_scale_the_mean_layer_and_set_sigma():
    obs, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,))
    torch.manual_seed(0)
    default = maml.make_policy(obs, act, maml.MAMLConfig())
    torch.manual_seed(0)
    small = maml.make_policy(obs, act, maml.MAMLConfig(init_output_scale=0.01, init_log_std=-1.0))
    torch.testing.assert_close(small.mu.weight, 0.01 * default.mu.weight)
    torch.testing.assert_close(small.body[0].weight, default.body[0].weight)
    torch.testing.assert_close(small.log_std, torch.full((2,), -1.0))
    assert default.log_std.abs().max() == 0
    assert not hasattr(default, "post_log_std")  # post_std: shared (MAML's)
    learned = maml.make_policy(obs, act, maml.MAMLConfig(init_log_std=-1.0, post_std="learned"))
    torch.testing.assert_close(learned.post_log_std, torch.full((2,), -1.0))
    set_apart = maml.make_policy(obs, act, maml.MAMLConfig(init_log_std=-1.0, post_std="learned", init_post_log_std=-2.5))
    torch.testing.assert_close(set_apart.post_log_std, torch.full((2,), -2.5))
    torch.testing.assert_close(set_apart.log_std, torch.full((2,), -1.0))
    algorithm = get_algorithm("maml")
    assert isinstance(algorithm, maml.MAML) and algorithm.mode == "meta-batch" and algorithm.Config is maml.MAMLConfig
    assert isinstance(algorithm.make_sampler(make_family("point-nav"), maml.MAMLConfig(), 0), maml.MAMLSampler)
    assert isinstance(algorithm.make_learner(default, maml.MAMLConfig(), torch.device("cpu"), 0), maml.MAMLLearner)


# ------------------------------------------------------------------------------------------------
# returns, baseline, advantages


def test_finite_mean_skips_tasks_without_a_return():
    assert finite_mean([-3.0, float("nan"), -5.0]) == -4.0
    assert np.isnan(finite_mean([float("nan")])) and np.isnan(finite_mean([]))


def test_linear_baseline_fits_a_linear_return_exactly():
    stage = tiny_stage(n=2, e=5, t=60, seed=3)
    obs, m = stage.obs, stage.mask[..., None]
    t = (torch.arange(60, dtype=torch.float64) / 100)[None, None, :, None].expand_as(m)
    feats = torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], -1) * m  # Duan et al. 2016
    torch.testing.assert_close(maml.baseline_features(stage.obs, stage.mask), feats)
    coef = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.7, -4.0], [0.0, 1.0, 1.0, -1.0, 2.0, 0.0, -3.0, 1.5]], dtype=torch.float64)
    returns = (feats * coef[:, None, None, :]).sum(-1)  # a different linear function per task
    values = maml.fit_linear_baseline(stage.obs, returns, stage.mask, reg=1e-12)
    torch.testing.assert_close(values, returns, atol=1e-6, rtol=0)
    assert (values[stage.mask == 0] == 0).all()
    # and a return it cannot fit exactly is not fitted exactly (the check above can fail)
    bumpy = returns + torch.sin(17 * stage.obs[..., 0]) * stage.mask
    assert (maml.fit_linear_baseline(stage.obs, bumpy, stage.mask, 1e-10) - bumpy).abs().max() > 1e-3


def test_discounted_sums_match_a_loop():
    x = torch.randn(3, 7, dtype=torch.float64)
    for factor in (0.0, 0.9, 1.0):
        want = torch.zeros_like(x)
        acc = torch.zeros(3, dtype=torch.float64)
        for t in range(6, -1, -1):
            acc = x[:, t] + factor * acc
            want[:, t] = acc
        torch.testing.assert_close(maml.discount_cumsum(x, factor), want)


def test_advantages_are_gae_on_the_baseline_normalised_per_task():
    cfg = maml.MAMLConfig(gamma=0.9, gae_lambda=0.7)
    stage = tiny_stage(n=2, e=3, t=5, seed=1, config=cfg)
    r, m = stage.rewards, stage.mask
    returns = maml.discount_cumsum(r, 0.9)
    v = maml.fit_linear_baseline(stage.obs, returns, m, cfg.baseline_reg)
    raw = torch.zeros_like(r)
    for i in range(2):
        for e in range(3):
            gae = 0.0
            for t in range(4, -1, -1):
                if m[i, e, t] == 0:
                    continue
                nxt = v[i, e, t + 1] if t + 1 < 5 and m[i, e, t + 1] > 0 else 0.0
                gae = (r[i, e, t] + 0.9 * nxt - v[i, e, t]) + 0.9 * 0.7 * gae
                raw[i, e, t] = gae
    per_episode = (raw * m).sum(-1) / m.sum(-1)
    mean = per_episode.mean(-1)
    centered = (raw - mean[:, None, None]) * m
    std = (((centered**2).sum(-1) / m.sum(-1)).mean(-1)).sqrt()
    torch.testing.assert_close(stage.advantages, centered / (std[:, None, None] + 1e-8))
    torch.testing.assert_close(maml.episode_mean(stage.advantages, m), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(maml.episode_mean(stage.advantages**2, m), torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# inner step and meta-gradient


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    cfg = maml.MAMLConfig(num_inner_steps=steps, inner_lr=0.5, hidden_sizes=[4])
    policy = tiny_policy()
    inner, post = tiny_batch(cfg)
    params = leaf_params(policy)
    old_mean, old_log_std, post = old_post_policy(policy, params, inner, post, cfg)

    def objective(p):
        return maml.surrogate_and_kl(policy, p, inner, post, old_mean, old_log_std, cfg)[0]

    loss = objective(params)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    eps = 1e-6
    base = {k: v.detach() for k, v in params.items()}
    for name, value in base.items():
        fd = torch.zeros_like(value)
        for idx in range(value.numel()):
            step = torch.zeros_like(value).view(-1)
            step[idx] = eps
            step = step.view_as(value)
            with torch.no_grad():
                plus = objective({**base, name: value + step})
                minus = objective({**base, name: value - step})
            fd.view(-1)[idx] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(grads[name], fd, atol=1e-7, rtol=1e-5, msg=name)
    # the second-order terms matter here: the first-order gradient is measurably different
    fo = cfg.model_copy(update={"first_order": True})
    loss_fo = maml.surrogate_and_kl(policy, params, inner, post, old_mean, old_log_std, fo)[0]
    g_fo = maml.flat(torch.autograd.grad(loss_fo, list(params.values())))
    assert (g_fo - maml.flat(grads.values())).abs().max() > 1e-3


@pytest.mark.parametrize(("steps", "first_order"), [(1, False), (2, False), (2, True)])
def test_vmapped_adaptation_and_meta_gradient_equal_a_per_task_loop(steps, first_order):
    cfg = maml.MAMLConfig(num_inner_steps=steps, first_order=first_order, inner_lr=0.3)
    policy = tiny_policy(hidden=(8, 8)).float()
    inner, post = tiny_batch(cfg, n=4)
    to32 = lambda s: maml.Stage(*(x.float() for x in s))  # noqa: E731
    inner, post = [to32(s) for s in inner], to32(post)
    params = leaf_params(policy)
    old_mean, old_log_std, post = old_post_policy(policy, params, inner, post, cfg)

    adapted = maml.adapt(policy, params, inner, cfg.inner_lr, first_order)[-1]
    loss = maml.surrogate_and_kl(policy, params, inner, post, old_mean, old_log_std, cfg)[0]
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))

    loop_adapted, loop_grads = loop_meta_gradient(policy, params, inner, post, cfg)
    for i, p in enumerate(loop_adapted):
        for k in params:
            torch.testing.assert_close(adapted[k][i], p[k], atol=1e-5, rtol=1e-5)
    for k in params:
        torch.testing.assert_close(grads[k], loop_grads[k], atol=1e-5, rtol=1e-4)


def test_first_order_meta_gradient_is_the_post_update_gradient_at_the_adapted_parameters():
    cfg = maml.MAMLConfig(first_order=True, inner_lr=0.5)
    policy = tiny_policy()
    inner, post = tiny_batch(cfg)
    params = leaf_params(policy)
    old_mean, old_log_std, post = old_post_policy(policy, params, inner, post, cfg)
    loss = maml.surrogate_and_kl(policy, params, inner, post, old_mean, old_log_std, cfg)[0]
    got = maml.flat(torch.autograd.grad(loss, list(params.values())))
    # by hand: θ'_i = θ − α ∇L_inner_i(θ); g = mean_i ∇_{θ'} L_post_i(θ'_i) (ratio 1 at θ'_i)
    want = torch.zeros_like(got)
    n = post.obs.shape[0]
    for i in range(n):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        st = inner[0]
        g_in = torch.autograd.grad(maml.inner_loss(policy, p, st.obs[i], st.actions[i], st.advantages[i], st.mask[i]), list(p.values()))
        q = {k: (v - 0.5 * g).detach().requires_grad_() for (k, v), g in zip(p.items(), g_in, strict=True)}
        post_loss = maml.inner_loss(policy, q, post.obs[i], post.actions[i], post.advantages[i], post.mask[i])
        want += maml.flat(torch.autograd.grad(post_loss, list(q.values()))) / n
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------
# the closed forms used by TRPO (meta-gradient and KL Hessian-vector products)


@pytest.mark.parametrize(("steps", "first_order", "activation", "per_entry_lr", "post_std"),
                         [(1, False, "tanh", False, "shared"), (2, False, "tanh", False, "shared"),
                          (1, True, "tanh", False, "shared"), (2, False, "relu", False, "shared"),
                          (0, False, "tanh", False, "shared"), (2, False, "tanh", True, "shared"),
                          (1, True, "tanh", True, "shared"), (2, False, "tanh", False, "learned"),
                          (1, True, "tanh", False, "learned"), (1, False, "relu", True, "learned")])
def test_closed_form_meta_gradient_and_kl_hessian_equal_autograd(steps, first_order, activation, per_entry_lr, post_std):
    """Also with one α per parameter entry (Meta-SGD): J = Π (I − diag(α) H_j), Jᵀ = Π (I − H_j diag(α)),
    and with a learned post-update σ: J = P Π (…), P putting post_log_std in the adapted log σ."""
    cfg = maml.MAMLConfig(num_inner_steps=steps, first_order=first_order, inner_lr=0.4, activation=activation,
                          post_std=post_std)
    policy = tiny_policy(hidden=(5, 3), activation=activation, post_log_std=-0.5 if post_std == "learned" else None)
    inner, post = tiny_batch(cfg)
    params = leaf_params(policy)
    gen = torch.Generator().manual_seed(7)
    lr = ({k: 0.1 + 0.6 * torch.rand(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
          if per_entry_lr else cfg.inner_lr)
    with torch.no_grad():
        curvature = maml.KLCurvature(policy, params, inner, post, cfg, inner_lr=lr)
        per_task = maml.KLCurvature(policy, params, inner, post, cfg, tasks_per_group=2, inner_lr=lr)  # 2 + 1 tasks
    assert len(curvature.groups) == 1 and len(per_task.groups) == 2
    old_mean, old_log_std, post = old_post_policy(policy, params, inner, post, cfg, lr)
    torch.testing.assert_close(curvature.old_mean, old_mean)
    torch.testing.assert_close(curvature.old_log_std, old_log_std)
    adapted = maml.adapted_params(policy, params, inner, post.obs.shape[0], lr)
    for k in params:
        torch.testing.assert_close(curvature.adapted[k], adapted[k])

    loss, kl = maml.surrogate_and_kl(policy, params, inner, post, old_mean, old_log_std, cfg, lr)
    values = list(params.values())
    torch.testing.assert_close(curvature.loss, loss.detach())
    grad = maml.flat(torch.autograd.grad(loss, values, retain_graph=True, materialize_grads=True))
    torch.testing.assert_close(curvature.meta_gradient(params), grad, atol=1e-12, rtol=1e-9)
    grad_kl = maml.flat(torch.autograd.grad(kl, values, create_graph=True, materialize_grads=True))
    for seed in range(3):
        v = torch.randn(grad_kl.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = maml.flat(torch.autograd.grad(grad_kl @ v, values, retain_graph=True, materialize_grads=True))
        for closed_form in (curvature, per_task):
            torch.testing.assert_close(closed_form(v, params), want, atol=1e-10, rtol=1e-7)
    torch.testing.assert_close(per_task.meta_gradient(params), grad, atol=1e-12, rtol=1e-9)
    if post_std == "learned":  # the adapted policies act with post_log_std, which the gradient reaches
        torch.testing.assert_close(curvature.old_log_std[:, 0, 0], params["post_log_std"].detach().expand(3, 2))
        by_name = maml.unflat(grad, params)
        assert by_name["post_log_std"].abs().min() > 1e-6
        assert (by_name["log_std"].abs().max() == 0) == first_order  # first-order: nothing reaches the exploring σ
    torch.testing.assert_close(per_task.old_mean, old_mean)
    torch.testing.assert_close(per_task.old_log_std, old_log_std)
    for k in params:
        torch.testing.assert_close(per_task.adapted[k], adapted[k])


@pytest.mark.parametrize(("steps", "activation", "post_std"),
                         [(1, "tanh", "shared"), (2, "relu", "shared"), (2, "tanh", "learned"), (0, "tanh", "shared")])
def test_closed_form_adaptation_equals_the_vmapped_autograd_one(steps, activation, post_std):
    """The line search's θ'_i (hand-written backward pass) are autograd's, stage after stage."""
    cfg = maml.MAMLConfig(num_inner_steps=steps, inner_lr=0.4, activation=activation, post_std=post_std)
    policy = tiny_policy(hidden=(5, 3), activation=activation, post_log_std=-0.5 if post_std == "learned" else None)
    inner, post = tiny_batch(cfg)
    params = leaf_params(policy)
    with torch.no_grad():
        got = adapted_closed_form(policy, params, inner, 3, cfg.inner_lr)
        want = maml.adapted_params(policy, params, inner, 3, cfg.inner_lr)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k].expand_as(got[k]), atol=1e-13, rtol=1e-11)


@pytest.mark.parametrize("threads", [1, 2])
def test_task_groups_side_by_side_on_threads_equal_one_group(threads):
    """With 2 torch threads the closed forms run their task groups side by side (one intra-op
    thread each): the same products, meta-gradient and line-search objective as one group, and
    the thread count is restored after each."""
    cfg = maml.MAMLConfig(num_inner_steps=2, inner_lr=0.4)
    policy = tiny_policy(hidden=(5, 3))
    inner, post = tiny_batch(cfg, n=5)
    params = leaf_params(policy)
    v = torch.randn(maml.flat(params.values()).shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        with torch.no_grad():
            whole = maml.KLCurvature(policy, params, inner, post, cfg)
            torch.set_num_threads(threads)
            split = maml.KLCurvature(policy, params, inner, post, cfg, tasks_per_group=1, subsample=0.6,
                                     generator=torch.Generator().manual_seed(1))
            assert len(split.groups) == 5 and len(split.hessian_groups) == 3
            sub = maml.KLCurvature(policy, params, inner, post, cfg, subsample=0.6, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(split(v, params), sub(v, params), atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(split.meta_gradient(params), whole.meta_gradient(params), atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(split.old_mean, whole.old_mean)  # the groups back in the batch's order
            for k in params:
                torch.testing.assert_close(split.adapted[k], whole.adapted[k])
            assert torch.get_num_threads() == threads
            old_mean, old_log_std, post = old_post_policy(policy, params, inner, post, cfg)
            for k in params:  # a step away from θ_old, where the ratios and the KL are not trivial
                params[k] = params[k] + 0.05 * torch.randn(params[k].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            want = maml.surrogate_and_kl(policy, params, inner, post, old_mean, old_log_std, cfg)
            got = line_search_objective(policy, params, inner, post, old_mean, old_log_std, cfg.inner_lr, cfg, tasks_per_group=2)
            assert want[1] > 1e-6
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_subsampled_kl_hessian_is_the_chosen_tasks_mean_and_the_gradient_uses_every_task():
    cfg = maml.MAMLConfig(num_inner_steps=1, inner_lr=0.4)
    policy = tiny_policy(hidden=(5, 3))
    inner, post = tiny_batch(cfg, n=5)
    params = leaf_params(policy)
    v = torch.randn(maml.flat(params.values()).shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        full = maml.KLCurvature(policy, params, inner, post, cfg)
        # each task alone: its own KL Hessian (a mean over one task)
        alone = [maml.KLCurvature(policy, params, [maml.Stage(*(x[i:i + 1] for x in inner[0]))],
                                  maml.Stage(*(x[i:i + 1] for x in post)), cfg)(v, params) for i in range(5)]
        torch.testing.assert_close(full(v, params), sum(alone) / 5, atol=1e-12, rtol=1e-9)
        for seed in range(3):
            sub = maml.KLCurvature(policy, params, inner, post, cfg, subsample=0.4,
                                   generator=torch.Generator().manual_seed(seed))
            chosen = torch.randperm(5, generator=torch.Generator().manual_seed(seed))[:2].tolist()
            torch.testing.assert_close(sub(v, params), (alone[chosen[0]] + alone[chosen[1]]) / 2, atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(sub.meta_gradient(params), full.meta_gradient(params), atol=1e-12, rtol=1e-9)
            torch.testing.assert_close(sub.old_mean, full.old_mean)
            torch.testing.assert_close(sub.old_log_std, full.old_log_std)
            for k in params:
                torch.testing.assert_close(sub.adapted[k], full.adapted[k])


def test_the_learner_draws_its_subsamples_from_its_seed_and_step_count():
    """A resumed learner (outer step count from its optimizer state) takes the same step."""
    cfg = maml.MAMLConfig(hidden_sizes=[8], inner_lr=0.5, cg_iters=4, cg_subsample=0.5)
    inner, post = tiny_batch(cfg, n=4, seed=9)
    policy = tiny_policy(hidden=(8,))
    _, _, post = old_post_policy(policy, dict(policy.named_parameters()), inner, post, cfg)
    results = results_from(inner, post, cfg)
    a = maml.MAMLLearner(copy.deepcopy(policy), cfg, torch.device("cpu"), 3)
    a.update(results)
    tensors, meta = a.optimizer_state()
    assert meta["outer_steps"] == 1
    b = maml.MAMLLearner(copy.deepcopy(a.policy), cfg, torch.device("cpu"), 3)
    b.load_optimizer_state(tensors, meta)
    a.update(results)
    b.update(results)
    torch.testing.assert_close(maml.flat(a.policy.parameters()), maml.flat(b.policy.parameters()), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------
# outer steps through the learner, on hand-made results


def results_from(inner, post, config):
    """Turn stacked stages into the per-task TaskResults a worker hands the learner."""
    out = []
    names = maml.stage_names(config.num_inner_steps)
    for i in range(post.obs.shape[0]):
        stages = {name: Episodes(stage.obs[i].numpy(), stage.actions[i].numpy(), stage.rewards[i].numpy(),
                                 stage.mask[i].numpy().astype(bool), stage.logp[i].numpy())
                  for name, stage in zip(names, [*inner, post], strict=True)}
        out.append(TaskResult(i, 0, stages, 0, 0))
    return out


def post_kl_and_loss(policy, old_params, new_params, inner, post, config):
    """Measured independently of the learner: KL(old adapted ‖ new adapted) and the surrogate."""
    with torch.no_grad():
        old = maml.adapted_params(policy, old_params, inner, post.obs.shape[0], config.inner_lr)
        new = maml.adapted_params(policy, new_params, inner, post.obs.shape[0], config.inner_lr)
        m0, s0 = maml.per_task_forward(policy, old, post.obs)
        m1, s1 = maml.per_task_forward(policy, new, post.obs)
        kl = maml.episode_mean(maml.gaussian_kl(m0, s0, m1, s1), post.mask).mean()
        ratio = (maml.gaussian_log_prob(m1, s1, post.actions) - maml.gaussian_log_prob(m0, s0, post.actions)).exp()
        loss = -maml.episode_mean(ratio * post.advantages, post.mask).mean()
    return kl.item(), loss.item()


@pytest.mark.parametrize(("max_kl", "inner_lr", "backtrack", "steps"),
                         [(0.01, 0.1, False, 1), (0.05, 3.0, True, 1), (1e-4, 0.1, False, 1), (0.01, 0.1, False, 0)])
def test_trpo_step_respects_max_kl_and_improves_the_surrogate(max_kl, inner_lr, backtrack, steps):
    """steps = 0: no adaptation, plain multi-task TRPO on θ."""
    cfg = maml.MAMLConfig(max_kl=max_kl, inner_lr=inner_lr, hidden_sizes=[8], ls_backtrack_ratio=0.5, num_inner_steps=steps)
    policy = tiny_policy(hidden=(8,))
    inner, post = tiny_batch(cfg, n=4, seed=5)
    _, _, post = old_post_policy(policy, dict(policy.named_parameters()), inner, post, cfg)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    learner = maml.MAMLLearner(policy, cfg, torch.device("cpu"), seed=0)
    stats = learner.update(results_from(inner, post, cfg))
    after = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    kl, loss = post_kl_and_loss(policy, before, after, inner, post, cfg)
    moved = any((after[k] != before[k]).any() for k in before)
    assert stats["step_accepted"] == float(moved)
    if moved:
        assert kl <= max_kl
        assert loss < stats["meta_loss_before"]
        assert stats["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-12)
    else:
        assert stats["ls_steps"] == cfg.ls_max_steps
    if backtrack:  # the quadratic KL model is far off here: the full step had to be cut
        assert moved and stats["ls_steps"] >= 1
    assert math.isfinite(stats["grad_norm"])


def test_trpo_step_keeps_theta_when_no_step_improves_the_loss():
    # loss rises along every tried step (a steep bowl right next to θ0) while the KL (Hessian I)
    # stays below max_kl from the second try on: the line search must give up, θ unchanged
    theta0 = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def objective(p):
        d = p["x"] - theta0
        return d[0] + 100.0 * (d * d).sum(), 0.5 * (d * d).sum()

    cfg = maml.MAMLConfig(max_kl=0.5)
    params = {"x": theta0.clone().requires_grad_()}
    new, stats = maml.trpo_step(objective, params, cfg)
    assert new["x"] is params["x"] and stats["step_accepted"] == 0.0
    # and where a small enough step does improve, it is taken, inside max_kl
    new, stats = maml.trpo_step(lambda p: (objective(p)[0] - 99.9 * ((p["x"] - theta0) ** 2).sum(), objective(p)[1]), params, cfg)
    d = new["x"] - theta0
    assert stats["step_accepted"] == 1.0 and 0.5 * (d * d).sum() < 0.5 and stats["meta_loss"] < 0


@pytest.mark.parametrize("cg_subsample", [1.0, 0.5])
def test_trpo_closed_form_and_autograd_take_the_same_step(cg_subsample):
    """Also with `cg_subsample`: autograd's KL Hessian is taken on the same tasks the closed form
    draws (it used every task, silently, before)."""
    # few CG iterations: on this tiny batch later iterations amplify rounding differences (the two
    # Hessians agree to 1e-13) into 1e-4 differences of the step, whichever Hessian is used
    cfg = maml.MAMLConfig(hidden_sizes=[8], inner_lr=0.5, cg_iters=4, cg_subsample=cg_subsample)
    inner, post = tiny_batch(cfg, n=4, seed=9)
    steps = []
    for fast in (True, False):
        policy = tiny_policy(hidden=(8,))
        learner = maml.MAMLLearner(policy, cfg.model_copy(update={"closed_form": fast}), torch.device("cpu"), 0)
        _, _, post = old_post_policy(policy, dict(policy.named_parameters()), inner, post, cfg)
        stats = learner.update(results_from(inner, post, cfg))
        steps.append((maml.flat(p.detach() for p in learner.policy.parameters()), stats["ls_steps"]))
    assert steps[0][1] == steps[1][1]
    torch.testing.assert_close(steps[0][0], steps[1][0], atol=1e-8, rtol=1e-6)
    if cg_subsample < 1:  # and the subsample did change the step
        policy = tiny_policy(hidden=(8,))
        learner = maml.MAMLLearner(policy, cfg.model_copy(update={"cg_subsample": 1.0, "closed_form": False}),
                                   torch.device("cpu"), 0)
        learner.update(results_from(inner, post, cfg))
        assert not torch.allclose(maml.flat(p.detach() for p in learner.policy.parameters()), steps[1][0], atol=1e-6)


def test_first_order_ppo_clip_first_adam_step_is_lr_times_sign_of_the_post_update_gradient():
    # one epoch, no inner KL penalty, ratio 1 at the start: Adam's first step is lr·g/(|g|+eps)
    cfg = maml.MAMLConfig(outer="ppo-clip", first_order=True, ppo_epochs=1, inner_kl_coef=0.0, ppo_lr=0.01, inner_lr=0.5)
    policy = tiny_policy()
    inner, post = tiny_batch(cfg, n=3, seed=2)
    params0 = leaf_params(policy)
    _, _, post = old_post_policy(policy, params0, inner, post, cfg)
    _, g = loop_meta_gradient(policy, params0, inner, post, cfg)
    learner = maml.MAMLLearner(policy, cfg, torch.device("cpu"), seed=0)
    stats = learner.update(results_from(inner, post, cfg))
    for k, p in learner.policy.named_parameters():
        want = params0[k].detach() - cfg.ppo_lr * g[k] / (g[k].abs() + 1e-8)
        torch.testing.assert_close(p.detach(), want, atol=1e-9, rtol=1e-7)
    assert stats["clip_frac"] == 0.0 and stats["meta_loss"] < stats["meta_loss_before"] + 1e-12


def test_ppo_clip_second_order_with_inner_kl_improves_and_keeps_adam_state():
    cfg = maml.MAMLConfig(outer="ppo-clip", ppo_epochs=3, inner_kl_coef=0.1, hidden_sizes=[8])
    policy = tiny_policy(hidden=(8,))
    inner, post = tiny_batch(cfg, n=3, seed=4)
    _, _, post = old_post_policy(policy, dict(policy.named_parameters()), inner, post, cfg)
    learner = maml.MAMLLearner(policy, cfg, torch.device("cpu"), seed=0)
    stats = learner.update(results_from(inner, post, cfg))
    assert stats["meta_loss"] < 0 and stats["inner_kl"] > 0 and stats["kl"] > 0
    tensors, meta = learner.optimizer_state()
    assert tensors and "param_groups" in meta
    other = maml.MAMLLearner(tiny_policy(hidden=(8,)), cfg, torch.device("cpu"), seed=0)
    other.load_optimizer_state(tensors, meta)
    t2, _ = other.optimizer_state()
    assert t2.keys() == tensors.keys() and all(torch.equal(t2[k], tensors[k]) for k in tensors)
    trpo = maml.MAMLLearner(tiny_policy(hidden=(8,)), maml.MAMLConfig(hidden_sizes=[8]), torch.device("cpu"), 0)
    assert trpo.optimizer_state() == ({}, {"outer_steps": 0})  # no optimizer; the step count (cg_subsample draws)
    trpo.load_optimizer_state({}, {})


def test_ppo_clip_inner_kl_penalty_keeps_the_pre_update_policy_close():
    cfg = maml.MAMLConfig(outer="ppo-clip", ppo_epochs=4, ppo_lr=0.05, hidden_sizes=[8])
    inner, post = tiny_batch(cfg, n=3, seed=6)
    kls = []
    for coef in (0.0, 50.0):
        policy = tiny_policy(hidden=(8,))
        before = {k: v.detach().clone() for k, v in policy.named_parameters()}
        _, _, post = old_post_policy(policy, before, inner, post, cfg)
        learner = maml.MAMLLearner(policy, cfg.model_copy(update={"inner_kl_coef": coef}), torch.device("cpu"), 0)
        learner.update(results_from(inner, post, cfg))
        with torch.no_grad():
            m0, s0 = maml.policy_forward(policy, before, inner[0].obs)
            m1, s1 = learner.policy(inner[0].obs)
            kls.append(maml.episode_mean(maml.gaussian_kl(m0, s0, m1, s1), inner[0].mask).mean().item())
    assert kls[1] < 0.8 * kls[0]


def test_reptile_update_matches_its_formula():
    cfg = maml.MAMLConfig(outer="reptile", reptile_lr=0.3, inner_lr=0.2, num_inner_steps=2)
    policy = tiny_policy()
    inner, post = tiny_batch(cfg, n=3, seed=7)
    theta = {k: v.detach().clone() for k, v in policy.named_parameters()}
    # by hand, one task at a time: φ_i = θ after the inner steps and one more on the post data
    deltas = []
    for i in range(3):
        p = dict(theta)
        for stage in [*inner, post]:
            q = {k: v.clone().requires_grad_() for k, v in p.items()}
            loss = maml.inner_loss(policy, q, stage.obs[i], stage.actions[i], stage.advantages[i], stage.mask[i])
            p = {k: (v - 0.2 * g).detach() for (k, v), g in zip(q.items(), torch.autograd.grad(loss, list(q.values())), strict=True)}
        deltas.append({k: p[k] - theta[k] for k in theta})
    learner = maml.MAMLLearner(policy, cfg, torch.device("cpu"), seed=0)
    stats = learner.update(results_from(inner, post, cfg))
    for k, p in learner.policy.named_parameters():
        want = theta[k] + 0.3 * sum(d[k] for d in deltas) / 3
        torch.testing.assert_close(p.detach(), want)
    assert stats["grad_norm"] > 0


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_written_out_forwards_equal_the_modules_own(activation):
    """policy_forward / per_task_forward (F.linear, baddbmm) against functional_call / vmap of it."""
    policy = maml.GaussianMLPPolicy(3, 2, [5, 4], activation)
    gen = torch.Generator().manual_seed(0)
    stacked = {k: p.detach() + 0.1 * torch.randn((4, *p.shape), generator=gen) for k, p in policy.named_parameters()}
    obs = torch.randn(4, 6, 7, 3, generator=gen)
    module = torch.func.functional_call
    for got, want in zip(maml.policy_forward(policy, dict(policy.named_parameters()), obs[0]),
                         module(policy, dict(policy.named_parameters()), (obs[0],)), strict=True):
        torch.testing.assert_close(got, want)
    want = torch.vmap(lambda p, o: module(policy, p, (o,)))(stacked, obs)
    for got, ref in zip(maml.per_task_forward(policy, stacked, obs), want, strict=True):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
