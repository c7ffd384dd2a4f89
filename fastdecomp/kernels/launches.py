"""Every kernel launch checked against the compiled kernel's parameters, by CuPy's rules.

A ``RawKernel`` call packs each argument by its Python type, not by the
kernel's parameter (CuPy's ``cupy/cuda/function.pyx``, ``_pointer``): a
``cupy.ndarray`` becomes its data pointer, whatever its dtype or strides; a
NumPy scalar its own bytes; a Python ``int`` an int64, a ``float`` a float64.
A width or dtype the kernel does not expect is read as garbage, silently. So
each launch is checked first: the count of arguments, each scalar's width
against the parameter's (from the PTX where NVRTC gave it), each array's
dtype against the pointee type in the ``.cu`` signature (PTX says only
``.u64``), C-contiguity, and the grid and block against the CUDA limits.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import KernelLaunchError

__all__ = ["Parameter", "parameters", "check_launch", "MAX_GRID", "MAX_BLOCK"]

MAX_GRID = 2 ** 31 - 1
MAX_BLOCK = 1024
C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
           "long long": np.int64, "unsigned long long": np.uint64, "unsigned char": np.uint8,
           "unsigned short": np.uint16, "short": np.int16, "char": np.int8}
PTX_BYTES = {"u8": 1, "s8": 1, "b8": 1, "u16": 2, "s16": 2, "b16": 2, "u32": 4, "s32": 4, "b32": 4, "f32": 4,
             "u64": 8, "s64": 8, "b64": 8, "f64": 8}
_SCALAR_TYPES = {np.dtype(c).type for c in "?bhilqBHILQefd"}


class Parameter(NamedTuple):
    """One kernel parameter.

    Parameters
    ----------
    name : str
    dtype : numpy.dtype
        Its type, or the pointee's for a pointer.
    pointer : bool
    const : bool
        A pointer the kernel only reads.
    nbytes : int
        Bytes passed (8 for a pointer; a scalar's width, from the PTX where known).
    """

    name: str
    dtype: np.dtype
    pointer: bool
    const: bool
    nbytes: int


def _dtype(ctype, macros):
    base = ctype.replace("const", "").replace("*", "").strip()
    base = macros.get(base, base)
    if base not in C_TYPES:
        raise ValueError(f"no dtype known for the C type {ctype!r}")
    return np.dtype(C_TYPES[base])


def parameters(signature, defines=(), ptx_types=None):
    """The :class:`Parameter` list of one kernel.

    Parameters
    ----------
    signature : list of (str, str)
        ``(C type, name)`` pairs, from :func:`cuda_emulator.kernel_signatures`.
    defines : tuple of str
        ``NAME=VALUE`` definitions the source was compiled with (``RANK_T``).
    ptx_types : list of str, optional
        The PTX ``.param`` types of the compiled entry; when given, every
        parameter's byte size is the compiled one, and the count must agree.
    """
    macros = dict(d.split("=", 1) for d in defines)
    macros.setdefault("RANK_T", "unsigned char")
    if ptx_types is not None and len(ptx_types) != len(signature):
        raise ValueError(f"the PTX has {len(ptx_types)} parameters where the source declares {len(signature)}")
    result = []
    for i, (ctype, name) in enumerate(signature):
        pointer = "*" in ctype
        dtype = _dtype(ctype, macros)
        nbytes = PTX_BYTES[ptx_types[i]] if ptx_types is not None else (8 if pointer else dtype.itemsize)
        result.append(Parameter(name, dtype, pointer, "const" in ctype, nbytes))
    return result


def _packed_dtype(arg):
    """The dtype CuPy packs a scalar argument as (``_pointer``'s rules), or None for what it refuses."""
    if type(arg) in _SCALAR_TYPES:
        return np.dtype(type(arg))
    if isinstance(arg, int):  # bool included
        return np.dtype(np.int64)
    if isinstance(arg, float):
        return np.dtype(np.float64)
    return None


def check_launch(kernel, params, grid, block, args, is_device_array):
    """Refuse a launch CuPy would pack differently from what ``kernel`` reads.

    Parameters
    ----------
    kernel : str
    params : list of Parameter
    grid, block : int
    args : sequence
    is_device_array : callable
        True for an array of the device (passed as a pointer).

    Raises
    ------
    KernelLaunchError
        Naming the kernel, the parameter and what was passed (a fastdecomp bug).
    """
    def fail(what):
        raise KernelLaunchError(f"launch of {kernel}: {what}; this is a fastdecomp bug, please report it")

    if not (0 < grid <= MAX_GRID and 0 < block <= MAX_BLOCK):
        fail(f"grid {grid} x block {block} is beyond CUDA's limits ({MAX_GRID} x {MAX_BLOCK})")
    if len(args) != len(params):
        fail(f"{len(args)} arguments for {len(params)} parameters")
    for param, arg in zip(params, args):
        if param.pointer:
            if not is_device_array(arg):
                fail(f"{param.name} must be a device array, got {type(arg).__name__}")
            if arg.dtype != param.dtype:
                fail(f"{param.name} points to {param.dtype}, got an array of {arg.dtype}")
            if not arg.flags.c_contiguous:
                fail(f"{param.name} must be C-contiguous (the kernel indexes it row-major), got strides "
                     f"{arg.strides}")
        else:
            packed = None if is_device_array(arg) else _packed_dtype(arg)
            if packed is None:
                fail(f"{param.name} is a {param.dtype} scalar, got {type(arg).__name__}")
            if packed.itemsize != param.nbytes:
                fail(f"{param.name} takes {param.nbytes} bytes, got {type(arg).__name__} of {packed.itemsize}")
            floating = np.issubdtype(param.dtype, np.floating)
            if np.issubdtype(packed, np.floating) != floating:
                fail(f"{param.name} is {'a float' if floating else 'an integer'}, got "
                     f"{type(arg).__name__} (its bits would be read as the other kind)")
