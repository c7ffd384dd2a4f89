"""Run the CUDA kernels of ``fastdecomp/kernels/cuda`` on the CPU, for testing without a GPU.

The same ``.cu`` source the device compiles with NVRTC is compiled here by
the host C++ compiler, after a small prelude that defines ``__global__``,
``blockIdx``, ``blockDim`` and ``threadIdx``. For every ``extern "C"
__global__`` kernel a launcher is generated that runs the kernel body once per
thread of the launch grid, one thread after another.

That is a faithful execution of the kernels because of a rule they all keep
(and :func:`check_source` enforces): no thread reads what another thread
writes: no shared memory, no ``__syncthreads``, no atomics, no warp
intrinsics. Each thread's result then does not depend on the order threads
run in. Floating point matches too: kernels are compiled with contraction off
on both sides (NVRTC ``--fmad=false``, here ``-ffp-contract=off``), so only
the explicit ``fmaf`` calls fuse, and ``fmaf`` is exact in C++ as in CUDA.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from .. import config
from . import trusted_cache

__all__ = ["kernel_signatures", "check_source", "compile_for_cpu", "EmulatedModule"]

PRELUDE = r"""
#include <math.h>
#include <cmath>
struct fd_dim3 { unsigned int x, y, z; };
static thread_local fd_dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__ inline
#define __forceinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
"""

FORBIDDEN = ("__shared__", "__syncthreads", "atomic", "__shfl", "__ballot", "__syncwarp")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)', re.S)
_CTYPES = [("unsigned long long", ctypes.c_uint64), ("long long", ctypes.c_int64),
           ("unsigned int", ctypes.c_uint32), ("int", ctypes.c_int32), ("float", ctypes.c_float),
           ("double", ctypes.c_double)]
_LOCK = threading.Lock()


def kernel_signatures(source):
    """``{kernel name: [(C type, parameter name), ...]}`` of a CUDA source's ``extern "C"`` kernels."""
    kernels = {}
    for name, params in _KERNEL.findall(source):
        parsed = []
        for param in params.split(","):
            param = " ".join(param.split())
            ctype, _, pname = param.rpartition(" ")
            parsed.append((ctype.replace("__restrict__", "").strip(), pname))
        kernels[name] = parsed
    return kernels


def check_source(source, path="<source>"):
    """Refuse a kernel source that lets threads communicate (see the module docstring).

    Parameters
    ----------
    source : str
        CUDA C++ text.
    path : str
        Its name, for the error message.
    """
    code = re.sub(r"//[^\n]*", "", source)
    used = [word for word in FORBIDDEN if word in code]
    if used:
        raise ValueError(f"{path} uses {used}: fastdecomp's kernels must not let threads communicate "
                         "(each thread owns its outputs), or they cannot be verified on the CPU")


def _ctype(ctype):
    if "*" in ctype:
        return ctypes.c_void_p
    for name, value in _CTYPES:
        if ctype.replace("const ", "").strip() == name:
            return value
    raise ValueError(f"the emulator does not know the parameter type {ctype!r}")


def _launcher(name, params):
    decl = ", ".join(f"{t} {n}" for t, n in params)
    args = ", ".join(n for _, n in params)
    return (f'extern "C" void fd_launch_{name}(unsigned int grid, unsigned int block, {decl}) {{\n'
            "    gridDim = {grid, 1, 1}; blockDim = {block, 1, 1};\n"
            "    for (unsigned int b = 0; b < grid; ++b) { blockIdx = {b, 0, 0};\n"
            f"        for (unsigned int t = 0; t < block; ++t) {{ threadIdx = {{t, 0, 0}}; {name}({args}); }} }}\n"
            "}\n")


def compile_for_cpu(source, defines=(), compiler=None):
    """Compile a CUDA source for the CPU; returns the path of a shared library with launchers.

    Parameters
    ----------
    source : str
        CUDA C++ source with ``extern "C" __global__`` kernels.
    defines : sequence of str
        ``NAME=VALUE`` macro definitions (as NVRTC's ``-D``).
    compiler : str, optional
        C++ compiler (default ``$CXX`` or ``g++``).
    """
    check_source(source)
    compiler = compiler or config.get("cxx")
    signatures = kernel_signatures(source)
    program = PRELUDE + source + "\n" + "".join(_launcher(n, p) for n, p in signatures.items())
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
             "-fno-strict-aliasing", "-Wno-unknown-pragmas"]
    flags += [f"-D{d}" for d in defines]
    digest = hashlib.sha256((program + " ".join(flags) + compiler).encode()).hexdigest()[:20]
    with _LOCK:
        folder = trusted_cache.private_folder(Path(tempfile.gettempdir()) / f"fastdecomp-cuda-emulator-{os.getuid()}")
        library = folder / f"{digest}.so"
        if not library.exists():
            cpp = folder / f"{digest}.cpp"
            cpp.write_text(program)
            partial = folder / f".{digest}.{os.getpid()}.so"
            try:
                result = subprocess.run([compiler, *flags, str(cpp), "-o", str(partial)],
                                        capture_output=True, text=True)
            except FileNotFoundError as exc:
                raise RuntimeError(f"the CUDA emulator needs a C++ compiler ({compiler}); "
                                   "install one with 'apt-get install g++'") from exc
            if result.returncode:
                raise RuntimeError(f"{compiler} could not compile the kernels for the CPU:\n{result.stderr}")
            os.replace(partial, library)
    return library, signatures


class EmulatedModule:
    """The kernels of one CUDA source, compiled for the CPU, launched like ``cupy.RawModule`` functions.

    Parameters
    ----------
    source : str
        CUDA C++ text.
    defines : tuple of str
        Preprocessor definitions.
    """

    def __init__(self, source, defines=()):
        library, self.signatures = compile_for_cpu(source, defines)
        self._library = ctypes.CDLL(str(library))
        self._functions = {}
        for name, params in self.signatures.items():
            function = getattr(self._library, f"fd_launch_{name}")
            function.argtypes = [ctypes.c_uint32, ctypes.c_uint32] + [_ctype(t) for t, _ in params]
            function.restype = None
            self._functions[name] = function

    def launch(self, name, grid, block, args):
        """Run kernel ``name`` over ``grid`` blocks of ``block`` threads with ``args``.

        Parameters
        ----------
        name : str
        grid, block : int
        args : list
            NumPy arrays and scalars, in the kernel's parameter order.
        """
        params = self.signatures[name]
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        converted = []
        for (ctype, pname), arg in zip(params, args):
            if "*" in ctype:
                arg = np.asarray(arg) if isinstance(arg, np.ndarray) else arg  # past CuPy's surface
                if not (isinstance(arg, np.ndarray) and arg.flags.c_contiguous):
                    raise TypeError(f"{name}: {pname} must be a C-contiguous array")
                converted.append(arg.ctypes.data)
            else:
                converted.append(arg.item() if isinstance(arg, np.generic) else arg)
        self._functions[name](int(grid), int(block), *converted)
