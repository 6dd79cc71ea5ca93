#!/usr/bin/env python
"""Benchmark runner for tristandeleu/pytorch-maml-rl (MAML-TRPO, 2D navigation).

Run with /work/peer/venv/bin/python.  It imports the peer library's own modules
(its checkout is put on sys.path; none of its algorithm code is copied or
edited) and performs exactly the meta-training loop of its ``train.py`` with
``configs/maml/2d-navigation.yaml``:

    tasks   = sampler.sample_tasks(meta-batch-size)
    futures = sampler.sample_async(tasks, num_steps, fast_lr, gamma, gae_lambda)
    logs    = metalearner.step(*futures, max_kl, cg_iters, cg_damping,
                               ls_max_steps, ls_backtrack_ratio)
    train_episodes, valid_episodes = sampler.sample_wait(futures)

for ``--iterations`` meta-iterations, and appends one JSON line per
meta-iteration to ``--out``.

Usage:
    OMP_NUM_THREADS=1 /work/peer/venv/bin/python /work/peer/run_pytorch_maml_rl.py \
        --iterations 3 --seed 0 --num-workers 2 --out /tmp/maml.jsonl

Thread count: the caller's OMP_NUM_THREADS is honoured.  torch reads OMP_NUM_THREADS at
import time and the sampler's worker processes are fork()ed from this process, so they
inherit it.  ``--learner-threads N`` then sets torch.set_num_threads(N) in this (the
learner's) process only, after the workers exist.

Compatibility shims (applied before the library is used; no algorithm change):
  1. torch.lstsq was removed from PyTorch 2.x (it now raises RuntimeError), and
     maml_rl/baseline.py (LinearFeatureBaseline.fit) calls
     ``coeffs, _ = torch.lstsq(XT_y, XT_X + reg * I)``.  We set
     ``torch.lstsq = lambda B, A: (torch.linalg.lstsq(A, B, driver='gels').solution, None)``
     i.e. the same least-squares problem, solved with the same LAPACK routine
     (gels, QR-based) the old torch.lstsq used; A is square (10x10) here so
     the old solution's shape (n x 1) is the same.
  2. Clean shutdown only: each SamplerWorker process asks the kernel to send
     it SIGTERM if this (parent) process dies (prctl PR_SET_PDEATHSIG), so no
     orphan workers are left if the runner is SIGKILLed.  The worker's run()
     itself is unchanged.
"""
import argparse
import ctypes
import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REPO = os.path.join(HERE, 'pytorch-maml-rl')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iterations', type=int, required=True,
                   help='number of meta-iterations (batches of tasks)')
    p.add_argument('--seed', type=int, default=0, help='random seed (train.py --seed)')
    p.add_argument('--learner-threads', type=int, default=0,
                   help='torch threads of the main (learner) process after the workers are started '
                        '(0: leave as OMP_NUM_THREADS set it)')
    p.add_argument('--num-workers', type=int, default=2,
                   help='number of sampler worker processes (train.py --num-workers)')
    p.add_argument('--out', type=str, required=True,
                   help='JSON-lines file; one line is appended per meta-iteration')
    p.add_argument('--repo', type=str, default=DEFAULT_REPO,
                   help='path of the pytorch-maml-rl checkout (default: %(default)s)')
    p.add_argument('--config', type=str, default=None,
                   help='YAML config (default: <repo>/configs/maml/2d-navigation.yaml)')
    return p.parse_args()


class _Interrupted(BaseException):
    pass


def _on_signal(signum, frame):
    raise _Interrupted(signum)


def _count_os_threads():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Threads:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    args = parse_args()
    repo = os.path.abspath(args.repo)
    config_path = args.config or os.path.join(repo, 'configs', 'maml', '2d-navigation.yaml')
    sys.path.insert(0, repo)

    import gym
    import torch
    import yaml

    # --- shim 1: torch.lstsq (removed in torch 2.x) -------------------------
    def _lstsq(B, A):
        return torch.linalg.lstsq(A, B, driver='gels').solution, None
    torch.lstsq = _lstsq

    import maml_rl.envs  # noqa: F401  (registers 2DNavigation-v0 with gym)
    from maml_rl.baseline import LinearFeatureBaseline
    from maml_rl.metalearners import MAMLTRPO
    from maml_rl.samplers import MultiTaskSampler
    from maml_rl.samplers import multi_task_sampler as mts
    from maml_rl.utils.helpers import get_input_size, get_policy_for_env
    from maml_rl.utils.reinforcement_learning import get_returns

    # --- shim 2: workers die with their parent ------------------------------
    _orig_worker_run = mts.SamplerWorker.run
    parent_pid = os.getpid()

    def _worker_run(self):
        try:
            libc = ctypes.CDLL('libc.so.6', use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except Exception:
            pass
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)
        return _orig_worker_run(self)
    mts.SamplerWorker.run = _worker_run

    with open(config_path) as f:
        config = yaml.load(f, Loader=yaml.FullLoader)

    device = 'cpu'  # train.py: 'cuda' only with --use-cuda; CPU benchmark here

    # ---- identical to train.py main() from here on --------------------------
    if args.seed is not None:
        torch.manual_seed(args.seed)
        torch.cuda.manual_seed_all(args.seed)

    env = gym.make(config['env-name'], **config.get('env-kwargs', {}))
    env.close()

    policy = get_policy_for_env(env,
                                hidden_sizes=config['hidden-sizes'],
                                nonlinearity=config['nonlinearity'])
    policy.share_memory()

    baseline = LinearFeatureBaseline(get_input_size(env))

    sampler = MultiTaskSampler(config['env-name'],
                               env_kwargs=config.get('env-kwargs', {}),
                               batch_size=config['fast-batch-size'],
                               policy=policy,
                               baseline=baseline,
                               env=env,
                               seed=args.seed,
                               num_workers=args.num_workers)

    metalearner = MAMLTRPO(policy,
                           fast_lr=config['fast-lr'],
                           first_order=config['first-order'],
                           device=device)

    if args.learner_threads:
        torch.set_num_threads(args.learner_threads)  # the workers were forked with OMP_NUM_THREADS

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    info = {
        'event': 'start',
        'library': 'pytorch-maml-rl',
        'config': config_path,
        'env_name': config['env-name'],
        'fast_lr': config['fast-lr'], 'fast_batch_size': config['fast-batch-size'],
        'meta_batch_size': config['meta-batch-size'], 'num_steps': config['num-steps'],
        'hidden_sizes': config['hidden-sizes'], 'nonlinearity': config['nonlinearity'],
        'max_kl': config['max-kl'], 'cg_iters': config['cg-iters'],
        'cg_damping': config['cg-damping'], 'ls_max_steps': config['ls-max-steps'],
        'ls_backtrack_ratio': config['ls-backtrack-ratio'],
        'first_order': config['first-order'], 'gamma': config['gamma'],
        'gae_lambda': config['gae-lambda'],
        'seed': args.seed, 'num_workers': args.num_workers,
        'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
        'torch_num_threads': torch.get_num_threads(),
        'torch_version': torch.__version__, 'gym_version': gym.__version__,
    }
    print(json.dumps(info), flush=True)

    interrupted = None
    total_env_steps = 0
    try:
        for it in range(args.iterations):
            t_start = time.time()
            t0 = time.perf_counter()
            tasks = sampler.sample_tasks(num_tasks=config['meta-batch-size'])
            futures = sampler.sample_async(tasks,
                                           num_steps=config['num-steps'],
                                           fast_lr=config['fast-lr'],
                                           gamma=config['gamma'],
                                           gae_lambda=config['gae-lambda'],
                                           device=device)
            t1 = time.perf_counter()
            logs = metalearner.step(*futures,
                                    max_kl=config['max-kl'],
                                    cg_iters=config['cg-iters'],
                                    cg_damping=config['cg-damping'],
                                    ls_max_steps=config['ls-max-steps'],
                                    ls_backtrack_ratio=config['ls-backtrack-ratio'])
            t2 = time.perf_counter()
            train_episodes, valid_episodes = sampler.sample_wait(futures)
            t3 = time.perf_counter()
            t_step_end = t_start + (t2 - t0)

            # Worker-side timestamps (same host clock): when each BatchEpisodes
            # was put on the result queue, and the pure rollout time per batch.
            all_eps = [ep for step_eps in train_episodes for ep in step_eps] + list(valid_episodes)
            last_enqueue = max(ep.logs['_enqueueAt'].timestamp() for ep in all_eps)
            rollout_s = sum(ep.logs['duration'] for ep in all_eps)

            train_steps = int(sum(sum(ep.lengths) for step_eps in train_episodes for ep in step_eps))
            valid_steps = int(sum(sum(ep.lengths) for ep in valid_episodes))
            total_env_steps += train_steps + valid_steps

            line = {
                'iteration': it,
                # wall time of the whole meta-iteration (sample_tasks ..
                # sample_wait), i.e. exactly one pass of train.py's loop body
                # (train.py then only saves the policy when --output-folder is
                # given; that is not done here).
                'wall_s': t3 - t0,
                # sampling_s: from the start of the iteration until the LAST
                # episode batch (train or valid, any task) was enqueued by a
                # worker process = wall time the sampler needed to produce all
                # data for this iteration (rollouts + worker-side baseline fit,
                # GAE, inner-loop adaptation for the valid rollouts).  It runs
                # concurrently with the learner, as in train.py.
                'sampling_s': last_enqueue - t_start,
                # learner_s: duration of metalearner.step(*futures).  It
                # INCLUDES waiting on the sampler futures (train.py awaits the
                # futures inside step, overlapping the learner's per-task
                # adaptation/surrogate loss with sampling).
                'learner_s': t2 - t1,
                # learner_after_sampling_s: the part of step() after the last
                # episode batch was enqueued = learner time not overlapped
                # with sampling (TRPO CG + line search mostly).
                'learner_after_sampling_s': t_step_end - last_enqueue,
                # sample_async_s: sample_tasks + sample_async (queue tasks,
                # start consumer threads); sample_wait_s: sample_wait after
                # step (futures already resolved).
                'sample_async_s': t1 - t0,
                'sample_wait_s': t3 - t2,
                # sum over all episode batches of the worker's pure rollout
                # time (env.step + policy forward), summed across workers.
                'worker_rollout_s_sum': rollout_s,
                'return_before': float(get_returns(train_episodes[0]).mean()),
                'return_after': float(get_returns(valid_episodes).mean()),
                'env_steps': train_steps + valid_steps,
                'env_steps_train': train_steps,
                'env_steps_valid': valid_steps,
                'env_steps_total': total_env_steps,
                'loss_before': float(logs['loss_before'].mean()),
                'loss_after': (float(logs['loss_after'].mean())
                               if 'loss_after' in logs else None),
                'kl_after': (float(logs['kl_after'].mean())
                             if 'kl_after' in logs else None),
                'line_search_accepted': 'loss_after' in logs,
                'torch_num_threads': torch.get_num_threads(),
                'os_threads': _count_os_threads(),
                'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
                'num_workers': args.num_workers,
                'seed': args.seed,
            }
            with open(args.out, 'a') as f:
                f.write(json.dumps(line) + '\n')
            print(json.dumps(line), flush=True)
    except _Interrupted as e:
        interrupted = e.args[0]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if interrupted is None:
            # Normal end: the library's own graceful shutdown.
            sampler.close()
        else:
            # Interrupted mid-iteration: sampler.close() would wait for the
            # workers to finish the queued tasks; stop them instead.
            for w in sampler.workers:
                if w.is_alive():
                    w.terminate()
        for w in sampler.workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)
    if interrupted is not None:
        print(json.dumps({'event': 'interrupted', 'signal': int(interrupted)}), flush=True)
        sys.exit(128 + int(interrupted))
    print(json.dumps({'event': 'end', 'iterations': args.iterations}), flush=True)


if __name__ == '__main__':
    main()
