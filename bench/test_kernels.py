"""Kernel regression benchmarks (pytest-benchmark), at small sizes.

    python -m pytest bench/test_kernels.py --benchmark-enable

Each benchmark compiles its kernel before timing. No timing is asserted:
compare runs with ``--benchmark-compare``.
"""

import numpy as np
import pytest

from fastdecomp.kernels import cpu

SHAPES = [(28, 16), (14, 32), (7, 64)]


@pytest.mark.benchmark(group="conv2d_forward")
@pytest.mark.parametrize("size, channels", SHAPES)
def test_conv2d_forward(benchmark, size, channels):
    rng = np.random.default_rng(0)
    x = rng.random((32, size, size, channels), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
    bias = np.zeros(channels, np.float32)
    out = np.empty_like(x)
    cpu.conv2d_forward(x, kernel, bias, 1, 1, 1, 1, out)
    benchmark(cpu.conv2d_forward, x, kernel, bias, 1, 1, 1, 1, out)


@pytest.mark.benchmark(group="conv2d_forward")
def test_conv2d_forward_fused_epilogue(benchmark):
    """A ResNet block's second convolution in a decomposition: residual, ReLU and packed bits."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 16), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    bias, shortcut = np.zeros(16, np.float32), rng.random(x.shape, dtype=np.float32)
    out, bits = np.empty_like(x), np.empty((32, 28 * 28 * 16 // 8), np.uint8)
    cpu.conv2d_forward(x, kernel, bias, 1, 1, 1, 1, out, True, shortcut, bits)
    benchmark(cpu.conv2d_forward, x, kernel, bias, 1, 1, 1, 1, out, True, shortcut, bits)


def activity_case():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((64, 28 * 28 * 16)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    concerned = np.where(rng.random(64) < 0.9, labels, -1)
    ranks = np.where(rng.random(64) < 0.2, rng.integers(0, 100, 64), -1)
    active = np.zeros((10, values.shape[1] // 8), np.uint8)
    first_rank = np.full((10, values.shape[1]), 100, np.uint16)
    tangle = np.where(ranks >= 0, labels, -1)
    return values, concerned, tangle, ranks, active, first_rank


@pytest.mark.benchmark(group="accumulate_activity")
def test_accumulate_activity(benchmark):
    values, *roles_and_statistics = activity_case()
    packed = np.empty((64, values.shape[1] // 8), np.uint8)
    cpu.accumulate_activity(values, *roles_and_statistics, packed)
    benchmark(cpu.accumulate_activity, values, *roles_and_statistics, packed)


@pytest.mark.benchmark(group="accumulate_activity")
def test_accumulate_packed_activity(benchmark):
    values, *roles_and_statistics = activity_case()
    bits = np.packbits(values > 0, axis=1)
    cpu.accumulate_packed_activity(bits, *roles_and_statistics)
    benchmark(cpu.accumulate_packed_activity, bits, *roles_and_statistics)


@pytest.mark.benchmark(group="tangling_keep")
def test_tangling_keep(benchmark):
    """200 modules, each taking one input of every other class and a second of 20."""
    rng = np.random.default_rng(3)
    first_rank = rng.integers(0, 3, (200, 16 * 16 * 64)).astype(np.uint8)
    counts = 1 + (rng.random((200, 200)) < 0.1)
    counts[np.arange(200), np.arange(200)] = 0
    keep = rng.random((200, first_rank.shape[1])) < 0.5
    cpu.tangling_keep(first_rank, counts, keep.copy())
    benchmark(cpu.tangling_keep, first_rank, counts, keep)


@pytest.mark.benchmark(group="window_dead_inputs")
def test_window_dead_inputs(benchmark):
    dead = np.random.default_rng(2).random((10, 28, 28, 1)) < 0.9
    cpu.window_dead_inputs(dead, 28, 28, 3, 3, 1, 1, 1, 1)
    benchmark(cpu.window_dead_inputs, dead, 28, 28, 3, 3, 1, 1, 1, 1)
