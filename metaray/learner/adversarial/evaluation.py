"""Evaluating meta adversarial imitation: adapt from demos on held-out tasks, score the true return
against the expert's and a random policy's on the same tasks."""

from __future__ import annotations

from typing import Any

from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.adversarial.networks import AdversarialAgent
from metaray.learner.adversarial.sampler import AdversarialSampler
from metaray.tasks import Task, TaskFamily
from metaray.tasks.reference import normalised_score, random_policy_returns


def evaluate(policy: AdversarialAgent, family: TaskFamily, tasks: list[Task], config: AdversarialConfig,
             seed: int) -> list[dict[str, Any]]:
    """Per held-out task: K support demos and k·N reward-free episodes adapt θ and φ, then the
    adapted policy's true return; the expert's and a random policy's true returns on the same
    task give normalised_score = (R − R_random) / (R_expert − R_random)."""
    sampler = AdversarialSampler(family, config, config.episodes_per_task, seed)
    sampler.set_weights(0, {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()})
    random_returns = random_policy_returns(family, tasks, config.episodes_per_task, seed)
    out = []
    for chunk in evaluation_chunks(len(tasks), config.meta_batch_size):
        for r in sampler.collect([tasks[i] for i in chunk], 0):
            task_id, m = r.task_id, r.metrics
            post, expert, rand = m["return_post"], m["expert_return"], random_returns[task_id]
            out.append({"task_id": task_id, "return_pre": m["return_pre"], "return_post": post,
                        "expert_return": expert, "random_return": rand,
                        "normalised_score": normalised_score(post, expert, rand)})
    return out


def evaluation_chunks(n: int, size: int) -> list[range]:
    """Consecutive chunks of at most `size` (at least 2) task indices, none of one task when n > 1,
    so the wrong-demo control always has a neighbour to take demos from."""
    size = max(2, size)
    chunks = [range(a, min(a + size, n)) for a in range(0, n, size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2], chunks[-1] = range(chunks[-2].start, chunks[-2].stop - 1), range(chunks[-2].stop - 1, n)
    return chunks
