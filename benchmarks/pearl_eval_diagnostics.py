"""PEARL: a run's newest checkpoint on its own train goals, run by the training sampler and by the
evaluation protocol, with sampled and with mean actions; mean return per episode of the round.
Separates what evaluation changes (the context it accumulates, mean actions) from generalisation.

    python benchmarks/pearl_eval_diagnostics.py RUN_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from metaray.cluster.checkpoint import latest_checkpoint
from metaray.cluster.config import load_config
from metaray.learner import pearl
from metaray.tasks import make_family


def main(run: str) -> None:
    config = load_config(f"{run}/config.yaml")
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    env = family.make_env(family.sample(1, np.random.default_rng(0))[0])
    agent = pearl.PEARLAgent(pearl.pearl_spec(env.observation_space, env.action_space, algo), algo)
    tensors = load_file(str(latest_checkpoint(run) / "learner.safetensors"))
    agent.load_state_dict({k[len("policy/"):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("policy/")})
    weights = {k: v.detach().numpy() for k, v in agent.state_dict().items()}
    train = pearl.train_task_set(family, algo)
    tasks = [train[i % len(train)] for i in range(100)]
    for evaluation in (False, True):
        for deterministic in (False, True):
            cfg = algo.model_copy(update={"eval_deterministic": deterministic})
            sampler = pearl.PEARLSampler(family, cfg, len(tasks), 3, tasks=tasks, evaluation=evaluation)
            sampler.set_weights(1, weights)
            sampler.restart()
            batch, _ = sampler.sample(len(tasks))
            label = ("evaluation protocol" if evaluation else "training sampler") + (", mean actions" if deterministic else ", sampled")
            print(f"{label:40s}", np.round(batch.episode_returns.mean(0), 2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a PEARL run directory with a checkpoint")
    main(str(parser.parse_args().run_dir))
