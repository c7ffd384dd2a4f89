"""Where a pass runs: one device object per backend, with the same kernels on each.

A backend name picks a device:

============== ================================================================
``cpu``        :class:`CpuDevice`: NumPy arrays, the Numba kernels and the
               generated convolution; batches run on threads
``cuda``       :class:`~fastdecomp.kernels.gpu.CudaDevice`: CuPy arrays on a
               GPU; batches streamed through pinned memory
``emulated-cuda`` :class:`~fastdecomp.kernels.gpu.EmulatedDevice`: the CUDA
               kernels compiled for the CPU and run thread by thread (tests)
``auto``       ``cuda`` where CuPy reaches a GPU that compiles and runs a probe
               kernel, else ``cpu`` (with one warning per process saying why)
============== ================================================================

Every device has the same interface: ``xp`` (its array module), ``kernels``
(an object whose attributes are the kernels named in :data:`KERNEL_NAMES`,
with one contract on every device), ``asarray``/``to_host``/``weights`` to
move arrays, ``compute()`` (the context kernels are queued in) and
``run_batches`` (threads on the CPU, streams on CUDA). Code that runs a pass
asks :func:`get` for the device once and never tests which one it got.

:func:`register` adds a backend (the distributed one, next); :func:`get`
with no name uses ``FASTDECOMP_BACKEND`` (:mod:`fastdecomp.config`), and
:func:`set_backend` or :func:`using` change that default.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from . import config
from .errors import BackendError, ConfigError, InputError
from .kernels import KERNEL_NAMES, cpu
from .kernels import target as targets
from .parallel import map_batches

__all__ = ["BACKENDS", "BackendFallbackWarning", "KERNEL_NAMES", "CpuDevice", "get", "register", "set_backend",
           "using", "names"]

BACKENDS = {}  # name -> a function returning its device
_FRESH = set()  # backends whose factory is asked every time ("auto": whichever device is there now)


def register(name, factory, *, cached=True):
    """Make a backend available under ``name`` (replacing one of that name).

    Parameters
    ----------
    name : str
    factory : callable
        Called with no arguments the first time the backend is asked for;
        returns its device. May raise :class:`~fastdecomp.errors.BackendError`
        saying what is missing.
    cached : bool
        Keep the device it returns (else ask the factory every time).
    """
    if not isinstance(name, str) or not name or not callable(factory):
        raise InputError(f"register a backend as register(name: str, factory: callable), got {name!r}, {factory!r}")
    BACKENDS[name] = factory
    _DEVICES.pop(name, None)
    (_FRESH.discard if cached else _FRESH.add)(name)


def names():
    """The known backend names."""
    return tuple(BACKENDS)


_DEVICES = {}


class BackendFallbackWarning(UserWarning):
    """``backend="auto"`` found no usable GPU and runs on the CPU (said once per process)."""


class _CpuKernels:
    """The CPU kernels, under the names every device uses."""

    conv2d_forward = staticmethod(cpu.conv2d_forward)
    grouped_conv2d_forward = staticmethod(cpu.grouped_conv2d_forward)
    dense_forward = staticmethod(cpu.dense_forward)
    pool2d_forward = staticmethod(cpu.pool2d_forward)
    global_average_pool_forward = staticmethod(cpu.global_average_pool_forward)
    accumulate_activity = staticmethod(cpu.accumulate_activity)
    accumulate_packed_activity = staticmethod(cpu.accumulate_packed_activity)
    accumulate_concerned = staticmethod(cpu.accumulate_concerned)
    tangling_keep = staticmethod(cpu.tangling_keep)
    window_dead_inputs = staticmethod(cpu.window_dead_inputs)


class CpuDevice:
    """The CPU: host arrays, kernels generated for the target CPU, whole batches on threads.

    ``writes_activity_bits``: its convolution epilogue can write the packed
    ``> 0`` bits of its output, which the statistics then fold directly.
    """

    name = "cpu"
    xp = np
    kernels = _CpuKernels()
    writes_activity_bits = True

    def __repr__(self):
        return "CpuDevice()"

    @staticmethod
    def asarray(host):
        return np.ascontiguousarray(host)

    @staticmethod
    def to_host(array):
        return array

    @staticmethod
    def weights(array):
        return array

    @staticmethod
    def compute():
        """Refuses kernels this machine cannot execute (``FASTDECOMP_TARGET_CPU``), before they run."""
        targets.current().check_runnable()
        return _nothing()

    @staticmethod
    def run_batches(fn, batches, n_jobs=None):
        """``fn`` over ``(positions, x, y)`` pieces of ``batches`` on ``n_jobs`` threads, results in order.

        Parameters
        ----------
        fn : callable
        batches : iterable
            ``(positions, x, y)`` batches of host arrays.
        n_jobs : int, optional
            Threads (default: every core, or ``FASTDECOMP_JOBS``).
        """
        return map_batches(fn, batches, n_jobs)

    @staticmethod
    def synchronize():
        pass


@contextmanager
def _nothing():
    yield


_CPU = CpuDevice()


def _gpu_device(name):
    def make():
        from .kernels import gpu

        return gpu.make_device(name)
    return make


_FELL_BACK = []  # the reason "auto" first used the CPU, once said


def _auto():
    try:
        return get("cuda")
    except BackendError as exc:
        if not _FELL_BACK:
            _FELL_BACK.append(str(exc))
            warnings.warn(f"backend='auto' runs on the CPU: {exc}", BackendFallbackWarning, stacklevel=3)
        return _CPU


register("cpu", lambda: _CPU)
register("cuda", _gpu_device("cuda"))
register("emulated-cuda", _gpu_device("emulated-cuda"))
register("auto", _auto, cached=False)


def get(backend=None):
    """The device of a backend.

    Parameters
    ----------
    backend : str or device, optional
        A name from :data:`BACKENDS`, a device already made (returned as it
        is), or None for the configured default (``FASTDECOMP_BACKEND``,
        ``cpu`` unless set).

    Returns
    -------
    device

    Raises
    ------
    InputError
        For an unknown name; the message lists the known ones.
    ConfigError
        For an unknown name in ``FASTDECOMP_BACKEND``.
    BackendError
        When the backend is known but cannot run here (no CuPy, no GPU);
        the message says what to install.
    """
    if backend is None:
        backend = config.get("backend")
        if backend not in BACKENDS:
            raise ConfigError(f"{config.ENVIRONMENT['backend']}={backend!r} is not a backend: "
                              f"use one of {names()}")
    if not isinstance(backend, str):
        if hasattr(backend, "kernels") and hasattr(backend, "run_batches"):
            return backend
        raise InputError(f"backend must be one of {names()} or a device, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {names()}, got {backend!r}")
    device = _DEVICES.get(backend) or BACKENDS[backend]()
    if not (hasattr(device, "kernels") and hasattr(device, "run_batches")):
        raise BackendError(f"backend {backend!r} gave {device!r}, not a device (no kernels or run_batches)")
    if backend not in _FRESH:
        _DEVICES[backend] = device
    return device


def set_backend(backend):
    """Make ``backend`` the default of every function given no ``backend=``.

    Parameters
    ----------
    backend : str
        A name from :data:`BACKENDS`.
    """
    config.set("backend", _usable_name(backend))


@contextmanager
def using(backend):
    """Use ``backend`` as the default inside a ``with`` block.

    Parameters
    ----------
    backend : str
        A name from :data:`BACKENDS`.
    """
    with config.using(backend=_usable_name(backend)):
        yield


def _usable_name(backend):
    """``backend`` when it names a backend that runs here (a default is a name, not a device)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise InputError(f"backend must be one of {names()}, got {backend!r} (a default is a name, not a device)")
    get(backend)
    return backend
