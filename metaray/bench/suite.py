"""A benchmark suite: which configs, with which overrides, over which seeds, judged by which
held-out metric. One YAML file under `benchmarks/suites/` reruns a published table:

    name: smoke
    seeds: [0, 1]
    eval: {num_tasks: 50}
    runs:
      - name: rl2-bandit
        config: configs/quickstart.yaml
        set: {iterations: 3, rl2.trials_per_update: 64}
    compare: [[rl2-bandit, other-run]]      # probability of improvement, optional

Every run is trained in serial mode (one process, bit-reproducible from the seed) as its own Ray
Tune trial; the suite is validated whole before anything starts, with one line per mistake.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from metaray.cluster.config import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    load_yaml,
    parse_override,
    validate,
)
from metaray.tasks import TaskFamilyError, make_family

# Held-out metrics a suite may be judged by (keys of `metaray eval`'s result). `mean_return` is
# the headline return: post-adaptation where the algorithm adapts, else the trial's return;
# `success_last` is RL²'s success in the trial's last episode (the Meta-World+ protocol's number:
# the episodes before it adapt).
METRICS = ("mean_return", "success_rate", "success_last", "normalised_score")
Metric = Literal["mean_return", "success_rate", "success_last", "normalised_score"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ValueError):
    """A suite the user wrote cannot run: the message is one line naming the key."""


class BenchEval(BaseModel):
    """Held-out evaluation of every run (overrides the configs' own `eval` section)."""

    model_config = ConfigDict(extra="forbid")
    num_tasks: int | None = Field(default=None, ge=1)
    seed: int | None = None
    split: Literal["test", "train"] = "test"
    metric: Metric = "mean_return"


class BenchRun(BaseModel):
    """One row of the table: a config with its overrides, trained once per seed."""

    model_config = ConfigDict(extra="forbid")
    name: str
    config: str
    set: dict[str, Any] = Field(default_factory=dict)
    iterations: int | None = Field(default=None, ge=1)
    cpus: float = Field(default=1.0, gt=0)
    # false: the trial's run uses its own local Ray instance (rollout workers and learner as
    # actors: what async sampling, policy lag and sync-vs-async comparisons need); `cpus` must
    # then cover the rollout workers
    serial: bool = True
    # a classical algorithm evaluated on the same held-out tasks instead of a trained run
    # (metaray.tasks.classical; `metaray baseline CONFIG NAME`): no training, the seed seeds it
    baseline: str | None = None
    # this run's held-out metric where it differs from the suite's `eval.metric` (RL² beside MAML
    # on Meta-World: success_last against success_rate, each algorithm's post-adaptation success)
    metric: Metric | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names files)")
        return value

    def overrides(self) -> list[str]:
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                for key, value in self.set.items()]


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seeds: list[int] = Field(min_length=1)
    runs: list[BenchRun] = Field(min_length=1)
    eval: BenchEval = Field(default_factory=BenchEval)
    compare: list[tuple[str, str]] = Field(default_factory=list)
    # a training return whose time to reach (env steps, wall minutes) the report gives per run
    target: float | None = None

    @field_validator("name")
    @classmethod
    def _suite_name_is_a_file_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names directories)")
        return value

    @model_validator(mode="after")
    def _names_unique_and_known(self) -> Suite:
        names = [run.name for run in self.runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"runs: the name {dup[0]!r} is used twice")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is listed twice")
        for pair in self.compare:
            for name in pair:
                if name not in names:
                    raise ValueError(f"compare: {name!r} is not a run of this suite (runs: {', '.join(names)})")
        return self

    def trials(self) -> list[dict[str, Any]]:
        """(run, seed) pairs in a stable order: the Tune param space's grid."""
        return [{"run": run.name, "seed": seed} for run, seed in itertools.product(self.runs, self.seeds)]

    def run(self, name: str) -> BenchRun:
        return next(r for r in self.runs if r.name == name)


def require_bench_extra(*modules: str) -> None:
    """One line instead of an ImportError deep inside Tune or rliable."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise SuiteError(f"this needs the bench extra: pip install 'metaray[bench]' ({module}: {err})") from None


def resolve_config(path: str, suite_file: Path | None) -> Path:
    """A run's config path: as given (absolute or from the current directory), else relative to
    the suite file's directory or one of its parents (suites under benchmarks/suites/ name
    configs/... of the repository)."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.is_file():
        return given.resolve()
    if suite_file is not None:
        for base in Path(suite_file).resolve().parents:
            if (base / given).is_file():
                return base / given
    return given


def load_suite_data(data: Any, suite_file: Path | None = None) -> Suite:
    """Validate a suite and every run's config with its overrides and the suite's eval section;
    raises SuiteError with one line on the first mistake."""
    where = f"{suite_file}: " if suite_file else ""
    if not isinstance(data, dict):
        raise SuiteError(f"{where}expected a mapping of keys at the top level")
    if "algo" in data and "runs" not in data:  # the easy mix-up: a training config given as a suite
        raise SuiteError(f"{where}a training config (algo: {data['algo']}), not a suite: `metaray train` runs it, "
                         "`metaray sweep` runs it over seeds; a suite lists runs (benchmarks/suites/*.yaml)")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise SuiteError(f"{where}{format_validation_error(err)}") from None
    for run in suite.runs:
        path = resolve_config(run.config, suite_file)
        try:
            config = validate(apply_overrides(load_yaml(path), bench_overrides(suite, run)))
        except ConfigError as err:
            raise SuiteError(f"{where}run {run.name!r}: {err}") from None
        if not run.serial and run.baseline is None and run.cpus < config.workers.num_workers:
            # each rollout worker samples all the time; the learner shares (as `metaray train` sizes a local instance)
            raise SuiteError(f"{where}run {run.name!r}: serial: false runs {config.workers.num_workers} rollout workers; "
                             f"set cpus to at least {config.workers.num_workers} (got {run.cpus:g})")
        if run.baseline is not None:
            try:
                family = make_family(config.task.family, config.task.kwargs)
            except TaskFamilyError as err:
                raise SuiteError(f"{where}run {run.name!r}: {err}") from None
            available = config.algorithm().baselines(family, config.algo_config())
            if run.baseline not in available:
                raise SuiteError(f"{where}run {run.name!r}: baseline {run.baseline!r} is not one of algo {config.algo} on "
                                 f"{config.task.family} (available: {', '.join(available) or 'none'})")
        run.config = str(path)
    return suite


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        data = load_yaml(path)  # the config reader's one-line errors: malformed, empty, not a mapping
    except ConfigError as err:
        raise SuiteError(str(err)) from None
    return load_suite_data(data, path)


def bench_overrides(suite: Suite, run: BenchRun, seed: int | None = None) -> list[str]:
    """What `metaray train` gets with --set: the run's overrides, the suite's eval settings, the seed."""
    out = run.overrides()
    out += [f"eval.{key}={value}" for key, value in (("num_tasks", suite.eval.num_tasks),
                                                    ("seed", suite.eval.seed)) if value is not None]
    if run.iterations is not None:
        out.append(f"iterations={run.iterations}")
    if seed is not None:
        out.append(f"seed={seed}")
    return out


def sweep_suite(config: str, seeds: list[int], grid: list[str], name: str | None = None,
                metric: str = "mean_return", overrides: list[str] | None = None, iterations: int | None = None,
                num_tasks: int | None = None) -> Suite:
    """`metaray sweep`: a suite over the product of `key=v1,v2,...` grids on one config
    (`overrides`, as `--set`, apply to every run)."""
    common: dict[str, Any] = {}
    for text in overrides or []:
        try:
            path, value = parse_override(text)
        except ConfigError as err:
            raise SuiteError(str(err)) from None
        common[".".join(path)] = value
    axes: list[tuple[str, list[Any]]] = []
    for text in grid:
        if "=" not in text:
            raise SuiteError(f"--grid {text!r}: expected key.path=value1,value2,...")
        key, values = text.split("=", 1)
        parsed = [yaml.safe_load(v) if v.strip() else None for v in values.split(",")]
        if not key.strip() or not parsed:
            raise SuiteError(f"--grid {text!r}: expected key.path=value1,value2,...")
        axes.append((key.strip(), parsed))
    runs = []
    for combo in itertools.product(*[values for _, values in axes]) if axes else [()]:
        settings = {key: value for (key, _), value in zip(axes, combo, strict=False)}
        label = "_".join(f"{key.split('.')[-1]}-{value}" for key, value in settings.items()) or "base"
        runs.append({"name": re.sub(r"[^A-Za-z0-9_.-]", "-", label), "config": config, "set": {**common, **settings},
                     **({"iterations": iterations} if iterations else {})})
    stem = Path(config).stem
    return load_suite_data({"name": name or f"sweep-{stem}", "seeds": seeds, "runs": runs,
                            "eval": {"metric": metric, **({"num_tasks": num_tasks} if num_tasks else {})}})
