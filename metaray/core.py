"""The algorithm contract: what an algorithm provides, and all that the runtime relies on.

An algorithm is a class (built in, or a user's `"package.module:Class"` named as `algo` in a
config) whose instance provides:

- `name`, `mode` and `Config` (a pydantic model: every hyperparameter, documented);
- `make_policy(obs_space, act_space, config)`: the torch module whose state dict is the
  published, checkpointed weights;
- `make_sampler(family, config, seed, tasks=None)`: the worker side (CPU, no autograd graph),
  a `MetaBatchSampler` (mode "meta-batch") or a `StreamSampler` (mode "stream");
- `make_learner(policy, config, device, seed)`: the learner side, a `Learner`;
- `evaluate(policy, family, tasks, config, seed)`: one dict per held-out task for `metaray eval`;
- `loop_spec(config)`: the `LoopSpec` (meta-batch size; a stream's trials per call and per
  update, and its policy-lag bound);
- optionally (`AlgorithmBase` gives the defaults): `wire_spec(config)` for actors outside Ray,
  `to_rollouts` / `from_rollouts` for a stream algorithm's payload on the wire,
  `requires_expert`, `check_family(family, config)`.

The two modes are the two training loops (`metaray.cluster.runners`):
- meta-batch: the runner draws tasks from the scheduler, each worker's sampler `collect`s its
  share with the given policy version and returns one `TaskResult` per task; the learner
  updates once from the whole meta-batch (MAML family, meta-adversarial imitation);
- stream: every worker's sampler `sample`s whole trials continuously with the newest weights it
  holds; the learner updates whenever enough trials have arrived, dropping batches older than
  the algorithm's policy lag (RL²).

This module is a leaf: numpy and `metaray.plugins` only (torch and gymnasium in type hints), so the runtime, the
algorithms, the gRPC service and users' code all import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol

import numpy as np

from metaray.plugins import PluginError, first_line, import_class

if TYPE_CHECKING:
    import gymnasium as gym
    import torch
    from pydantic import BaseModel

    from metaray.protocol import RolloutArrays
    from metaray.tasks import Task, TaskFamily

Mode = Literal["meta-batch", "stream"]
MODES: tuple[str, ...] = ("meta-batch", "stream")
Weights = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# The typed trajectory


class Episodes(NamedTuple):
    """Episodes as padded arrays [..., E, T, ...] (E episodes of T steps, T the family's
    horizon; any leading axes, e.g. tasks). `mask` is True on the steps an episode really took
    (False after it ended, and on every step of an episode dropped after an env failure);
    `logp` is the behaviour policy's log-probability of `actions` (the unclipped samples).
    `next_obs` (s' of each step) is kept only by algorithms that ask for it.

    The same structure holds numpy arrays (samplers, the wire) or tensors (learners)."""

    obs: Any  # [..., E, T, obs_dim] float32
    actions: Any  # [..., E, T, act_dim] float32
    rewards: Any  # [..., E, T] float32
    mask: Any  # [..., E, T] bool
    logp: Any  # [..., E, T] float32
    next_obs: Any = None  # [..., E, T, obs_dim] float32, or None

    def task(self, i: int) -> Episodes:
        """Task i's episodes of arrays with a leading task axis."""
        return Episodes(*(None if a is None else a[i] for a in self))

    def returns(self) -> np.ndarray:
        """Each episode's total reward [..., E]."""
        return (self.rewards * self.mask).sum(-1)


def stack_episodes(parts: Sequence[Episodes]) -> Episodes:
    """Episodes of several tasks stacked on a new leading axis (numpy)."""
    return Episodes(*(None if parts[0][k] is None else np.stack([p[k] for p in parts]) for k in range(len(Episodes._fields))))


def mean_episode_return(episodes: Episodes) -> float:
    """Mean return over the episodes not dropped (NaN when every one was dropped)."""
    valid = np.asarray(episodes.mask).any(-1)
    return float(np.asarray(episodes.returns())[valid].mean()) if valid.any() else float("nan")


def finite_mean(values: Any) -> float:
    """Mean over the finite values (NaN if none). A task whose every episode of a stage was
    dropped after env failures has no return (NaN); it must not turn the iteration's into NaN."""
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class TaskResult:
    """A meta-batch sampler's result for one task: its episodes per stage, and summaries.

    `stages` maps each stage name (e.g. "inner_0", ..., "post") to this task's `Episodes`
    [E, T, ...]. `metrics` holds summaries of the true reward (`return_pre`, `return_post`,
    optional `success_pre`, `success_post`, and whatever else the algorithm reports): the
    runtime reports them and removes them before the learner sees the result, so an
    algorithm that must not learn from the reward (imitation) cannot. `extras` holds the
    algorithm's own arrays (e.g. demonstrations)."""

    task_id: int
    policy_version: int
    stages: dict[str, Episodes]
    env_steps: int
    episodes: int
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def for_learner(self) -> TaskResult:
        """The same result without `metrics` (what reaches the learner)."""
        return TaskResult(self.task_id, self.policy_version, self.stages, self.env_steps, self.episodes, {}, self.extras)


def stack_stage(results: Sequence[TaskResult], stage: str) -> Episodes:
    """One stage of every task as Episodes [N, E, T, ...]."""
    missing = [r.task_id for r in results if stage not in r.stages]
    if missing:
        raise ValueError(f"results of tasks {missing[:5]} have no stage {stage!r} (they have {sorted(results[0].stages)})")
    return stack_episodes([r.stages[stage] for r in results])


# A stream sampler's training call returns early, with the trials that finished (maybe none), once
# this many trials per slot were dropped in it for env failures: an env failing at every step would
# otherwise keep the call, and the run, going forever without a trial. (Evaluation, which needs a
# trial of every held-out task, does not.)
DROPPED_TRIALS_PER_SLOT_BEFORE_RETURN = 4


@dataclass
class SampleInfo:
    """What a stream sampler reports with each batch of whole trials."""

    policy_version: int  # the oldest version any of the batch's trials was sampled with
    num_trials: int
    env_steps: int
    episodes: int
    trial_return_mean: float
    success_rate: float | None = None  # families that report success: mean share of successful episodes


@dataclass
class Batch:
    """What the learner is handed: an algorithm's payload and the policy version it was
    sampled with. Meta-batch mode: `payload` is a list of TaskResults (one worker's share, or
    tasks actors outside Ray ran); stream mode: the sampler's batch of trials, or the
    algorithm's `from_rollouts` of trials actors outside Ray pushed (`remote_rollouts`)."""

    policy_version: int
    payload: Any
    remote_rollouts: int = 0


@dataclass(frozen=True)
class LoopSpec:
    """How a runner drives the algorithm (`Algorithm.loop_spec(config)`)."""

    tasks_per_iteration: int = 1  # meta-batch: tasks in each meta-batch
    trials_per_call: int = 1  # stream: whole trials a worker returns per sampling call, at least
    trials_per_update: int = 1  # stream: trials gathered before one learner update
    max_policy_lag: int = 0  # stream: batches sampled with weights older than this many versions are dropped
    sync: bool = False  # stream: workers wait for each update before sampling on (on-policy batches)

    def __post_init__(self) -> None:
        for name, least in (("tasks_per_iteration", 1), ("trials_per_call", 1), ("trials_per_update", 1), ("max_policy_lag", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise AlgorithmError(f"LoopSpec.{name} must be an int >= {least}, got {value!r}")


def checked_loop_spec(algorithm: Algorithm, config: Any) -> LoopSpec:
    """`algorithm.loop_spec(config)`, checked to be a LoopSpec (AlgorithmError, one line, if not)."""
    try:
        spec = algorithm.loop_spec(config)
    except AlgorithmError as err:  # a LoopSpec built with values a runner cannot use
        raise AlgorithmError(f"algorithm {algorithm.name!r}: loop_spec(): {err}") from None
    if not isinstance(spec, LoopSpec):
        raise AlgorithmError(f"algorithm {algorithm.name!r}: loop_spec() returned a {type(spec).__name__}, not a metaray.core.LoopSpec")
    return spec


@dataclass(frozen=True)
class WireSpec:
    """How an algorithm's rollouts travel through the gRPC service (see metaray.proto):
    each task assignment is answered with `rollouts_per_stage` rollouts of each stage, each
    rollout holding `episodes_per_rollout` episodes (a stream algorithm's trial: several)."""

    stages: tuple[str, ...]
    rollouts_per_stage: int
    episodes_per_rollout: int
    max_policy_lag: int = 0  # stream: how many versions old a pushed trial may be
    transitions: bool = False  # each rollout also carries next_observations and terminals (off-policy)


# --------------------------------------------------------------------------------------------
# The roles


class Sampler(Protocol):
    """The worker side: one vector env and the policy, on one CPU, no autograd graph."""

    version: int  # the policy version of the weights it holds (-1: none yet)
    dropped_episodes: int  # episodes (stream: trials) dropped after env failures, so far

    def set_weights(self, version: int, weights: Weights) -> None: ...

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Random state (task draws, action noise, envs) as a JSON-able dict and named arrays;
        `meta["in_flight"]` true when it also holds the partial work (RL²'s unfinished trials,
        when the env can save its state), which then goes on after a checkpoint and a resume."""
        ...

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...

    def restart(self) -> None:
        """Drop partial work (a stream sampler's unfinished trials): a checkpoint whose state of
        the sampler lacks it (not `in_flight`) does this so a resumed run continues exactly like
        the uninterrupted one."""
        ...

    def close(self) -> None:
        """Close the envs (a sampler built for one round, e.g. by an actor outside Ray)."""
        ...


class MetaBatchSampler(Sampler, Protocol):
    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        """The worker step for these tasks with weights `version` (e.g. pre-update episodes,
        local inner step, post-update episodes); one TaskResult per task, in order."""
        ...


class StreamSampler(Sampler, Protocol):
    def sample(self, min_trials: int) -> tuple[Any, SampleInfo]:
        """Step until at least `min_trials` whole trials finished; return them as the
        algorithm's payload (numpy arrays only) and a SampleInfo."""
        ...


class Learner(Protocol):
    """The learner side (GPU or CPU): owns the policy and the optimizer state."""

    policy: torch.nn.Module  # its state dict is what is published and checkpointed
    generator: torch.Generator  # the update's random draws (checkpointed)

    def update(self, payloads: list[Any]) -> dict[str, float]:
        """One update. Meta-batch: `payloads` is the meta-batch's TaskResults (metrics removed);
        stream: one payload per sampled batch. Returns scalar stats for progress and metrics."""
        ...

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Optimizer state as flat tensors and a JSON-able dict (checkpoints never pickle)."""
        ...

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class Algorithm(Protocol):
    name: str
    mode: Mode
    Config: type[BaseModel]
    requires_expert: bool

    def make_policy(self, obs_space: gym.Space, act_space: gym.Space, config: Any) -> torch.nn.Module: ...

    def make_sampler(self, family: TaskFamily, config: Any, seed: int,
                     tasks: list[Task] | None = None) -> MetaBatchSampler | StreamSampler:
        """A rollout worker's sampler. With `tasks` (stream mode), run exactly one trial of
        each (an actor outside Ray given its tasks); otherwise draw train tasks as it goes."""
        ...

    def make_learner(self, policy: torch.nn.Module, config: Any, device: torch.device, seed: int) -> Learner: ...

    def evaluate(self, policy: torch.nn.Module, family: TaskFamily, tasks: list[Task], config: Any,
                 seed: int) -> list[dict[str, Any]]:
        """One dict per task with `task_id` and `return_post` (and `return_pre`) or
        `trial_return`; optional `success_rate`, `success_rate_pre`, `success_last`,
        `normalised_score`, `expert_return`, `random_return`."""
        ...

    def loop_spec(self, config: Any) -> LoopSpec: ...

    def wire_spec(self, config: Any) -> WireSpec | None: ...

    def to_rollouts(self, payload: Any) -> list[RolloutArrays]: ...

    def from_rollouts(self, rollouts: list[RolloutArrays], config: Any, obs_space: gym.Space,
                      act_space: gym.Space) -> Any: ...

    def check_family(self, family: TaskFamily, config: Any) -> None: ...


# A baseline: (family, held-out tasks, algorithm config, eval seed, baseline seed) -> per-task rows
# as Algorithm.evaluate returns them. The eval seed is `evaluate`'s (demos, env noise); the
# baseline seed is the baseline's own randomness (its networks' initialisation, its choices).
Baseline = Callable[..., list[dict[str, Any]]]


class AlgorithmBase:
    """Defaults for the optional parts of the contract: no actors outside Ray, any family."""

    name: ClassVar[str]
    mode: ClassVar[Mode]
    Config: ClassVar[type]
    requires_expert: ClassVar[bool] = False

    def wire_spec(self, config: Any) -> WireSpec | None:
        """None: actors outside Ray cannot run this algorithm's tasks."""
        return None

    def to_rollouts(self, payload: Any) -> list[RolloutArrays]:
        raise NotImplementedError(f"algorithm {self.name!r} does not send its trials over gRPC")

    def from_rollouts(self, rollouts: list[RolloutArrays], config: Any, obs_space: gym.Space,
                      act_space: gym.Space) -> Any:
        raise NotImplementedError(f"algorithm {self.name!r} does not take trials over gRPC")

    def task_set(self, family: TaskFamily, config: Any) -> list[Task] | None:
        """A fixed set of train tasks the algorithm samples from (tasks for actors outside Ray
        are drawn from it); None: any train task (the scheduler's)."""
        return None

    def baselines(self, family: TaskFamily, config: Any) -> dict[str, Baseline]:
        """What this algorithm is judged against on `family`, by name (`metaray baseline`, a
        suite's `baseline:`): each runs on the held-out tasks `evaluate` gets and returns rows
        like it. None by default."""
        return {}

    def check_family(self, family: TaskFamily, config: Any) -> None:
        """Raise ValueError (one line) when this algorithm, so configured, cannot run on `family`."""
        if self.requires_expert and not callable(getattr(family, "expert", None)):
            raise ValueError(f"algo {self.name} imitates an expert: task family {family.name!r} has no expert(task)")


# --------------------------------------------------------------------------------------------
# The registry

REQUIRED = ("name", "mode", "Config", "make_policy", "make_sampler", "make_learner", "evaluate", "loop_spec")
OPTIONAL = {"wire_spec": AlgorithmBase.wire_spec, "to_rollouts": AlgorithmBase.to_rollouts,
            "from_rollouts": AlgorithmBase.from_rollouts, "check_family": AlgorithmBase.check_family,
            "task_set": AlgorithmBase.task_set, "baselines": AlgorithmBase.baselines,
            "requires_expert": False}
_BUILTIN = {"rl2": "metaray.learner.rl2:RL2", "maml": "metaray.learner.maml:MAML",
            "adversarial": "metaray.learner.adversarial:Adversarial", "pearl": "metaray.learner.pearl:PEARL"}


class AlgorithmError(ValueError):
    """An algorithm that cannot be found, imported or does not meet the contract (one line)."""


def builtin_algorithms() -> tuple[str, ...]:
    return tuple(_BUILTIN)


def _import_class(spec: str) -> type:
    try:
        return import_class(spec, "algorithm", f"algo {spec!r} must be a built-in name ({', '.join(_BUILTIN)}) or 'package.module:ClassName'")
    except PluginError as error:
        raise AlgorithmError(str(error)) from None


_cache: dict[str, Algorithm] = {}


def get_algorithm(spec: str) -> Algorithm:
    """The algorithm named `spec` (a built-in name or 'package.module:ClassName'), checked
    against the contract; AlgorithmError names what is missing."""
    if spec in _cache:
        return _cache[spec]
    if not isinstance(spec, str) or not spec:
        raise AlgorithmError(f"algo must be a built-in name ({', '.join(_BUILTIN)}) or 'package.module:ClassName'")
    if spec not in _BUILTIN and ":" not in spec:
        raise AlgorithmError(f"unknown algo {spec!r} (known: {', '.join(_BUILTIN)}, or 'package.module:ClassName')")
    cls = _import_class(_BUILTIN.get(spec, spec))
    missing = [name for name in REQUIRED if not hasattr(cls, name)]
    if missing:
        raise AlgorithmError(f"algorithm {spec!r} lacks {', '.join(missing)} (see metaray.core.Algorithm)")
    try:
        algorithm = cls()
    except Exception as error:
        raise AlgorithmError(f"algorithm {spec!r} cannot be built without arguments: {type(error).__name__}: {first_line(error)}") from None
    for name, default in OPTIONAL.items():
        if not hasattr(algorithm, name):
            setattr(algorithm, name, default.__get__(algorithm) if callable(default) else default)
    _check(spec, algorithm)
    _cache[spec] = algorithm
    return algorithm


def _check(spec: str, algorithm: Any) -> None:
    from pydantic import BaseModel

    if algorithm.mode not in MODES:
        raise AlgorithmError(f"algorithm {spec!r}: mode must be one of {', '.join(MODES)}, got {algorithm.mode!r}")
    if not (inspect.isclass(algorithm.Config) and issubclass(algorithm.Config, BaseModel)):
        raise AlgorithmError(f"algorithm {spec!r}: Config must be a pydantic BaseModel class")
    not_callable = [n for n in ("make_policy", "make_sampler", "make_learner", "evaluate", "loop_spec", *OPTIONAL)
                    if n != "requires_expert" and not callable(getattr(algorithm, n))]
    if not_callable:
        raise AlgorithmError(f"algorithm {spec!r}: {', '.join(not_callable)} must be methods")
    if not isinstance(algorithm.name, str) or not algorithm.name:
        raise AlgorithmError(f"algorithm {spec!r}: name must be a non-empty string")


def episodes_from_rollouts(rollouts: Sequence[RolloutArrays], horizon: int, obs_shape: tuple[int, ...],
                           act_shape: tuple[int, ...]) -> Episodes:
    """Rollouts of one episode each (e.g. pushed by an actor outside Ray) as Episodes [E, T, ...]
    padded to the horizon; the rollouts' own lengths give the mask."""
    e = len(rollouts)
    obs = np.zeros((e, horizon, *obs_shape), np.float32)
    act = np.zeros((e, horizon, *act_shape), np.float32)
    rew, logp, mask = np.zeros((e, horizon), np.float32), np.zeros((e, horizon), np.float32), np.zeros((e, horizon), bool)
    for i, r in enumerate(rollouts):
        n = len(r.rewards)
        obs[i, :n], act[i, :n], rew[i, :n], logp[i, :n], mask[i, :n] = r.obs, r.actions, r.rewards, r.logp, True
    return Episodes(obs, act, rew, mask, logp)
