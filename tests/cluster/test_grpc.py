"""The gRPC service for actors outside Ray, over real gRPC on loopback.

Most tests run the service on its own (as the trainer runs it) with an RL² bandit run or a
MAML point-nav run; the last ones run it inside real training runs (serial, and the CLI on a
local Ray instance) and check that an external actor's rollouts are counted by the learner.
"""

from __future__ import annotations

import collections
import filecmp
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from metaray.actors.remote import RemoteClient, RemoteSampler, make_rollout, task_messages, task_of
from metaray.cluster.config import GrpcConfig, validate
from metaray.cluster.grpc_service import GrpcService, RunSpec
from metaray.cluster.runtime import SerialRuntime
from metaray.cluster.scheduler import TaskScheduler
from metaray.cluster.trainer import Trainer
from metaray.core import get_algorithm
from metaray.learner import maml, rl2
from metaray.protocol import decode_tensor, encode_tensor, generate
from metaray.protocol import metaray_pb2 as pb
from metaray.tasks import make_family, make_vector_env
from tests.conftest import ROOT, TINY_RL2

TOKEN = "test-token-0123456789abcdef"
PYTHON = sys.executable

RL2_CONFIG = rl2.RL2Config(episodes_per_trial=5, hidden_size=16, slots_per_worker=4, max_policy_lag=1)
MAML_CONFIG = maml.MAMLConfig(episodes_per_task=2, meta_batch_size=2, hidden_sizes=[8], num_inner_steps=1)


def spaces(family):
    env = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
    out = env.single_observation_space, env.single_action_space
    env.close()
    return out


class Service:
    """A GrpcService with what a test needs around it: its spec, counted requests, a client."""

    def __init__(self, algo: str, **overrides):
        if algo == "rl2":
            name, kwargs, self.algo_config = "bandit", {"num_arms": 3}, RL2_CONFIG
        else:
            name, kwargs, self.algo_config = "point-nav", {"horizon": 10}, MAML_CONFIG
        self.family = make_family(name, kwargs)
        obs_space, act_space = spaces(self.family)
        algorithm = get_algorithm(algo)
        self.spec = RunSpec("test", algo, algorithm.mode, algorithm.wire_spec(self.algo_config), name, kwargs,
                            self.algo_config.model_dump(), obs_space, act_space, self.family.max_episode_steps)
        self.scheduler = TaskScheduler(self.family, 0)
        self.requests = collections.Counter()
        self.service = GrpcService(self.spec, GrpcConfig(**overrides), lambda: self.scheduler.next_batch(1)[0], TOKEN,
                                   lambda method, code: self.requests.update([(method, code)]))
        policy = (rl2 if algo == "rl2" else maml).make_policy(obs_space, act_space, self.algo_config)
        self.weights = {k: v.detach().numpy().copy() for k, v in policy.state_dict().items()}
        self.service.publish(0, self.weights)
        self.address = self.service.start(0)
        self.client = RemoteClient(self.address, token=TOKEN, actor_id="actor-1")

    def valid_trial(self, client: RemoteClient | None = None, version: int = 0) -> pb.Rollout:
        """A well-formed RL² trial for a newly assigned task."""
        client = client or self.client
        a = client.get_task()
        n = self.algo_config.episodes_per_trial
        return make_rollout(a, client.actor_id, version, "trial", np.zeros((n, 1), np.float32), np.arange(n) % 3,
                            np.ones(n, np.float32), np.ones(n, bool), np.full(n, -1.0, np.float32))

    def close(self):
        self.client.close()
        self.service.stop(0)


@pytest.fixture(scope="module")
def rl2_service():
    s = Service("rl2")
    yield s
    s.close()


def copy(message: pb.Rollout) -> pb.Rollout:
    out = pb.Rollout()
    out.CopyFrom(message)
    return out


def call_all_methods(client: RemoteClient) -> dict[str, grpc.StatusCode]:
    """Each of the five methods once; the status code each returned."""
    codes = {}
    calls = {
        "GetRunInfo": client.run_info,
        "GetParameters": client.parameters,
        "WatchParameters": lambda: next(client.watch()),
        "GetTask": client.get_task,
        "PushEpisodes": lambda: client.push([pb.Rollout(actor_id="x")]),
    }
    for name, call in calls.items():
        try:
            call()
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as err:
            codes[name] = err.code()
    return codes


# ---------------------------------------------------------------------------------- protocol


def test_generated_code_matches_the_proto(tmp_path):
    """The committed *_pb2 files are what `python -m metaray.protocol.generate` makes now."""
    made = generate.generate(tmp_path)
    committed = ROOT / "metaray" / "protocol"
    for path in made:
        assert filecmp.cmp(path, committed / path.name, shallow=False), (
            f"{path.name} is out of date: run `python -m metaray.protocol.generate`")


def test_tensor_round_trip_and_malformed_tensors():
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2], np.int64), np.array([True, False])):
        back = decode_tensor(encode_tensor("x", array))
        assert back.dtype == array.dtype and np.array_equal(back, array)
    with pytest.raises(ValueError, match="bytes of data"):
        decode_tensor(pb.Tensor(dtype="float32", shape=[3], data=b"\0" * 8))
    with pytest.raises(ValueError, match="dtype must be"):
        decode_tensor(pb.Tensor(dtype="float64", shape=[1], data=b"\0" * 8))
    with pytest.raises(ValueError, match="bool data"):
        decode_tensor(pb.Tensor(dtype="bool", shape=[2], data=b"\x00\x07"))


# ---------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_rejected_on_every_method(rl2_service, token):
    before = dict(rl2_service.requests)
    client = RemoteClient(rl2_service.address, token="unused" * 4)
    if token is None:
        client.metadata = ()
    else:
        client.metadata = (("authorization", f"Bearer {token}"),)
    codes = call_all_methods(client)
    client.close()
    assert codes == {m: grpc.StatusCode.UNAUTHENTICATED for m in codes}
    for method in codes:
        assert rl2_service.requests[(method, "UNAUTHENTICATED")] == before.get((method, "UNAUTHENTICATED"), 0) + 1
    assert rl2_service.service.drain_rollouts() == []


def test_right_token_reaches_every_method(rl2_service):
    codes = call_all_methods(rl2_service.client)
    # the push names no assignment: past auth, refused by the checks
    assert codes == {"GetRunInfo": grpc.StatusCode.OK, "GetParameters": grpc.StatusCode.OK,
                     "WatchParameters": grpc.StatusCode.OK, "GetTask": grpc.StatusCode.OK,
                     "PushEpisodes": grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize("method", ["GetTask", "GetParameters", "WatchParameters", "PushEpisodes"])
def test_a_body_that_is_not_protobuf_is_invalid_argument_and_counted(rl2_service, method):
    """Bytes that do not parse as the method's message: INVALID_ARGUMENT from metaray's own
    handler (counted), not INTERNAL from inside grpc."""
    channel = grpc.insecure_channel(rl2_service.address)
    path = f"/metaray.v1.MetaRay/{method}"
    garbage = b"\xff\xff\xff\xff"  # a truncated varint field: no protobuf message
    metadata = rl2_service.client.metadata
    before = rl2_service.requests[(method, "INVALID_ARGUMENT")]
    with pytest.raises(grpc.RpcError) as err:
        if method == "PushEpisodes":
            channel.stream_unary(path)(iter([garbage]), metadata=metadata, timeout=10)
        elif method == "WatchParameters":
            list(channel.unary_stream(path)(garbage, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(path)(garbage, metadata=metadata, timeout=10)
    channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "the body is not a valid" in err.value.details()
    assert rl2_service.requests[(method, "INVALID_ARGUMENT")] == before + 1


def test_token_comes_from_env_file_or_a_new_private_file(tmp_path, monkeypatch):
    from metaray.cluster.grpc_service import load_token

    monkeypatch.setenv("MY_TOKEN", "e" * 20)
    assert load_token("MY_TOKEN", None, tmp_path) == ("e" * 20, "$MY_TOKEN")
    (tmp_path / "tok").write_text("f" * 20 + "\n")
    assert load_token("UNSET_VAR_X", tmp_path / "tok", tmp_path)[0] == "f" * 20
    token, source = load_token("UNSET_VAR_X", None, tmp_path)
    assert source == str(tmp_path / "grpc_token") and len(token) >= 32
    assert (tmp_path / "grpc_token").stat().st_mode & 0o777 == 0o600
    assert load_token("UNSET_VAR_X", None, tmp_path)[0] == token  # a resumed run keeps it
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="at least 16"):
        load_token(None, tmp_path / "short", tmp_path)


# ---------------------------------------------------------------------------------- params


def test_parameters_and_a_version_bump_seen_by_a_watching_client():
    s = Service("rl2")
    try:
        version, weights = s.client.parameters()
        assert version == 0 and all(np.array_equal(weights[k], s.weights[k]) for k in s.weights)
        seen = []
        watcher = RemoteClient(s.address, token=TOKEN)
        stream = watcher.watch(min_version=0)

        def watch():
            for version, weights in stream:
                seen.append((version, weights))
                if version >= 1:
                    return

        thread = threading.Thread(target=watch)
        thread.start()
        bumped = {k: v + 1 for k, v in s.weights.items()}
        with pytest.raises(grpc.RpcError) as err:  # not published yet, no wait
            s.client.parameters(min_version=1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        got = {}
        waiting = threading.Thread(target=lambda: got.update(result=s.client.parameters(min_version=1, wait_s=20)))
        waiting.start()
        s.service.publish(1, bumped)
        thread.join(20)
        waiting.join(20)
        assert not thread.is_alive() and not waiting.is_alive()
        versions = [v for v, _ in seen]
        assert versions in ([0, 1], [1])  # 0 unless the bump came before the first message
        assert all(np.array_equal(seen[-1][1][k], bumped[k]) for k in bumped)
        version, weights = got["result"]
        assert version == 1 and all(np.array_equal(weights[k], bumped[k]) for k in bumped)
        watcher.close()
    finally:
        s.close()


# ---------------------------------------------------------------------------------- RL² pushes


def test_valid_trials_are_accepted_and_queued(rl2_service):
    svc = rl2_service.service
    svc.drain_rollouts()
    before = svc.counts["grpc_rollouts_accepted_total"]
    result = rl2_service.client.push([rl2_service.valid_trial(), rl2_service.valid_trial()])
    assert result.accepted == 2
    rows = svc.drain_rollouts()
    assert len(rows) == 2 and rows[0].obs.shape == (5, 1) and rows[0].actions.dtype == np.int64
    assert svc.counts["grpc_rollouts_accepted_total"] == before + 2


def test_remote_sampler_pushes_real_trials(rl2_service):
    rl2_service.service.drain_rollouts()
    sampler = RemoteSampler(rl2_service.client, slots=4)
    assert sampler.run_once() == 4
    rows = rl2_service.service.drain_rollouts()
    assert len(rows) == 4 and all(r.dones.sum() == RL2_CONFIG.episodes_per_trial for r in rows)


def mutations(s: Service):
    """(name, rollout-changing function, expected status): each makes a valid trial invalid."""
    n = RL2_CONFIG.episodes_per_trial

    def tensor(name, array):
        return encode_tensor(name, np.asarray(array))

    def set_field(field, value):
        def apply(r):
            if isinstance(value, pb.Tensor):
                getattr(r, field).CopyFrom(value)
            else:
                setattr(r, field, value)
        return apply

    def truncate_rewards(r):
        r.rewards.data = r.rewards.data[:-1]

    bad = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("nan reward", set_field("rewards", tensor("r", np.array([1, np.nan, 1, 1, 1], np.float32))), bad),
        ("inf observation", set_field("observations", tensor("o", np.full((n, 1), np.inf, np.float32))), bad),
        ("huge reward", set_field("rewards", tensor("r", np.full(n, 1e9, np.float32))), bad),
        ("float64 rewards", set_field("rewards", pb.Tensor(dtype="float64", shape=[n], data=np.ones(n).tobytes())), bad),
        ("float actions for a discrete space", set_field("actions", tensor("a", np.zeros(n, np.float32))), bad),
        ("action out of range", set_field("actions", tensor("a", np.full(n, 3, np.int64))), bad),
        ("negative action", set_field("actions", tensor("a", np.full(n, -1, np.int64))), bad),
        ("wrong obs shape", set_field("observations", tensor("o", np.zeros((n, 2), np.float32))), bad),
        ("length mismatch", set_field("log_probs", tensor("l", np.zeros(n - 1, np.float32))), bad),
        ("too long", lambda r: [set_field(f, tensor(f, a))(r) for f, a in (
            ("observations", np.zeros((3 * n, 1), np.float32)), ("actions", np.zeros(3 * n, np.int64)),
            ("rewards", np.zeros(3 * n, np.float32)), ("dones", np.ones(3 * n, bool)),
            ("log_probs", np.zeros(3 * n, np.float32)))], bad),
        ("too few episodes", set_field("dones", tensor("d", np.array([0, 0, 0, 1, 1], bool))), bad),
        ("trial not ended", set_field("dones", tensor("d", np.array([1, 1, 1, 1, 0], bool))), bad),
        ("positive log-prob", set_field("log_probs", tensor("l", np.full(n, 0.5, np.float32))), bad),
        ("missing tensor", lambda r: r.ClearField("dones"), bad),
        ("truncated bytes", truncate_rewards, bad),
        ("empty actor id", set_field("actor_id", ""), bad),
        ("wrong stage", set_field("stage", "post"), bad),
        ("another task", lambda r: setattr(r, "task_id", r.task_id + 1), bad),
        ("unknown assignment", lambda r: setattr(r, "assignment_id", 10**12), grpc.StatusCode.NOT_FOUND),
        ("another actor's assignment", set_field("actor_id", "actor-2"), grpc.StatusCode.PERMISSION_DENIED),
        ("version from the future", set_field("policy_version", 5), grpc.StatusCode.FAILED_PRECONDITION),
        ("version too old", set_field("policy_version", -2), grpc.StatusCode.FAILED_PRECONDITION),
    ]


def test_each_invalid_field_is_rejected_with_its_code_and_nothing_enters(rl2_service):
    svc = rl2_service.service
    svc.drain_rollouts()
    for name, mutate, code in mutations(rl2_service):
        good, bad = rl2_service.valid_trial(), rl2_service.valid_trial()
        mutate(bad)
        rejected = svc.counts["grpc_rollouts_rejected_total"]
        with pytest.raises(grpc.RpcError) as err:
            rl2_service.client.push([good, bad])  # all or nothing: the good one does not enter either
        assert err.value.code() == code, f"{name}: {err.value.code()} {err.value.details()}"
        assert svc.counts["grpc_rollouts_rejected_total"] == rejected + 2, name
        assert svc.drain_rollouts() == [], name
        assert rl2_service.client.push([good]).accepted == 1, name  # the server is fine afterwards
        assert len(svc.drain_rollouts()) == 1


def test_reused_assignment_and_duplicate_in_one_push_are_rejected(rl2_service):
    svc = rl2_service.service
    trial = rl2_service.valid_trial()
    assert rl2_service.client.push([trial]).accepted == 1
    with pytest.raises(grpc.RpcError) as err:
        rl2_service.client.push([trial])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    other = rl2_service.valid_trial()
    with pytest.raises(grpc.RpcError) as err:
        rl2_service.client.push([other, other])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    svc.drain_rollouts()


def test_oversize_message_and_too_many_rollouts_are_rejected():
    s = Service("rl2", max_message_mb=0.01, max_rollouts_per_push=3)
    try:
        trial = s.valid_trial()
        trial.observations.data += b"\0" * 20000  # > 10 KiB message
        with pytest.raises(grpc.RpcError) as err:
            s.client.push([trial])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            s.client.push([s.valid_trial() for _ in range(4)])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert s.service.drain_rollouts() == []
        assert s.client.push([s.valid_trial() for _ in range(3)]).accepted == 3
    finally:
        s.close()


def test_full_learner_queue_refuses_pushes():
    s = Service("rl2", max_queued_rollouts=2)
    try:
        assert s.client.push([s.valid_trial(), s.valid_trial()]).accepted == 2
        with pytest.raises(grpc.RpcError) as err:
            s.client.push([s.valid_trial()])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(s.service.drain_rollouts()) == 2
        assert s.client.push([s.valid_trial()]).accepted == 1
    finally:
        s.close()


# hypothesis: arbitrary tensors and fields; the server answers every one, and whatever it
# accepts satisfies what the learner relies on
tensors = st.builds(
    pb.Tensor,
    dtype=st.sampled_from(["float32", "int64", "bool", "float64", "", "int8"]),
    shape=st.lists(st.integers(-2, 12), max_size=3),
    data=st.binary(max_size=200),
)
NAMES = ("observations", "actions", "rewards", "dones", "log_probs")


def floats(lo, hi):
    return st.floats(lo, hi, width=32)


@st.composite
def rollouts(draw):
    """A valid trial, then up to three fields corrupted (a random tensor, or one bad value)."""
    n = draw(st.integers(5, 12))
    dones = np.zeros(n, bool)
    dones[sorted(draw(st.sets(st.integers(0, n - 2), min_size=4, max_size=4))) + [n - 1]] = True
    arrays = {
        "observations": np.array(draw(st.lists(floats(0, 1), min_size=n, max_size=n)), np.float32).reshape(n, 1),
        "actions": np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int64),
        "rewards": np.array(draw(st.lists(floats(-10, 10), min_size=n, max_size=n)), np.float32),
        "dones": dones,
        "log_probs": np.array(draw(st.lists(floats(-10, 0), min_size=n, max_size=n)), np.float32),
    }
    fields = {name: encode_tensor(name, a) for name, a in arrays.items()}
    for name in draw(st.sets(st.sampled_from(NAMES), max_size=3)):
        if draw(st.booleans()):
            fields[name] = draw(tensors)
            continue
        a = arrays[name].copy()
        i = draw(st.integers(0, a.size - 1))
        if a.dtype == np.float32:
            a.flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 2.0, -1.0, 1e7]))
        elif a.dtype == np.int64:
            a.flat[i] = draw(st.sampled_from([-1, 3, 2**40]))
        else:
            a.flat[i] = not a.flat[i]
        fields[name] = encode_tensor(name, a)
    return fields, draw(st.integers(-2, 2)), draw(st.sampled_from(["trial", "trial", "post", ""]))


def accepted_invariants(row, spec: RunSpec):
    """What the learner relies on, checked independently of the service's code."""
    n = len(row.rewards)
    assert 1 <= n <= spec.max_steps
    assert row.obs.shape == (n, 1) and row.obs.dtype == np.float32 and ((row.obs >= 0) & (row.obs <= 1)).all()
    assert row.actions.shape == (n,) and row.actions.dtype == np.int64 and ((row.actions >= 0) & (row.actions < 3)).all()
    assert row.rewards.shape == row.logp.shape == row.dones.shape == (n,)
    assert np.isfinite(row.rewards).all() and np.abs(row.rewards).max() <= 1e6
    assert np.isfinite(row.logp).all() and (row.logp <= 1e-6).all()
    assert row.dones.sum() == RL2_CONFIG.episodes_per_trial and row.dones[-1]
    assert row.stage == "trial" and -RL2_CONFIG.max_policy_lag <= row.policy_version <= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=rollouts())
def test_fuzzed_rollouts_never_crash_the_server_nor_get_through_invalid(rl2_service, case):
    fields, version, stage = case
    svc = rl2_service.service
    a = rl2_service.client.get_task()
    msg = pb.Rollout(actor_id=rl2_service.client.actor_id, assignment_id=a.assignment_id, task_id=a.task_id,
                     policy_version=version, stage=stage, **fields)
    try:
        rl2_service.client.push([msg])
        event("accepted")
    except grpc.RpcError as err:
        event(f"rejected: {err.code().name}")
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), err.details()
    for row in svc.drain_rollouts():
        accepted_invariants(row, rl2_service.spec)
    assert ("PushEpisodes", "INTERNAL") not in rl2_service.requests


# ---------------------------------------------------------------------------------- MAML


def test_maml_offer_external_task_result_matches_a_ray_workers():
    s = Service("maml", task_timeout_s=30)
    try:
        tasks = s.scheduler.next_batch(2)
        s.service.offer(tasks, 0)
        assignment = s.client.get_task()
        assert task_of(assignment) == tasks[0] and list(assignment.stages) == ["inner_0", "post"]
        sampler = maml.MAMLSampler(s.family, MAML_CONFIG, 2, seed=1)
        sampler.set_weights(0, s.weights)
        (expected,) = sampler.collect([task_of(assignment)], 0)
        rollouts = list(task_messages(expected, assignment, s.client.actor_id))
        assert len(rollouts) == 4
        with pytest.raises(grpc.RpcError) as err:  # a stage short: incomplete task
            s.client.push(rollouts[:-1])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert s.client.push(rollouts).accepted == 4
        with pytest.raises(grpc.RpcError) as err:
            s.client.push(rollouts)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        results, missing = s.service.close_offer()
        assert missing == [tasks[1]] and len(results) == 1
        result, info = results[0]
        assert (result.task_id, result.policy_version, result.env_steps, result.episodes) == \
            (expected.task_id, expected.policy_version, expected.env_steps, expected.episodes)
        assert result.stages.keys() == expected.stages.keys()
        for stage, episodes in expected.stages.items():
            for field, array in zip(episodes._fields, episodes, strict=True):
                if array is not None:
                    assert np.array_equal(getattr(result.stages[stage], field), array), (stage, field)
        assert info["rollouts"] == 4 and info["return_post"] == pytest.approx(expected.metrics["return_post"])
        learner = maml.MAMLLearner(maml.make_policy(s.spec.observation_space, s.spec.action_space, MAML_CONFIG),
                                   MAML_CONFIG, __import__("torch").device("cpu"), 0)
        assert np.isfinite(learner.update([result])["meta_loss"])
        with pytest.raises(grpc.RpcError) as err:  # the offer is closed: late pushes are refused
            s.client.push(rollouts)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            s.client.get_task()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


def test_maml_wrong_version_and_bad_episode_ends_are_rejected():
    s = Service("maml")
    try:
        s.service.offer(s.scheduler.next_batch(1), 0)
        a = s.client.get_task()
        sampler = maml.MAMLSampler(s.family, MAML_CONFIG, 2, seed=1)
        sampler.set_weights(0, s.weights)
        (result,) = sampler.collect([task_of(a)], 0)
        rollouts = list(task_messages(result, a, s.client.actor_id))
        stale = [copy(r) for r in rollouts]
        for r in stale:
            r.policy_version = 1
        with pytest.raises(grpc.RpcError) as err:
            s.client.push(stale)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        cut = [copy(r) for r in rollouts]
        n = 3  # an episode cut short without an end
        for f in ("observations", "actions", "rewards", "dones", "log_probs"):
            arr = decode_tensor(getattr(cut[0], f))[:n]
            getattr(cut[0], f).CopyFrom(encode_tensor(f, np.array(arr)))
        with pytest.raises(grpc.RpcError) as err:
            s.client.push(cut)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "horizon" in err.value.details()
        assert s.client.push(rollouts).accepted == 4
    finally:
        s.close()


# ---------------------------------------------------------------------------------- in training


def serial_config(tmp_path, algo: str, memory: str = "gru", **grpc_extra) -> tuple:
    if algo == "rl2":
        data = json.loads(json.dumps(TINY_RL2))
        data["rl2"].update(max_policy_lag=1, memory=memory, context_length=5)
    else:
        data = {"algo": "maml", "seed": 1, "iterations": 2, "task": {"family": "point-nav", "kwargs": {"horizon": 10}},
                "workers": {"num_workers": 1},
                "maml": {"episodes_per_task": 2, "meta_batch_size": 3, "hidden_sizes": [8]}}
    data["grpc"] = {"port": 0, **grpc_extra}
    data["metrics"] = {"tensorboard": False}
    config = validate(data)
    run_dir = tmp_path / algo
    run_dir.mkdir()
    return config, run_dir


@pytest.mark.parametrize("memory", ["gru", "lstm", "snail", "transformer", "mann"])
def test_external_trials_are_learned_in_a_serial_rl2_run(tmp_path, memory):
    """Trials an actor outside Ray samples (with the policy's memory stepped on its side) are
    learned from, for every memory type."""
    config, run_dir = serial_config(tmp_path, "rl2", memory)
    trainer = Trainer(config, run_dir, SerialRuntime())
    token = (run_dir / "grpc_token").read_text().strip()
    with RemoteClient(trainer.grpc.address, token=token) as client:
        assert RemoteSampler(client, slots=8).run_once() == 8
        trainer.run()
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert rows[0]["grpc_rollouts_learned_total"] == 8  # the first update used all of them
    assert rows[-1]["grpc_rollouts_accepted_total"] == 8
    assert rows[-1]["grpc_rollouts_learned_total"] + rows[-1]["grpc_rollouts_stale_total"] == 8
    assert json.loads((run_dir / "driver.json").read_text())["grpc_address"] == trainer.grpc.address


def test_external_task_joins_a_serial_maml_meta_batch(tmp_path):
    config, run_dir = serial_config(tmp_path, "maml", external_tasks=1, take_wait_s=60, task_timeout_s=60)
    trainer = Trainer(config, run_dir, SerialRuntime())
    token = (run_dir / "grpc_token").read_text().strip()
    client = RemoteClient(trainer.grpc.address, token=token)
    sampler = RemoteSampler(client)
    pushed, errors = [], []
    stop = threading.Event()

    def actor():
        while not stop.is_set():
            try:
                pushed.append(sampler.run_once(wait_s=1.0))
            except grpc.RpcError as err:  # the run ended and its service stopped mid-call
                errors.append(err.code())
                return

    thread = threading.Thread(target=actor)
    thread.start()
    try:
        trainer.run()
    finally:
        stop.set()
        thread.join(30)
        client.close()
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    per_task = 2 * 2  # 2 stages x 2 episodes
    assert [r["grpc_rollouts_learned_total"] for r in rows] == [per_task, 2 * per_task]
    assert rows[-1]["grpc_tasks_reassigned_total"] == 0 and sum(pushed) == 2 * per_task
    assert set(errors) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
    assert all(np.isfinite(r["return_post"]) for r in rows)


def test_cli_train_with_grpc_port_on_local_ray_counts_external_trials(tmp_path):
    """`metaray train --grpc-port 0` on a local Ray instance; an actor in this process pushes
    trials until the learner has counted some, then the run is stopped with SIGTERM."""
    data = json.loads(json.dumps(TINY_RL2))
    data["iterations"] = 100000
    data["rl2"].update(max_policy_lag=3, memory="transformer", context_length=5)  # GRU runs are tested everywhere else
    cfg = tmp_path / "rl2.yaml"
    cfg.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    env = {**os.environ, "METARAY_GRPC_TOKEN": TOKEN}
    proc = subprocess.Popen([PYTHON, "-m", "metaray.cli", "train", str(cfg), "--run-dir", str(run_dir),
                             "--grpc-port", "0", "--workers", "1"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        address = None
        while address is None and time.monotonic() < deadline and proc.poll() is None:
            info = run_dir / "driver.json"
            if info.is_file():
                address = json.loads(info.read_text()).get("grpc_address")
            time.sleep(0.2)
        assert address, "the run did not publish its gRPC address"
        learned = 0
        with RemoteClient(address, token=TOKEN) as client:
            sampler = RemoteSampler(client, slots=8)
            while learned == 0 and time.monotonic() < deadline:
                sampler.run_once()
                rows = (run_dir / "progress.jsonl").read_text().splitlines() if (run_dir / "progress.jsonl").exists() else []
                learned = json.loads(rows[-1]).get("grpc_rollouts_learned_total", 0) if rows else 0
        assert learned > 0
        assert sampler.pushed >= learned
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "gRPC on 127.0.0.1:" in out


# ---------------------------------------------------------------------------------- TLS, config


def test_tls_service_serves_tls_clients_only(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    s = Service("rl2")
    try:
        svc = GrpcService(s.spec, GrpcConfig(), lambda: s.scheduler.next_batch(1)[0], TOKEN)
        svc.publish(0, s.weights)
        port = svc.start(0, "127.0.0.1", tls=(cert.read_bytes(), key.read_bytes())).rsplit(":", 1)[1]
        with RemoteClient(f"localhost:{port}", token=TOKEN, tls_root_cert=cert.read_bytes()) as secure:
            assert secure.parameters()[0] == 0
        with RemoteClient(f"localhost:{port}", token=TOKEN, timeout_s=5) as plain, pytest.raises(grpc.RpcError) as err:
            plain.run_info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        svc.stop(0)
    finally:
        s.close()


def test_grpc_config_errors_are_one_line(tmp_path, tiny_config):
    from metaray.cluster.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(tiny_config, ["grpc.tls_cert=/x.pem"])
    with pytest.raises(ConfigError, match="grpc.port"):
        load_config(tiny_config, ["grpc.port=70000"])
    s = Service("rl2")  # holds a port
    try:
        busy = s.address.rsplit(":", 1)[1]
        out = subprocess.run([PYTHON, "-m", "metaray.cli", "train", str(tiny_config), "--serial", "--run-dir",
                              str(tmp_path / "r"), "--grpc-port", busy], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "METARAY_GRPC_TOKEN": TOKEN})
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"grpc.port: cannot serve on 127.0.0.1:{busy}" in out.stderr
        assert not (tmp_path / "r").exists()  # nothing half-written
        out = subprocess.run([PYTHON, "-m", "metaray.cli", "train", str(tiny_config), "--serial", "--run-dir",
                              str(tmp_path / "r"), "--grpc-port", "0"], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "METARAY_GRPC_TOKEN": "short"})
        assert out.returncode == 2 and "at least 16" in out.stderr and "Traceback" not in out.stderr
    finally:
        s.close()


def test_external_rounds_are_learned_in_a_serial_pearl_run(tmp_path):
    """PEARL over gRPC: tasks come from its fixed train set; a round must carry s' and terminals
    (checked, counted when missing or inconsistent); the accepted rounds reach the replay."""
    from metaray.learner import pearl
    from tests.conftest import PEARL_TINY

    data = yaml.safe_load(PEARL_TINY)
    data.update(iterations=2, grpc={"port": 0}, metrics={"tensorboard": False})
    config = validate(data)
    run_dir = tmp_path / "pearl"
    run_dir.mkdir()
    trainer = Trainer(config, run_dir, SerialRuntime())
    family = make_family("point-nav", {"horizon": 8})
    task_set = {t.task_id for t in pearl.train_task_set(family, config.algo_config())}
    token = (run_dir / "grpc_token").read_text().strip()
    svc = trainer.grpc
    with RemoteClient(trainer.grpc.address, token=token) as client:
        assert {client.get_task().task_id for _ in range(12)} <= task_set
        a = client.get_task()
        n = 16  # 2 episodes of 8 steps
        dones = np.arange(n) % 8 == 7
        bare = make_rollout(a, client.actor_id, 0, "round", np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32),
                            np.zeros(n, np.float32), dones, np.zeros(n, np.float32))
        with pytest.raises(grpc.RpcError) as err:
            client.push([bare])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "next_observations is missing" in err.value.details()
        wrong = copy(bare)
        wrong.next_observations.CopyFrom(encode_tensor("next_observations", np.zeros((n, 2), np.float32)))
        wrong.terminals.CopyFrom(encode_tensor("terminals", np.arange(n) == 3))  # step 3 ends no episode
        with pytest.raises(grpc.RpcError) as err:
            client.push([wrong])
        assert "terminals marks a step that does not end an episode" in err.value.details()
        assert svc.counts["grpc_rollouts_rejected_total"] == 2
        assert RemoteSampler(client, slots=3).run_once() == 3  # real rounds, the policy run on this side
        trainer.run()
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert rows[0]["grpc_rollouts_learned_total"] == 3 and rows[-1]["grpc_rollouts_accepted_total"] == 3
    # the external rounds' transitions are in the replay with the workers'
    assert rows[-1]["replay_transitions"] == rows[-1]["env_steps_total"]
