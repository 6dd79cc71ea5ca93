"""Rollout workers: envs + batched policy inference -> episodes."""

from metaray.actors.rollout_worker import RolloutWorker

__all__ = ["RolloutWorker"]
