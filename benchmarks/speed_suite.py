"""Sampling speed side by side in one run: env steps/s of metaray's rollout workers against the
same env and policy driven in one plain process, and against RLlib's PPO EnvRunners.

Every measurement runs in its own fresh process (OMP_NUM_THREADS=1 in its environment and in every
Ray actor's, torch in one thread), first for `--warmup` seconds untimed, then for `--seconds` of
wall time, counting env steps. All HalfCheetah runs use HalfCheetah-v5 with ctrl_cost_weight=0.05
and 200-step episodes (gymnasium's TimeLimit), which is what metaray's `halfcheetah-vel` family
runs, so every one of them pays the same resets.

1. `raw_env_*`: one HalfCheetah-v5 env in one process, with `action_space.sample()` actions and
   with pre-drawn actions (the limit).
2. `vector_baseline`: gymnasium SyncVectorEnv (SAME_STEP autoreset, as metaray) of 8 envs and a
   2x64 tanh Gaussian MLP in torch, one batched forward + action sample + log-prob per step.
3. `metaray_1_worker_*`: metaray's MAML sampler for `halfcheetah-vel` (2x64 tanh, 1 task x 8
   episodes per call = 8 env slots): `MAMLSampler.collect` in-process, its `rollout` alone (with
   one θ, and with per-task θ as in the post-update stage), and the real Ray actor `RolloutWorker.collect` in a local Ray instance (`ray.init(num_cpus=2)`,
   weights from a ParameterServer actor), timed on the driver.
4. `metaray_2_workers_ray`: two RolloutWorker actors (8 slots each) collecting concurrently.
5. `rllib_ppo_*`: RLlib PPO (new API stack) EnvRunners, 1 and 2 runners x 8 envs, 2x64 tanh:
   PPO's sampling phase (`synchronous_parallel_sample`, what its `env_runner_sampling_timer`
   times) called directly and timed. `ray[rllib]==2.60.0` pins gymnasium==1.2.2, so it may live
   in a separate venv given with `--rllib-python`.
6. `native_*`: one metaray sampler (policy inference included) on the natively batched envs,
   with the project's configs: RL2Sampler.sample on bandit and tabular-mdp, MAMLSampler.collect on
   point-nav (one worker's share of the meta-batch); plus the bare vector env with pre-drawn actions.

Writes speed_suite.json and .png under benchmarks/results/speed_suite/<date>-<commit>/, prints a table.

    python benchmarks/speed_suite.py                       # 20 s per measurement, about 8 minutes
    python benchmarks/speed_suite.py --seconds 5 --skip-rllib
    python benchmarks/speed_suite.py --rllib-python /tmp/metaray-rllib-venv/bin/python

A venv for RLlib next to this one (same torch, Ray and MuJoCo; gymnasium 1.2.2):

    python -m venv /tmp/metaray-rllib-venv && /tmp/metaray-rllib-venv/bin/pip install \
        -c constraints/cpu.txt "ray[rllib]==2.60.0" torch==2.13.0 mujoco==3.3.0 "gymnasium[mujoco]==1.2.2"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaray.bench.provenance import latest_output, script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARK = "SPEED_SUITE_RESULT "
ENV_ID, CTRL_COST, HORIZON, SLOTS, HIDDEN = "HalfCheetah-v5", 0.05, 200, 8, [64, 64]
TARGET_VS_VECTOR, TARGET_VS_RLLIB = 0.8, 2.0
TARGET_VS_VECTOR_BATCHED, TARGET_VS_C_LIMIT = 2.0, 0.85  # issue 27: MuJoCo families stepped in C
NATIVE_CONFIGS = ["configs/rl2-bandit-n10-k5.yaml", "configs/rl2-tabular-mdp-n10.yaml",
                  "configs/maml-trpo-point-nav.yaml"]
Result = dict[str, Any]


# ------------------------------------------------------------------------------------------
# Timing


def run_for(step: Callable[[], int], seconds: float, warmup: float) -> Result:
    """Call `step` (returns the env steps it took) for `warmup` s (at least once), then for
    `seconds` of wall time (whole calls); the rate and this process's CPU share while timed."""
    end = time.perf_counter() + warmup
    step()
    while time.perf_counter() < end:
        step()
    steps = calls = 0
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        steps += step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"env_steps": steps, "seconds": round(elapsed, 3), "calls": calls,
            "env_steps_per_s": round(steps / elapsed, 1),
            "process_cpu_share": round((time.process_time() - cpu) / elapsed, 3)}


def one_thread() -> None:
    """torch (and OpenMP, for anything started from here) in one thread."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def make_halfcheetah() -> Any:
    """HalfCheetah-v5 as halfcheetah-vel builds it, without the task reward wrapper."""
    import gymnasium as gym

    return gym.make(ENV_ID, max_episode_steps=HORIZON, ctrl_cost_weight=CTRL_COST)


# ------------------------------------------------------------------------------------------
# 1. One raw env


def measure_raw_env(seconds: float, warmup: float) -> dict[str, Result]:
    """One HalfCheetah-v5 env: sampled actions, then pre-drawn actions."""
    import numpy as np

    one_thread()
    env, chunk = make_halfcheetah(), 500
    env.reset(seed=0)
    env.action_space.seed(0)
    space = env.action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high, (chunk, space.shape[0])).astype(space.dtype)

    def steps(draw: bool) -> Callable[[], int]:
        def run() -> int:
            for i in range(chunk):
                _, _, terminated, truncated, _ = env.step(space.sample() if draw else actions[i])
                if terminated or truncated:
                    env.reset()
            return chunk
        return run

    return {"raw_env_sampled_actions": run_for(steps(True), seconds, warmup),
            "raw_env_predrawn_actions": run_for(steps(False), seconds, warmup)}


# ------------------------------------------------------------------------------------------
# 2. The plain one-process baseline


def gaussian_mlp(obs_dim: int, act_dim: int, low: Any, high: Any) -> Callable[[Any], Any]:
    """The 2x64 tanh Gaussian MLP every HalfCheetah measurement drives its envs with: one batched
    forward + action sample + log-prob per vector step; obs [N, obs_dim] -> clipped actions."""
    import numpy as np
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    last = obs_dim
    for width in HIDDEN:
        layers += [nn.Linear(last, width), nn.Tanh()]
        last = width
    mlp = nn.Sequential(*layers, nn.Linear(last, act_dim))
    log_std = torch.zeros(act_dim)
    gen = torch.Generator().manual_seed(0)

    def act(obs: Any) -> Any:
        with torch.no_grad():
            mean = mlp(torch.from_numpy(np.asarray(obs, np.float32)))
            std = log_std.exp()
            action = mean + std * torch.randn(mean.shape, generator=gen)
            logp = (-0.5 * ((action - mean) / std).square() - log_std - 0.9189385).sum(-1)  # noqa: F841
        return np.clip(action.numpy(), low, high)

    return act


def measure_vector_baseline(seconds: float, warmup: float) -> dict[str, Result]:
    """SyncVectorEnv of SLOTS envs + 2x64 tanh Gaussian MLP, one batched forward per step."""
    import gymnasium as gym

    one_thread()
    envs = gym.vector.SyncVectorEnv([make_halfcheetah] * SLOTS, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    space = envs.single_action_space
    act = gaussian_mlp(envs.single_observation_space.shape[0], space.shape[0], space.low, space.high)
    state = {"obs": envs.reset(seed=0)[0]}
    chunk = 25

    def run() -> int:
        obs = state["obs"]
        for _ in range(chunk):
            obs = envs.step(act(obs))[0]
        state["obs"] = obs
        return chunk * SLOTS

    return {"vector_baseline": run_for(run, seconds, warmup)}


def measure_mujoco_batched(seconds: float, warmup: float) -> dict[str, Result]:
    """metaray's batched halfcheetah-vel env (one MjData per slot, metaray.tasks.mujoco_batched)
    with pre-drawn actions and with the MLP, against the limit: the same physics stepped for all
    SLOTS states in one `mujoco.rollout` call per env step (C, frame_skip substeps), observations,
    rewards and the 200-step resets in numpy, with pre-drawn actions and with the MLP."""
    import mujoco
    import numpy as np
    from mujoco import rollout

    from metaray.tasks import make_family, make_vector_env

    one_thread()
    family = make_family("halfcheetah-vel")
    env = make_vector_env(family, family.sample(1, np.random.default_rng(0)), SLOTS, seed=0)
    space = env.single_action_space
    act = gaussian_mlp(env.single_observation_space.shape[0], space.shape[0], space.low, space.high)
    predrawn = np.random.default_rng(0).uniform(space.low, space.high, (500, SLOTS, space.shape[0])).astype(np.float32)
    chunk = 25

    def batched(policy: bool) -> Callable[[], int]:
        state = {"obs": env.reset(seed=0)[0], "t": 0}

        def run() -> int:
            obs, t = state["obs"], state["t"]
            for _ in range(chunk):
                obs = env.step(act(obs) if policy else predrawn[t % 500])[0]
                t += 1
            state["obs"], state["t"] = obs, t
            return chunk * SLOTS
        return run

    model, skip, dt = env.model, env.frame_skip, env.dt
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    nstate, nq, nv = mujoco.mj_stateSize(model, spec), model.nq, model.nv
    data, models = mujoco.MjData(model), [model] * SLOTS
    rng = np.random.default_rng(0)

    def initial(n: int) -> Any:
        states = np.zeros((n, nstate))
        states[:, 1:1 + nq] = model.qpos0 + rng.uniform(-0.1, 0.1, (n, nq))
        states[:, 1 + nq:1 + nq + nv] = 0.1 * rng.standard_normal((n, nv))
        return states

    def limit(policy: bool) -> Callable[[], int]:
        state = {"x": initial(SLOTS), "t": 0}
        out = np.empty((SLOTS, skip, nstate))
        target = rng.uniform(0, 2, SLOTS)

        def run() -> int:
            x, t = state["x"], state["t"]
            for _ in range(chunk):
                qpos, qvel = x[:, 1:1 + nq], x[:, 1 + nq:1 + nq + nv]
                obs = np.concatenate((qpos[:, 1:], qvel), axis=1)
                a = act(obs) if policy else predrawn[t % 500]
                rollout.rollout(models, [data], x, np.repeat(a[:, None], skip, axis=1), nstep=skip, state=out,
                                skip_checks=True)
                new = out[:, -1]
                reward = -np.abs((new[:, 1] - x[:, 1]) / dt - target) - CTRL_COST * np.square(a).sum(1)  # noqa: F841
                x = new.copy()
                t += 1
                if t % HORIZON == 0:
                    x = initial(SLOTS)
            state["x"], state["t"] = x, t
            return chunk * SLOTS
        return run

    return {"batched_env_predrawn_actions": run_for(batched(False), seconds, warmup),
            "batched_env_mlp": run_for(batched(True), seconds, warmup),
            "c_limit_rollout_predrawn_actions": run_for(limit(False), seconds, warmup),
            "c_limit_rollout_mlp": run_for(limit(True), seconds, warmup)}


# ------------------------------------------------------------------------------------------
# 3./4. metaray's MAML worker on halfcheetah-vel


def maml_setup() -> tuple[Any, Any, list[Any]]:
    """(family, MAMLConfig, one task): 1 task x 8 episodes = 8 env slots per collect."""
    import numpy as np

    from metaray.learner import maml
    from metaray.tasks import make_family

    family = make_family("halfcheetah-vel")
    config = maml.MAMLConfig(hidden_sizes=HIDDEN, activation="tanh", episodes_per_task=SLOTS, meta_batch_size=1,
                             num_inner_steps=1)
    return family, config, family.sample(1, np.random.default_rng(0))


def measure_metaray_in_process(seconds: float, warmup: float, reference: bool = False) -> dict[str, Result]:
    """MAMLSampler.collect (2 stages x 200 steps x SLOTS slots + the inner step), and its rollout alone
    with one θ for all slots (the pre-update stage) and with per-task θ (the post-update stage).
    `reference`: on gymnasium's envs side by side (GymTaskVectorEnv, the path before
    metaray.tasks.mujoco_batched), collect only."""
    import torch

    from metaray.learner import maml

    one_thread()
    if reference:
        from metaray.tasks.mujoco import _MujocoFamily

        del _MujocoFamily.make_vector_env  # make_vector_env falls back to the family's make_env envs
        family, config, tasks = maml_setup()
        sampler = maml.MAMLSampler(family, config, SLOTS, seed=0)
        sampler.set_weights(0, maml.get_weights(sampler.policy))
        assert type(sampler.env).__name__ == "GymTaskVectorEnv"
        return {"metaray_1_worker_in_process_reference_env": run_for(
            lambda: sum(r.env_steps for r in sampler.collect(tasks, 0)), seconds, warmup)}
    family, config, tasks = maml_setup()
    sampler = maml.MAMLSampler(family, config, SLOTS, seed=0)
    sampler.set_weights(0, maml.get_weights(sampler.policy))
    params = dict(sampler.policy.named_parameters())
    stacked = {k: v.detach()[None].clone() for k, v in params.items()}

    def collect() -> int:
        return sum(r.env_steps for r in sampler.collect(tasks, 0))

    def rollout(per_task: bool) -> Callable[[], int]:
        def run() -> int:
            with torch.no_grad():
                return sampler.rollout(stacked if per_task else params, per_task=per_task, num_tasks=1).env_steps
        return run

    out = {"metaray_1_worker_in_process": run_for(collect, seconds, warmup),
           "metaray_rollout_only_in_process": run_for(rollout(False), seconds, warmup),
           "metaray_rollout_per_task_params_in_process": run_for(rollout(True), seconds, warmup)}
    assert sampler.env.num_envs == SLOTS
    return out


def measure_metaray_ray(seconds: float, warmup: float) -> dict[str, Result]:
    """RolloutWorker actors in a local Ray instance: 1 worker, then 2 concurrently."""
    import ray

    from metaray.actors import RolloutWorker
    from metaray.cluster.config import WorkersConfig
    from metaray.learner import maml
    from metaray.learner.parameter_server import ParameterServer
    from metaray.learner.variables import RayVariables
    from metaray.tasks import make_vector_env

    one_thread()
    env_vars = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env_vars})
    try:
        family, config, tasks = maml_setup()
        server = ray.remote(ParameterServer).options(num_cpus=0).remote()
        variables = RayVariables(server)
        defaults = WorkersConfig()
        guard = {"step_timeout_s": defaults.env_step_timeout_s, "max_recreate": defaults.env_max_recreate}

        def spawn(index: int) -> Any:
            return ray.remote(RolloutWorker).options(num_cpus=1).remote(
                index, "maml", config.model_dump(), family.name, {}, index, variables, 1, guard)

        workers = [spawn(0), spawn(1)]
        probe = make_vector_env(family, tasks, seed=0)  # the spaces, as the runtime probes them
        obs_space, act_space = probe.single_observation_space, probe.single_action_space
        probe.close()
        variables.publish(0, maml.get_weights(maml.make_policy(obs_space, act_space, config)))
        ray.get([w.ping.remote() for w in workers])
        out = {"metaray_1_worker_ray": ray_rate(workers[:1], tasks, seconds, warmup),
               "metaray_2_workers_ray": ray_rate(workers, tasks, seconds, warmup)}
        out["metaray_2_workers_ray"]["env_steps_per_s_per_worker"] = round(
            out["metaray_2_workers_ray"]["env_steps_per_s"] / 2, 1)
        return out
    finally:
        ray.shutdown()


def ray_rate(workers: list[Any], tasks: list[Any], seconds: float, warmup: float) -> Result:
    """Keep every worker collecting (a new call as soon as one returns) for `seconds` on the
    driver's clock, then wait for the calls in flight and count them too. Only the small info
    dicts come to the driver; the batches stay in the object store (a learner would fetch them)."""
    import ray

    def submit(w: Any) -> Any:
        return w.collect.options(num_returns=2).remote(tasks, 0)[1]

    ray.get([submit(w) for w in workers])
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        ray.get([submit(w) for w in workers])
    pending = {submit(w): w for w in workers}
    steps = calls = 0
    sample_s = 0.0
    start = time.perf_counter()
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        worker = pending.pop(ready)
        info = ray.get(ready)
        steps, calls, sample_s = steps + info["env_steps"], calls + 1, sample_s + info["sample_s"]
        if time.perf_counter() - start < seconds:
            pending[submit(worker)] = worker
    elapsed = time.perf_counter() - start
    return {"env_steps": steps, "seconds": round(elapsed, 3), "calls": calls, "workers": len(workers),
            "env_steps_per_s": round(steps / elapsed, 1),
            # one worker's rate inside its collect (sampler only: no Ray call, no weight check)
            "env_steps_per_s_per_worker_inside_actor": round(steps / sample_s, 1)}


# ------------------------------------------------------------------------------------------
# 5. RLlib


def measure_rllib(seconds: float, warmup: float, runners: int) -> dict[str, Result]:
    """PPO's sampling phase with `runners` EnvRunners x 8 envs, timed on the driver."""
    import gymnasium as gym
    import ray
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    from ray.tune.registry import register_env

    one_thread()
    per_call = HORIZON * 2 * SLOTS  # 3200 env steps per runner per call, as one metaray collect
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        register_env("HalfCheetah200", lambda _: make_halfcheetah())
        config = (
            PPOConfig()
            .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
            .environment("HalfCheetah200")
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=SLOTS, num_cpus_per_env_runner=1,
                         rollout_fragment_length=per_call // SLOTS, gym_env_vectorize_mode="sync")
            .training(train_batch_size_per_learner=per_call * runners, minibatch_size=128)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=HIDDEN, fcnet_activation="tanh"))
            .learners(num_learners=0)
        )
        algo = config.build_algo()
        group = algo.env_runner_group
        group.foreach_env_runner(lambda _: torch.set_num_threads(1), local_env_runner=False)
        threads = group.foreach_env_runner(lambda _: (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")),
                                           local_env_runner=False)

        def sample() -> int:
            episodes, _ = synchronous_parallel_sample(worker_set=group, max_env_steps=per_call * runners,
                                                      _uses_new_env_runners=True, _return_metrics=True)
            return sum(len(e) for e in episodes)

        out = run_for(sample, seconds, warmup)
        out.update(runners=runners, envs_per_runner=SLOTS, env_steps_per_runner_per_call=per_call,
                   env_steps_per_s_per_runner=round(out["env_steps_per_s"] / runners, 1),
                   runner_torch_threads_and_omp=threads, ray_version=ray.__version__,
                   gymnasium_version=gym.__version__)
        del out["process_cpu_share"]  # the driver mostly waits; meaningless here
        algo.stop()
        return {f"rllib_ppo_{runners}_runner{'s' if runners > 1 else ''}": out}
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------
# 6. Natively batched metaray envs


def measure_native(seconds: float, warmup: float, config_path: str) -> dict[str, Result]:
    """One worker's sampler on a natively batched family with the project's config, and the
    bare vector env with pre-drawn actions."""
    import math

    import numpy as np

    from metaray.cluster.config import load_config
    from metaray.learner import maml, rl2
    from metaray.tasks import make_family, make_vector_env

    one_thread()
    run_config = load_config(ROOT / config_path)
    algo = run_config.algo_config()
    family = make_family(run_config.task.family, run_config.task.kwargs)
    rng = np.random.default_rng(0)
    counted = {"valid": 0, "all": 0}  # point-nav: steps of slots whose episode had ended are masked out
    if run_config.algo == "rl2":
        slots = algo.slots_per_worker
        sampler = rl2.RL2Sampler(family, algo, slots, seed=0)
        sampler.set_weights(0, rl2.get_weights(sampler.policy))

        def step() -> int:
            return sampler.sample(slots)[1].env_steps

        env = make_vector_env(family, family.sample(slots, rng), seed=0)
        what = f"RL2Sampler.sample({slots}) (GRU {algo.hidden_size})"
    else:
        num_tasks = math.ceil(algo.meta_batch_size / run_config.workers.num_workers)
        slots = num_tasks * algo.episodes_per_task
        sampler = maml.MAMLSampler(family, algo, slots, seed=0)
        sampler.set_weights(0, maml.get_weights(sampler.policy))
        tasks = family.sample(num_tasks, rng)

        def step() -> int:
            results = sampler.collect(tasks, 0)
            counted["valid"] += sum(int(r.stages[s].mask.sum()) for r in results for s in maml.stage_names(algo.num_inner_steps))
            steps = sum(r.env_steps for r in results)
            counted["all"] += steps
            return steps

        env = make_vector_env(family, tasks, algo.episodes_per_task, seed=0)
        what = (f"MAMLSampler.collect({num_tasks} tasks x {algo.episodes_per_task} episodes) "
                f"({'x'.join(map(str, algo.hidden_sizes))} {algo.activation})")
    sampler_out = run_for(step, seconds, warmup)
    if counted["all"]:
        sampler_out["valid_env_steps_share"] = round(counted["valid"] / counted["all"], 3)
    sampler_out.update(config=config_path, family=family.name, slots=slots, measures=what)

    space = env.single_action_space
    chunk = 100
    if hasattr(space, "n"):
        actions = rng.integers(0, space.n, (chunk, env.num_envs))
    else:
        actions = rng.uniform(space.low, space.high, (chunk, env.num_envs, space.shape[0])).astype(space.dtype)
    env.reset()

    def env_step() -> int:
        for a in actions:
            env.step(a)
        return chunk * env.num_envs

    env_out = run_for(env_step, seconds, warmup)
    env_out.update(family=family.name, slots=env.num_envs)
    name = Path(config_path).stem
    return {f"native_{name}_sampler": sampler_out, f"native_{name}_env_only": env_out}


# ------------------------------------------------------------------------------------------
# Orchestration: one child process per measurement


def child(python: str, measure: str, args: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Result]:
    """Run one measurement in a fresh process; its results, or one entry with the error."""
    cmd = [python, str(Path(__file__).resolve()), "--measure", measure, "--seconds", str(args.seconds),
           "--warmup", str(args.warmup), "--slots", str(args.slots), *(extra or [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    load = os.getloadavg()[0]
    print(f"-- {measure} {' '.join(extra or [])} (load average {load:.2f})", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            out = json.loads(line[len(MARK):])
            for row in out.values():
                row["load_average_1min_before"] = round(load, 2)
            return out
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    print(f"   failed (exit {proc.returncode}):\n{tail}", flush=True)
    return {f"{measure}{'_' + '_'.join(extra or []) if extra else ''}": {"error": f"exit {proc.returncode}: {tail[-3000:]}"}}


def rllib_python_check(python: str) -> tuple[str | None, str]:
    """(ray version, gymnasium version) in `python`, or (None, why not)."""
    probe = "import ray, gymnasium, ray.rllib; print(ray.__version__, gymnasium.__version__)"
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["?"])[-1]
    ray_version, gym_version = proc.stdout.split()
    return ray_version, gym_version


def versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import numpy
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "numpy": numpy.__version__}


def rate(measurements: dict[str, Result], name: str, key: str = "env_steps_per_s") -> float | None:
    """One number of one measurement, None when it is missing (skipped or failed)."""
    row = measurements.get(name, {})
    return row.get(key)


def ratios(m: dict[str, Result]) -> dict[str, Any]:
    """The speed targets of DESIGN.md, as ratios (None where a side is missing)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    vector = rate(m, "vector_baseline")
    one = rate(m, "metaray_1_worker_ray")
    two = rate(m, "metaray_2_workers_ray")
    per_worker = rate(m, "metaray_2_workers_ray", "env_steps_per_s_per_worker")
    out = {
        "metaray_1_worker_over_vector_baseline": ratio(one, vector),
        "metaray_2_workers_per_worker_over_vector_baseline": ratio(per_worker, vector),
        "metaray_1_worker_in_process_over_vector_baseline": ratio(rate(m, "metaray_1_worker_in_process"), vector),
        "metaray_rollout_only_in_process_over_vector_baseline": ratio(rate(m, "metaray_rollout_only_in_process"), vector),
        "metaray_1_worker_over_rllib_1_runner": ratio(one, rate(m, "rllib_ppo_1_runner")),
        "metaray_2_workers_over_rllib_2_runners": ratio(two, rate(m, "rllib_ppo_2_runners")),
        "metaray_2_workers_over_1_worker": ratio(two, one),
        # issue 27: MuJoCo stepped in C for all slots
        "batched_env_mlp_over_vector_baseline": ratio(rate(m, "batched_env_mlp"), vector),
        "batched_env_mlp_over_c_limit_rollout_mlp": ratio(rate(m, "batched_env_mlp"), rate(m, "c_limit_rollout_mlp")),
        "metaray_1_worker_over_c_limit_rollout_mlp": ratio(one, rate(m, "c_limit_rollout_mlp")),
        "metaray_1_worker_in_process_over_reference_env": ratio(
            rate(m, "metaray_1_worker_in_process"), rate(m, "metaray_1_worker_in_process_reference_env")),
    }
    out["targets"] = {"metaray_1_worker_over_vector_baseline": f">= {TARGET_VS_VECTOR_BATCHED} (issue 27; was {TARGET_VS_VECTOR})",
                      "metaray_1_worker_over_c_limit_rollout_mlp": f">= {TARGET_VS_C_LIMIT} (aim, issue 27)",
                      "metaray_2_workers_per_worker_over_vector_baseline": f">= {TARGET_VS_VECTOR}",
                      "metaray_1_worker_over_rllib_1_runner": f">= {TARGET_VS_RLLIB}",
                      "metaray_2_workers_over_rllib_2_runners": f">= {TARGET_VS_RLLIB}"}
    return out


def plot(measurements: dict[str, Result], ratio_row: dict[str, Any], path: Path, title: str) -> None:
    """Horizontal bars of env steps/s: the HalfCheetah runs (with the 80% line) and the native runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in measurements.items() if "env_steps_per_s" in v}
    cheetah = [k for k in rows if not k.startswith("native_")]
    native = [k for k in rows if k.startswith("native_")]
    panels = [(p, t) for p, t in ((cheetah, "HalfCheetah-v5 (ctrl cost 0.05), 200-step episodes, 8 envs per worker"),
                                  (native, "natively batched metaray envs, one sampler")) if p]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.0 + 0.42 * len(rows) + 1.0 * len(panels)), squeeze=False)
    colours = {"raw": "tab:gray", "vec": "tab:blue", "met": "tab:green", "rll": "tab:orange", "nat": "tab:purple"}
    for ax, (names, label) in zip(axes[:, 0], panels, strict=True):
        names = names[::-1]
        values = [rows[n]["env_steps_per_s"] for n in names]
        bars = ax.barh(names, values, color=[colours.get(n[:3], "tab:gray") for n in names])
        per = [rows[n].get("env_steps_per_s_per_worker", rows[n].get("env_steps_per_s_per_runner")) for n in names]
        labels = [f"{v:,.0f}" + (f" ({p:,.0f} each)" if p is not None and p != v else "") for v, p in zip(values, per, strict=True)]
        ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
        ax.set_xlabel("env steps/s")
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(x=0.2)
        vector = rows.get("vector_baseline", {}).get("env_steps_per_s")
        if names[0].startswith("native_"):
            ax.set_xscale("log")
            ax.set_xlabel("env steps/s (log scale)")
        elif vector:
            ax.axvline(TARGET_VS_VECTOR * vector, color="tab:blue", ls="--", lw=1)
            ax.text(TARGET_VS_VECTOR * vector, -0.45, f" {TARGET_VS_VECTOR:.0%} of vector_baseline",
                    color="tab:blue", fontsize=7, va="top")
    shown = [f"{k.replace('metaray_', '')}: {v:.2f}" for k, v in ratio_row.items() if k != "targets" and v is not None]
    lines = [", ".join(shown[i:i + 3]) for i in range(0, len(shown), 3)]
    fig.suptitle("\n".join([title, *lines]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(measurements: dict[str, Result], ratio_row: dict[str, Any]) -> str:
    """The rates and the ratios as plain text."""
    lines = [f"{'measurement':<48} {'env steps/s':>12}  note"]
    for name, row in measurements.items():
        if "error" in row or "skipped" in row:
            lines.append(f"{name:<48} {'-':>12}  {row.get('skipped') or row['error'].splitlines()[-1][:60]}")
            continue
        note = ""
        if "env_steps_per_s_per_worker" in row:
            note = f"{row['env_steps_per_s_per_worker']:,.0f} per worker"
        elif "env_steps_per_s_per_runner" in row:
            note = f"{row['env_steps_per_s_per_runner']:,.0f} per runner"
        if "env_steps_per_s_per_worker_inside_actor" in row:
            note += f"{'; ' if note else ''}{row['env_steps_per_s_per_worker_inside_actor']:,.0f} per worker inside collect"
        lines.append(f"{name:<48} {row['env_steps_per_s']:>12,.0f}  {note}")
    lines.append("")
    targets = ratio_row["targets"]
    for name, value in ratio_row.items():
        if name != "targets":
            shown = "-" if value is None else f"{value:.2f}"
            lines.append(f"{name:<60} {shown:>6}  {('target ' + targets[name]) if name in targets else ''}")
    return "\n".join(lines)


def run_maml(args: argparse.Namespace) -> dict[str, Any]:
    """The MAML learner (closed form vs per-task loop vs vmapped autograd, one process) and, with a
    peer set-up, whole meta-iterations beside pytorch-maml-rl; their own scripts, summarised here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {}
    for threads in (1, 2):
        cmd = [sys.executable, "benchmarks/maml_learner_speed.py", "--threads", str(threads)]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        row = json.loads(latest_output("maml_learner_speed", f"maml_learner_speed_threads{threads}.json").read_text())
        out[f"learner_threads{threads}"] = {k: row[k] for k in (
            "update_closed_form_s", "update_loop_s", "update_vmapped_autograd_s", "update_loop_over_closed_form",
            "update_speedup", "meta_gradient_vmapped_s", "meta_gradient_loop_s")} | {"command": " ".join(cmd[1:])}
    if args.peer_dir is not None:
        cmd = [sys.executable, "benchmarks/maml_vs_pytorch_maml_rl.py", "--iterations", str(args.maml_iterations),
               "--peer-dir", str(args.peer_dir), "--learner-threads", "2", "--peer-learner-threads", "1"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        row = json.loads(latest_output("maml_vs_pytorch_maml_rl",
                                       f"maml_vs_pytorch_maml_rl_it{args.maml_iterations}_seed0_threads2-peer1.json").read_text())
        out["vs_pytorch_maml_rl"] = {"command": " ".join(cmd[1:]), "speedup_iteration": row["speedup_iteration"],
                                     "speedup_sampling": row["speedup_sampling"], "speedup_learner": row["speedup_learner"],
                                     "iteration_s_median": {k: v["iteration_s_median"] for k, v in row["summary"].items()}}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed wall time per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed wall time before each measurement")
    parser.add_argument("--skip-rllib", action="store_true", help="do not run the RLlib measurements")
    parser.add_argument("--skip-native", action="store_true", help="do not run the natively batched envs")
    parser.add_argument("--rllib-python", default=os.environ.get("METARAY_RLLIB_PYTHON", sys.executable),
                        help="python of a venv with ray[rllib] of the same Ray version (default: this one, "
                             "or $METARAY_RLLIB_PYTHON)")
    parser.add_argument("--maml", action="store_true",
                        help="also run the MAML learner comparison (maml_learner_speed.py) and, with --peer-dir, "
                             "a meta-iteration against pytorch-maml-rl (maml_vs_pytorch_maml_rl.py)")
    parser.add_argument("--peer-dir", type=Path, help="pytorch-maml-rl set-up (benchmarks/peer/setup_pytorch_maml_rl.sh)")
    parser.add_argument("--maml-iterations", type=int, default=20, help="meta-iterations of each side with --peer-dir")
    parser.add_argument("--slots", type=int, default=SLOTS,
                        help="env slots per worker / runner / vector env (the MAML worker: 1 task x this many episodes)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run one measurement, print its JSON
    parser.add_argument("--runners", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    globals()["SLOTS"] = args.slots  # every measurement reads the module's SLOTS

    if args.measure:
        sys.path.insert(0, str(ROOT))
        fns: dict[str, Callable[[], dict[str, Result]]] = {
            "raw_env": lambda: measure_raw_env(args.seconds, args.warmup),
            "vector_baseline": lambda: measure_vector_baseline(args.seconds, args.warmup),
            "metaray_in_process": lambda: measure_metaray_in_process(args.seconds, args.warmup),
            "metaray_in_process_reference": lambda: measure_metaray_in_process(args.seconds, args.warmup, True),
            "mujoco_batched": lambda: measure_mujoco_batched(args.seconds, args.warmup),
            "metaray_ray": lambda: measure_metaray_ray(args.seconds, args.warmup),
            "rllib": lambda: measure_rllib(args.seconds, args.warmup, args.runners),
            "native": lambda: measure_native(args.seconds, args.warmup, args.config),
        }
        print(MARK + json.dumps(fns[args.measure]()), flush=True)
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rl2_duan import machine

    measurements: dict[str, Result] = {}
    for name in ["raw_env", "vector_baseline", "mujoco_batched", "metaray_in_process", "metaray_in_process_reference",
                 "metaray_ray"]:
        measurements.update(child(sys.executable, name, args))
    rllib: dict[str, Any] = {"python": args.rllib_python}
    if args.skip_rllib:
        rllib["skipped"] = "--skip-rllib"
    else:
        ray_version, gym_version = rllib_python_check(args.rllib_python)
        main_ray = versions()["ray"]
        if ray_version is None:
            rllib["skipped"] = (f"ray.rllib is not importable with {args.rllib_python} ({gym_version}); "
                                "ray[rllib]==2.60.0 pins gymnasium==1.2.2, so install it in its own venv "
                                "(see this script's docstring) and pass --rllib-python")
        elif ray_version != main_ray:
            rllib["skipped"] = f"{args.rllib_python} has Ray {ray_version}, this venv Ray {main_ray}"
        else:
            rllib.update(ray=ray_version, gymnasium=gym_version)
            for runners in (1, 2):
                measurements.update(child(args.rllib_python, "rllib", args, ["--runners", str(runners)]))
    if "skipped" in rllib:
        print(f"-- rllib skipped: {rllib['skipped']}", flush=True)
    if not args.skip_native:
        for path in NATIVE_CONFIGS:
            measurements.update(child(sys.executable, "native", args, ["--config", path]))

    maml_rows = run_maml(args) if args.maml else None
    ratio_row = ratios(measurements)
    row = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(), "rllib": rllib,
        "seconds_per_measurement": args.seconds, "warmup_s": args.warmup,
        "setup": {
            "env": f"{ENV_ID}, ctrl_cost_weight={CTRL_COST}, TimeLimit {HORIZON} steps for every HalfCheetah "
                   "measurement (halfcheetah-vel's horizon), so every one pays a reset every 200 steps",
            "policy": f"Gaussian MLP {'x'.join(map(str, HIDDEN))} tanh, one batched forward per vector step",
            "slots": f"{SLOTS} envs per worker / runner / vector env",
            "threads": "OMP_NUM_THREADS=1 in every process and Ray actor, torch.set_num_threads(1)",
            "metaray": f"MAMLSampler for halfcheetah-vel, 1 task x {SLOTS} episodes per collect (pre-update "
                       f"rollout, inner step, post-update rollout: {400 * SLOTS} env steps per call); Ray: "
                       "RolloutWorker.collect actors (1 CPU each) in ray.init(num_cpus=2), timed on the driver",
            "rllib": "PPO new API stack, num_learners=0, DefaultModelConfig(fcnet_hiddens=[64, 64], tanh); "
                     "synchronous_parallel_sample(max_env_steps=3200 x runners) (PPO's sampling phase) "
                     "called directly and timed on the driver, env steps counted from the returned episodes",
            "rates": "env steps / wall seconds over whole calls after the warm-up",
            "niceness": "Ray runs its worker processes (metaray's RolloutWorkers and RLlib's EnvRunners alike) at "
                        "niceness 15, its default; the one-process measurements run at 0. On a busy machine the "
                        "actors lose CPU to other processes: compare numbers from a quiet machine only",
        },
        "measurements": measurements, "ratios": ratio_row,
        **({"maml": maml_rows} if maml_rows is not None else {}),
    }
    output = script_output(__file__, "speed_suite.json")
    output.write_text(json.dumps(row, indent=1) + "\n")
    plot(measurements, ratio_row, output.with_suffix(".png"), f"metaray sampling speed, {row['date']}, {row['machine']}")
    print(table(measurements, ratio_row))
    print(f"wrote {output} and speed_suite.png")


if __name__ == "__main__":
    main()
