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


def test_weights_mismatch_names_missing_unexpected_and_reshaped_entries():
    """What `metaray train --resume` and `metaray eval` say when a checkpoint's weights do not
    fit the policy: the keys and shapes, in one line; None when they fit."""
    from torch import nn

    from metaray.networks import get_weights, weights_mismatch

    small, wide = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    assert weights_mismatch(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), get_weights(small)) is None
    reshaped = weights_mismatch(wide, get_weights(small))
    assert reshaped.startswith("size mismatch for 0.weight: copying a param with shape torch.Size([4, 3])")
    assert reshaped.count("size mismatch") == 3 and "\n" not in reshaped  # 0.weight, 0.bias, 1.weight
    wider = weights_mismatch(nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 5)), get_weights(small))
    assert wider.count("size mismatch") == 3 and wider.endswith("; 1 more")  # four differ: three named
    missing = weights_mismatch(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1)),
                               get_weights(small) | {"extra": small[0].bias.detach().numpy()})
    assert missing == "missing 2.weight, 2.bias; unexpected extra"
