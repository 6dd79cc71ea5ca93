import numpy as np
import torch

from metaray.actors import RolloutWorker
from metaray.learner.parameter_server import ParameterServer
from metaray.learner.rl2 import RL2Config, RL2Policy, SpaceSpec, get_weights
from metaray.learner.variables import LocalVariables

CFG = RL2Config(hidden_size=8, slots_per_worker=6, episodes_per_trial=4).model_dump()


def test_worker_fetches_only_newer_weights_and_samples_whole_trials():
    variables = LocalVariables(ParameterServer())
    worker = RolloutWorker(0, "rl2", CFG, "bandit", {"num_arms": 3}, seed=1, variables=variables)
    policy = RL2Policy(SpaceSpec(1, True, 3), RL2Config(hidden_size=8))
    variables.publish(0, get_weights(policy))
    sent, info = worker.sample(min_trials=6)
    batch = sent.payload
    assert sent.policy_version == 0 and info["policy_version"] == 0 and info["num_trials"] == 6
    assert info["env_steps"] == 6 * 4 and info["episodes"] == 24
    assert batch.obs.shape == (6, 4, 1) and batch.actions.shape == (6, 4)
    assert info["trial_return_mean"] == batch.rewards.sum(1).mean()
    worker.sample(min_trials=6)
    assert worker.stats()["weight_fetches"] == 1  # same version: not fetched again
    with torch.no_grad():
        policy.policy_net.head.bias.fill_(5.0)
    variables.publish(1, get_weights(policy))
    _, info = worker.sample(min_trials=6)
    assert info["policy_version"] == 1 and worker.stats() == {"index": 0, "version": 1, "weight_fetches": 2}
    np.testing.assert_array_equal(worker.sampler.policy.policy_net.head.bias.detach().numpy(), np.full(3, 5.0, np.float32))


def test_worker_seeds_give_different_tasks():
    variables = LocalVariables(ParameterServer())
    variables.publish(0, get_weights(RL2Policy(SpaceSpec(1, True, 3), RL2Config(hidden_size=8))))
    a = RolloutWorker(0, "rl2", CFG, "bandit", {"num_arms": 3}, seed=1, variables=variables)
    b = RolloutWorker(1, "rl2", CFG, "bandit", {"num_arms": 3}, seed=2, variables=variables)
    ids_a = set(a.sample(6)[0].payload.task_ids.tolist())
    ids_b = set(b.sample(6)[0].payload.task_ids.tolist())
    assert ids_a.isdisjoint(ids_b)
