"""An RL² rollout actor outside Ray, written out by hand: the loop any language would run.

Start a run with the gRPC service, then point this script at it:

    metaray train configs/rl2-bandit-n10-k5.yaml --grpc-port 50051 --run-dir runs/grpc-demo
    METARAY_GRPC_TOKEN=$(cat runs/grpc-demo/grpc_token) python examples/remote_actor.py localhost:50051

Each round: GetTask -> GetParameters -> one trial in a plain gymnasium env with the RL² policy
-> PushEpisodes. For the MAML family (or to skip writing the loop) use
`metaray.actors.remote.RemoteSampler`, which runs metaray's own samplers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import grpc
import numpy as np
import torch

from metaray.actors.remote import RemoteClient, make_rollout, task_of
from metaray.learner import rl2
from metaray.tasks import make_family


def run_trial(env, policy: rl2.RL2Policy, episodes: int, rng: torch.Generator):
    """One RL² trial: `episodes` episodes of one task, the GRU state carried across them."""
    spec = policy.spec
    obs_rows, actions, rewards, dones, logps = [], [], [], [], []
    h = policy.initial_state(1)
    prev_a = np.array([-1]) if spec.discrete else np.zeros((1, spec.act_dim), np.float32)
    prev_r, prev_d = np.zeros(1, np.float32), np.zeros(1, np.float32)
    obs, _ = env.reset()
    for finished in range(episodes):
        done = False
        while not done:
            x = rl2.build_inputs(spec, np.asarray(obs, np.float32)[None], prev_a, prev_r, prev_d, np.array([finished]))
            with torch.no_grad():
                head, _, h = policy(torch.from_numpy(x)[:, None], h)
                dist = policy.distribution(head[:, 0])
                if spec.discrete:
                    action = torch.multinomial(dist.probs, 1, generator=rng)[:, 0]
                else:
                    action = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=rng)
                logp = policy.log_prob(dist, action)
            a = action.numpy()
            env_action = int(a[0]) if spec.discrete else np.clip(a[0], spec.act_low, spec.act_high)
            next_obs, reward, terminated, truncated, _ = env.step(env_action)
            done = terminated or truncated
            obs_rows.append(np.asarray(obs, np.float32))
            actions.append(a[0])
            rewards.append(reward)
            dones.append(done)
            logps.append(float(logp[0]))
            prev_a, prev_r, prev_d = a, np.array([reward], np.float32), np.array([float(done)], np.float32)
            obs = env.reset()[0] if done else next_obs
    return np.stack(obs_rows), np.array(actions), np.array(rewards, np.float32), np.array(dones), np.array(logps, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="HOST:PORT of the run's gRPC service")
    parser.add_argument("--trials", type=int, default=20, help="trials to run and push")
    parser.add_argument("--tls-ca", help="PEM root certificate when the service uses TLS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    with RemoteClient(args.target, tls_root_cert=ca) as client:
        info = client.run_info()
        if info.algo != "rl2":
            raise SystemExit(f"this example runs RL² trials; the run is {info.algo} (use RemoteSampler)")
        family = make_family(info.family, json.loads(info.family_kwargs_json))
        config = rl2.RL2Config.model_validate(json.loads(info.algo_config_json))
        env = family.make_env()
        policy = rl2.make_policy(env.observation_space, env.action_space, config)
        rng = torch.Generator().manual_seed(0)
        for i in range(args.trials):
            assignment = client.get_task()
            version, weights = client.parameters(min_version=assignment.policy_version)
            rl2.load_weights(policy, weights)
            env.close()
            env = family.make_env(task_of(assignment))
            trial = run_trial(env, policy, assignment.episodes_per_rollout, rng)
            try:
                client.push([make_rollout(assignment, client.actor_id, version, "trial", *trial)])
            except grpc.RpcError as err:  # e.g. FAILED_PRECONDITION: the weights moved on meanwhile
                print(f"trial {i}: refused, {err.code().name}: {err.details()}")
                continue
            print(f"trial {i}: task {assignment.task_id}, version {version}, return {trial[2].sum():.2f}")
        env.close()


if __name__ == "__main__":
    main()
