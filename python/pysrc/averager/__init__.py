"""Decentralized tensor averaging with hivemind's ``DecentralizedAverager`` API, backed by the
Rust ``averager`` library (Kademlia DHT, gRPC transport, butterfly all-reduce).

Moving a script from hivemind: replace ``hivemind.DHT``, ``hivemind.averaging.DecentralizedAverager``
and the compression classes by the same names from this package.
"""

from ._native import AveragerError, codec_names, get_dht_time
from .averager import DecentralizedAverager, MSGPackSerializer
from .compression import (
    BlockwiseQuantization,
    Compression,
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    PerTensorCompression,
    Quantile8BitQuantization,
    RoleAdaptiveCompression,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    TensorRole,
    Uniform8BitQuantization,
)
from .control import AveragingStage, StepControl
from .dht import DHT

__all__ = [
    "AveragerError",
    "AveragingStage",
    "BlockwiseQuantization",
    "Compression",
    "CompressionBase",
    "CompressionInfo",
    "DHT",
    "DecentralizedAverager",
    "Float16Compression",
    "MSGPackSerializer",
    "NoCompression",
    "PerTensorCompression",
    "Quantile8BitQuantization",
    "RoleAdaptiveCompression",
    "ScaledFloat16Compression",
    "SizeAdaptiveCompression",
    "StepControl",
    "TensorRole",
    "Uniform8BitQuantization",
    "codec_names",
    "get_dht_time",
]
