"""Meta-World ML1 / ML10 / ML45 (Yu et al. 2019) as metaray task families.

Tasks come straight from the benchmark objects, `metaworld.ML1(env_name, seed)`, `ML10(seed)`,
`ML45(seed)`: their `train_tasks` are metaray's train split and their `test_tasks` the test
split. (The `Meta-World/ML1-train` gym registration of metaworld 3.1.1 hands out the test tasks,
so it is not used.) A metaray `Task` names one benchmark task by its index in the split's list:
`task_id` = that index, `params` = (index of its env class, index). The benchmark seed
(`seed`, default 0) decides the goals and object positions, as in Meta-World.

Episodes follow Meta-World: 500 steps (`horizon` may shorten it), truncated at the end, never
terminated unless `terminate_on_success` (Meta-World's own test-time option) is set; the goal is
hidden from the observation (39 dims, the goal part zero). `info["success"]` is Meta-World's
success flag; metaray counts an episode as a success if any of its steps has it. Rewards:
`reward_version` (default "v2", metaworld 3.x's own default; "v1" the original).

Meta-World's per-step Python is most of its cost (its physics ~0.07 ms of a 0.17–0.66 ms step):
`speedups` (default true) swaps four of its functions for ones that return the same bits
(`metaray.tasks.metaworld_speedups`: a step 1.69x faster over the 50 v3 envs, ~2.5x for those
that grasp; an env built in ~5 ms, not ~105 ms, once its class was built in the process).

Building a benchmark costs once per process (measured here: ML1 1.4 s, ML10 10 s, ML45 34 s);
it is cached per process. Requires `pip install 'metaray[metaworld]'` (metaworld 3.x, which pins
mujoco 3.3.0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import SPLITS, Task
from metaray.tasks.metaworld_speedups import set_speedups
from metaray.tasks.native import check_int, check_task

HORIZON = 500  # Meta-World's max_path_length
# Meta-World's reward functions: "v2" (metaworld 3.x's default, the one its v3 envs are tuned for)
# or "v1" (the original paper's). The Meta-World+ paper (NeurIPS 2025) shows results move with the
# version (RL² on ML10 ~35 % vs ~15 %), so the shipped configs name it and every result records it.
REWARD_VERSIONS = ("v2", "v1")


def _import_metaworld() -> Any:
    try:
        import metaworld
    except ImportError:
        raise ValueError(
            "Meta-World task families need the metaworld package: pip install 'metaray[metaworld]'"
        ) from None
    return metaworld


@functools.lru_cache(maxsize=4)
def benchmark(kind: str, env_name: str | None, seed: int) -> Any:
    """The Meta-World benchmark object (built once per process: it instantiates every class)."""
    metaworld = _import_metaworld()
    if kind == "ML1":
        return metaworld.ML1(env_name, seed=seed)
    return getattr(metaworld, kind)(seed=seed)


class MetaWorldTaskEnv(gym.Env):
    """One slot running Meta-World tasks; `set_task` takes effect at the next reset.

    ML10/ML45 tasks of different classes need different MuJoCo models: the slot builds the class
    its task needs at reset (about 0.1 s here) and keeps only that one, since each Sawyer env
    holds about 20 MiB.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, family: _MetaWorldFamily, task: Task) -> None:
        self.family = family
        self._env: Any = None
        self.task = self._next_task = task
        self._env = self._env_for(task)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self._steps = 0

    def _env_for(self, task: Task) -> Any:
        check_task(task, self.family.name, 2)
        set_speedups(self.family.speedups)
        mw_task = self.family.metaworld_task(task)
        env = self._env
        if env is None or type(env) is not self.family.env_classes()[mw_task.env_name]:
            if env is not None:
                env.close()
            env = self.family.env_classes()[mw_task.env_name](reward_function_version=self.family.reward_version)
        env.set_task(mw_task)
        return env

    def set_task(self, task: Task) -> None:
        """Run `task` from the next reset on (the current episode keeps its task)."""
        check_task(task, self.family.name, 2)
        self._next_task = task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if self._next_task is not self.task:
            self.task = self._next_task
            self._env = self._env_for(self.task)
        if seed is not None:
            self._env.seed(seed)  # Meta-World ignores reset's seed
        self._steps = 0
        return self._env.reset()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, _, truncated, info = self._env.step(action)
        self._steps += 1
        terminated = bool(self.family.terminate_on_success and info["success"] >= 1.0)
        truncated = (bool(truncated) or self._steps >= self.family.horizon) and not terminated
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class _MetaWorldFamily:
    """Task sampling and env construction shared by the three Meta-World families."""

    name: ClassVar[str]
    kind: ClassVar[str]
    extra: ClassVar[str] = "metaworld"  # the pip extra it needs (`metaray tasks` says so)
    env_name: str | None
    seed: int
    horizon: int
    terminate_on_success: bool
    reward_version: str
    speedups: bool

    def _check(self) -> None:
        owner = type(self).__name__
        check_int(owner, "seed", self.seed, minimum=0)
        check_int(owner, "horizon", self.horizon)
        if self.horizon > HORIZON:
            raise ValueError(f"{owner}: horizon must be <= {HORIZON} (Meta-World's), got {self.horizon}")
        for flag in ("terminate_on_success", "speedups"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{owner}: {flag} must be true or false")
        if self.reward_version not in REWARD_VERSIONS:
            raise ValueError(f"{owner}: reward_version must be one of {', '.join(REWARD_VERSIONS)}, got {self.reward_version!r}")

    @property
    def max_episode_steps(self) -> int:
        return self.horizon

    def _benchmark(self) -> Any:
        return benchmark(self.kind, self.env_name, self.seed)

    def split_tasks(self, split: str) -> list[Any]:
        """The benchmark's own task list of a split (metaworld.types.Task objects)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        bench = self._benchmark()
        return bench.train_tasks if split == "train" else bench.test_tasks

    def env_classes(self) -> dict[str, type]:
        bench = self._benchmark()
        return {**bench.train_classes, **bench.test_classes}

    def task(self, split: str, task_id: int) -> Task:
        """The task at index `task_id` of the benchmark's split."""
        tasks = self.split_tasks(split)
        if not 0 <= task_id < len(tasks):
            raise ValueError(f"{self.name}: {split} task_id must be in [0, {len(tasks)}), got {task_id}")
        class_index = list(self.env_classes()).index(tasks[task_id].env_name)
        return Task(self.name, split, int(task_id), (float(class_index), float(task_id)))

    def metaworld_task(self, task: Task) -> Any:
        return self.split_tasks(task.split)[task.task_id]

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        """n tasks of the split, distinct while n <= the split's size (50 per class); beyond it
        every task is used ceil(n / size) or floor(n / size) times."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be an integer >= 0, got {n!r}")
        size = len(self.split_tasks(split))
        order = np.concatenate([rng.permutation(size) for _ in range(-(-n // size))]) if n else []
        return [self.task(split, int(i)) for i in order[:n]]

    def train_tasks(self) -> list[Task]:
        """Every train task in the benchmark's order (the `fixed-set` scheduler cycles through them)."""
        return [self.task("train", i) for i in range(len(self.split_tasks("train")))]

    def make_env(self, task: Task | None = None) -> MetaWorldTaskEnv:
        """A single env; without a task it runs train task 0 until `set_task`."""
        return MetaWorldTaskEnv(self, task if task is not None else self.task("train", 0))


@dataclass(frozen=True)
class MetaWorldML1Family(_MetaWorldFamily):
    """Meta-World ML1: one manipulation env (env_name, e.g. reach-v3), 50 train and 50 test goals, horizon 500.

    Task params: (class index, task index). Train/test tasks are `metaworld.ML1(env_name,
    seed).train_tasks` / `.test_tasks`; the goal is hidden; `info["success"]` gives success.
    """

    env_name: str = "reach-v3"
    seed: int = 0
    horizon: int = HORIZON
    terminate_on_success: bool = False
    reward_version: str = "v2"
    speedups: bool = True  # metaray.tasks.metaworld_speedups: the same bits, faster

    name: ClassVar[str] = "metaworld-ml1"
    kind: ClassVar[str] = "ML1"

    def __post_init__(self) -> None:
        names = _import_metaworld().ML1.ENV_NAMES
        if self.env_name not in names:
            raise ValueError(
                f"MetaWorldML1Family: unknown env_name {self.env_name!r} (e.g. reach-v3, push-v3, "
                f"pick-place-v3; {len(names)} in all)"
            )
        self._check()


@dataclass(frozen=True)
class MetaWorldML10Family(_MetaWorldFamily):
    """Meta-World ML10: 10 train envs x 50 tasks, 5 held-out test envs x 50 tasks, horizon 500.

    Task params: (class index, task index) into `metaworld.ML10(seed)`'s train_tasks /
    test_tasks; the test split's env classes never appear in training.
    """

    seed: int = 0
    horizon: int = HORIZON
    terminate_on_success: bool = False
    reward_version: str = "v2"
    speedups: bool = True  # metaray.tasks.metaworld_speedups: the same bits, faster

    name: ClassVar[str] = "metaworld-ml10"
    kind: ClassVar[str] = "ML10"
    env_name: ClassVar[None] = None

    def __post_init__(self) -> None:
        self._check()


@dataclass(frozen=True)
class MetaWorldML45Family(_MetaWorldFamily):
    """Meta-World ML45: 45 train envs x 50 tasks, 5 held-out test envs x 50 tasks, horizon 500.

    Task params: (class index, task index) into `metaworld.ML45(seed)`'s lists. Building the
    benchmark takes about half a minute per process.
    """

    seed: int = 0
    horizon: int = HORIZON
    terminate_on_success: bool = False
    reward_version: str = "v2"
    speedups: bool = True  # metaray.tasks.metaworld_speedups: the same bits, faster

    name: ClassVar[str] = "metaworld-ml45"
    kind: ClassVar[str] = "ML45"
    env_name: ClassVar[None] = None

    def __post_init__(self) -> None:
        self._check()
