"""Every compression object of the hivemind API averages (within its precision)."""

import numpy as np
import pytest

import averager as av
from conftest import step_all

N = 5000
CODECS = [
    (av.NoCompression(), 1e-7),
    (av.Float16Compression(), 1e-3),
    (av.ScaledFloat16Compression(), 1e-3),
    (av.Uniform8BitQuantization(), 0.05),
    (av.Quantile8BitQuantization(), 0.05),
    (av.BlockwiseQuantization(), 0.05),
    (av.SizeAdaptiveCompression(threshold=1000, less=av.NoCompression(), greater_equal=av.Float16Compression()), 1e-3),
    (av.RoleAdaptiveCompression(parameter=av.Float16Compression(), default=av.Uniform8BitQuantization()), 0.05),
    (av.PerTensorCompression([av.Float16Compression(), av.NoCompression()]), 1e-3),
    (av.PerTensorCompression({"w": av.Float16Compression(), 1: av.NoCompression()}), 1e-3),
    (av.Compression("float16"), 1e-3),
    ("float16", 1e-3),
]


@pytest.mark.parametrize("codec,tolerance", CODECS, ids=lambda c: repr(c) if not isinstance(c, float) else "")
def test_codec_averages(group, codec, tolerance):
    rng = np.random.default_rng(0)
    values = [[rng.standard_normal(N).astype(np.float32), rng.standard_normal(7).astype(np.float32)] for _ in range(2)]
    expected = [(values[0][j] + values[1][j]) / 2 for j in range(2)]
    by_name = isinstance(codec, av.PerTensorCompression) and isinstance(codec.tensor_compressors, dict)
    infos = [av.CompressionInfo(key="w" if by_name else 0, role=av.TensorRole.PARAMETER), av.CompressionInfo(key=1)]
    peers = group(values, compression=codec, state_compression=codec, tensor_infos=infos)
    assert all(r is not None for r in step_all(peers))
    for mine in values:
        for got, want in zip(mine, expected):
            # 8-bit codecs err most on the few outliers: bound the mean error, and the worst loosely.
            error = np.abs(got - want)
            assert error.mean() <= tolerance, (error.mean(), tolerance)
            assert error.max() <= max(50 * tolerance, 1e-6), (error.max(), tolerance)


def test_registry_lists_the_codecs():
    names = set(av.codec_names())
    assert {"none", "float16", "meanstd16", "uniform8", "quantile8", "blockwise8", "size-adaptive"} <= names
