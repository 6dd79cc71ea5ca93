"""Learned inner optimizers (`maml.inner_optimizer: meta-sgd | lstm`, or a user's own named as
'package.module:Class', here examples/per_tensor_sgd.py): the update rules, the worker's
adaptation against the learner's recomputation, the meta-training step, checkpoints, and the
settings that are refused."""

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from metaray.learner import adversarial as adv
from metaray.learner import maml
from metaray.learner.maml.inner_optimizers import DECAY_RANGE, LOG_SCALE_RANGE, preprocess
from metaray.networks import get_weights
from metaray.tasks import make_family

torch.set_num_threads(1)

N_TASKS, EPISODES = 3, 4
USERS = "examples.per_tensor_sgd:PerTensorSGD"  # a user's rule, outside metaray


def point_nav_setup(kind, steps=1, outer="trpo", seed=0, **extra):
    """A point-nav sampler and the matching policy (with its learned optimizer) for `kind`."""
    config = maml.MAMLConfig(inner_optimizer=kind, num_inner_steps=steps, episodes_per_task=EPISODES,
                             meta_batch_size=N_TASKS, hidden_sizes=[8], outer=outer, **extra)
    family = make_family("point-nav", {"horizon": 10})
    sampler = maml.MAMLSampler(family, config, N_TASKS * EPISODES, seed=seed)
    torch.manual_seed(seed)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    return config, family, sampler, policy


def perturb(module, scale=0.5, seed=1):
    """Move every meta-parameter off its initial value (the LSTM starts as plain SGD)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def collect(config, family, sampler, policy, seed=3):
    sampler.set_weights(0, get_weights(policy))
    tasks = family.sample(N_TASKS, np.random.default_rng(seed))
    results = sampler.collect(tasks, 0)
    learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
    return learner, results


def test_preprocessing_follows_andrychowicz_et_al():
    x = torch.tensor([2.0, -0.5, 1e-6, -1e-6, 0.0])
    magnitude, sign = preprocess(x)
    p = 10.0
    torch.testing.assert_close(magnitude, torch.tensor([math.log(2) / p, math.log(0.5) / p, -1.0, -1.0, -1.0]))
    torch.testing.assert_close(sign, torch.tensor([1.0, -1.0, 1e-6 * math.exp(p), -1e-6 * math.exp(p), 0.0]))


@pytest.mark.parametrize("steps", [1, 2])
def test_an_untrained_lstm_adapts_exactly_as_sgd(steps):
    """The LSTM's output layer starts at zero: i = α, f = 1, so adaptation is MAML's."""
    config, family, sampler, policy = point_nav_setup("lstm", steps)
    learner, results = collect(config, family, sampler, policy)
    inner, post = learner.stages(results)
    theta = policy.theta()
    with torch.no_grad():
        lstm = maml.adapted_params(policy, theta, inner, N_TASKS, policy.inner_optimizer)
        sgd = maml.adapted_params(policy, theta, inner, N_TASKS, config.inner_lr)
    for k in sgd:
        torch.testing.assert_close(lstm[k], sgd[k], rtol=0, atol=1e-7)


@pytest.mark.parametrize(("kind", "steps"), [("meta-sgd", 1), ("lstm", 1), ("lstm", 2), ("meta-sgd", 2), (USERS, 2)])
def test_the_workers_adapted_parameters_equal_the_learners_recomputation(kind, steps):
    """The optimizer travels with the weights; the worker adapts without a graph, the learner
    recomputes the same θ'_i from the episodes (the LSTM's state carried across the steps)."""
    config, family, sampler, policy = point_nav_setup(kind, steps)
    perturb(policy.inner_optimizer)
    learner, results = collect(config, family, sampler, policy)
    inner, _ = learner.stages(results)
    recomputed = maml.adapted_params(policy, policy.theta(), inner, N_TASKS, policy.inner_optimizer)
    sgd = maml.adapted_params(policy, policy.theta(), inner, N_TASKS, config.inner_lr)
    assert set(recomputed) == set(sampler.adapted_params)
    for k, p in recomputed.items():
        torch.testing.assert_close(p.detach(), sampler.adapted_params[k], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(recomputed["mu.bias"], sgd["mu.bias"])  # the learned rule did change the step


def test_the_lstm_rule_by_hand():
    """One step of the rule, i = α e^{3 tanh((a + s)/3)}, f = 1 − 0.1 tanh(d), θ' = f θ − i g,
    against its own coefficients, and the previous update fed into the next step."""
    shapes = {"w": torch.Size([2, 3]), "b": torch.Size([3])}
    opt = maml.LSTMInnerOptimizer(shapes, inner_lr=0.1, hidden_size=4)
    perturb(opt)
    g = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    grads = {k: torch.randn(2, *s, generator=g) for k, s in shapes.items()}
    losses = torch.randn(2, generator=g)
    memory = {}
    with torch.no_grad():
        step, decay = opt.coefficients(grads, losses, {})
        new = opt.update(params, grads, losses, memory)
    theta = torch.cat([params["w"].reshape(-1), params["b"]]).expand(2, -1)
    flat_g = torch.cat([grads["w"].reshape(2, -1), grads["b"]], 1)
    expected = (1 - decay) * theta - step * flat_g
    torch.testing.assert_close(torch.cat([new["w"].reshape(2, -1), new["b"]], 1), expected)
    assert (step > 0.1 * math.exp(-LOG_SCALE_RANGE)).all() and (step < 0.1 * math.exp(LOG_SCALE_RANGE)).all()
    assert (decay.abs() < DECAY_RANGE).all() and not torch.allclose(step, torch.full_like(step, 0.1))
    torch.testing.assert_close(memory["previous"], expected - theta)
    assert memory["h"].shape == (2 * 9, 4)


@pytest.mark.parametrize("kind", ["meta-sgd", "lstm"])
@pytest.mark.parametrize("outer", ["trpo", "ppo-clip"])
def test_the_learned_step_lowers_the_post_update_loss_and_theta_takes_its_own(kind, outer):
    """Adam on the optimizer's parameters descends the post-update policy-gradient loss of the
    adapted policies (measured with θ put back); θ takes the configured outer step."""
    config, family, sampler, policy = point_nav_setup(kind, 1, outer, inner_optimizer_lr=0.01)
    perturb(policy.inner_optimizer, 0.1)
    learner, results = collect(config, family, sampler, policy)
    inner, post = learner.stages(results)
    theta = {k: p.detach().clone() for k, p in policy.theta().items()}
    before_opt = {k: p.detach().clone() for k, p in policy.inner_optimizer.named_parameters()}

    def post_loss():
        with torch.no_grad():
            adapted = maml.adapted_params(policy, theta, inner, N_TASKS, policy.inner_optimizer)
            return torch.vmap(lambda p, *a: maml.inner_loss(policy, p, *a))(
                adapted, post.obs, post.actions, post.advantages, post.mask).mean().item()

    loss_before = post_loss()
    stats = learner.update(results)
    assert stats["inner_lr_grad_norm"] > 0
    assert any(not torch.equal(p, before_opt[k]) for k, p in policy.inner_optimizer.named_parameters())
    assert post_loss() < loss_before
    assert any(not torch.equal(p, theta[k]) for k, p in policy.theta().items())  # θ moved too
    if outer == "trpo":
        assert stats["step_accepted"] == 1.0 and stats["kl"] <= config.max_kl


def test_lstm_trpo_meta_gradient_goes_through_the_rule():
    """With lstm the TRPO step differentiates through the update rule by autograd (no closed
    form): its meta-gradient equals finite differences of the surrogate."""
    config, family, sampler, policy = point_nav_setup("lstm", 1)
    perturb(policy.inner_optimizer, 0.3)
    policy.double()
    learner, results = collect(config, family, sampler, policy.float())
    policy.double()
    learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
    inner, post = learner.stages(results)
    assert not learner.outer.closed_form()
    mean, log_std, old_logp = learner.outer.old_post_policy(policy.theta(), inner, post)
    post = post._replace(logp=old_logp)
    policy.inner_optimizer.requires_grad_(False)
    params = {k: p.detach().clone().requires_grad_() for k, p in policy.theta().items()}
    loss, _ = maml.surrogate_and_kl(policy, params, inner, post, mean, log_std, config, policy.inner_optimizer)
    grad = torch.autograd.grad(loss, params["mu.bias"])[0]
    eps = 1e-6
    for j in range(grad.numel()):
        shifted = []
        for sign in (1, -1):
            p = {k: v.detach().clone() for k, v in params.items()}
            p["mu.bias"][j] += sign * eps
            shifted.append(maml.surrogate_and_kl(policy, p, inner, post, mean, log_std, config, policy.inner_optimizer)[0].item())
        assert grad[j].item() == pytest.approx((shifted[0] - shifted[1]) / (2 * eps), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("per_task", [False, True])
def test_batched_inner_gradients_equal_vmapped_ones(per_task):
    """`inner_gradients` (one batched forward, autograd on the sum of the task losses) gives every
    task's own gradient and loss, as vmap(grad_and_value(inner_loss)) does, from one θ or from
    per-task θ_i; with a graph its gradients are differentiable in θ."""
    config, family, sampler, policy = point_nav_setup("lstm", 1)
    learner, results = collect(config, family, sampler, policy)
    inner, _ = learner.stages(results)
    stage = inner[0]
    g = torch.Generator().manual_seed(2)
    theta = {k: (p.detach().expand(N_TASKS, *p.shape) + 0.1 * torch.randn(N_TASKS, *p.shape, generator=g)
                 if per_task else p.detach().clone()).requires_grad_() for k, p in policy.theta().items()}
    grads, losses = maml.inner_gradients(policy, theta, stage, per_task)
    fn = torch.vmap(torch.func.grad_and_value(lambda p, *a: maml.inner_loss(policy, p, *a)),
                    in_dims=(0 if per_task else None, 0, 0, 0, 0))
    expected, expected_losses = fn(theta, stage.obs, stage.actions, stage.advantages, stage.mask)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-7)
    for k in expected:
        torch.testing.assert_close(grads[k], expected[k], rtol=1e-5, atol=1e-6)
    second = torch.autograd.grad(sum(v.square().sum() for v in grads.values()), list(theta.values()))
    assert any(t.abs().sum() > 0 for t in second)
    with torch.no_grad():  # a worker: no graph, the same values
        plain, _ = maml.inner_gradients(policy, theta, stage, per_task)
    assert all(not v.requires_grad for v in plain.values())
    for k in plain:
        torch.testing.assert_close(plain[k], grads[k].detach())


def frozen_rule_kl(policy, inner, post, old_mean, old_log_std, coefficients, params, first_order=False):
    """Mean KL(old ‖ adapted) with the rule's (s_j, d_j) held at the given values: θ_{j+1} =
    (1 − d_j) θ_j − s_j ∇ℓ_j(θ_j), by autograd through the inner gradients (not `first_order`)."""
    theta = params
    for j, (stage, (step, decay)) in enumerate(zip(inner, coefficients, strict=True)):
        in_dims = (0 if j else None, 0, 0, 0, 0)
        grads = torch.vmap(torch.func.grad(lambda p, *a: maml.inner_loss(policy, p, *a)), in_dims=in_dims)(
            theta, stage.obs, stage.actions, stage.advantages, stage.mask)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        theta = {k: (1 - decay[k]) * p - step[k] * grads[k] for k, p in theta.items()}
    mean, log_std = maml.per_task_forward(policy, theta, post.obs)
    return maml.episode_mean(maml.gaussian_kl(old_mean, old_log_std, mean, log_std), post.mask).mean()


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_lstm_trpo_curvature_in_closed_form_holds_the_rules_coefficients_fixed(steps, first_order):
    """The KL Hessian-vector products of the closed form with a learned rule equal autograd's
    through the same inner steps with the rule's (s, d) held at their values (the rule's own
    dependence on θ is what the curvature leaves out); its old policies are the exact ones; and
    for the untrained LSTM (s = α, d = 0 whatever the input) it is autograd's through the rule.
    First-order with one step the rule reads only detached gradients and losses, so the two are
    the same (J = diag(1 − d), the decay included); from the second step on it also reads its
    previous update, which holds −d ⊙ θ."""
    config, family, sampler, policy = point_nav_setup("lstm", steps, first_order=first_order)
    for trained in (False, True):  # untrained first: perturbing is for good
        if trained:
            perturb(policy.inner_optimizer, 0.3)
        learner, results = collect(config, family, sampler, policy)
        policy.double()
        learner = maml.MAMLLearner(policy, config, torch.device("cpu"), seed=0)
        inner, post = learner.stages(results)
        rule = policy.inner_optimizer
        assert learner.outer.curvature_only() and not learner.outer.closed_form()
        theta = {k: p.detach() for k, p in policy.theta().items()}
        with torch.no_grad():
            curvature = maml.KLCurvature(policy, theta, inner, post, config, inner_lr=rule)
            exact_mean, exact_log_std, _ = learner.outer.old_post_policy(theta, inner, post)
        torch.testing.assert_close(curvature.old_mean, exact_mean, rtol=1e-9, atol=1e-9)
        # the rule's coefficients along the adaptation, taken as the workers take them
        coefficients, memory, adapted = [], {}, theta
        with torch.no_grad():
            for j, stage in enumerate(inner):
                grads, losses = maml.inner_gradients(policy, adapted, stage, per_task=j > 0)
                step, decay = rule.linear_coefficients(adapted, grads, losses, memory)
                coefficients.append((step, decay))
                adapted = {k: (1 - decay[k]) * p - step[k] * grads[k] for k, p in adapted.items()}
        params = {k: p.clone().requires_grad_() for k, p in theta.items()}
        args = (policy, inner, post, curvature.old_mean, curvature.old_log_std)
        frozen = frozen_rule_kl(*args, coefficients, params, first_order)
        through_rule = maml.surrogate_and_kl(policy, params, inner, post, *args[3:], config, rule)[1]
        g = torch.Generator().manual_seed(5)
        for kl in (frozen, through_rule):
            grad = maml.flat(torch.autograd.grad(kl, list(params.values()), create_graph=True))
            v = torch.randn(grad.shape, generator=g, dtype=grad.dtype)
            hvp = maml.flat(torch.autograd.grad(grad @ v, list(params.values())))
            closed = curvature(v, like=params)
            if kl is frozen or not trained or (first_order and steps == 1):
                torch.testing.assert_close(closed, hvp, rtol=1e-6, atol=1e-9)
            else:  # through the trained rule the curvature has more terms than the closed form
                assert not torch.allclose(closed, hvp, rtol=1e-3, atol=1e-6)
        policy.float()


@pytest.mark.parametrize("kind", ["lstm", USERS])
def test_trpo_update_in_closed_form_equals_autograd_where_the_curvatures_agree(kind):
    """The whole TRPO step with a learned rule: the curvature in closed form (`closed_form:
    true`) and by autograd through the rule take the same step where the two curvatures agree
    (the untrained LSTM; a user's rule whose coefficients do not depend on the gradient, moved
    off its start), the meta-gradient by autograd in both."""
    config, family, sampler, policy = point_nav_setup(kind, 2)
    if kind == USERS:
        perturb(policy.inner_optimizer)
    learner, results = collect(config, family, sampler, policy)
    policy.double()
    steps = {}
    for closed_form in (True, False):
        cfg = config.model_copy(update={"closed_form": closed_form})
        copy_ = copy.deepcopy(policy)
        learner = maml.MAMLLearner(copy_, cfg, torch.device("cpu"), seed=0)
        assert learner.outer.curvature_only() == closed_form
        stats = learner.update(results)
        assert stats["step_accepted"] == 1.0
        steps[closed_form] = {k: p.detach() for k, p in copy_.theta().items()}
    for k in steps[True]:
        torch.testing.assert_close(steps[True][k], steps[False][k], rtol=1e-6, atol=1e-9)


def test_a_users_rule_without_a_linear_form_is_differentiated_by_autograd():
    """A rule that only implements `update` (the contract's minimum) gets the TRPO curvature
    through itself by autograd, not the closed form."""

    class Momentumless(maml.InnerOptimizer):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.1))

        def update(self, params, grads, losses, memory):
            return {k: p - self.scale * torch.tanh(grads[k]) for k, p in params.items()}

    config, family, sampler, policy = point_nav_setup("meta-sgd", 1)
    policy.inner_optimizer, sampler.policy.inner_optimizer = Momentumless(), Momentumless()
    learner, results = collect(config, family, sampler, policy)
    assert not learner.outer.curvature_only() and not learner.outer.closed_form()
    before = {k: p.detach().clone() for k, p in policy.theta().items()}
    stats = learner.update(results)
    assert stats["inner_lr_grad_norm"] > 0
    assert any(not torch.equal(p, before[k]) for k, p in policy.theta().items())


@pytest.mark.parametrize("kind", ["meta-sgd", "lstm", USERS])
def test_the_optimizer_and_its_adam_state_are_checkpointed(kind):
    config, family, sampler, policy = point_nav_setup(kind, 1, "ppo-clip")
    learner, results = collect(config, family, sampler, policy)
    learner.update(results)
    weights = get_weights(policy)
    assert any(k.startswith("inner_optimizer.") for k in weights)
    tensors, meta = learner.optimizer_state()
    fresh_policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    fresh_policy.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    fresh = maml.MAMLLearner(fresh_policy, config, torch.device("cpu"), seed=0)
    fresh.load_optimizer_state(tensors, meta)
    assert fresh.outer.learned_optimizer.state_dict()["state"][0]["step"] == 1
    assert fresh.outer.optimizer.state_dict()["state"][0]["step"] == config.ppo_epochs  # θ's Adam kept apart
    for a, b in ((learner, fresh),):  # the next update is the same from the restored state
        ra, rb = a.update(results), b.update(results)
        assert ra["meta_loss"] == rb["meta_loss"] and ra["inner_lr_grad_norm"] == rb["inner_lr_grad_norm"]


def test_an_adversarial_checkpoint_from_before_inner_optimizer_loads():
    """Meta-SGD's log α lived at `inner_log_lr.*` in the adversarial agent and its Adam state at
    `inner_lr/…`: both load into the generator's inner optimizer."""
    config = adv.AdversarialConfig(learn_inner_lr=True, inner_lr_lr=0.05, hidden_sizes=[8], disc_hidden_sizes=[8])
    assert config.inner_optimizer == "meta-sgd" and config.inner_optimizer_lr == 0.05
    family = make_family("point-nav", {"horizon": 10})
    env = adv.AdversarialSampler(family, config, 4, seed=0).env
    agent = adv.make_policy(env.single_observation_space, env.single_action_space, config)
    old = {k.replace("generator.inner_optimizer.log_lr.", "inner_log_lr."): v.clone() + 0.25
           for k, v in agent.state_dict().items()}
    assert any(k.startswith("inner_log_lr.") for k in old)
    low = env.single_action_space.low.copy()
    agent.load_state_dict(old)
    assert torch.equal(agent.generator.inner_optimizer.log_lr["mu_bias"], old["inner_log_lr.mu_bias"])
    # the discriminator's action bounds are its own copies: loading them leaves the family's space alone
    assert np.array_equal(env.single_action_space.low, low)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), seed=0)
    _, meta = learner.optimizer_state()  # no step yet: the layout, then the old one made from it
    meta["inner_lr"] = meta["generator"].pop("inner_optimizer")
    params = list(agent.generator.inner_optimizer.parameters())
    tensors = {f"inner_lr/{i}.{name}": torch.full_like(p, 0.5) for i, p in enumerate(params) for name in ("exp_avg", "exp_avg_sq")}
    tensors.update({f"inner_lr/{i}.step": torch.tensor(7.0) for i in range(len(params))})
    learner.load_optimizer_state(tensors, meta)
    state = learner.gen.outer.learned_optimizer.state_dict()["state"]
    assert state[0]["step"] == 7 and torch.equal(state[0]["exp_avg"], torch.full_like(params[0], 0.5))


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"outer": "reptile"}, "maml.inner_optimizer: lstm needs outer trpo or ppo-clip"),
    ({"num_inner_steps": 0}, "num_inner_steps >= 1"),
    ({"inner_optimizer": "adam"}, r"maml.inner_optimizer: unknown 'adam' \(sgd, meta-sgd, lstm, or your own"),
])
def test_settings_a_learned_optimizer_cannot_train_with_are_refused(settings, fragment):
    with pytest.raises(ValidationError, match=fragment):
        maml.MAMLConfig(**{"inner_optimizer": "lstm", **settings})
    with pytest.raises(ValidationError, match="adapt_generator"):
        adv.AdversarialConfig(inner_optimizer="lstm", adapt_generator=False)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"inner_optimizer": "no_such_module_for_metaray:Rule"},
     "maml.inner_optimizer: cannot import inner optimizer module 'no_such_module_for_metaray': ModuleNotFoundError"),
    ({"inner_optimizer": "examples.per_tensor_sgd:Nope"}, "module 'examples.per_tensor_sgd' has no attribute 'Nope'"),
    ({"inner_optimizer": "examples.reinforce:Reinforce"}, "is not a subclass of metaray.learner.maml.InnerOptimizer"),
    ({"inner_optimizer": "metaray.learner.maml:InnerOptimizer"}, "does not implement update"),
    ({"inner_optimizer": USERS, "inner_optimizer_kwargs": {"maxscale": 3}},
     r"maml.inner_optimizer_kwargs: PerTensorSGD got an unexpected keyword 'maxscale' \(allowed: max_scale\)"),
    ({"inner_optimizer": "lstm", "inner_optimizer_kwargs": {"max_scale": 3}}, "settings for a user's inner optimizer"),
    ({"inner_optimizer": USERS, "outer": "reptile"}, "per_tensor_sgd:PerTensorSGD needs outer trpo or ppo-clip"),
])
def test_a_users_inner_optimizer_that_cannot_be_used_is_refused_in_one_line(settings, fragment):
    with pytest.raises(ValidationError, match=fragment) as err:
        maml.MAMLConfig(**settings)
    assert "\n" not in str(err.value.errors()[0]["msg"])


def test_a_users_inner_optimizer_that_cannot_be_built_is_one_line():
    """Its constructor's own refusal, and a rule with nothing to learn, when the policy is built."""
    config = maml.MAMLConfig(inner_optimizer=USERS, inner_optimizer_kwargs={"max_scale": 0.5})
    shapes = {"w": torch.Size([2, 3])}
    with pytest.raises(ValueError, match=r"^inner optimizer '.*PerTensorSGD' cannot be built with inner_optimizer_kwargs "
                                         r"\{'max_scale': 0.5\}: ValueError: max_scale must be above 1, got 0.5$"):
        maml.make_inner_optimizer(config.inner_optimizer, shapes, 0.1, settings=config.inner_optimizer_kwargs)

    class Fixed(maml.InnerOptimizer):
        def __init__(self, shapes, inner_lr):
            super().__init__()

        def update(self, params, grads, losses, memory):
            return {k: p - torch.sign(grads[k]) for k, p in params.items()}

    import sys
    import types
    module = types.ModuleType("metaray_test_fixed_rule")
    module.Fixed = Fixed
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(ValueError, match="has no parameters: nothing for the outer step to learn"):
            maml.make_inner_optimizer("metaray_test_fixed_rule:Fixed", shapes, 0.1)
    finally:
        del sys.modules[module.__name__]
