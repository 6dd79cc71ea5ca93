"""The gRPC wire format: the `.proto`, its generated stubs and the tensor codec.

A leaf of the package (numpy, protobuf and grpc only): the service in `metaray.cluster` and the
client in `metaray.actors` both use it, and algorithms convert their results to and from
`RolloutArrays` (one rollout as numpy arrays) without knowing about messages.
"""

from metaray.protocol.codec import (
    DTYPES,
    RolloutArrays,
    decode_tensor,
    encode_tensor,
    rollout_message,
)

__all__ = ["DTYPES", "RolloutArrays", "decode_tensor", "encode_tensor", "rollout_message"]
