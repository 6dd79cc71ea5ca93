"""Meta-World's Python costs per step and per env build, replaced by code that returns the same bits.

Meta-World's `step` spends most of its time outside the physics (measured here on one core: the
50 v3 envs' `step` 0.17–0.66 ms against 0.06–0.09 ms of `mj_step`). Three functions are much of the
gap, most for the envs that grasp or move an object:
- `SawyerXYZEnv.touching_object` walks `data.contact` in Python twice, building one `MjContact`
  wrapper per contact; here the contact list's arrays (`geom1`, `geom2`, `efc_address`) are read
  at once and only the matching contacts' forces are summed, in the same order;
- `scipy.spatial.transform.Rotation.from_matrix(m).as_quat()` (22 env modules, for the object's
  orientation in the observation) costs ~0.14 ms through scipy's array-API dispatch; `ExactRotation`
  computes the same quaternion with the same formulas on Python floats (Shepperd's method as scipy
  writes it: the largest of the diagonal and the trace picks the case, then normalised), and hands
  anything unusual (not one 3x3 matrix, not orthogonal to scipy's tolerance, det <= 0) to scipy;
- `SawyerXYZEnv._get_curr_obs_combined_no_goal` builds the observation with `np.split` and nested
  `np.hstack`; here the same numbers are copied into place (the gripper's opening still by
  `np.linalg.norm`, as there).
And building an env is 97 % compiling its XML (~0.1 s), which an ML10/ML45 slot does whenever its
next task is of another class: `initialize_simulation` compiles each XML once per process and
hands later envs a copy of the model.

Equal bit for bit to the originals on whole episodes of every v3 env, the scripted experts' (which
grasp, so contacts count) on a model copied from the cache: tests/tasks/test_metaworld_speedups.py.
Measured side by side (`benchmarks/metaworld_speed.py`, benchmarks/README.md): `step` 1.69x over
the 50 envs (1.12x–2.53x per env), a MAML worker on new ML10 meta-batches 1.82x.

`install()` swaps them in process-wide (every Meta-World env of the process, whoever built it),
`uninstall()` puts the originals back; the families call `set_speedups(family.speedups)` when a
slot builds its env. Only metaworld's own classes are touched: a function that is not the one
these were written against (another metaworld or gymnasium version) leaves all of them alone.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import math
import os
import pkgutil
from typing import Any

import mujoco
import numpy as np

# sha256 (first 16 hex digits) of the sources of metaworld 3.1.1's functions that the ones below
# repeat: another version's are left alone
_KNOWN_SOURCES = {"touching_object": "b8e2c6f38fd9bb0c", "_get_curr_obs_combined_no_goal": "8c45967bdc72e4ae",
                  "_initialize_simulation": "60b121c39cb2d02c"}  # the last: gymnasium 1.2's MujocoEnv's

# each Sawyer XML compiled once per process: (path, modification time, width, height) -> MjModel
_COMPILED: dict[tuple[str, float, int, int], Any] = {}

_state: dict[str, Any] = {}


class _Quaternion:
    __slots__ = ("_quat",)

    def __init__(self, quat: np.ndarray) -> None:
        self._quat = quat

    def as_quat(self) -> np.ndarray:
        return self._quat


class ExactRotation:
    """`Rotation.from_matrix(m).as_quat()` as scipy computes it, without its dispatch."""

    @staticmethod
    def from_matrix(matrix: Any) -> Any:
        scipy_rotation = _state["scipy_rotation"]
        m = np.asarray(matrix)
        if m.shape != (3, 3) or m.dtype != np.float64:
            return scipy_rotation.from_matrix(matrix)
        (a00, a01, a02), (a10, a11, a12), (a20, a21, a22) = m.tolist()
        # scipy's test before it orthogonalises by SVD: m mᵀ within 1e-12 of I off the diagonal,
        # 1e-5 + 1e-12 on it (isclose); here with margins that rounding cannot cross (~1e-16),
        # anything between them left to scipy. Then det > 0 (scipy refuses the rest).
        off = max(abs(a00 * a10 + a01 * a11 + a02 * a12), abs(a00 * a20 + a01 * a21 + a02 * a22),
                  abs(a10 * a20 + a11 * a21 + a12 * a22))
        diagonal = max(abs(a00 * a00 + a01 * a01 + a02 * a02 - 1), abs(a10 * a10 + a11 * a11 + a12 * a12 - 1),
                       abs(a20 * a20 + a21 * a21 + a22 * a22 - 1))
        det = a00 * (a11 * a22 - a12 * a21) - a01 * (a10 * a22 - a12 * a20) + a02 * (a10 * a21 - a11 * a20)
        if not (off <= 0.5e-12 and diagonal <= 0.5e-5 and det > 0.5):  # NaN too: scipy decides
            return scipy_rotation.from_matrix(matrix)
        trace = a00 + a11 + a22
        decision = (a00, a11, a22, trace)
        choice = decision.index(max(decision))  # the first largest, as argmax
        if choice == 0:
            q = (1 - trace + 2 * a00, a10 + a01, a20 + a02, a21 - a12)
        elif choice == 1:
            q = (a10 + a01, 1 - trace + 2 * a11, a21 + a12, a02 - a20)
        elif choice == 2:
            q = (a20 + a02, a21 + a12, 1 - trace + 2 * a22, a10 - a01)
        else:
            q = (a21 - a12, a02 - a20, a10 - a01, 1 + trace)
        norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
        return _Quaternion(np.array([q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm]))


def touching_object(self: Any, object_geom_id: int) -> bool:
    """Whether both gripper pads push on the object (contact force > 0), as metaworld's own."""
    data = self.data
    if data.ncon == 0:
        return False
    left, right = data.geom("leftpad_geom").id, data.geom("rightpad_geom").id
    contacts = data.contact
    geom1, geom2, address = contacts.geom1, contacts.geom2, contacts.efc_address
    with_object = (geom1 == object_geom_id) | (geom2 == object_geom_id)
    force = data.efc_force
    # the same sum as metaworld's, in contact order, starting from the int 0
    left_force = sum(force[a] for a in address[with_object & ((geom1 == left) | (geom2 == left))].tolist())
    right_force = sum(force[a] for a in address[with_object & ((geom1 == right) | (geom2 == right))].tolist())
    return left_force > 0 and right_force > 0


def curr_obs_combined_no_goal(self: Any) -> np.ndarray:
    """The hand's position, the gripper's opening and each object's position and quaternion,
    zero-padded to 14 (metaworld's `_get_curr_obs_combined_no_goal`)."""
    obj_pos, obj_quat = self._get_pos_objects(), self._get_quat_objects()
    count = len(obj_pos) // 3
    if len(obj_pos) % 3 or len(obj_quat) != 4 * count or 7 * count > self._obs_obj_max_len:  # not the pairs it expects: metaworld's own says why
        return _state["originals"]["_get_curr_obs_combined_no_goal"](self)
    data = self.data
    opening = np.linalg.norm(data.body("rightclaw").xpos - data.body("leftclaw").xpos)
    obs = np.zeros(4 + self._obs_obj_max_len)
    obs[:3] = self.get_endeff_pos()
    obs[3] = min(max(opening / 0.1, 0.0), 1.0)  # np.clip's value, NaN included
    objects = obs[4:4 + 7 * count].reshape(count, 7)
    objects[:, :3] = np.reshape(obj_pos, (count, 3))
    objects[:, 3:] = np.reshape(obj_quat, (count, 4))
    return obs


def initialize_simulation(self: Any) -> tuple[Any, Any]:
    """gymnasium's `MujocoEnv._initialize_simulation` for the Sawyer envs, compiling each XML once
    per process: later envs of the class get a copy of the compiled model (`mj_copyModel`, ~5 ms)
    instead of a compile (~105 ms). An ML10/ML45 slot builds its env anew whenever its next task
    is of another class, so a meta-batch of new tasks rebuilds most slots."""
    key = (self.fullpath, os.path.getmtime(self.fullpath), self.width, self.height)
    compiled = _COMPILED.get(key)
    if compiled is None:
        model, data = _state["originals"]["_initialize_simulation"](self)
        _COMPILED[key] = copy.copy(model)  # before the env changes anything in its own
        return model, data
    model = copy.copy(compiled)
    return model, mujoco.MjData(model)


def _env_modules() -> list[Any]:
    import metaworld.envs

    return [importlib.import_module(f"metaworld.envs.{info.name}") for info in pkgutil.iter_modules(metaworld.envs.__path__)]


def install() -> bool:
    """Swap them in (idempotent). False when one of the functions they stand for is not the one
    they were checked against (another metaworld or gymnasium): then nothing is changed."""
    if _state.get("installed"):
        return True
    from metaworld.sawyer_xyz_env import SawyerXYZEnv
    from scipy.spatial.transform import Rotation

    originals = {name: getattr(SawyerXYZEnv, name) for name in _KNOWN_SOURCES}
    inherited = [name for name in _KNOWN_SOURCES if name not in vars(SawyerXYZEnv)]
    for name, digest in _KNOWN_SOURCES.items():
        try:
            source = inspect.getsource(originals[name])
        except (OSError, TypeError):  # no source to check it against
            return False
        if hashlib.sha256(source.encode()).hexdigest()[:16] != digest:
            return False
    modules = [m for m in _env_modules() if getattr(m, "Rotation", None) is Rotation]
    _state.update(scipy_rotation=Rotation, originals=originals, inherited=inherited, modules=modules, installed=True)
    for module in modules:
        module.Rotation = ExactRotation
    SawyerXYZEnv.touching_object = touching_object
    SawyerXYZEnv._get_curr_obs_combined_no_goal = curr_obs_combined_no_goal
    SawyerXYZEnv._initialize_simulation = initialize_simulation
    return True


def uninstall() -> None:
    """Put metaworld's own functions back (idempotent)."""
    if not _state.get("installed"):
        return
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    for module in _state["modules"]:
        module.Rotation = _state["scipy_rotation"]
    for name, original in _state["originals"].items():
        if name in _state["inherited"]:
            delattr(SawyerXYZEnv, name)  # back to the base class's
        else:
            setattr(SawyerXYZEnv, name, original)
    _state["installed"] = False


def set_speedups(on: bool) -> None:
    install() if on else uninstall()


def installed() -> bool:
    return bool(_state.get("installed"))
