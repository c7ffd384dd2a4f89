"""What every kernel checks before it touches memory: one function per kernel, for both twins.

The Numba and CUDA kernels index their arrays without bounds checks, so each
entry point (:mod:`.cpu`, :mod:`.gpu`) first calls the function of the same
name here: dtypes, dimensions, C-contiguity, writability of what it writes,
shapes that agree with each other, and class indices within their tables. A
check costs a few microseconds per call, never a pass over the data (class
arrays hold one entry per image of the batch). A failure is an
:class:`~fastdecomp.errors.InputError` naming the kernel and the argument.
"""

from __future__ import annotations

import numbers
import threading
from collections import OrderedDict

import numpy as np

from ..errors import InputError

__all__ = ["known_range", "conv2d_forward", "packed_activity", "rectifier_cap", "grouped_conv2d_forward", "dense_forward", "pool2d_forward",
           "global_average_pool_forward", "accumulate_activity", "accumulate_packed_activity", "accumulate_concerned",
           "tangling_keep", "window_dead_inputs"]

RANK_DTYPES = (np.uint8, np.uint16, np.uint32)


def _fail(kernel, message):
    raise InputError(f"{kernel}: {message}")


def _array(kernel, name, a, dtypes, ndim, writable=False):
    dtypes = dtypes if isinstance(dtypes, tuple) else (dtypes,)
    if not hasattr(a, "dtype") or not hasattr(a, "flags") or a.dtype not in [np.dtype(d) for d in dtypes]:
        _fail(kernel, f"{name} must be an array of {' or '.join(np.dtype(d).name for d in dtypes)}, "
                      f"got {getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim != ndim or not a.flags.c_contiguous or (writable and not _writable(a)):
        _fail(kernel, f"{name} must be a {ndim}-D C-contiguous{' writable' if writable else ''} array, "
                      f"got shape {a.shape}")


def _writable(a):
    """NumPy's ``flags.writeable``; CuPy's ``Flags`` has none, since a device array is always writable."""
    return getattr(a.flags, "writeable", True)


INT32_MAX = 2 ** 31 - 1  # the CUDA kernels take their sizes as int


def _integers(kernel, low, **values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= v <= INT32_MAX:
            _fail(kernel, f"{name} must be an integer from {low} to {INT32_MAX}, got {v!r}")


def _shape(kernel, name, a, expected):
    if tuple(a.shape) != tuple(expected):
        _fail(kernel, f"{name} has shape {tuple(a.shape)}; the other arguments need {tuple(expected)}")


KNOWN_RANGES_KEPT = 64
_known_ranges = OrderedDict()
_known_lock = threading.Lock()


def known_range(a, low, high):
    """Record that the device array ``a``, which fastdecomp uploaded itself from host values checked to lie in
    ``low..high`` and hands to no one else, holds exactly those values.

    The checks of the kernels it is passed to then read the range from here instead
    of from the device: ``int(a.max())`` on a device array is a copy to the host,
    which waits for everything queued on the stream, once per kernel and mask point.
    The record keeps ``a`` alive, so its ``id`` cannot be reused while it stands; the
    last :data:`KNOWN_RANGES_KEPT` are kept.

    Parameters
    ----------
    a : array
    low, high : int
    """
    with _known_lock:
        _known_ranges[id(a)] = (a, int(low), int(high))
        _known_ranges.move_to_end(id(a))
        while len(_known_ranges) > KNOWN_RANGES_KEPT:
            _known_ranges.popitem(last=False)


def _value_range(a):
    with _known_lock:
        entry = _known_ranges.get(id(a))
    if entry is not None and entry[0] is a:
        return entry[1], entry[2]
    return int(a.min()), int(a.max())


def _classes(kernel, name, a, count, table_rows):
    """``a``: one int64 per image, each -1 or a row of a table of ``table_rows`` rows."""
    _array(kernel, name, a, np.int64, 1)
    _shape(kernel, name, a, (count,))
    if count:
        low, high = _value_range(a)
        if low < -1 or high >= table_rows:
            _fail(kernel, f"{name} holds classes outside -1..{table_rows - 1}")


def conv2d_forward(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, residual=None):
    """Check the arguments of the device ``conv2d_forward`` (the CPU's checks its own, converting what it may).

    Parameters
    ----------
    x, kernel, bias, out : arrays
        float32 ``[N, H, W, Ci]``, ``[Kh, Kw, Ci, Co]``, ``[Co]``, ``[N, Oh, Ow, Co]`` (writable).
    stride_h, stride_w : int
        At least 1.
    pad_top, pad_left : int
        At least 0.
    residual : array, optional
        float32 of ``out``'s shape.
    """
    for name, a, ndim in (("x", x, 4), ("kernel", kernel, 4), ("bias", bias, 1)):
        _array("conv2d_forward", name, a, np.float32, ndim)
    _array("conv2d_forward", "out", out, np.float32, 4, writable=True)
    _integers("conv2d_forward", 1, stride_h=stride_h, stride_w=stride_w)
    _integers("conv2d_forward", 0, pad_top=pad_top, pad_left=pad_left)
    _shape("conv2d_forward", "kernel", kernel, kernel.shape[:2] + (x.shape[3], kernel.shape[3]))
    _shape("conv2d_forward", "bias", bias, (kernel.shape[3],))
    _shape("conv2d_forward", "out", out, (x.shape[0],) + tuple(out.shape[1:3]) + (kernel.shape[3],))
    if residual is not None:
        _array("conv2d_forward", "residual", residual, np.float32, 4)
        _shape("conv2d_forward", "residual", residual, out.shape)


def packed_activity(kernel, activity, out):
    """Check an epilogue's packed activity: uint8 ``[N, Oh * Ow * Co / 8]`` for ``out [N, Oh, Ow, Co]``,
    ``Co`` a multiple of 8 (each byte is eight channels of one pixel).

    Parameters
    ----------
    kernel : str
        The kernel's name, for the message.
    activity, out : arrays
    """
    if out.shape[-1] % 8:
        _fail(kernel, f"packed activity needs output channels in multiples of 8, not {out.shape[-1]}")
    _array(kernel, "activity", activity, np.uint8, 2, writable=True)
    _shape(kernel, "activity", activity, (out.shape[0], out.size // out.shape[0] // 8))


def rectifier_cap(kernel, rectify, cap):
    """Check a convolution epilogue's ReLU cap: None, or a positive finite number with ``rectify``.

    Parameters
    ----------
    kernel : str
        The kernel's name, for the message.
    rectify : bool
    cap : float or None
    """
    if cap is None:
        return
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not np.isfinite(cap) or cap <= 0 \
            or not rectify:
        _fail(kernel, f"cap must be a positive finite number, with rectify=True; got cap={cap!r}, "
                      f"rectify={rectify!r}")


def dense_forward(x, kernel, bias, out):
    """Check the arguments of ``dense_forward``: ``x [N, F]``, ``kernel [F, K]``, ``bias [K]``, ``out [N, K]``.

    Parameters
    ----------
    x, kernel, bias, out : arrays
        float32, C-contiguous; ``out`` writable.
    """
    for name, a, ndim in (("x", x, 2), ("kernel", kernel, 2), ("bias", bias, 1)):
        _array("dense_forward", name, a, np.float32, ndim)
    _array("dense_forward", "out", out, np.float32, 2, writable=True)
    _shape("dense_forward", "kernel", kernel, (x.shape[1], kernel.shape[1]))
    _shape("dense_forward", "bias", bias, (kernel.shape[1],))
    _shape("dense_forward", "out", out, (x.shape[0], kernel.shape[1]))


def pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, out):
    """Check the arguments of ``pool2d_forward``: every window of ``out`` overlaps ``x``.

    Parameters
    ----------
    x, out : arrays
        float32 NHWC; ``out`` writable.
    pool_h, pool_w, stride_h, stride_w : int
        At least 1.
    pad_top, pad_left : int
        At least 0.
    """
    _array("pool2d_forward", "x", x, np.float32, 4)
    _array("pool2d_forward", "out", out, np.float32, 4, writable=True)
    _integers("pool2d_forward", 1, pool_h=pool_h, pool_w=pool_w, stride_h=stride_h, stride_w=stride_w)
    _integers("pool2d_forward", 0, pad_top=pad_top, pad_left=pad_left)
    n, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    _shape("pool2d_forward", "out", out, (n, oh, ow, c))
    if min(h, w, oh, ow) < 1 or pad_top >= pool_h or pad_left >= pool_w \
            or (oh - 1) * stride_h - pad_top >= h or (ow - 1) * stride_w - pad_left >= w:
        _fail("pool2d_forward", f"a {pool_h}x{pool_w} window with strides {stride_h, stride_w} and padding "
                                f"{pad_top, pad_left} does not map {x.shape} onto {out.shape}")


def grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                           groups, out):
    """Check the arguments of ``grouped_conv2d_forward``: the groups split both sides' channels evenly.

    Parameters
    ----------
    x, kernel, bias, out : arrays
        float32 ``[N, H, W, Ci]``, ``[Kh, Kw, Ci / groups, Co]``, ``[Co]``, ``[N, Oh, Ow, Co]`` (writable).
    stride_h, stride_w, dilation_h, dilation_w, groups : int
        At least 1.
    pad_top, pad_left : int
        At least 0.
    """
    name = "grouped_conv2d_forward"
    for label, a, ndim in (("x", x, 4), ("kernel", kernel, 4), ("bias", bias, 1)):
        _array(name, label, a, np.float32, ndim)
    _array(name, "out", out, np.float32, 4, writable=True)
    _integers(name, 1, stride_h=stride_h, stride_w=stride_w, dilation_h=dilation_h, dilation_w=dilation_w,
              groups=groups)
    _integers(name, 0, pad_top=pad_top, pad_left=pad_left)
    co = kernel.shape[3]
    if x.shape[3] % groups or co % groups or min(kernel.shape) < 1:
        _fail(name, f"{groups} groups do not split {x.shape[3]} input and {co} output channels evenly")
    _shape(name, "kernel", kernel, kernel.shape[:2] + (x.shape[3] // groups, co))
    _shape(name, "bias", bias, (co,))
    _shape(name, "out", out, (x.shape[0],) + tuple(out.shape[1:3]) + (co,))
    for axis, size, window, stride, dilation, pad, outputs in (
            ("rows", x.shape[1], kernel.shape[0], stride_h, dilation_h, pad_top, out.shape[1]),
            ("columns", x.shape[2], kernel.shape[1], stride_w, dilation_w, pad_left, out.shape[2])):
        _window_fits(name, axis, size, (window - 1) * dilation + 1, stride, pad, outputs)


def _window_fits(kernel, axis, size, span, stride, pad, outputs):
    """Every output's window overlaps the input: none lies wholly in the padding."""
    if outputs < 1 or pad >= span or (outputs - 1) * stride - pad >= size:
        _fail(kernel, f"{outputs} output {axis} of a window spanning {span} at stride {stride}, over {size} input "
                      f"{axis} padded by {pad} before them, put windows wholly in the padding")


def global_average_pool_forward(x, out):
    """Check the arguments of ``global_average_pool_forward``: ``x [N, H, W, C]``, ``out [N, C]``.

    Parameters
    ----------
    x, out : arrays
        float32; ``out`` writable.
    """
    _array("global_average_pool_forward", "x", x, np.float32, 4)
    _array("global_average_pool_forward", "out", out, np.float32, 2, writable=True)
    _shape("global_average_pool_forward", "out", out, (x.shape[0], x.shape[3]))
    if min(x.shape[1:3]) < 1:
        _fail("global_average_pool_forward", f"x of shape {x.shape} has no positions to average")


def _statistics(kernel, batch, nbytes, concerned_class, tangle_class, tangle_rank, active, first_rank):
    _array(kernel, "active", active, np.uint8, 2, writable=True)
    _array(kernel, "first_rank", first_rank, RANK_DTYPES, 2, writable=True)
    classes = active.shape[0]
    _shape(kernel, "active", active, (classes, nbytes))
    if first_rank.shape[0] != classes or first_rank.shape[1] < nbytes * 8:
        _fail(kernel, f"first_rank of shape {first_rank.shape} needs {classes} rows of at least {nbytes * 8}")
    _classes(kernel, "concerned_class", concerned_class, batch, classes)
    _classes(kernel, "tangle_class", tangle_class, batch, classes)
    _array(kernel, "tangle_rank", tangle_rank, np.int64, 1)
    _shape(kernel, "tangle_rank", tangle_rank, (batch,))
    if batch and _value_range(tangle_rank)[1] > np.iinfo(first_rank.dtype).max:
        _fail(kernel, f"tangle_rank holds ranks beyond what {first_rank.dtype} first ranks can record")


def accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed):
    """Check the arguments of ``accumulate_activity``.

    Parameters
    ----------
    values : array
        float32 ``[B, nodes]``.
    concerned_class, tangle_class, tangle_rank : arrays
        int64 ``[B]``; classes -1 or rows of ``active``.
    active : array
        uint8 ``[C, ceil(nodes / 8)]``, writable.
    first_rank : array
        uint8/16/32 ``[C, nodes or more]``, writable.
    packed : array
        uint8 ``[B, ceil(nodes / 8)]`` or ``[0, 0]``, writable.
    """
    _array("accumulate_activity", "values", values, np.float32, 2)
    batch, nbytes = values.shape[0], (values.shape[1] + 7) // 8
    _statistics("accumulate_activity", batch, nbytes, concerned_class, tangle_class, tangle_rank, active,
                first_rank)
    _array("accumulate_activity", "packed", packed, np.uint8, 2, writable=True)
    if packed.shape != (0, 0):
        _shape("accumulate_activity", "packed", packed, (batch, nbytes))


def accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank):
    """Check the arguments of ``accumulate_packed_activity``.

    Parameters
    ----------
    bits : array
        uint8 ``[B, nbytes]``.
    concerned_class, tangle_class, tangle_rank, active, first_rank : arrays
        As in :func:`accumulate_activity`, with ``nbytes`` bytes of nodes.
    """
    _array("accumulate_packed_activity", "bits", bits, np.uint8, 2)
    _statistics("accumulate_packed_activity", bits.shape[0], bits.shape[1], concerned_class, tangle_class,
                tangle_rank, active, first_rank)


def accumulate_concerned(bits, concerned_class, active):
    """Check the arguments of ``accumulate_concerned``.

    Parameters
    ----------
    bits : array
        uint8 ``[B, nbytes]``.
    concerned_class : array
        int64 ``[B]``, -1 or rows of ``active``.
    active : array
        uint8 ``[C, nbytes]``, writable.
    """
    _array("accumulate_concerned", "bits", bits, np.uint8, 2)
    _array("accumulate_concerned", "active", active, np.uint8, 2, writable=True)
    _shape("accumulate_concerned", "active", active, (active.shape[0], bits.shape[1]))
    _classes("accumulate_concerned", "concerned_class", concerned_class, bits.shape[0], active.shape[0])


def tangling_keep(first_rank, counts, keep):
    """Check the arguments of ``tangling_keep``.

    Parameters
    ----------
    first_rank : array
        uint8/16/32 ``[C, nodes or more]``.
    counts : numpy.ndarray
        int64 ``[M, C]``, at least 0.
    keep : array
        bool ``[M, nodes]``, writable.
    """
    _array("tangling_keep", "first_rank", first_rank, RANK_DTYPES, 2)
    _array("tangling_keep", "counts", np.asarray(counts), np.int64, 2)
    _array("tangling_keep", "keep", keep, (np.bool_, np.uint8), 2, writable=True)
    _shape("tangling_keep", "counts", counts, (keep.shape[0], first_rank.shape[0]))
    if first_rank.shape[1] < keep.shape[1] or (np.asarray(counts) < 0).any():
        _fail("tangling_keep", f"first_rank {first_rank.shape} must cover keep's {keep.shape[1]} nodes, and "
                               "counts be at least 0")


def window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                       dilation_h=1, dilation_w=1):
    """Check the arguments of ``window_dead_inputs``.

    Parameters
    ----------
    dead_out : array
        bool ``[M, out_h, out_w, C]``.
    in_h, in_w, window_h, window_w, stride_h, stride_w, dilation_h, dilation_w : int
        At least 1.
    pad_top, pad_left : int
        At least 0.
    """
    _array("window_dead_inputs", "dead_out", dead_out, np.bool_, 4)
    _integers("window_dead_inputs", 1, in_h=in_h, in_w=in_w, window_h=window_h, window_w=window_w,
              stride_h=stride_h, stride_w=stride_w, dilation_h=dilation_h, dilation_w=dilation_w)
    _integers("window_dead_inputs", 0, pad_top=pad_top, pad_left=pad_left)
