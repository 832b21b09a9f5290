"""The user's tensors as raw memory for the native module: ``(address, nbytes, dtype, shape)``
of each contiguous CPU buffer, read from numpy's ``__array_interface__`` or torch's
``data_ptr()``. Nothing here touches individual elements."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

try:  # torch is optional: numpy arrays work without it
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

Spec = Tuple[int, int, str, Tuple[int, ...]]

_NUMPY_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64", np.dtype(np.float16): "float16"}
_TORCH_DTYPES = (
    {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    if torch is not None
    else {}
)


def is_torch(tensor: Any) -> bool:
    return torch is not None and isinstance(tensor, torch.Tensor)


def check(tensor: Any, index: int) -> None:
    """Raises ``TypeError``/``ValueError`` unless the averager can read and write ``tensor`` in place."""
    if is_torch(tensor):
        if tensor.device.type != "cpu":
            raise TypeError(f"tensor {index} is on {tensor.device}; only CPU tensors can be averaged")
        if tensor.dtype not in _TORCH_DTYPES:
            raise TypeError(f"tensor {index} has dtype {tensor.dtype}; use float32, float16, bfloat16 or float64")
        if not tensor.is_contiguous():
            raise ValueError(f"tensor {index} is not contiguous; pass tensor.contiguous()")
        if tensor.data_ptr() % tensor.element_size():
            raise ValueError(f"tensor {index} is not aligned for its dtype; pass tensor.clone()")
    elif isinstance(tensor, np.ndarray):
        if tensor.dtype not in _NUMPY_DTYPES:
            raise TypeError(f"array {index} has dtype {tensor.dtype}; use float32, float16 or float64")
        if not tensor.flags.c_contiguous:
            raise ValueError(f"array {index} is not C-contiguous; pass np.ascontiguousarray(array)")
        if not tensor.flags.aligned:
            raise ValueError(f"array {index} is not aligned for its dtype; pass array.copy()")
        if not tensor.flags.writeable:
            raise ValueError(f"array {index} is read-only; averaging writes the result in place")
    else:
        raise TypeError(f"tensor {index} is a {type(tensor).__name__}, not a torch.Tensor or numpy.ndarray")


def spec(tensor: Any) -> Spec:
    """The buffer of a tensor that :func:`check` accepted."""
    if is_torch(tensor):
        return (
            tensor.data_ptr(),
            tensor.numel() * tensor.element_size(),
            _TORCH_DTYPES[tensor.dtype],
            tuple(tensor.shape),
        )
    return (tensor.__array_interface__["data"][0], tensor.nbytes, _NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape))


def specs(tensors: Sequence[Any]) -> List[Spec]:
    for i, t in enumerate(tensors):
        check(t, i)
    return [spec(t) for t in tensors]


def snapshot(tensors: Sequence[Any]) -> Tuple[List[Spec], List[Any]]:
    """Buffers of any tensors (made contiguous if needed), and the objects that own them."""
    owners = []
    for i, t in enumerate(tensors):
        if is_torch(t):
            t = t.detach().cpu().contiguous()
        elif isinstance(t, np.ndarray):
            t = np.ascontiguousarray(t)
            if not t.flags.writeable:  # only read here; a writable alias keeps check() simple
                t = t.copy()
        owners.append(t)
    return specs(owners), owners


def empty_like(tensor: Any) -> Any:
    """A new contiguous tensor of ``tensor``'s kind, dtype and shape (contents unspecified)."""
    if is_torch(tensor):
        return torch.empty(tuple(tensor.shape), dtype=tensor.dtype)
    return np.empty(tensor.shape, dtype=tensor.dtype)


def copy(tensor: Any) -> Any:
    if is_torch(tensor):
        return tensor.detach().clone()
    return np.array(tensor, copy=True)


def from_bytes(data: bytearray, dtype: str, shape: Sequence[int], as_torch: bool) -> Any:
    """A tensor owning ``data`` (a downloaded state tensor)."""
    if as_torch or (dtype == "bfloat16"):
        if torch is None:
            raise TypeError("a bfloat16 state tensor needs torch installed")
        tdtype = {v: k for k, v in _TORCH_DTYPES.items()}[dtype]
        if len(data) == 0:
            return torch.empty(tuple(shape), dtype=tdtype)
        return torch.frombuffer(data, dtype=tdtype).reshape(tuple(shape))
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(tuple(shape))
