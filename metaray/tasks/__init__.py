"""Task families and their environments: what the agents meta-learn on.

`make_family(name, kwargs)` builds a family from its config name; `make_vector_env(family,
tasks)` gives the vector env a rollout worker steps (natively batched where the family has one).
"""

from metaray.tasks.base import SAMPLER_INFO_KEYS, Task, TaskFamily, TaskVectorEnv, step_success
from metaray.tasks.registry import (
    FAMILIES,
    TaskFamilyError,
    check_family,
    list_families,
    make_family,
    make_vector_env,
)

__all__ = [
    "FAMILIES",
    "SAMPLER_INFO_KEYS",
    "Task",
    "TaskFamily",
    "TaskFamilyError",
    "TaskVectorEnv",
    "check_family",
    "list_families",
    "make_family",
    "make_vector_env",
    "step_success",
]
