import numpy as np

from metaray.learner.parameter_server import ParameterServer
from metaray.learner.variables import LocalVariables


def test_publish_newer_and_reject_stale():
    ps = ParameterServer()
    assert ps.latest() is None
    assert ps.publish(0, ["w0"])
    assert ps.publish(2, ["w2"])
    assert not ps.publish(2, ["again"])
    assert not ps.publish(1, ["old"])
    assert ps.stats() == {"version": 2, "publishes": 2, "stale_publishes": 2}
    assert ps.latest(-1) == (2, ["w2"])
    assert ps.latest(1) == (2, ["w2"])
    assert ps.latest(2) is None  # the caller already holds the newest version


def test_local_variables_round_trip():
    vars_ = LocalVariables(ParameterServer())
    w = {"a": np.ones(3)}
    assert vars_.publish(0, w)
    version, got = vars_.latest(-1)
    assert version == 0 and got is w
    assert vars_.latest(0) is None
