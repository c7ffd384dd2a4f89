"""The CUDA kernels against their CPU twins, without a GPU (and on one where it exists).

Every kernel in ``fastdecomp/kernels/cuda/*.cu`` must appear in ``TWINS``
(checked below), so no GPU kernel can exist without a test comparing it with
its CPU twin. On this machine the kernels run through the CPU emulator (the
same source, compiled by g++, one grid thread after another); tests marked
``gpu`` repeat the comparison on a CUDA device wherever one is reachable.
"""

import re

import numpy as np
import pytest

from fastdecomp import backends
from fastdecomp.kernels import cpu, gpu
from fastdecomp.kernels.cuda_emulator import check_source, kernel_signatures

TWINS = {
    "conv2d_forward": "test_conv2d_forward_twin",
    "grouped_conv2d_forward": "test_grouped_conv2d_forward_twin",  # and ..._twin_depthwise
    "dense_forward": "test_dense_forward_twin",
    "pool2d_forward": "test_pool2d_forward_twin",
    "global_average_pool_forward": "test_global_average_pool_forward_twin",
    "accumulate_activity": "test_accumulate_activity_twin",
    "accumulate_packed_activity": "test_accumulate_packed_activity_twin",
    "accumulate_concerned": "test_accumulate_concerned_twin",
    "tangling_keep": "test_tangling_keep_twin",
    "window_dead_inputs": "test_window_dead_inputs_twin",
}


def all_kernels():
    return {name: src for src in gpu.SOURCES for name in kernel_signatures(gpu.source(src))}


def test_every_cuda_kernel_has_a_twin_test():
    assert set(all_kernels()) == set(TWINS), "a CUDA kernel without a twin test (or a stale entry)"
    for name, test in TWINS.items():
        assert test in globals(), f"{test} (twin test of {name}) is missing"
        assert hasattr(gpu, name), f"fastdecomp.kernels.gpu has no wrapper for {name}"
        twin = getattr(cpu, name)
        assert getattr(gpu, name).__doc__ and twin.__doc__


@pytest.mark.parametrize("name", sorted(gpu.SOURCES))
def test_launch_bounds_fit_the_block_the_kernels_are_launched_with(name):
    """A kernel bounded to fewer threads per block than gpu.BLOCK would fail every launch on a device."""
    for bound in re.findall(r"__launch_bounds__\((\d+)", gpu.source(name)):
        assert int(bound) == gpu.BLOCK


@pytest.mark.parametrize("name", sorted(gpu.SOURCES))
def test_sources_keep_threads_independent(name):
    check_source(gpu.source(name), name)
    with pytest.raises(ValueError, match="must not let threads communicate"):
        check_source(gpu.source(name) + "\n__global__ void k(int* a) { atomicAdd(a, 1); }")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(gpu.SOURCES))
def test_nvrtc_compiles_every_source(name, arch):
    """NVRTC compiles each source for both architectures, for every rank type, as the runtime does."""
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    from fastdecomp.kernels import cuda_compile

    defines = [()] if name != "statistics" else [(f"RANK_T={t}",) for t in gpu.RANK_TYPES.values()]
    for extra in defines:
        compiled = cuda_compile.compile_source(gpu.source(name), gpu.SOURCES[name], arch, extra)
        assert len(compiled.cubin) > 1000 and ".entry" in compiled.ptx


def devices():
    params = [pytest.param("emulated-cuda", id="emulated")]
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.gpu))
    return params


@pytest.fixture(params=devices())
def device(request):
    return backends.get(request.param)


def to(device, *arrays):
    return [device.asarray(np.ascontiguousarray(a)) for a in arrays]


def empty(device, shape, dtype):
    """An uninitialised device array, made on the stream the kernels run on (as the library makes its own)."""
    with device.compute():
        return device.xp.empty(shape, dtype)


rng = np.random.default_rng(0)


def floats(*shape):
    return rng.standard_normal(shape).astype(np.float32)


CONV_CASES = [  # size, ci, co, k, stride, pads, rectify, residual, cap; the kernel's path in the comment
    ((9, 9), 3, 16, 3, 1, (1, 1), False, False, None),    # any window (ci % 4)
    ((9, 7), 5, 6, 3, 2, (0, 1), True, False, None),      # any window, a partial channel group
    ((8, 8), 4, 8, 1, 2, (0, 0), False, True, None),      # 1x1 vector, stride 2
    ((6, 6), 2, 4, 2, 1, (0, 0), True, True, None),       # any window, 2x2
    ((9, 9), 3, 16, 3, 1, (1, 1), True, False, 0.7),
    ((6, 6), 2, 4, 2, 1, (0, 0), True, True, 1.25),
    ((11, 7), 8, 16, 3, 1, (1, 1), True, True, None),     # 3x3 vector, non-square, a partial pixel tile
    ((7, 13), 12, 24, 3, 1, (1, 1), False, False, None),  # 3x3 vector, three channel groups
    ((5, 10), 8, 16, 3, 2, (0, 1), True, False, None),    # 3x3 stride 2: any window
    ((10, 6), 16, 8, 1, 1, (0, 0), True, True, 0.9),      # 1x1 vector, stride 1
    ((7, 9), 8, 12, 3, 1, (1, 1), False, False, None),    # co % 8 != 0: any window
]


def conv_case(size, ci, co, k, stride, pads):
    x, kernel, bias = floats(3, *size, ci), floats(k, k, ci, co), floats(co)
    padding_total = [max((-(-s // stride) - 1) * stride + k - s, 0) for s in size] if pads != (0, 0) else [0, 0]
    oh, ow = [(-(-s // stride)) if pads != (0, 0) else (s - k) // stride + 1 for s in size]
    return x, kernel, bias, (padding_total[0] // 2, padding_total[1] // 2), (3, oh, ow, co)


@pytest.mark.parametrize("size, ci, co, k, stride, pads, rectify, residual, cap", CONV_CASES)
def test_conv2d_forward_twin(device, size, ci, co, k, stride, pads, rectify, residual, cap):
    x, kernel, bias, (pad_top, pad_left), out_shape = conv_case(size, ci, co, k, stride, pads)
    expected = np.empty(out_shape, np.float32)
    shortcut = floats(*expected.shape) if residual else None
    bits = np.empty((3, expected[0].size // 8), np.uint8) if co % 8 == 0 else None
    cpu.conv2d_forward(x, kernel, bias, stride, stride, pad_top, pad_left, expected, rectify=rectify,
                       residual=shortcut, activity=bits, cap=cap)
    if cap is not None:
        assert (expected == np.float32(cap)).any() and (expected < cap).any()
    dx, dk, db = to(device, x, kernel, bias)
    out = empty(device, expected.shape, np.float32)
    device_bits = None if bits is None else empty(device, bits.shape, np.uint8)
    gpu.conv2d_forward(dx, dk, db, stride, stride, pad_top, pad_left, out, rectify=rectify,
                       residual=None if shortcut is None else to(device, shortcut)[0], activity=device_bits,
                       cap=cap, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)
    if bits is not None:
        assert 0 < np.unpackbits(bits).mean() < 1
        np.testing.assert_array_equal(device.to_host(device_bits), bits)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_conv2d_forward_twin_on_misaligned_input(device, offset):
    """An input that starts off a 16-byte boundary takes the scalar path (a float4 load there would fault)."""
    x, kernel, bias, (pad_top, pad_left), out_shape = conv_case((9, 7), 8, 16, 3, 1, (1, 1))
    expected = np.empty(out_shape, np.float32)
    cpu.conv2d_forward(x, kernel, bias, 1, 1, pad_top, pad_left, expected)
    flat = device.asarray(np.concatenate([np.zeros(offset, np.float32), x.ravel()]))
    shifted = flat[offset:].reshape(x.shape)
    out = empty(device, expected.shape, np.float32)
    gpu.conv2d_forward(shifted, *to(device, kernel, bias), 1, 1, pad_top, pad_left, out, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


@pytest.mark.parametrize("groups, ci, co", [(1, 5, 4), (2, 6, 4), (6, 6, 12)])
@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_grouped_conv2d_forward_twin(device, groups, ci, co, stride, dilation):
    x, kernel, bias = floats(2, 9, 7, ci), floats(3, 3, ci // groups, co), floats(co)
    expected = np.empty((2, 5, 4, co), np.float32)
    cpu.grouped_conv2d_forward(x, kernel, bias, stride, stride, dilation, dilation, 1, 2, groups, expected)
    out = empty(device, expected.shape, np.float32)
    gpu.grouped_conv2d_forward(*to(device, x, kernel, bias), stride, stride, dilation, dilation, 1, 2, groups, out,
                               device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


@pytest.mark.parametrize("size, channels, stride, dilation", [
    ((9, 7), 8, 1, 1),    # float4 channels; a partial pixel tile
    ((11, 13), 6, 1, 1),  # channels not a multiple of 4: scalar loads, a partial channel group
    ((10, 9), 12, 2, 1),
    ((9, 12), 4, 1, 2),
    ((7, 6), 1, 1, 1),
])
def test_grouped_conv2d_forward_twin_depthwise(device, size, channels, stride, dilation):
    """The depthwise tile (4 pixels x 4 channels a thread) against the CPU, on its every path."""
    h, w = size
    span = 2 * dilation + 1
    oh, ow = (h + 1 - span) // stride + 1, (w + 2 - span) // stride + 1
    x, kernel, bias = floats(2, h, w, channels), floats(3, 3, 1, channels), floats(channels)
    expected = np.empty((2, oh, ow, channels), np.float32)
    cpu.grouped_conv2d_forward(x, kernel, bias, stride, stride, dilation, dilation, 1, 2, channels, expected)
    out = empty(device, expected.shape, np.float32)
    gpu.grouped_conv2d_forward(*to(device, x, kernel, bias), stride, stride, dilation, dilation, 1, 2, channels,
                               out, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


def test_dense_forward_twin(device):
    x, kernel, bias = floats(5, 37), floats(37, 9), floats(9)
    expected = np.empty((5, 9), np.float32)
    cpu.dense_forward(x, kernel, bias, expected)
    out = empty(device, (5, 9), np.float32)
    gpu.dense_forward(*to(device, x, kernel, bias), out, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


@pytest.mark.parametrize("is_max", [True, False])
def test_pool2d_forward_twin(device, is_max):
    x = floats(2, 7, 8, 3)
    expected = np.empty((2, 4, 4, 3), np.float32)
    cpu.pool2d_forward(x, 3, 2, 2, 2, 1, 0, is_max, expected)
    out = empty(device, expected.shape, np.float32)
    gpu.pool2d_forward(*to(device, x), 3, 2, 2, 2, 1, 0, is_max, out, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


def test_global_average_pool_forward_twin(device):
    x = floats(3, 5, 6, 7)
    expected = np.empty((3, 7), np.float32)
    cpu.global_average_pool_forward(x, expected)
    out = empty(device, (3, 7), np.float32)
    gpu.global_average_pool_forward(*to(device, x), out, device=device)
    np.testing.assert_array_equal(device.to_host(out), expected)


def statistics_inputs(rank_dtype, nodes=45, n=9, classes=4):
    values = floats(n, nodes)
    values[rng.random(values.shape) < 0.3] = 0.0  # a ReLU's zeros are inactive: > 0, not >= 0
    concerned = rng.integers(-1, classes, n)
    tangle = rng.integers(-1, classes, n)
    rank = np.where(tangle >= 0, rng.integers(0, 7, n), -1)
    active = rng.integers(0, 256, (classes, (nodes + 7) // 8)).astype(np.uint8)
    first_rank = rng.integers(0, 8, (classes, nodes + (-nodes) % 8)).astype(rank_dtype)
    return values, concerned, tangle, rank, active, first_rank


@pytest.mark.parametrize("keep_bits", [False, True])
@pytest.mark.parametrize("rank_dtype", [np.uint8, np.uint16, np.uint32])
def test_accumulate_activity_twin(device, rank_dtype, keep_bits):
    values, concerned, tangle, rank, active, first_rank = statistics_inputs(rank_dtype)
    packed = np.zeros((len(values), active.shape[1]) if keep_bits else (0, 0), np.uint8)
    expected_active, expected_rank, expected_packed = active.copy(), first_rank.copy(), packed.copy()
    cpu.accumulate_activity(values, concerned, tangle, rank, expected_active, expected_rank, expected_packed)
    d = to(device, values, concerned, tangle, rank, active, first_rank, packed)
    gpu.accumulate_activity(*d, device=device)
    np.testing.assert_array_equal(device.to_host(d[4]), expected_active)
    np.testing.assert_array_equal(device.to_host(d[5]), expected_rank)
    np.testing.assert_array_equal(device.to_host(d[6]), expected_packed)
    if keep_bits:
        np.testing.assert_array_equal(expected_packed, np.packbits(values > 0, axis=1))


@pytest.mark.parametrize("rank_dtype", [np.uint8, np.uint16, np.uint32])
def test_accumulate_packed_activity_twin(device, rank_dtype):
    values, concerned, tangle, rank, active, first_rank = statistics_inputs(rank_dtype)
    bits = np.packbits(values > 0, axis=1)
    expected_active, expected_rank = active.copy(), first_rank.copy()
    cpu.accumulate_packed_activity(bits, concerned, tangle, rank, expected_active, expected_rank)
    from_values = active.copy(), first_rank.copy()
    cpu.accumulate_activity(values, concerned, tangle, rank, *from_values, np.zeros((0, 0), np.uint8))
    np.testing.assert_array_equal(expected_active, from_values[0])  # the CPU twins agree with each other
    np.testing.assert_array_equal(expected_rank, from_values[1])
    d = to(device, bits, concerned, tangle, rank, active, first_rank)
    gpu.accumulate_packed_activity(*d, device=device)
    np.testing.assert_array_equal(device.to_host(d[4]), expected_active)
    np.testing.assert_array_equal(device.to_host(d[5]), expected_rank)


def test_every_device_offers_the_same_kernels():
    """One set of kernel names on every backend, each with its contract's docstring."""
    from fastdecomp.kernels import KERNEL_NAMES

    for name in ("cpu", "emulated-cuda"):
        kernels = backends.get(name).kernels
        for kernel in KERNEL_NAMES:
            assert callable(getattr(kernels, kernel)), f"{name} has no {kernel}"
    assert set(KERNEL_NAMES) == set(TWINS)


def test_accumulate_concerned_twin(device):
    bits = rng.integers(0, 256, (9, 6)).astype(np.uint8)
    concerned = rng.integers(-1, 4, 9)
    active = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    expected = active.copy()
    cpu.accumulate_concerned(bits, concerned, expected)
    d = to(device, bits, concerned, active)
    gpu.accumulate_concerned(*d, device=device)
    np.testing.assert_array_equal(device.to_host(d[2]), expected)


@pytest.mark.parametrize("modules", [3, 70])  # one word of module bits, and two
def test_tangling_keep_twin(device, modules):
    classes, nodes = 5, 50
    first_rank = rng.integers(0, 9, (classes, 56)).astype(np.uint8)
    counts = rng.integers(0, 6, (modules, classes))
    keep = rng.random((modules, nodes)) < 0.3
    expected = keep.copy()
    cpu.tangling_keep(first_rank, counts, expected)
    d_rank, d_keep = to(device, first_rank, keep)
    gpu.tangling_keep(d_rank, counts, d_keep, device=device)
    np.testing.assert_array_equal(device.to_host(d_keep), expected)


@pytest.mark.parametrize("window, stride, pads", [(3, 1, 1), (2, 2, 0), (3, 2, 1)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_window_dead_inputs_twin(device, window, stride, pads, dilation):
    in_h, in_w = 9, 8
    span = (window - 1) * dilation + 1
    oh, ow = (in_h + 2 * pads - span) // stride + 1, (in_w + 2 * pads - span) // stride + 1
    dead_out = rng.random((4, oh, ow, 3)) < 0.7
    expected = cpu.window_dead_inputs(dead_out, in_h, in_w, window, window, stride, stride, pads, pads,
                                      dilation, dilation)
    got = gpu.window_dead_inputs(*to(device, dead_out), in_h, in_w, window, window, stride, stride, pads, pads,
                                 dilation, dilation, device=device)
    np.testing.assert_array_equal(device.to_host(got), expected)


def test_emulator_reports_compile_errors():
    from fastdecomp.kernels.cuda_emulator import compile_for_cpu

    with pytest.raises(RuntimeError, match="could not compile"):
        compile_for_cpu('extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }')


def test_signatures_are_parsed():
    sig = kernel_signatures(gpu.source("forward"))["dense_forward"]
    assert sig[0] == ("const float*", "x") and sig[-1] == ("int", "units")
    assert re.search(r"--fmad=false", " ".join(gpu.NVRTC_OPTIONS))


@pytest.mark.parametrize("concerned", ["correct", "all"])
@pytest.mark.parametrize("mask_at", ["relu", "conv"])
def test_device_decomposition_equals_cpu(resnet_case, sequential_case, device, concerned, mask_at):
    """The whole GPU code path (engine, streaming, device statistics) gives the CPU's modules bit for bit."""
    import fastdecomp as fd

    for model, x, y in (resnet_case, sequential_case):
        network = fd.from_keras(model)
        options = dict(mask_at=mask_at, concerned=concerned, backtrack="bln", delta=0.05, batch_size=7,
                       seed=2, progress=False)
        on_cpu = fd.decompose(network, x, y, **options)
        on_device = fd.decompose(network, x, y, backend=device.name, **options)
        for k in on_cpu.classes:
            for name, mask in on_cpu.masks(k, names="network").items():
                np.testing.assert_array_equal(on_device.masks(k, names="network")[name], mask, err_msg=f"{k} {name}")
            for a, b in zip(on_cpu.sample_indices(k), on_device.sample_indices(k)):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(network.forward(x, backend=device), network.forward(x))


@pytest.mark.parametrize("level", ["node", "channel"])
def test_passes_over_data_after_decomposition_run_on_the_device_and_equal_the_cpu(resnet_case, device, level,
                                                                                 monkeypatch):
    """The threshold counts, ``updated`` and cohesion pass over the data on the device (values stay there),
    giving the CPU's results bit for bit; thresholds from device counts give the CPU's masks."""
    import fastdecomp as fd

    convolutions = []
    real = device.kernels.conv2d_forward
    monkeypatch.setattr(device.kernels, "conv2d_forward", lambda *a, **k: convolutions.append(1) or real(*a, **k))
    model, x, y = resnet_case
    modules = fd.decompose(fd.from_keras(model), x, y, backtrack="bi", delta=0.05, batch_size=7, seed=2,
                           progress=False)
    on_cpu = modules.activity_counts(x, y, batch_size=9, level=level)
    assert not convolutions
    on_device = modules.activity_counts(x, y, batch_size=9, level=level, backend=device.name)
    assert convolutions
    for table in ("concerned", "unconcerned"):
        for name, counts in getattr(on_cpu, table).items():
            assert isinstance(getattr(on_device, table)[name], np.ndarray)
            np.testing.assert_array_equal(getattr(on_device, table)[name], counts, err_msg=f"{table} {name}")
    assert any(c.max() > 1 for c in on_cpu.concerned.values())
    thresholds = dict(activity_threshold=0.3, tangling_threshold=0.2)
    for k in modules.classes:
        for name, mask in modules.thresholded(on_cpu, **thresholds).masks(k).items():
            np.testing.assert_array_equal(modules.thresholded(on_device, **thresholds).masks(k)[name], mask)
    others = x[y != modules.classes[0]][:11]
    for mode in ("add", "remove"):
        expected = modules.updated(modules.classes[0], others, batch_size=4, mode=mode)
        convolutions.clear()
        got = modules.updated(modules.classes[0], others, batch_size=4, mode=mode, backend=device.name)
        assert convolutions
        for name, mask in expected.masks(modules.classes[0]).items():
            np.testing.assert_array_equal(got.masks(modules.classes[0])[name], mask, err_msg=f"{mode} {name}")
    assert fd.metrics.cohesion(modules, x, y, images_per_class=4, batch_size=5) == \
        fd.metrics.cohesion(modules, x, y, images_per_class=4, batch_size=5, backend=device.name)


def test_cuda_backend_without_a_device_says_what_is_missing(resnet_case, monkeypatch):
    import fastdecomp as fd
    from conftest import cuda_available
    from fastdecomp.errors import BackendError

    if cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendError, match="fastdecomp\\[gpu\\]|driver|no GPU"):
        backends.get("cuda")
    monkeypatch.setattr(backends, "_FELL_BACK", [])
    with pytest.warns(backends.BackendFallbackWarning, match="runs on the CPU"):
        assert backends.get("auto").name == "cpu"  # falls back to the CPU, and says so
    model, x, y = resnet_case
    with pytest.raises(BackendError):
        fd.decompose(model, x, y, backend="cuda", progress=False)
    with pytest.raises(fd.errors.InputError, match="backend must be one of"):
        fd.decompose(model, x, y, backend="tpu")


def valid_arguments():
    """Each kernel's arguments (host arrays), consistent with each other."""
    values, concerned, tangle, rank, active, first_rank = statistics_inputs(np.uint8)
    bits = np.packbits(values > 0, axis=1)
    return {
        "grouped_conv2d_forward": [floats(2, 7, 8, 6), floats(3, 3, 3, 4), floats(4), 1, 1, 1, 1, 1, 1, 2,
                                   np.zeros((2, 7, 8, 4), np.float32)],
        "dense_forward": [floats(5, 7), floats(7, 3), floats(3), np.zeros((5, 3), np.float32)],
        "pool2d_forward": [floats(2, 7, 8, 3), 3, 2, 2, 2, 1, 0, True, np.zeros((2, 4, 4, 3), np.float32)],
        "global_average_pool_forward": [floats(2, 5, 5, 3), np.zeros((2, 3), np.float32)],
        "accumulate_activity": [values, concerned, tangle, rank, active, first_rank, np.zeros((0, 0), np.uint8)],
        "accumulate_packed_activity": [bits, concerned, tangle, rank, active, first_rank],
        "accumulate_concerned": [bits, concerned, active],
        "tangling_keep": [first_rank, np.ones((2, first_rank.shape[0]), np.int64),
                          np.zeros((2, values.shape[1]), bool)],
        "window_dead_inputs": [np.zeros((2, 4, 4, 3), bool), 9, 8, 3, 3, 2, 2, 1, 1],
    }


# more classes, more modules, a taller kernel (it reads only rows inside its input): valid
ROWS_FREE = {("accumulate_concerned", 2), ("window_dead_inputs", 0), ("grouped_conv2d_forward", 1)}


def hostile(name, arguments):
    """(description, arguments) pairs that must be refused before any memory is touched."""
    arrays = [i for i, a in enumerate(arguments) if isinstance(a, np.ndarray) and a.size]
    for i in arrays:
        a = arguments[i]
        yield f"argument {i} one element short", arguments[:i] + [a.reshape(-1)[:-1].copy()] + arguments[i + 1:]
        other = np.float64 if a.dtype != np.float64 else np.float32
        yield f"argument {i} of dtype {np.dtype(other)}", arguments[:i] + [a.astype(other)] + arguments[i + 1:]
        if a.ndim >= 2 and (name, i) not in ROWS_FREE:
            grown = np.zeros((a.shape[0] + 3,) + a.shape[1:], a.dtype)
            yield f"argument {i} with more rows", arguments[:i] + [grown] + arguments[i + 1:]
    integers = [i for i, a in enumerate(arguments) if isinstance(a, int) and not isinstance(a, bool)]
    for i in integers:  # the CUDA kernels take sizes as int: a wider value would wrap
        yield f"argument {i} beyond int32", arguments[:i] + [np.int64(2 ** 32 + 1)] + arguments[i + 1:]
    if name == "grouped_conv2d_forward":
        out = arguments[-1]
        beyond = np.zeros((out.shape[0], out.shape[1] + 2 * arguments[0].shape[1]) + out.shape[2:], np.float32)
        yield "output rows beyond the input", arguments[:-1] + [beyond]
    if name.startswith("accumulate"):
        classes = arguments[1].copy()
        classes[0] = arguments[-2 if name == "accumulate_packed_activity" else (2 if name == "accumulate_concerned"
                                                                                 else -3)].shape[0]
        yield "a class beyond the table", arguments[:1] + [classes] + arguments[2:]


@pytest.mark.parametrize("name", sorted(TWINS.keys() - {"conv2d_forward"}))
@pytest.mark.parametrize("side", ["cpu", "emulated-cuda"])
def test_kernels_refuse_arrays_that_do_not_fit_before_touching_memory(name, side):
    from fastdecomp.errors import InputError

    arguments = valid_arguments()[name]
    device = backends.get(side)
    kernel = getattr(device.kernels, name)
    place = (lambda args: [device.asarray(a) if isinstance(a, np.ndarray) and name != "tangling_keep" or
                           isinstance(a, np.ndarray) and a.dtype != np.int64 else a for a in args])
    kernel(*place([a.copy() if isinstance(a, np.ndarray) else a for a in arguments]))  # the valid call runs
    for what, bad in hostile(name, arguments):
        try:
            kernel(*place(bad))
        except InputError as error:
            assert name in str(error)
        else:
            pytest.fail(f"{name} ran with {what}")


def test_the_emulator_loads_libraries_only_from_a_folder_of_its_own(tmp_path, monkeypatch):
    """Another user's (or a world-writable) folder in the temporary directory is not trusted."""
    import os
    import tempfile

    from fastdecomp.kernels import cuda_emulator

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"fastdecomp-cuda-emulator-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    source = 'extern "C" __global__ void one(float* x) { x[threadIdx.x] = 1.0f; }'
    with pytest.warns(UserWarning, match="writable by other users"):
        library, _ = cuda_emulator.compile_for_cpu(source)
    assert planted not in library.parents and list(planted.iterdir()) == []


@pytest.mark.parametrize("mask_at", ["relu", "conv"])
def test_device_decomposition_of_the_new_kinds_equals_cpu(device, mask_at):
    """Grouped, depthwise, separable and dilated convolutions, affine maps, concatenation, cropping,
    upsampling and global max pooling on the device path, bit for bit (MC-BI reaches through them all)."""
    import fastdecomp as fd
    from conftest import balance_output_bias, labelled_like_model
    from test_architectures import kinds_model

    model = kinds_model()
    x = np.random.default_rng(3).normal(size=(20, 8, 8, 3)).astype(np.float32) * 2
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    network = fd.from_keras(model)
    np.testing.assert_array_equal(network.forward(x, backend=device), network.forward(x))
    options = dict(mask_at=mask_at, backtrack="bi", delta=0.05, batch_size=7, seed=2, progress=False)
    on_cpu = fd.decompose(network, x, y, **options)
    on_device = fd.decompose(network, x, y, backend=device.name, **options)
    for k in on_cpu.classes:
        for name, mask in on_cpu.masks(k, names="network").items():
            np.testing.assert_array_equal(on_device.masks(k, names="network")[name], mask, err_msg=f"{k} {name}")
