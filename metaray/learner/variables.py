"""How weights travel between the learner, the parameter server and the workers.

Acme's VariableSource idea: workers ask a client for weights newer than the version they hold;
the learner hands each new version to a publisher. The local variants call a ParameterServer
object directly (serial mode); the Ray variants talk to the parameter-server actor and put each
version in the object store exactly once.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from metaray.learner.parameter_server import ParameterServer

Weights = dict[str, np.ndarray]


class VariableClient(Protocol):
    def latest(self, newer_than: int) -> tuple[int, Weights] | None: ...


class VariablePublisher(Protocol):
    def publish(self, version: int, weights: Weights) -> bool: ...


class LocalVariables:
    """Both ends over an in-process ParameterServer (serial mode)."""

    def __init__(self, server: ParameterServer):
        self.server = server

    def latest(self, newer_than: int) -> tuple[int, Weights] | None:
        found = self.server.latest(newer_than)
        return None if found is None else (found[0], found[1][0])

    def publish(self, version: int, weights: Weights) -> bool:
        return self.server.publish(version, [weights])


class RayVariables:
    """Both ends over the parameter-server actor; weights go through the object store once."""

    def __init__(self, server_handle: Any):
        self.server = server_handle

    def latest(self, newer_than: int) -> tuple[int, Weights] | None:
        import ray

        found = ray.get(self.server.latest.remote(newer_than))
        if found is None:
            return None
        version, (ref,) = found
        return version, ray.get(ref)

    def publish(self, version: int, weights: Weights) -> bool:
        import ray

        return ray.get(self.server.publish.remote(version, [ray.put(weights)]))
