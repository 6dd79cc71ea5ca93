from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RunInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run", "algo", "family", "family_kwargs_json", "algo_config_json", "observation_shape", "discrete_actions", "num_actions", "action_shape", "max_episode_steps", "policy_version", "max_policy_lag")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ALGO_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FAMILY_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    ALGO_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_POLICY_LAG_FIELD_NUMBER: _ClassVar[int]
    run: str
    algo: str
    family: str
    family_kwargs_json: str
    algo_config_json: str
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    discrete_actions: bool
    num_actions: int
    action_shape: _containers.RepeatedScalarFieldContainer[int]
    max_episode_steps: int
    policy_version: int
    max_policy_lag: int
    def __init__(self, run: _Optional[str] = ..., algo: _Optional[str] = ..., family: _Optional[str] = ..., family_kwargs_json: _Optional[str] = ..., algo_config_json: _Optional[str] = ..., observation_shape: _Optional[_Iterable[int]] = ..., discrete_actions: _Optional[bool] = ..., num_actions: _Optional[int] = ..., action_shape: _Optional[_Iterable[int]] = ..., max_episode_steps: _Optional[int] = ..., policy_version: _Optional[int] = ..., max_policy_lag: _Optional[int] = ...) -> None: ...

class ParametersRequest(_message.Message):
    __slots__ = ("min_version", "wait_s")
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    wait_s: float
    def __init__(self, min_version: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("version", "tensors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("actor_id", "wait_s")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    wait_s: float
    def __init__(self, actor_id: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class TaskAssignment(_message.Message):
    __slots__ = ("assignment_id", "family", "split", "task_id", "params", "policy_version", "stages", "rollouts_per_stage", "max_steps", "episodes_per_rollout", "expires_in_s")
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_PER_STAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_PER_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    assignment_id: int
    family: str
    split: str
    task_id: int
    params: _containers.RepeatedScalarFieldContainer[float]
    policy_version: int
    stages: _containers.RepeatedScalarFieldContainer[str]
    rollouts_per_stage: int
    max_steps: int
    episodes_per_rollout: int
    expires_in_s: float
    def __init__(self, assignment_id: _Optional[int] = ..., family: _Optional[str] = ..., split: _Optional[str] = ..., task_id: _Optional[int] = ..., params: _Optional[_Iterable[float]] = ..., policy_version: _Optional[int] = ..., stages: _Optional[_Iterable[str]] = ..., rollouts_per_stage: _Optional[int] = ..., max_steps: _Optional[int] = ..., episodes_per_rollout: _Optional[int] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("actor_id", "assignment_id", "task_id", "policy_version", "stage", "observations", "actions", "rewards", "dones", "log_probs", "next_observations", "terminals")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    DONES_FIELD_NUMBER: _ClassVar[int]
    LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    TERMINALS_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    assignment_id: int
    task_id: int
    policy_version: int
    stage: str
    observations: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    log_probs: Tensor
    next_observations: Tensor
    terminals: Tensor
    def __init__(self, actor_id: _Optional[str] = ..., assignment_id: _Optional[int] = ..., task_id: _Optional[int] = ..., policy_version: _Optional[int] = ..., stage: _Optional[str] = ..., observations: _Optional[_Union[Tensor, _Mapping]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Union[Tensor, _Mapping]] = ..., dones: _Optional[_Union[Tensor, _Mapping]] = ..., log_probs: _Optional[_Union[Tensor, _Mapping]] = ..., next_observations: _Optional[_Union[Tensor, _Mapping]] = ..., terminals: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PushResult(_message.Message):
    __slots__ = ("accepted", "policy_version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    policy_version: int
    def __init__(self, accepted: _Optional[int] = ..., policy_version: _Optional[int] = ...) -> None: ...
