"""CuPy twins of the CPU kernels, and the devices they run on.

Every kernel here has the name and the contract of its CPU twin in
:mod:`fastdecomp.kernels.cpu` or :mod:`fastdecomp.kernels.direct_conv`; its
body is CUDA C++ kept as a source file in ``fastdecomp/kernels/cuda/`` and
compiled with NVRTC under options of ours (:mod:`.cuda_compile`), once per
device and per ``-D`` definition such as the rank dtype, and loaded by CuPy.

A :class:`Device` is where arrays live and kernels run:

- :class:`CudaDevice`: CuPy arrays on a GPU;
- :class:`EmulatedDevice`: NumPy arrays, and the *same CUDA sources* compiled
  for the CPU by :mod:`fastdecomp.kernels.cuda_emulator`, each launch running
  the kernel once per grid thread. It is how CI proves the GPU backend's
  kernels and the whole device code path without a GPU (slow; for testing).

Nothing here imports CuPy until a :class:`CudaDevice` is made.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache, partial, wraps
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import config
from ..errors import BackendError, InputError
from ..parallel import read_ahead
from . import KERNEL_NAMES, checks, cuda_compile, launches
from .cuda_emulator import kernel_signatures
from .emulated_streams import EmulatedEvent, StreamLedger, TrackedNumpy

__all__ = ["SOURCES", "source", "Device", "CudaDevice", "EmulatedDevice", "make_device",
           "conv2d_forward", "grouped_conv2d_forward", "dense_forward", "pool2d_forward", "global_average_pool_forward",
           "accumulate_activity", "accumulate_packed_activity", "accumulate_concerned", "tangling_keep",
           "window_dead_inputs", "NVRTC_OPTIONS", "BLOCK", "kernel_parameters", "CompiledModule", "EMULATED_ARCH"]

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = {"forward": "forward.cu", "statistics": "statistics.cu", "backward": "backward.cu"}
NVRTC_OPTIONS = cuda_compile.OPTIONS
EMULATED_ARCH = "sm_80"  # the PTX launches on the emulated device are checked against (parameters are the same on all)
BLOCK = 256
KEPT_ARRAYS = 512
RANK_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.uint16): "unsigned short",
              np.dtype(np.uint32): "unsigned int"}


@lru_cache(maxsize=None)
def source(name):
    """The CUDA source text of ``name`` (a key of :data:`SOURCES`), after the shared
    ``common.cuh`` (index helpers every kernel file uses)."""
    return (CUDA_DIR / "common.cuh").read_text() + "\n" + (CUDA_DIR / SOURCES[name]).read_text()


def kernel_parameters(name, defines=(), ptx=None):
    """``{kernel: [launches.Parameter, ...]}`` of source ``name``; byte sizes from its ``ptx`` where given.

    Parameters
    ----------
    name : str
        A key of :data:`SOURCES`.
    defines : tuple of str
    ptx : str, optional
        The PTX NVRTC made of the source with these ``defines``.
    """
    compiled = cuda_compile.ptx_parameters(ptx) if ptx is not None else {}
    return {kernel: launches.parameters(signature, defines, compiled[kernel] if ptx is not None else None)
            for kernel, signature in kernel_signatures(source(name)).items()}


class CompiledModule(NamedTuple):
    """A source's kernels on one device.

    Parameters
    ----------
    functions : dict
        Kernel name -> launcher, called as ``(grid, block, args)``.
    params : dict
        Kernel name -> its :class:`launches.Parameter` list.
    handle : object
        What keeps the loaded code alive.
    """

    functions: dict
    params: dict
    handle: object = None


class DeviceKernels:
    """The kernels of :data:`KERNEL_NAMES` bound to one device, under their CPU twins' names."""

    def __init__(self, device):
        for name in KERNEL_NAMES:
            setattr(self, name, partial(globals()[name], device=device))


class Device:
    """Where arrays live and kernels run; see the module docstring.

    Two streams order the work: *compute*, on which every array of the
    device is allocated and every kernel runs (so arrays are freed in the
    order of the kernels that read them), and *copy*, on which batches are
    uploaded through pinned memory while compute works. The copy stream waits
    for compute before writing a batch's memory; compute waits for the copy
    before reading it. Nothing is queued on the NULL stream.

    ``writes_activity_bits`` is True: the device convolution packs the activity
    bits of its output in its epilogue, as the CPU's does.
    """

    name = "device"
    xp = np
    writes_activity_bits = True

    def __init__(self):
        self._modules = {}
        self._lock = threading.Lock()
        self._weights = {}
        self.kernels = DeviceKernels(self)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def module(self, name, defines=()):
        """The compiled module of source ``name`` with ``-D`` ``defines``, compiled once per device.

        Parameters
        ----------
        name : str
            A key of :data:`SOURCES`.
        defines : tuple of str
            Preprocessor definitions such as ``RANK_T=unsigned char``.
        """
        key = (name, tuple(defines))
        with self._lock:
            if key not in self._modules:
                self._modules[key] = self._compile(name, tuple(defines))
            return self._modules[key]

    def launch(self, source_name, kernel, threads, args, defines=()):
        """Run ``kernel`` of source ``source_name`` with at least ``threads`` threads, on the compute stream,
        after checking its arguments against the compiled parameters (:func:`launches.check_launch`).

        Parameters
        ----------
        source_name : str
            A key of :data:`SOURCES`.
        kernel : str
            The ``__global__`` function's name.
        threads : int
            Threads needed (rounded up to whole blocks of :data:`BLOCK`).
        args : list
            The kernel's arguments: device arrays and NumPy scalars of its parameter types.
        defines : tuple of str
        """
        if threads <= 0:
            return
        grid = (int(threads) + BLOCK - 1) // BLOCK
        module = self.module(source_name, defines)
        params = module.params[kernel]
        for param, arg in zip(params, args):
            if param.pointer:
                self._check_home(kernel, param.name, arg)
        launches.check_launch(kernel, params, grid, BLOCK, args, self._is_device_array)
        with self.compute():
            self._launch(module.functions[kernel], grid, args, params)

    def _is_device_array(self, value):
        return isinstance(value, self.xp.ndarray)

    def _check_home(self, kernel, name, array):
        """An :class:`InputError` for a device array of another GPU (the kernel would read foreign memory)."""
        home = getattr(array, "device", None)
        if self._is_device_array(array) and home is not None and not isinstance(home, str) \
                and home.id != self.device_id:
            raise InputError(f"{kernel}: {name} is an array of GPU {home.id}, and this backend computes on GPU "
                             f"{self.device_id}: copy it there first (cupy.asarray inside "
                             f"cupy.cuda.Device({self.device_id}))")

    def asarray(self, host):
        """A device copy of a host array (C-contiguous), made on the compute stream."""
        with self.compute():
            self._spin()
            return self.xp.ascontiguousarray(self.xp.asarray(host))

    def weights(self, array):
        """Device copy of a host weight or mask array, kept while it is among the last
        :data:`KEPT_ARRAYS` used (the cache holds the host array, so its id stays its own)."""
        key = id(array)
        with self._lock:
            entry = self._weights.pop(key, None)
            if entry is None:
                entry = (array, self.asarray(np.ascontiguousarray(array)))
            self._weights[key] = entry
            while len(self._weights) > KEPT_ARRAYS:
                self._weights.pop(next(iter(self._weights)))
        return entry[1]

    def compute(self):
        """Context in which work is queued on the compute stream (arrays made, kernels run)."""
        return self._on(self._compute)

    def synchronize(self):
        self._compute.synchronize()

    def streamed(self, batches):
        """Double-buffered host-to-device copies: batch i+1's copy is issued on the copy stream, through
        pinned memory, before batch i is handed out to compute; the compute stream waits on each copy's
        event. A batch's memory is allocated on the compute stream, which frees it in the order of the
        kernels reading it; the copy waits for compute's earlier work, which may still use that memory."""
        staging, copied = [None, None], [None, None]
        slot, pending = 0, None
        for positions, x, y in batches:
            x = np.ascontiguousarray(x, dtype=np.float32)
            if copied[slot] is not None:
                copied[slot].synchronize()
            staging[slot] = self._staging(staging[slot], x.size)
            host = staging[slot][1][:x.size].reshape(x.shape)
            np.copyto(host, x)
            with self.compute():
                device_x = self.xp.empty(x.shape, dtype=np.float32)
            self._copy.wait_event(self._compute.record(self._event()))
            with self._on(self._copy):
                self._spin()
                self._copy_in(device_x, host)
            copied[slot] = self._copy.record(self._event())
            if pending is not None:
                yield self._handed_out(*pending)
            pending = positions, device_x, y, copied[slot]
            slot = 1 - slot
        if pending is not None:
            yield self._handed_out(*pending)

    def _handed_out(self, positions, device_x, y, copied):
        self._compute.wait_event(copied)  # compute reads the batch only once its copy is done
        return positions, device_x, y

    def _spin(self):
        pass

    def run_batches(self, fn, batches, n_jobs=None):
        """``fn`` over ``batches`` one after another as they reach the device; waits for the device
        before the last result is handed out. The host reads the next batches on a thread of its own
        (:func:`fastdecomp.parallel.read_ahead`) while the device computes.

        Parameters
        ----------
        fn : callable
        batches : iterable
            ``(positions, x, y)`` batches of host arrays; ``fn`` gets ``x`` on the device.
        n_jobs : int, optional
            Unused: the device's parallelism is its own.
        """
        config.jobs(n_jobs)  # checked as on the CPU
        for batch in self.streamed(read_ahead(batches)):
            yield fn(batch)
        self.synchronize()


class EmulatedDevice(Device):
    """NumPy arrays; the CUDA kernels compiled for the CPU and run thread by thread.

    Its streams and events are imitated (:mod:`.emulated_streams`): each array
    is tagged with the stream that produced it, and a kernel or NumPy call
    that uses it on another stream with no event waited on in between raises
    :class:`~fastdecomp.errors.StreamOrderError`, as does freeing an array a
    kernel on another stream may still read. Every launch is checked against
    the PTX NVRTC makes of the source (where NVRTC is installed).
    """

    name = "emulated-cuda"

    def __init__(self):
        super().__init__()
        self.ledger = StreamLedger()
        self.device_id = self.ledger.id
        self.xp = TrackedNumpy(self.ledger)
        self._compute = self.ledger.stream("compute")
        self._copy = self.ledger.stream("copy")

    def _on(self, stream):
        return stream

    def _event(self):
        return EmulatedEvent(disable_timing=True)

    def _compile(self, name, defines):
        from .cuda_emulator import EmulatedModule

        module = EmulatedModule(source(name), defines)
        functions = {kernel: partial(module.launch, kernel) for kernel in module.signatures}
        return CompiledModule(functions, kernel_parameters(name, defines, _ptx_where_possible(name, defines)), module)

    def _launch(self, function, grid, args, params):
        for param, arg in zip(params, args):
            if param.pointer:
                self.ledger.use(arg, f"a kernel reading {param.name}", write=not param.const)
        function(grid, BLOCK, args)

    def to_host(self, array):
        """A host copy of a device array, read on the compute stream (which the host then waits for)."""
        if not self.ledger.is_tracked(array):
            return np.asarray(array)
        self.ledger.use(array, "to_host", stream=self._compute)
        self.ledger.read_back("to_host")
        self._compute.synchronize()
        return np.array(array)

    def _staging(self, previous, size):
        if previous is None or previous[1].size < size:
            previous = (None, np.empty(size, np.float32))
        return previous

    def _copy_in(self, device_x, host):
        self.xp.copyto(device_x, host)


def _ptx_where_possible(name, defines):
    try:
        return cuda_compile.compile_source(source(name), SOURCES[name], EMULATED_ARCH, defines).ptx
    except BackendError:  # no NVRTC here: byte sizes from the source's types
        return None


class CudaDevice(Device):
    """CuPy arrays on one GPU; kernels compiled by NVRTC (:mod:`.cuda_compile`), batches streamed through
    pinned memory. Everything (compiles, streams, arrays) is made inside ``cupy.cuda.Device(device_id)``.

    Parameters
    ----------
    device_id : int
        The GPU's index.
    """

    name = "cuda"

    def __init__(self, device_id=0):
        super().__init__()
        import cupy

        self.xp = cupy
        self.device_id = device_id
        self._device = cupy.cuda.Device(device_id)
        with self._device:
            self.arch = f"sm_{self._device.compute_capability}"
            self._compute = cupy.cuda.Stream(non_blocking=True)
            self._copy = cupy.cuda.Stream(non_blocking=True)
        self._spin_cycles = config.get("gpu_spin")

    def __repr__(self):
        return f"CudaDevice({self.device_id})"

    @contextmanager
    def _on(self, stream):
        with self._device, stream:
            yield

    def _event(self):
        import cupy

        return cupy.cuda.Event(disable_timing=True)

    def _compile(self, name, defines):
        import cupy

        compiled = cuda_compile.compile_source(source(name), SOURCES[name], self.arch, defines)
        with self._device:
            module = cupy.cuda.function.Module()
            module.load(compiled.cubin)
            functions = {kernel: module.get_function(kernel) for kernel in kernel_signatures(source(name))}
        return CompiledModule(functions, kernel_parameters(name, defines, compiled.ptx), module)

    def _launch(self, function, grid, args, params):
        function((grid,), (BLOCK,), tuple(args), stream=self._compute)

    def _spin(self):
        """With ``FASTDECOMP_GPU_SPIN``: delay the NULL stream and the current one before an upload, so a
        read that does not wait for it sees the memory unwritten, every time."""
        if not self._spin_cycles:
            return
        import cupy

        spin = _probe_module(self.device_id).get_function("spin")
        for stream in (cupy.cuda.Stream.null, cupy.cuda.get_current_stream()):
            spin((1,), (1,), (np.int64(self._spin_cycles),), stream=stream)

    def to_host(self, array):
        if isinstance(array, self.xp.ndarray):
            return self.xp.asnumpy(array, stream=self._compute)
        return np.asarray(array)

    def _staging(self, previous, size):
        import cupy

        if previous is None or previous[1].size < size:
            memory = cupy.cuda.alloc_pinned_memory(size * 4)
            previous = (memory, np.frombuffer(memory, np.float32, size))
        return previous

    def _copy_in(self, device_x, host):
        device_x.set(host, stream=self._copy)


def make_device(name, device_id=0):
    """A new device for backend ``name``: ``"cuda"`` or ``"emulated-cuda"``.

    Use :func:`fastdecomp.backends.get`, which keeps one device per backend.

    Parameters
    ----------
    name : str
    device_id : int
        The GPU, for ``"cuda"``.

    Raises
    ------
    BackendError
        ``"cuda"`` without CuPy, a driver, a device, NVRTC, CuPy's headers,
        or a driver that runs what NVRTC compiles; the message says which
        and how to install it. Raised before any data is read.
    """
    if name == "emulated-cuda":
        return EmulatedDevice()
    _check_cuda(device_id)
    return CudaDevice(device_id)


def _check_cuda(device_id=0):
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "backend='cuda' needs CuPy, which is not installed: pip install 'fastdecomp[gpu]' "
            "(CuPy for CUDA 12; a machine with an NVIDIA GPU and its driver)") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, or a driver too old
        raise BackendError(
            f"backend='cuda': CuPy is installed but cannot reach a GPU ({exc}). Install or update "
            "the NVIDIA driver (CUDA 12 needs driver 525 or newer), or use backend='cpu'") from exc
    if count == 0:
        raise BackendError("backend='cuda': the NVIDIA driver reports no GPU on this "
                                      "machine; use backend='cpu'")
    _probe(device_id)
    with cupy.cuda.Device(device_id) as gpu_device:
        _compile_every_source(f"sm_{gpu_device.compute_capability}")


def _compile_every_source(arch):
    """Compile each kernel source for ``arch`` now (NVRTC caches them for the device), so that an NVRTC too
    old for a feature the kernels use is a :class:`BackendError` naming its version before any data is read,
    and ``auto`` falls back to the CPU."""
    for name in SOURCES:
        cuda_compile.compile_source(source(name), SOURCES[name], arch, _SOURCE_DEFINES.get(name, ()))


_SOURCE_DEFINES = {"statistics": (f"RANK_T={RANK_TYPES[np.dtype(np.uint8)]}",)}  # the rank type most passes use


@lru_cache(maxsize=None)
def _probe_module(device_id):
    """The probe kernels (:data:`cuda_compile.PROBE_SOURCE`) loaded on GPU ``device_id``."""
    import cupy

    with cupy.cuda.Device(device_id) as gpu_device:
        compiled = cuda_compile.compile_source(cuda_compile.PROBE_SOURCE, "probe.cu",
                                               f"sm_{gpu_device.compute_capability}")
        try:
            module = cupy.cuda.function.Module()
            module.load(compiled.cubin)
        except Exception as exc:
            raise BackendError(
                f"backend='cuda': GPU {device_id} cannot load code compiled by this NVRTC ({exc}); the NVIDIA "
                "driver is probably older than the CUDA toolkit: update the driver, or use backend='cpu'") from exc
    return module


def _probe(device_id):
    """Compile, load and run one tiny kernel of ours and one of CuPy's on the GPU, naming what fails."""
    import cupy

    module = _probe_module(device_id)
    with cupy.cuda.Device(device_id):
        try:
            out = cupy.zeros(4, dtype=np.float32)
            module.get_function("probe")((1,), (4,), (out, np.int32(4)))
            ours = out.get()
        except Exception as exc:
            raise BackendError(f"backend='cuda': GPU {device_id} could not run a kernel ({exc}): update the "
                               "NVIDIA driver, or use backend='cpu'") from exc
        try:
            theirs = cupy.maximum(out, np.float32(1.0)).get()
        except Exception as exc:
            raise BackendError(
                f"backend='cuda': CuPy could not compile its own kernels ({exc}); it needs the CUDA headers: "
                "pip install 'fastdecomp[gpu]' (cupy-cuda12x[ctk]), or use backend='cpu'") from exc
    if not (np.array_equal(ours, np.arange(4, dtype=np.float32) * 0.5) and np.array_equal(theirs, np.maximum(ours, 1))):
        raise BackendError(f"backend='cuda': GPU {device_id} ran the probe kernel but returned {ours.tolist()}; "
                           "use backend='cpu' and report it")


# --------------------------------------------------------------------------
# forward (twins of direct_conv.conv2d_forward and cpu.*_forward)
# --------------------------------------------------------------------------

def _on_compute(kernel):
    """Run a kernel's wrapper on the compute stream: its checks read the arguments there (``a.min()`` is
    device work on CuPy), and what it allocates is freed in the order of the kernels using it."""
    @wraps(kernel)
    def on_compute(*args, device, **kwargs):
        with device.compute():
            return kernel(*args, device=device, **kwargs)
    return on_compute


def _scalars(*values, kind=np.int32):
    return [kind(v) for v in values]


CONV_PIXELS, CONV_CHANNELS = 4, 8  # the tile of one thread of the device convolution (forward.cu)
DEPTHWISE_PIXELS = 4  # and of the depthwise convolution, with 4 channels


@_on_compute
def conv2d_forward(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, rectify=False, residual=None,
                   activity=None, cap=None, *, device):
    """2-D convolution ``out = conv(x, kernel) + bias [+ residual]`` (NHWC input, HWIO kernel); see
    :func:`fastdecomp.kernels.direct_conv.conv2d_forward`. Bit-identical to it, the packed
    ``activity`` bits included (written where the output channels are a multiple of 8, as on the CPU).

    Each thread computes a tile of 4 output pixels x 8 output channels in registers; 3x3 stride-1 and
    1x1 convolutions over a multiple of 4 input channels load four channels at a time.

    Parameters
    ----------
    x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, rectify, residual, activity, cap :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.rectifier_cap("conv2d_forward", rectify, cap)
    checks.conv2d_forward(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, residual)
    n, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    oh, ow = out.shape[1], out.shape[2]
    if activity is not None:
        checks.packed_activity("conv2d_forward", activity, out)
    tiles = -(-ow // CONV_PIXELS) * -(-co // CONV_CHANNELS)
    device.launch("forward", "conv2d_forward", n * oh * tiles,
                  [x, kernel, bias, out, out if residual is None else residual,
                   out.view(np.uint8) if activity is None else activity, np.int64(n),
                   *_scalars(h, w, ci, kh, kw, stride_h, stride_w, pad_top, pad_left, oh, ow, co,
                             int(residual is not None), int(rectify)),
                   np.float32(0.0 if cap is None else cap), np.int32(cap is not None),
                   np.int32(activity is not None)])


@_on_compute
def grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, groups,
                           out, *, device):
    """Grouped, dilated 2-D convolution, summed as :func:`cpu.grouped_conv2d_forward` sums it.

    A depthwise convolution (one input and one output channel a group) takes a tile of 4 pixels x 4
    channels a thread; other groupings one output a thread.

    Parameters
    ----------
    x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, groups, out :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                                  groups, out)
    n, h, w, ci = x.shape
    kh, kw, group_ci, co = kernel.shape
    oh, ow = out.shape[1], out.shape[2]
    depthwise = group_ci == 1 and co == groups
    threads = n * oh * -(-ow // DEPTHWISE_PIXELS) * -(-co // 4) if depthwise else n * oh * ow * co
    device.launch("forward", "grouped_conv2d_forward", threads,
                  [x, kernel, bias, out, np.int64(n),
                   *_scalars(h, w, ci, kh, kw, group_ci, co, groups, stride_h, stride_w, dilation_h, dilation_w,
                             pad_top, pad_left, oh, ow)])


@_on_compute
def dense_forward(x, kernel, bias, out, *, device):
    """``out = x @ kernel + bias``, each output summed in input order; see :func:`cpu.dense_forward`.

    Parameters
    ----------
    x, kernel, bias, out :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.dense_forward(x, kernel, bias, out)
    n, f = x.shape
    device.launch("forward", "dense_forward", n * kernel.shape[1],
                  [x, kernel, bias, out, np.int64(n), np.int64(f), np.int32(kernel.shape[1])])


@_on_compute
def pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, is_max, out, *, device):
    """Max or average pooling; padding positions are excluded (as in Keras); see :func:`cpu.pool2d_forward`.

    Parameters
    ----------
    x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, is_max, out :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, out)
    n, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    device.launch("forward", "pool2d_forward", n * oh * ow * c,
                  [x, out, np.int64(n),
                   *_scalars(h, w, c, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, oh, ow, int(is_max))])


@_on_compute
def global_average_pool_forward(x, out, *, device):
    """Mean over height and width, summed in row-major order; see :func:`cpu.global_average_pool_forward`.

    Parameters
    ----------
    x, out :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.global_average_pool_forward(x, out)
    n, h, w, c = x.shape
    device.launch("forward", "global_average_pool_forward", n * c, [x, out, np.int64(n), *_scalars(h, w, c)])


# --------------------------------------------------------------------------
# statistics (twins of cpu.accumulate_activity, accumulate_concerned, tangling_keep)
# --------------------------------------------------------------------------

def _rank_define(first_rank):
    return (f"RANK_T={RANK_TYPES[np.dtype(first_rank.dtype)]}",)


@_on_compute
def accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed, *,
                        device):
    """Fold a batch's values at one mask point into per-class activity statistics.

    Same contract as :func:`fastdecomp.kernels.cpu.accumulate_activity`: ``values``
    float32 ``[B, nodes]``; ``active`` uint8 ``[C, ceil(nodes / 8)]`` (bit-packed
    big-endian) and ``first_rank`` ``[C, nodes or more]`` updated in place;
    ``packed`` ``[B, ceil(nodes / 8)]`` receives each image's packed activity
    when it has rows. One thread per byte of packed nodes, looping over the batch.

    Parameters
    ----------
    values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed)
    n, nodes = values.shape
    keep_bits = packed.shape[0] > 0
    device.launch("statistics", "accumulate_activity", (nodes + 7) // 8,
                  [values, np.int64(n), np.int64(nodes), concerned_class, tangle_class, tangle_rank,
                   active, first_rank, np.int64(first_rank.shape[1]),
                   packed if keep_bits else active, np.int32(keep_bits)], _rank_define(first_rank))


@_on_compute
def accumulate_concerned(bits, concerned_class, active, *, device):
    """OR bit-packed activity ``bits [B, nbytes]`` into ``active[concerned_class[b]]`` (skipping -1);
    see :func:`cpu.accumulate_concerned`.

    Parameters
    ----------
    bits, concerned_class, active :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.accumulate_concerned(bits, concerned_class, active)
    n, nbytes = bits.shape
    device.launch("statistics", "accumulate_concerned", nbytes,
                  [bits, np.int64(n), np.int64(nbytes), concerned_class, active])


@_on_compute
def accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank, *, device):
    """:func:`accumulate_activity` from bit-packed activity ``bits [B, nbytes]`` instead of values; see
    :func:`fastdecomp.kernels.cpu.accumulate_packed_activity`. One thread per byte of packed nodes.

    Parameters
    ----------
    bits, concerned_class, tangle_class, tangle_rank, active, first_rank :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank)
    n, nbytes = bits.shape
    device.launch("statistics", "accumulate_packed_activity", nbytes,
                  [bits, np.int64(n), np.int64(nbytes), concerned_class, tangle_class, tangle_rank,
                   active, first_rank, np.int64(first_rank.shape[1])], _rank_define(first_rank))


def module_reach(counts):
    """``reach [C, most, words]`` uint64: bit m set where module m's sample takes class c's rank r."""
    counts = np.asarray(counts, dtype=np.int64)
    modules, classes = counts.shape
    words = (modules + 63) // 64
    most = int(counts.max(initial=0))
    reach = np.zeros((classes, most, words), dtype=np.uint64)
    for m in range(modules):
        for c in range(classes):
            reach[c, :counts[m, c], m // 64] |= np.uint64(1) << np.uint64(m % 64)
    return reach, most, words


@_on_compute
def tangling_keep(first_rank, counts, keep, *, device):
    """Add tangling identification to every module's kept nodes, in place; see
    :func:`fastdecomp.kernels.cpu.tangling_keep` (``keep`` is uint8 or bool
    ``[M, nodes]`` on the device). One thread per node.

    Parameters
    ----------
    first_rank, counts, keep :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.tangling_keep(first_rank, counts, keep)
    reach, most, words = module_reach(counts)
    modules, nodes = keep.shape
    device.launch("statistics", "tangling_keep", nodes,
                  [first_rank, np.int64(first_rank.shape[1]), np.int32(first_rank.shape[0]),
                   device.asarray(reach), np.int32(most), np.int32(words), np.int32(modules),
                   np.int64(nodes), keep.view(np.uint8)], _rank_define(first_rank))


# --------------------------------------------------------------------------
# backward (twin of cpu.window_dead_inputs)
# --------------------------------------------------------------------------

@_on_compute
def window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                       dilation_h=1, dilation_w=1, *, device):
    """Input nodes of a sliding window whose every reader is dead, channel by channel; see
    :func:`fastdecomp.kernels.cpu.window_dead_inputs`. Returns bool ``[M, in_h, in_w, C]``.

    Parameters
    ----------
    dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w :
        As the CPU twin's, arrays being the device's (C-contiguous).
    device : Device
        Where the kernel runs (:func:`fastdecomp.backends.get`).
    """
    checks.window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                              dilation_h, dilation_w)
    m, oh, ow, c = dead_out.shape
    dead_in = device.xp.empty((m, in_h, in_w, c), dtype=np.bool_)
    dead_out = device.xp.ascontiguousarray(dead_out)
    device.launch("backward", "window_dead_inputs", m * in_h * in_w * c,
                  [dead_out.view(np.uint8), dead_in.view(np.uint8),
                   *_scalars(m, oh, ow, c, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                             dilation_h, dilation_w)])
    return dead_in

