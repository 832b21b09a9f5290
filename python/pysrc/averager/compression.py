"""Compression objects with hivemind's names.

Each object only names a codec of the Rust registry (and its settings); the encoding itself runs
in Rust. ``Compression("name", **settings)`` selects any registered codec by its registry name,
including codecs added by plugins linked into the native module.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = [
    "CompressionBase",
    "Compression",
    "NoCompression",
    "Float16Compression",
    "ScaledFloat16Compression",
    "Uniform8BitQuantization",
    "Quantile8BitQuantization",
    "BlockwiseQuantization",
    "SizeAdaptiveCompression",
    "RoleAdaptiveCompression",
    "PerTensorCompression",
    "TensorRole",
    "CompressionInfo",
]


class TensorRole(enum.Enum):
    """What a tensor is for; role-adaptive compression chooses its codec by it."""

    ACTIVATION = "activation"
    PARAMETER = "parameter"
    GRADIENT = "gradient"
    OPTIMIZER = "optimizer"
    UNSPECIFIED = "unspecified"


class CompressionInfo:
    """Per-tensor compression settings (hivemind's ``CompressionInfo``): a key that
    :class:`PerTensorCompression` can select by (default: the tensor's index) and a role."""

    def __init__(self, key: Any = None, role: TensorRole = TensorRole.UNSPECIFIED, **_ignored: Any):
        if not isinstance(role, TensorRole):
            raise TypeError(f"role must be a TensorRole, got {role!r}")
        self.key = key
        self.role = role

    @classmethod
    def from_tensor(cls, tensor: Any, key: Any = None, role: TensorRole = TensorRole.UNSPECIFIED, **kwargs: Any):
        """The info of ``tensor`` (shape and dtype are read from the tensor itself at run time)."""
        return cls(key=key, role=role, **kwargs)

    def _spec(self, index: int) -> dict:
        spec: dict = {"role": self.role.value}
        # An int key equal to the tensor's position is what the core uses anyway (and what a
        # PerTensorCompression given a sequence looks up); any other key becomes a name.
        if self.key is not None and not (isinstance(self.key, int) and self.key == index):
            spec["name"] = str(self.key)
        return spec

    def __repr__(self) -> str:
        return f"CompressionInfo(key={self.key!r}, role={self.role})"


class CompressionBase:
    """A codec choice. Subclasses only describe which registry codec to use."""

    name: str = "none"

    def _settings(self) -> Optional[dict]:
        return None

    def _spec(self) -> Union[str, dict]:
        settings = self._settings()
        if settings is None:
            return self.name
        return {"name": self.name, "settings": settings}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionBase) and self._spec() == other._spec()

    def __hash__(self) -> int:
        return hash(repr(self._spec()))


class Compression(CompressionBase):
    """Any codec of the registry by name, with optional constructor settings."""

    def __init__(self, name: str, **settings: Any):
        if not isinstance(name, str) or not name:
            raise TypeError("codec name must be a non-empty string")
        self.name = name
        self.settings = settings

    def _settings(self) -> Optional[dict]:
        return self.settings or None

    def __repr__(self) -> str:
        return f"Compression({self.name!r})"


class NoCompression(CompressionBase):
    """Send tensors as they are."""

    name = "none"


class Float16Compression(CompressionBase):
    """IEEE half precision, saturating at +-65504."""

    name = "float16"


class ScaledFloat16Compression(CompressionBase):
    """Half precision after removing each row's mean and scaling by its standard deviation."""

    name = "meanstd16"


class Uniform8BitQuantization(CompressionBase):
    """8-bit uniform bins over +-3 standard deviations."""

    name = "uniform8"


class Quantile8BitQuantization(CompressionBase):
    """8-bit buckets of equal population, from estimated quantiles."""

    name = "quantile8"


class BlockwiseQuantization(CompressionBase):
    """8-bit dynamic code scaled per block of 4096 values (no bitsandbytes needed)."""

    name = "blockwise8"


def _codec(value: Any, what: str) -> Union[str, dict]:
    if isinstance(value, CompressionBase):
        return value._spec()
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} must be a CompressionBase or a registry codec name, got {value!r}")


class SizeAdaptiveCompression(CompressionBase):
    """``greater_equal`` for tensors with at least ``threshold`` elements, ``less`` for the others."""

    name = "size-adaptive"

    def __init__(self, threshold: int, less: CompressionBase, greater_equal: CompressionBase):
        if not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be a non-negative int, got {threshold!r}")
        self.threshold, self.less, self.greater_equal = threshold, less, greater_equal
        _codec(less, "less"), _codec(greater_equal, "greater_equal")

    def _settings(self) -> dict:
        return {
            "threshold": self.threshold,
            "less": _codec(self.less, "less"),
            "greater_equal": _codec(self.greater_equal, "greater_equal"),
        }


class RoleAdaptiveCompression(CompressionBase):
    """A codec per tensor role (see :class:`CompressionInfo`); ``default`` for the others."""

    name = "role-adaptive"

    def __init__(
        self,
        *,
        activation: Optional[CompressionBase] = None,
        parameter: Optional[CompressionBase] = None,
        gradient: Optional[CompressionBase] = None,
        optimizer: Optional[CompressionBase] = None,
        default: CompressionBase = NoCompression(),
    ):
        self.roles = dict(activation=activation, parameter=parameter, gradient=gradient, optimizer=optimizer)
        self.default = default
        self._settings()

    def _settings(self) -> dict:
        settings = {k: _codec(v, k) for k, v in self.roles.items() if v is not None}
        settings["default"] = _codec(self.default, "default")
        return settings


class PerTensorCompression(CompressionBase):
    """A codec per tensor: a sequence by tensor index, or a mapping by :class:`CompressionInfo` key."""

    name = "per-tensor"

    def __init__(self, tensor_compressors: Union[Sequence[CompressionBase], Mapping[Any, CompressionBase]]):
        self.tensor_compressors = tensor_compressors
        self._settings()

    def _settings(self) -> dict:
        tc = self.tensor_compressors
        if isinstance(tc, Mapping):
            codecs: Any = {str(k): _codec(v, f"compressor {k!r}") for k, v in tc.items()}
        elif isinstance(tc, Sequence) and not isinstance(tc, str):
            codecs = [_codec(v, f"compressor {i}") for i, v in enumerate(tc)]
        else:
            raise TypeError("tensor_compressors must be a sequence or a mapping of compression objects")
        return {"codecs": codecs}
