"""The run configuration: one YAML file plus `--set key.path=value` overrides, validated.

Fixed top-level keys (users and scripts rely on them): `algo`, `seed`, `iterations`, `task`.
Every other section belongs to one component and documents its own fields; each built-in
algorithm has its own section, named after it (its `Config`), and a user's own algorithm
(`algo: "package.module:Class"`) takes its settings from `algo_settings`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)

from metaray.core import Algorithm, AlgorithmError, builtin_algorithms, get_algorithm


class ConfigError(ValueError):
    """A user mistake in a config file or override; its message is one line."""


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str = Field(description="Built-in family name (see `metaray tasks`) or 'package.module:ClassName'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the family's constructor.")


class WorkersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_workers: int = Field(2, ge=1, description="Rollout-worker actors (1 CPU each); `--workers` overrides.")
    max_workers: int | None = Field(None, ge=1, description="Most workers `metaray scale` may ask for (null: no limit); a local Ray instance is sized for it.")
    torch_threads: int = Field(1, ge=1, description="torch threads per rollout worker; 1 avoids oversubscription.")
    env_step_timeout_s: float | None = Field(30.0, gt=0, description="A vector-env step (all slots) or a reset running longer is a hang: the slot running when it expires is rebuilt and its episode dropped (null: no limit).")
    env_max_recreate: int = Field(3, ge=1, description="Rebuilds in a row of a slot env whose reset keeps failing before the worker gives up (and is restarted).")
    restart_failed_workers: bool = Field(True, description="Restart a rollout worker that died (RLlib: restart_failed_env_runners); false: stop the run with a checkpoint.")
    max_dropped_iterations: int = Field(3, ge=1, description="Stop, with a checkpoint, when every episode of this many iterations in a row was dropped for env failures (an env that fails at every step or reset): training on nothing would otherwise go on silently.")
    max_worker_restarts: int = Field(3, ge=0, description="Restarts allowed per worker slot over the run (RLlib: max_num_env_runner_restarts).")
    restart_delay_s: float = Field(1.0, ge=0, description="Wait before restarting a worker; doubles with each restart of the same slot, at most 30 s.")
    probe_timeout_s: float = Field(10.0, gt=0, description="Health probe: a worker that does not answer a ping within this is treated as dead.")
    task_timeout_s: PositiveFloat | Literal["auto"] | None = Field("auto", description="Meta-batch algorithms: re-issue a worker's tasks to an idle worker when they take longer than this; the first result wins. 'auto': 4x the median time of the run's jobs so far, at least 10 s; null: never.")
    start_grace_s: float = Field(60.0, gt=0, description="How long training waits at start for every rollout worker to answer; those still not placed then (no node with room, an autoscaler still adding one) join when they start, and training goes on without them meanwhile.")
    unplaceable_timeout_s: float = Field(300.0, gt=0, description="With no rollout worker alive (e.g. their node was lost and no node has room for the replacements), checkpoint and stop after this long.")


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when the cluster has one, else CPU.")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved for the learner actor.")
    torch_threads: int = Field(1, ge=1, description="torch threads of the learner on CPU.")


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(10, ge=1, description="Write a checkpoint every this many iterations (and at the end).")
    keep: int = Field(3, ge=1, description="How many recent checkpoints to keep.")
    replay_buffer: bool = Field(False, description="Also save an off-policy learner's replay buffers (PEARL) in each checkpoint, so a resumed run goes on with them (in --serial exactly as the uninterrupted run); false: a resumed run starts with empty buffers (warm start). Under Ray the buffers saved are the learner's when the checkpoint is written, which may include the rounds of the update in flight.")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_tasks: int = Field(100, ge=1, description="Held-out tasks for `metaray eval`.")
    seed: int = Field(12345, description="Seed for drawing evaluation tasks.")
    normalise: bool = Field(False, description="Also score each held-out task against the family's expert and uniformly random actions on that same task (10 episodes each): expert_return, random_return and normalised_score = (R − R_random) / (R_expert − R_random), the mean over tasks in the result. Families with an expert(task) only.")
    every: int = Field(0, ge=0, description="While training, evaluate the current policy on these held-out tasks every this many iterations and at the last (RUN_DIR/evals/iter-NNNNNN.json; heldout_* in progress.jsonl, TensorBoard and the metrics): the learning curve on held-out tasks. 0: only `metaray eval` after training. It runs in the driver between iterations; heldout_eval_s says what it costs.")


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus port on the driver (0 = any free port); null = off.")
    host: str = Field("0.0.0.0", min_length=1, description="Interface the Prometheus endpoint binds to.")
    tensorboard: bool = Field(True, description="Write TensorBoard scalars to RUN_DIR/tensorboard.")


class GrpcConfig(BaseModel):
    """The gRPC service for rollout actors outside Ray (see metaray/cluster/grpc_service.py)."""

    model_config = ConfigDict(extra="forbid")
    port: int | None = Field(None, ge=0, le=65535, description="Serve on this port (0 = any free port); null = off. `--grpc-port` sets it.")
    host: str = Field("127.0.0.1", min_length=1, description="Interface to bind; loopback unless you mean to expose it (then use TLS).")
    token_env: str = Field("METARAY_GRPC_TOKEN", description="Environment variable holding the token clients must send.")
    token_file: str | None = Field(None, description="File holding the token (used when the env var is unset). Neither: a random token is written to RUN_DIR/grpc_token.")
    tls_cert: str | None = Field(None, description="PEM certificate chain; with tls_key the service speaks TLS only.")
    tls_key: str | None = Field(None, description="PEM private key for tls_cert.")
    max_message_mb: float = Field(16.0, gt=0, le=1024, description="Largest message accepted or sent, in MiB; larger ones are refused (RESOURCE_EXHAUSTED).")
    max_rollouts_per_push: int = Field(1024, ge=1, description="Most rollouts in one PushEpisodes stream.")
    max_queued_rollouts: int = Field(8192, ge=1, description="Stream algorithms: most accepted trials waiting for the learner; pushes beyond it are refused (RESOURCE_EXHAUSTED), so memory stays bounded.")
    max_concurrent_rpcs: int = Field(64, ge=1, description="Calls served at once (threads); more are refused (RESOURCE_EXHAUSTED).")
    max_open_assignments: int = Field(10000, ge=1, description="Stream algorithms: most handed-out tasks not yet pushed; the oldest are forgotten beyond it.")
    assignment_ttl_s: float = Field(600.0, gt=0, description="Stream algorithms: a task handed out is forgotten after this long.")
    external_tasks: int = Field(0, ge=0, description="Meta-batch algorithms: tasks of each meta-batch offered to gRPC actors (the rest go to Ray workers).")
    task_timeout_s: float = Field(60.0, gt=0, description="Meta-batch algorithms: an offered task taken by an actor but not delivered within this is run by a Ray worker instead.")
    take_wait_s: float = Field(0.0, ge=0, description="Meta-batch algorithms: once the Ray workers are done, wait up to this long for actors to take offered tasks nobody took yet (0: run them on Ray workers at once).")
    max_abs_value: float = Field(1e6, gt=0, description="Observations, rewards, log-probs and continuous actions beyond this magnitude are rejected.")

    @model_validator(mode="after")
    def _tls_pair(self) -> GrpcConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["uniform", "fixed-set", "regret"] = Field("uniform", description="Meta-batch tasks: 'uniform' (fresh train tasks every iteration), 'fixed-set' (a fixed list of train tasks, cycled) or 'regret' (replay high-regret train tasks; needs a family with an expert). fixed-set and regret schedule meta-batches (meta-batch algorithms); stream algorithms draw their tasks per trial and take uniform only.")
    fixed_set_size: int = Field(50, ge=1, description="fixed-set: tasks in the set when the family does not define its own train_tasks().")
    regret_share: float = Field(0.5, ge=0, le=1, description="regret: share λ of each meta-batch replayed by regret; the rest are fresh uniform draws.")
    regret_temperature: float = Field(0.3, gt=0, description="regret: rank-based prioritisation P ∝ (1/rank)^(1/temperature); lower = greedier.")
    regret_pool_size: int = Field(1000, ge=1, description="regret: seen train tasks kept as replay candidates (the highest-regret ones).")
    regret_smoothing: float = Field(0.5, gt=0, le=1, description="regret: weight of the newest observation in a task's running regret.")


class RunConfigBase(BaseModel):
    """A whole run (the built-in algorithms' sections are added to it below)."""

    model_config = ConfigDict(extra="forbid")
    algo: str = Field(description=f"Algorithm: {', '.join(builtin_algorithms())} (see `metaray.core`), or a user's own as 'package.module:ClassName'.")
    seed: int = Field(0, description="Seed of everything the run draws.")
    iterations: int = Field(100, ge=1, description="Learner updates (meta-iterations) in total, across resumes.")
    task: TaskConfig
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    algo_settings: dict[str, Any] = Field(default_factory=dict, description="Settings of a user's own algorithm (validated by its Config); built-in algorithms use their own section.")
    _algo_config: BaseModel | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _algorithm_fits_the_run(self) -> RunConfigBase:
        try:
            algorithm = get_algorithm(self.algo)
        except AlgorithmError as err:
            raise ValueError(f"algo: {err}") from None
        if self.algo in builtin_algorithms():
            if self.algo_settings:
                raise ValueError(f"algo_settings: for a user's own algorithm; {self.algo} takes its settings from its '{self.algo}' section")
            self._algo_config = getattr(self, self.algo)
        else:
            try:
                self._algo_config = algorithm.Config.model_validate(self.algo_settings)
            except ValidationError as err:
                raise ValueError(f"algo_settings.{format_validation_error(err)}") from None
        if algorithm.mode == "stream" and self.scheduler.strategy != "uniform":
            # stream samplers refill each finished trial slot from the family themselves: a meta-batch
            # schedule would be accepted and silently ignored
            raise ValueError(f"scheduler.strategy: {self.scheduler.strategy} schedules meta-batches; {self.algo} draws its own "
                             "tasks per trial (use uniform, or a meta-batch algorithm)")
        if self.grpc.external_tasks > 0 and (algorithm.mode == "stream" or algorithm.wire_spec(self._algo_config) is None):
            why = "it takes whole trials from actors, not meta-batch tasks" if algorithm.mode == "stream" else \
                "actors outside Ray cannot run its tasks"
            raise ValueError(f"grpc.external_tasks: {self.algo}: {why}; use 0")
        return self

    def algorithm(self) -> Algorithm:
        """The run's algorithm (see metaray.core.Algorithm)."""
        return get_algorithm(self.algo)

    def algo_config(self) -> BaseModel:
        """The run's algorithm's validated settings."""
        assert self._algo_config is not None
        return self._algo_config


RunConfig = create_model(
    "RunConfig", __base__=RunConfigBase, __doc__="A whole run.",
    **{name: (get_algorithm(name).Config, Field(default_factory=get_algorithm(name).Config,
                                                description=f"Settings of algo {name} ({get_algorithm(name).Config.__doc__.splitlines()[0]})"))
       for name in builtin_algorithms()},
)


def format_validation_error(err: ValidationError) -> str:
    """The first error of a pydantic validation as one line naming the key (configs, suites)."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if e["type"] == "missing":
        return f"{loc}: required key is missing"
    # a rule over a whole config or section, a user algorithm's settings, or a rule whose message
    # starts with its key: the message names the keys
    if e["type"] == "value_error":
        message = str(e["ctx"]["error"]) if "error" in e.get("ctx", {}) else e["msg"]
        if len(e["loc"]) <= 1 or loc.startswith("algo_settings") or message.startswith(f"{loc}: "):
            return message
    return f"{loc}: {e['msg'][0].lower()}{e['msg'][1:]} (got {e.get('input')!r})"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value typed as YAML would type it)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def validate(data: Any) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping of keys at the top level")
    if "runs" in data and "algo" not in data:  # the easy mix-up: a bench suite given as a config
        raise ConfigError("config error: a bench suite (it lists runs), not a training config: `metaray bench` runs it")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"config error: {format_validation_error(err)}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} malformed YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise ConfigError(f"{path}: empty config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got a YAML {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return validate(apply_overrides(load_yaml(path), overrides or []))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
