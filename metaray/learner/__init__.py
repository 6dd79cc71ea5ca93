"""Algorithms (one file each), the learner, the parameter server."""

from __future__ import annotations

from types import ModuleType

ALGORITHMS = ("rl2", "maml", "adversarial")


def get_algorithm(name: str) -> ModuleType:
    """The algorithm's module: its Config, make_policy, Sampler, Learner and evaluate."""
    if name == "rl2":
        from metaray.learner import rl2

        return rl2
    if name == "maml":
        from metaray.learner import maml

        return maml
    if name == "adversarial":
        from metaray.learner import adversarial

        return adversarial
    raise ValueError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
