"""The GPU backend's host code, proven without a GPU.

- Compile options: the runtime's own compile (not a copy of its options)
  keeps subnormals and needs no header.
- Launches: every launch on the emulated device is checked against the PTX
  NVRTC makes with those options, converting arguments as CuPy does; the
  checks refuse a wrong scalar width, a transposed array, a wrong dtype.
- Streams: the emulated device imitates CuPy's current stream, events and
  pool; decompose, forward and the modules' predictions keep the order, and
  each ordering bug this backend had is planted and caught.
- Bad input: a GPU that cannot compile or run is a BackendError before any
  data is read; ``auto`` then uses the CPU and says so once.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fastdecomp import backends, config
from fastdecomp.errors import BackendError, KernelLaunchError, StreamOrderError
from fastdecomp.kernels import cuda_compile, gpu, launches
from fastdecomp.kernels.emulated_streams import StreamLedger, TrackedNumpy

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")


def every_compile():
    for name in sorted(gpu.SOURCES):
        for defines in ([()] if name != "statistics" else [(f"RANK_T={t}",) for t in gpu.RANK_TYPES.values()]):
            yield name, defines


# ---------------------------------------------------------------- compile options

@pytest.mark.parametrize("name, defines", list(every_compile()))
def test_the_runtime_compile_keeps_subnormals(name, defines):
    compiled = cuda_compile.compile_source(gpu.source(name), gpu.SOURCES[name], "sm_90", defines)
    assert ".ftz" not in compiled.ptx, f"{name}: subnormals flushed to zero (not the CPU's arithmetic)"
    assert len(compiled.cubin) > 1000
    assert [o for o in cuda_compile.options("sm_90", defines) if "ftz" in o or "fast-math" in o] == ["--ftz=false"]


def test_the_ftz_detector_sees_flushing(monkeypatch):
    """What CuPy's RawModule does (-ftz=true after ours) shows in the PTX: the test above can fail."""
    monkeypatch.setattr(cuda_compile, "OPTIONS", cuda_compile.OPTIONS + ("-ftz=true",))
    ptx = cuda_compile.compile_source.__wrapped__(gpu.source("statistics"), "statistics.cu", "sm_90").ptx
    assert "setp.leu.ftz" in ptx or ".ftz" in ptx


def test_the_compile_needs_no_header(tmp_path):
    """No source includes a header, no option adds an include path, and NVRTC compiles every source in a
    process that can find no CUDA toolkit (only the NVRTC library the gpu extra installs)."""
    for name in gpu.SOURCES:
        assert "#include" not in gpu.source(name), name
    assert not [o for o in cuda_compile.options("sm_90") if o.startswith(("-I", "--include", "--pre-include"))]
    script = ("from fastdecomp.kernels import cuda_compile, gpu\n"
              "for name in gpu.SOURCES:\n"
              "    cuda_compile.compile_source(gpu.source(name), gpu.SOURCES[name], 'sm_80')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA", "CUPY"))}
    env.update(CUDA_PATH=str(tmp_path / "none"), CUDA_HOME=str(tmp_path / "none"), CPATH="", CPLUS_INCLUDE_PATH="")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr


def test_the_gpu_extra_brings_cupys_headers():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(gpu.__file__).parents[2] / "pyproject.toml").read_text())
    gpu_extra = extras["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("cupy-cuda12x[ctk]") for d in gpu_extra), gpu_extra


# ---------------------------------------------------------------- launches

@pytest.fixture
def device():
    return gpu.EmulatedDevice()


@pytest.mark.parametrize("name, defines", list(every_compile()))
def test_emulated_launches_are_checked_against_the_ptx(device, name, defines):
    """The emulated device's parameter lists are the PTX's, kernel by kernel, in count and width."""
    ptx = cuda_compile.ptx_parameters(
        cuda_compile.compile_source(gpu.source(name), gpu.SOURCES[name], gpu.EMULATED_ARCH, defines).ptx)
    params = device.module(name, defines).params
    assert set(params) == set(ptx)
    for kernel, types in ptx.items():
        assert [p.nbytes for p in params[kernel]] == [launches.PTX_BYTES[t] for t in types], kernel
        assert all(t == "u64" for p, t in zip(params[kernel], types) if p.pointer)


def concerned_launch(device, **change):
    """A valid accumulate_concerned launch on ``device``, with arguments changed by name."""
    with device.compute():
        args = dict(bits=device.asarray(np.zeros((3, 4), np.uint8)), n=np.int64(3), nbytes=np.int64(4),
                    concerned_class=device.asarray(np.array([0, -1, 1])),
                    active=device.asarray(np.zeros((2, 4), np.uint8)))
    args.update(change)
    device.launch("statistics", "accumulate_concerned", 4, list(args.values()))


def test_a_valid_launch_runs(device):
    concerned_launch(device)


@pytest.mark.parametrize("what, change, message", [
    ("an int32 where long long is read", dict(n=np.int32(3)), "takes 8 bytes"),
    ("a Python int (packed as int64) is fine for long long", None, None),
    ("int32 labels for long long*", dict(concerned_class=np.array([0, -1, 1], np.int32)), "points to int64"),
    ("a transposed array", dict(active="transposed"), "C-contiguous"),
    ("a float (packed as float64) where long long is read", dict(nbytes=4.0), "integer"),
    ("a host array where a pointer goes", dict(bits=np.zeros((3, 4), np.uint8)), None),
])
def test_launches_refuse_what_cupy_would_pack_wrongly(device, what, change, message):
    if change is None:
        concerned_launch(device, n=3)
        return
    if change.get("active") == "transposed":
        change["active"] = device.asarray(np.zeros((4, 2), np.uint8)).T
    if "concerned_class" in change:
        change["concerned_class"] = device.asarray(change["concerned_class"])
    with pytest.raises((KernelLaunchError, StreamOrderError), match=message):
        concerned_launch(device, **change)


def test_int_parameters_refuse_int64_scalars():
    params = launches.parameters([("int", "units")], (), ["u32"])
    with pytest.raises(KernelLaunchError, match="takes 4 bytes"):
        launches.check_launch("k", params, 1, 256, [np.int64(3)], lambda a: False)
    with pytest.raises(KernelLaunchError, match="takes 4 bytes"):
        launches.check_launch("k", params, 1, 256, [3], lambda a: False)  # CuPy packs a Python int as int64
    launches.check_launch("k", params, 1, 256, [np.int32(3)], lambda a: False)
    with pytest.raises(KernelLaunchError, match="limits"):
        launches.check_launch("k", params, 2 ** 31, 256, [np.int32(3)], lambda a: False)
    with pytest.raises(KernelLaunchError, match="1 parameters"):
        launches.check_launch("k", params, 1, 256, [np.int32(3), np.int32(3)], lambda a: False)


# ---------------------------------------------------------------- streams

def test_the_ledger_orders_by_events_and_host_waits():
    ledger = StreamLedger()
    xp = TrackedNumpy(ledger)
    compute, copy = ledger.stream("compute"), ledger.stream("copy")
    with copy:
        a = xp.asarray(np.ones(4))
    with pytest.raises(StreamOrderError, match="produced on <stream copy>"):
        ledger.use(a, "a kernel", stream=compute)
    compute.wait_event(copy.record())
    ledger.use(a, "a kernel", stream=compute)
    with copy:
        b = xp.zeros(3)
    copy.synchronize()  # the host waited: later work anywhere is ordered after it
    ledger.use(b, "a kernel", stream=compute)
    with pytest.raises(StreamOrderError, match="host array"):
        ledger.use(np.ones(2), "a kernel", stream=compute)


def test_freeing_an_array_another_stream_may_still_read_is_caught():
    ledger = StreamLedger()
    xp = TrackedNumpy(ledger)
    compute = ledger.stream("compute")
    a = xp.zeros(8)  # on the NULL stream
    compute.wait_event(ledger.null.record())
    ledger.use(a, "a kernel", stream=compute)  # ordered: the read is fine
    del a  # but the NULL stream's pool may hand the memory out while compute still reads it
    with pytest.raises(StreamOrderError, match="freed while <stream compute>"):
        ledger.report()
    b = xp.zeros(8)
    compute.wait_event(ledger.null.record())
    ledger.use(b, "a kernel", stream=compute)
    ledger.null.wait_event(compute.record())  # the allocating stream waits for the reader: free is safe
    del b
    ledger.report()


def run_device_paths(device, resnet_case, sequential_case):
    import fastdecomp as fd

    for (model, x, y), concerned in ((resnet_case, "correct"), (sequential_case, "all")):
        network = fd.from_keras(model)
        modules = fd.decompose(network, x, y, backend=device, batch_size=7, delta=0.05, seed=2, progress=False,
                               concerned=concerned)
        np.testing.assert_array_equal(network.forward(x, backend=device), network.forward(x))
        np.testing.assert_array_equal(modules.predict_proba(x, backend=device, batch_size=9),
                                      modules.predict_proba(x, batch_size=9))


def test_decompose_forward_and_modules_keep_stream_order(device, resnet_case, sequential_case):
    run_device_paths(device, resnet_case, sequential_case)
    device.ledger.report()


def _upload_on_the_current_stream(self, host):  # the old asarray: the NULL stream outside compute()
    return self.xp.ascontiguousarray(self.xp.asarray(host))


def _statistics_on_the_null_stream(monkeypatch):
    from fastdecomp import statistics

    original = statistics.ActivityStatistics.__init__

    def init(self, shapes, num_classes, rank_limit, backend):
        nothing = type("Null", (), {"__enter__": lambda s: s, "__exit__": lambda s, *e: None})()
        monkeypatch.setattr(backend, "compute", lambda: nothing)
        try:
            original(self, shapes, num_classes, rank_limit, backend)
        finally:
            monkeypatch.delattr(backend, "compute")
    monkeypatch.setattr(statistics.ActivityStatistics, "__init__", init)


@pytest.mark.parametrize("bug", ["uploads on the NULL stream", "statistics on the NULL stream",
                                 "compute does not wait for the copy", "copy does not wait for compute"])
def test_each_ordering_bug_is_caught(device, resnet_case, sequential_case, monkeypatch, bug):
    if bug == "uploads on the NULL stream":
        monkeypatch.setattr(gpu.EmulatedDevice, "asarray", _upload_on_the_current_stream)
    elif bug == "statistics on the NULL stream":
        _statistics_on_the_null_stream(monkeypatch)
    elif bug == "compute does not wait for the copy":
        monkeypatch.setattr(gpu.Device, "_handed_out", lambda self, positions, x, y, copied: (positions, x, y))
    else:
        monkeypatch.setattr(device._copy, "wait_event", lambda event: None)
    with pytest.raises(StreamOrderError):
        run_device_paths(device, resnet_case, sequential_case)


# ---------------------------------------------------------------- bad input

class _FakeGpu:
    compute_capability = "90"

    def __init__(self, device_id=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture
def gpu_without_nvrtc(monkeypatch):
    """CuPy sees one GPU, but NVRTC cannot be loaded."""
    cupy = pytest.importorskip("cupy")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(cupy.cuda, "Device", _FakeGpu)
    import cupy_backends.cuda.libs as libs

    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.nvrtc", None)
    monkeypatch.delattr(libs, "nvrtc")
    monkeypatch.setattr(backends, "_FELL_BACK", [])
    monkeypatch.delitem(backends._DEVICES, "cuda", raising=False)
    cuda_compile.compile_source.cache_clear()
    gpu._probe_module.cache_clear()
    yield
    cuda_compile.compile_source.cache_clear()
    gpu._probe_module.cache_clear()


def test_a_gpu_that_cannot_compile_is_a_backend_error_before_any_data_is_read(gpu_without_nvrtc, resnet_case,
                                                                               monkeypatch):
    import fastdecomp as fd

    decompose_module = sys.modules["fastdecomp.decompose"]
    with pytest.raises(BackendError, match="needs NVRTC.*fastdecomp\\[gpu\\]"):
        backends.get("cuda")
    monkeypatch.setattr(decompose_module, "_prepared", lambda *a: pytest.fail("data read before the check"))
    model, x, y = resnet_case
    with pytest.raises(BackendError, match="NVRTC"):
        fd.decompose(model, x, y, backend="cuda", progress=False)


def test_auto_falls_back_to_the_cpu_and_says_so_once(gpu_without_nvrtc):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.get("auto").name == "cpu"
        assert backends.get("auto").name == "cpu"
    said = [w for w in caught if issubclass(w.category, backends.BackendFallbackWarning)]
    assert len(said) == 1 and "NVRTC" in str(said[0].message)


def test_spin_cycles_are_a_setting(monkeypatch):
    from fastdecomp.errors import ConfigError

    monkeypatch.setenv("FASTDECOMP_GPU_SPIN", "1000")
    config._reset()
    assert config.get("gpu_spin") == 1000
    monkeypatch.setenv("FASTDECOMP_GPU_SPIN", "-1")
    config._reset()
    with pytest.raises(ConfigError, match="FASTDECOMP_GPU_SPIN"):
        config.get("gpu_spin")


# ---------------------------------------------------------------- CudaDevice's own code, on a CuPy double

def cupy_double(ledger, monkeypatch):
    """Just enough of CuPy's interface, over the emulated streams and kernels, to run ``CudaDevice`` itself."""
    import itertools
    import types

    from fastdecomp.kernels.cuda_emulator import EmulatedModule
    from fastdecomp.kernels.emulated_streams import EmulatedEvent

    sources, names = {}, itertools.count()
    real_compile = cuda_compile.compile_source
    ledger.id = 0  # the double's one GPU: its arrays are GPU 0's

    def compile_source(text, name, arch, defines=()):
        key = f"{len(sources)}".encode()
        sources[key] = (text, defines)
        return cuda_compile.Compiled(key, real_compile(text, name, arch, defines).ptx)

    class Module:
        def load(self, cubin):
            text, defines = sources[cubin]
            self.emulated = None if text == cuda_compile.PROBE_SOURCE else EmulatedModule(text, defines)

        def get_function(self, kernel):
            def launch(grid, block, args, shared_mem=0, stream=None):
                if self.emulated is None:  # the probe's kernels (clock64 has no CPU twin): recorded
                    cupy.probe_launches.append((kernel, stream))
                    return
                for arg in args:
                    if isinstance(arg, np.ndarray):
                        ledger.use(arg, f"{kernel} (stream={stream!r})", write=True, stream=stream or ledger.null)
                self.emulated.launch(kernel, grid[0], block[0], list(args))
            return launch

    class DeviceArray(np.ndarray):
        def set(self, host, stream=None):
            with stream or ledger.null:
                cupy.copyto(self, host)

    class Cupy(TrackedNumpy):
        def Stream(non_blocking=False):
            return ledger.stream(f"stream{next(names)}")

        Stream.null = ledger.null
        cuda = types.SimpleNamespace(
            Device=_FakeGpu, Event=EmulatedEvent, alloc_pinned_memory=bytearray, Stream=Stream,
            get_current_stream=ledger.current, function=types.SimpleNamespace(Module=Module))
        probe_launches = []

        def empty(self, shape, dtype=float):
            return TrackedNumpy.__getattr__(self, "empty")(shape, dtype).view(DeviceArray)

        def asnumpy(self, array, stream=None):
            if not ledger.is_tracked(array):  # a host array: real CuPy's to_host never gets one here
                return np.asarray(array)
            ledger.use(array, "asnumpy", stream=stream or ledger.null)
            (stream or ledger.null).synchronize()
            return np.array(array)

    cupy = Cupy(ledger)
    nvrtc.getVersion()  # NVRTC's library is found through the real CuPy: load it first
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_compile, "compile_source", compile_source)
    return cupy


def test_the_cuda_device_keeps_stream_order_on_a_cupy_double(resnet_case, sequential_case, monkeypatch):
    """CudaDevice's own methods (compile and load, launches with stream=, uploads, pinned double-buffered
    batches, events) run over CuPy's interface with the emulated streams: the order holds, results are the CPU's."""
    ledger = StreamLedger()
    cupy_double(ledger, monkeypatch)
    device = gpu.CudaDevice(0)
    assert device.arch == "sm_90"
    run_device_paths(device, resnet_case, sequential_case)
    ledger.report()
    monkeypatch.setattr(device, "_handed_out", lambda positions, x, y, copied: (positions, x, y))
    with pytest.raises(StreamOrderError):
        run_device_paths(device, resnet_case, sequential_case)


def test_gpu_spin_delays_the_null_stream_and_the_uploads_stream(resnet_case, monkeypatch):
    ledger = StreamLedger()
    cupy = cupy_double(ledger, monkeypatch)
    gpu._probe_module.cache_clear()
    monkeypatch.setenv("FASTDECOMP_GPU_SPIN", "1000")
    config._reset()
    device = gpu.CudaDevice(0)
    model, x, y = resnet_case
    import fastdecomp as fd

    fd.decompose(model, x, y, backend=device, batch_size=16, progress=False)
    gpu._probe_module.cache_clear()
    streams = {stream.name for kernel, stream in cupy.probe_launches if kernel == "spin"}
    assert streams == {"null", device._compute.name, device._copy.name}


def test_a_recorded_class_range_is_used_without_reading_the_array_back():
    """The statistics pass records the range of the class arrays it uploads; the kernels' checks then read no
    device memory (a read-back per mask point waits for the whole stream), and check everything else."""
    from fastdecomp.errors import InputError
    from fastdecomp.kernels import checks

    bits, active = np.zeros((3, 4), np.uint8), np.zeros((2, 4), np.uint8)
    classes = np.array([0, -1, 5])  # row 5 does not exist
    with pytest.raises(InputError, match="outside -1..1"):
        checks.accumulate_concerned(bits, classes, active)
    checks.known_range(classes, -1, 1)  # a record says otherwise: the check believes the record, not the data
    checks.accumulate_concerned(bits, classes, active)
    assert checks._value_range(classes.copy()) == (-1, 5)  # another array, same values: read, not believed
    checks.known_range(classes, 0, 2)
    with pytest.raises(InputError, match="outside -1..1"):
        checks.accumulate_concerned(bits, classes, active)
    for _ in range(checks.KNOWN_RANGES_KEPT):
        checks.known_range(np.zeros(1, np.int64), 0, 0)
    assert checks._value_range(classes) == (-1, 5)  # pushed out of the record: read again


def test_the_statistics_pass_records_the_ranges_of_what_it_uploads(resnet_case):
    """On the emulated device, a decomposition never reads a class array back to check it."""
    import fastdecomp as fd
    from fastdecomp.kernels import checks

    model, x, y = resnet_case
    network = fd.from_keras(model)
    reads = []
    real = checks._value_range

    def counted(a):
        with checks._known_lock:
            known = id(a) in checks._known_ranges
        reads.append(known)
        return real(a)

    checks._value_range = counted
    try:
        fd.decompose(network, x[:20], y[:20], backend="emulated-cuda", batch_size=10, progress=False)
    finally:
        checks._value_range = real
    assert reads and all(reads)


def test_emulated_arrays_have_the_attributes_of_cupy_arrays_and_no_others():
    """What host code can read from a device array is what the installed CuPy's ndarray and Flags offer."""
    import cupy
    from cupy._core.flags import Flags

    device = gpu.EmulatedDevice()
    array = device.asarray(np.zeros((2, 3), np.float32))
    with device.compute():
        made = [array, device.xp.empty((4,), np.uint8), array[1:], array.view(np.uint8), array.reshape(3, 2)]
    for a in made:
        for name in dir(np.ndarray):
            if name.startswith("__"):
                continue
            if name in dir(cupy.ndarray):
                if name != "mT" or a.ndim >= 2:  # mT: matrices only, in NumPy as in CuPy
                    getattr(a, name)
            else:
                with pytest.raises(AttributeError, match="cupy.ndarray"):
                    getattr(a, name)
        public = {name for name in dir(Flags) if not name.startswith("_")}
        assert {name for name in dir(a.flags) if not name.startswith("_")} == public
        for name in public:
            getattr(a.flags, name)
        assert a.flags["C_CONTIGUOUS"] == a.flags.c_contiguous
        with pytest.raises(AttributeError):
            a.flags.writeable


def test_a_numpy_only_attribute_read_in_host_code_is_caught_without_a_gpu(monkeypatch):
    """The bug a real H200 found first: the kernels' checks read ``flags.writeable``, which CuPy lacks."""
    from fastdecomp.kernels import checks

    device = gpu.EmulatedDevice()
    x, kernel, bias = (device.asarray(np.ones(shape, np.float32)) for shape in ((1, 4, 4, 2), (1, 1, 2, 8), (8,)))
    with device.compute():
        out = device.xp.empty((1, 4, 4, 8), np.float32)
    gpu.conv2d_forward(x, kernel, bias, 1, 1, 0, 0, out, device=device)
    monkeypatch.setattr(checks, "_writable", lambda a: a.flags.writeable)
    with pytest.raises(AttributeError, match="writeable"):
        gpu.conv2d_forward(x, kernel, bias, 1, 1, 0, 0, out, device=device)
    monkeypatch.undo()
    with pytest.raises(AttributeError, match="ctypes"):
        x.ctypes


def test_an_nvrtc_too_old_for_the_kernels_is_a_backend_error_and_auto_falls_back(monkeypatch):
    """The probe compiles every kernel source: one NVRTC cannot compile (a feature it lacks, planted as an
    #error) names NVRTC's version and the source, and ``auto`` runs on the CPU with one warning."""
    cupy = pytest.importorskip("cupy")
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(cupy.cuda, "Device", _FakeGpu)
    monkeypatch.setattr(gpu, "_probe", lambda device_id: None)  # a GPU that runs the probe kernel
    real_source = gpu.source
    monkeypatch.setattr(gpu, "source", lambda name: real_source(name) + (
        "\n#error this kernel needs a newer NVRTC\n" if name == "forward" else ""))
    monkeypatch.setattr(backends, "_FELL_BACK", [])
    monkeypatch.delitem(backends._DEVICES, "cuda", raising=False)
    with pytest.raises(BackendError, match=r"NVRTC \d+\.\d+ could not compile forward.cu for sm_90"):
        backends.get("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.get("auto").name == "cpu"
    said = [w for w in caught if issubclass(w.category, backends.BackendFallbackWarning)]
    assert len(said) == 1 and "forward.cu" in str(said[0].message)


def test_an_array_of_another_gpu_is_refused_naming_the_kernel_and_the_argument():
    from fastdecomp.errors import InputError

    here, there = gpu.EmulatedDevice(), gpu.EmulatedDevice()
    x, kernel, bias = (here.asarray(np.ones(shape, np.float32)) for shape in ((1, 4, 4, 2), (1, 1, 2, 8), (8,)))
    foreign = there.asarray(np.ones((1, 1, 2, 8), np.float32))
    assert foreign.device.id != here.device_id and kernel.device.id == here.device_id
    with here.compute():
        out = here.xp.empty((1, 4, 4, 8), np.float32)
    gpu.conv2d_forward(x, kernel, bias, 1, 1, 0, 0, out, device=here)
    with pytest.raises(InputError, match=f"conv2d_forward: kernel is an array of GPU {there.device_id}, .* GPU "
                                         f"{here.device_id}"):
        gpu.conv2d_forward(x, foreign, bias, 1, 1, 0, 0, out, device=here)
    with pytest.raises(InputError, match="conv2d_forward: x must be a 4-D C-contiguous"):
        gpu.conv2d_forward(here.asarray(np.ones((1, 4, 8, 2), np.float32))[:, :, ::2], kernel, bias, 1, 1, 0, 0,
                           out, device=here)


@pytest.mark.parametrize("concerned", ["all", "correct"])
def test_the_statistics_pass_waits_for_the_device_twice_a_batch_at_most(resnet_case, concerned):
    """Each read of a device value by the host (``int(a.max())``, a copy to the host) waits for all the work
    queued before it. The pass reads the model's outputs once a batch, and the statistics once at the end:
    a check that read the class arrays back at every mask point made it 13 times that."""
    import fastdecomp as fd

    model, x, y = resnet_case
    network = fd.from_keras(model)
    device = backends.get("emulated-cuda")
    device.ledger.read_backs.clear()
    fd.decompose(network, x, y, backend="emulated-cuda", batch_size=8, concerned=concerned, progress=False)
    batches, points = -(-len(x) // 8), len(network.mask_points("relu"))
    assert 0 < len(device.ledger.read_backs) <= 2 * batches + 2 * points, device.ledger.read_backs


def test_the_emulated_device_counts_what_the_host_reads_back():
    device = gpu.EmulatedDevice()
    a = device.asarray(np.arange(6, dtype=np.int64))
    with device.compute():
        int(a.max()), float(a.min()), bool(a.any()), a[1].item(), a.tolist()
    device.to_host(a)
    assert device.ledger.read_backs == ["int()", "float()", "bool()", "item()", "tolist()", "to_host"]


def test_a_device_value_is_no_python_index_as_in_cupy():
    device = gpu.EmulatedDevice()
    a = device.asarray(np.arange(3, dtype=np.int64))
    with pytest.raises(TypeError, match="Python index"):
        [10, 20, 30][a[1]]
    assert [10, 20, 30][int(a[1])] == 20
