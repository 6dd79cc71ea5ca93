"""BC from scratch and Meta-BC, the baselines meta adversarial imitation is judged against, as
library code: the same held-out tasks, demos and scoring as `evaluate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metaray.cluster.config import load_config
from metaray.learner.adversarial import Adversarial
from metaray.learner.adversarial.baselines import bc_from_scratch, demo_tensors, meta_bc
from metaray.learner.adversarial.sampler import AdversarialSampler
from metaray.tasks import make_family

ROOT = Path(__file__).resolve().parents[2]
EVAL_SEED = 12345


@pytest.fixture(scope="module")
def setup():
    config = load_config(ROOT / "configs" / "adversarial-point-nav.yaml").algo_config()
    family = make_family("point-nav", {})
    tasks = family.sample(6, np.random.default_rng(EVAL_SEED), "test")
    return family, tasks, config


def test_the_demos_and_expert_returns_are_the_samplers(setup):
    family, tasks, config = setup
    support, query, expert = demo_tensors(family, tasks, config, EVAL_SEED)
    assert support["obs"].shape[:2] == (6, config.num_demos) and query["obs"].shape[:2] == (6, config.num_query_demos)
    sampler = AdversarialSampler(family, config, config.episodes_per_task, EVAL_SEED)
    s_support, _, s_expert = sampler.demos(tasks)
    assert np.allclose(expert, s_expert, atol=1e-5)
    n = support["obs"].shape[2]
    assert torch.allclose(support["actions"], torch.as_tensor(s_support.actions[:, :, :n]).float())


def test_bc_learns_from_the_demos_and_is_reproducible_from_its_seed(setup):
    family, tasks, config = setup
    torch.manual_seed(0)
    untrained = bc_from_scratch(family, tasks, config, EVAL_SEED, steps=0)
    torch.manual_seed(0)
    fitted = bc_from_scratch(family, tasks, config, EVAL_SEED)  # 2000 Adam steps, as the benchmark
    torch.manual_seed(0)
    again = bc_from_scratch(family, tasks, config, EVAL_SEED)
    assert [r["task_id"] for r in fitted] == [t.task_id for t in tasks]
    assert fitted == again
    # the median task: a task or two where the cloned policy drifts off the demos dominate the mean
    score = lambda rows: float(np.median([r["normalised_score"] for r in rows]))  # noqa: E731
    assert score(fitted) > 0.9 and score(fitted) > score(untrained) + 0.5
    assert all(r["random_return"] < r["expert_return"] for r in fitted)


def test_meta_bc_trains_on_train_tasks_and_is_offered_by_the_algorithm(setup):
    family, tasks, config = setup
    rows = meta_bc(family, tasks, config, EVAL_SEED, train_seed=1, iterations=3)
    assert [r["task_id"] for r in rows] == [t.task_id for t in tasks]
    assert all(np.isfinite(r["normalised_score"]) for r in rows)
    assert set(Adversarial().baselines(family, config)) == {"bc", "meta-bc"}
