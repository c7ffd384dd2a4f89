"""NVRTC compilation of the CUDA kernels, with options that are ours to the last one.

CuPy's ``RawModule(code=...)`` appends ``-ftz=true`` after the caller's
options, and the last one wins: subnormals would be flushed to zero and the
device's values would no longer be bit-identical to the CPU's. So the sources
are compiled here, through NVRTC itself, to a cubin for the device's own
architecture (no PTX JIT, so a driver older than NVRTC still loads it), and
CuPy only loads the result (``RawModule(path=...)``).

The kernels include no header: NVRTC compiles them with nothing but itself,
so the ``gpu`` extra needs no CUDA toolkit headers for them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from ..errors import BackendError

__all__ = ["OPTIONS", "options", "compile_source", "ptx_parameters", "PROBE_SOURCE", "Compiled"]

# contraction off (only explicit fmaf fuses), subnormals kept, IEEE division and square root:
# the CPU twins' arithmetic, compiled with -ffp-contract=off.
OPTIONS = ("--std=c++14", "--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true")

PROBE_SOURCE = r"""
extern "C" __global__ void probe(float* out, int n)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) out[t] = (float)t * 0.5f;
}

extern "C" __global__ void spin(long long cycles)
{
    long long start = clock64();
    while (clock64() - start < cycles) {}
}
"""

_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+\w+")


class Compiled(NamedTuple):
    """A compiled source: its cubin and the PTX it went through.

    Parameters
    ----------
    cubin : bytes
        Machine code for the architecture it was compiled for.
    ptx : str
        The PTX text (its ``.entry`` parameter lists check launches).
    """

    cubin: bytes
    ptx: str


def options(arch, defines=()):
    """The full NVRTC option list for ``arch`` (``"sm_90"``) and ``-D`` ``defines``: nothing is added after it.

    Parameters
    ----------
    arch : str
        A real architecture, ``sm_XY``.
    defines : tuple of str
        Preprocessor definitions such as ``RANK_T=unsigned char``.
    """
    return (f"-arch={arch}", *OPTIONS, *(f"-D{d}" for d in defines))


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or the library cannot be loaded
        raise BackendError(
            f"backend='cuda' needs NVRTC (CUDA's runtime compiler), which cannot be loaded ({exc}): "
            "pip install 'fastdecomp[gpu]' (it brings nvidia-cuda-nvrtc-cu12), or use backend='cpu'") from exc
    return nvrtc


@lru_cache(maxsize=None)
def compile_source(text, name, arch, defines=()):
    """Compile CUDA source ``text`` for ``arch`` with :func:`options`; the result is cached per process.

    Parameters
    ----------
    text : str
        CUDA C++ source.
    name : str
        Its file name, for messages.
    arch : str
        ``sm_XY``.
    defines : tuple of str

    Returns
    -------
    Compiled

    Raises
    ------
    BackendError
        When NVRTC is missing, or refuses the source or the architecture (the log is in the message).
    """
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(text, name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, list(options(arch, defines)))
        except nvrtc.NVRTCError as exc:
            raise BackendError(
                f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))} could not compile {name} for {arch} ({exc}): "
                f"a GPU newer than this NVRTC needs a newer nvidia-cuda-nvrtc-cu12, or use backend='cpu'.\n"
                f"{nvrtc.getProgramLog(program)}") from exc
        ptx = nvrtc.getPTX(program)
        return Compiled(bytes(nvrtc.getCUBIN(program)), ptx.decode() if isinstance(ptx, bytes) else ptx)
    finally:
        nvrtc.destroyProgram(program)


def ptx_parameters(ptx):
    """``{entry name: [PTX parameter type, ...]}`` (``"u64"``, ``"u32"``, ``"f32"``...) of a PTX text.

    Parameters
    ----------
    ptx : str
    """
    return {name: _PARAM.findall(params) for name, params in _ENTRY.findall(ptx)}
