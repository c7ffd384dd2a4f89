"""Numba CPU kernels: forward layers, activity statistics, sliding-window maps
and backward dead-node propagation.

Every forward kernel sums each output's terms in one fixed order that does not
depend on the batch size or on which images share a batch, so the values at a
mask point (and the masks derived from them) are bit-identical however the
data is batched. The convolution is generated as LLVM IR
(:mod:`fastdecomp.kernels.direct_conv`) and called through
:func:`conv2d_forward` here. Feature maps are NHWC float32. Forward and statistics
kernels are serial: the engine runs whole batches on several threads
(:mod:`fastdecomp.parallel`); the backward kernels, run once per
decomposition, use every core themselves.
"""

import numbers
import os

import numpy as np

from .. import config
from ..errors import InputError, TargetError
from . import checks, direct_conv, trusted_cache, tuning
from . import target as targets


def _point_numba_at_the_target():
    """Make Numba generate code for ``FASTDECOMP_TARGET_CPU`` too (before it compiles anything).

    Only a target this machine can run is applied (for any other, the kernels
    refuse to run: :meth:`.target.Target.check_runnable`), and never over a
    ``NUMBA_CPU_NAME`` the user set; one this function set in a parent process
    is taken back when the child's target differs.
    """
    before = (os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES"))
    try:
        target = targets.current()
    except TargetError:
        return False
    ours = os.environ.get("FASTDECOMP_NUMBA_CPU")
    if ours is not None and os.environ.get("NUMBA_CPU_NAME") == ours:  # inherited from a parent that set it
        for variable in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "FASTDECOMP_NUMBA_CPU"):
            os.environ.pop(variable, None)
    if target.name != "native" and target.runnable and "NUMBA_CPU_NAME" not in os.environ:
        os.environ.update(NUMBA_CPU_NAME=target.cpu, NUMBA_CPU_FEATURES=target.features,
                          FASTDECOMP_NUMBA_CPU=target.cpu)
    return (os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES")) != before


def _point_numba_cache_at_ours():
    """Keep Numba's disk cache in fastdecomp's own folder, or use none; whether Numba may cache on disk.

    Numba unpickles its cache index, and by default keeps it in a ``__pycache__`` beside the package, which
    others may be able to write (a shared install): a planted index would run code in the next process.
    So unless the user chose ``NUMBA_CACHE_DIR`` it goes under fastdecomp's cache folder, which is used only
    when no other user can write it (:mod:`.trusted_cache`); otherwise Numba compiles in memory.
    """
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen is not None and chosen != os.environ.get("FASTDECOMP_NUMBA_CACHE"):  # not one a parent of ours set
        return True
    folder = config.cache_dir()
    if trusted_cache.secret(folder) is None:  # it warned why
        os.environ.pop("NUMBA_CACHE_DIR", None)
        return False
    ours = str(trusted_cache.private_folder(folder / "numba"))
    os.environ.update(NUMBA_CACHE_DIR=ours, FASTDECOMP_NUMBA_CACHE=ours)
    return True


_numba_target_changed = _point_numba_at_the_target()
_numba_disk_cache = _point_numba_cache_at_ours()

from numba import njit, prange  # noqa: E402  (after the target and the cache folder are set)
from numba.core import config as _numba_config  # noqa: E402

_numba_config.reload_config()  # the target and the cache folder, also where Numba was imported before


def jit(parallel=False):
    """The project's Numba decorator: cached (in fastdecomp's own folder), GIL-free, NumPy error model."""
    return njit(parallel=parallel, cache=_numba_disk_cache, nogil=True, error_model="numpy")


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------


def kernel_for(shape):
    """The compiled convolution for ``shape`` (a :class:`.direct_conv.ConvShape`), with the
    tiling :mod:`.tuning` chose for it."""
    target = targets.current()
    return direct_conv.compiled(shape, tuning.choose(shape.geometry, target), target)


def _writable(array, dtype):
    return (isinstance(array, np.ndarray) and array.dtype == dtype and array.flags.c_contiguous
            and array.flags.writeable)


def _checked(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, residual, activity):
    """The arrays as the kernel reads them (float32, C-contiguous), after checking that they
    describe one convolution; :class:`InputError` otherwise, before any memory is touched."""
    x, kernel, bias = (np.ascontiguousarray(a, dtype=np.float32) for a in (x, kernel, bias))
    if not _writable(out, np.float32) or x.ndim != 4 or kernel.ndim != 4 or out.ndim != 4:
        raise InputError(f"conv2d_forward takes a 4-D input and kernel, and writes into a writable C-contiguous "
                         f"4-D float32 output; got {x.shape}, {kernel.shape} and {getattr(out, 'shape', out)!r}")
    n, _, _, ci = x.shape
    kh, kw, kernel_ci, co = kernel.shape
    if kernel_ci != ci or bias.shape != (co,) or out.shape[0] != n or out.shape[3] != co:
        raise InputError(f"a kernel of shape {kernel.shape} and a bias of shape {bias.shape} do not fit an "
                         f"input of shape {x.shape} and an output of shape {out.shape}")
    geometry = (stride_h, stride_w, pad_top, pad_left)
    if (not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in geometry)
            or min(stride_h, stride_w) < 1 or min(pad_top, pad_left) < 0 or 0 in x.shape[1:] or 0 in out.shape[1:]):
        raise InputError(f"strides {stride_h, stride_w}, padding {pad_top, pad_left} and the shapes {x.shape} -> "
                         f"{out.shape} describe no convolution: strides are integers of at least 1, padding "
                         f"integers of at least 0")
    if residual is not None:
        residual = np.ascontiguousarray(residual, dtype=np.float32)
        if residual.shape != out.shape:
            raise InputError(f"residual of shape {residual.shape} for an output of shape {out.shape}")
    if activity is not None:
        if not direct_conv.packs_activity(co):
            raise InputError(f"packed activity needs output channels in multiples of 8, not {co}")
        expected = (n, out.shape[1] * out.shape[2] * co // 8)
        if not _writable(activity, np.uint8) or activity.shape != expected:
            raise InputError(f"activity must be a writable C-contiguous uint8 array of shape {expected}")
    return x, kernel, bias, residual


def conv2d_forward(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, rectify=False, residual=None,
                   activity=None, cap=None):
    """2-D convolution ``out = conv(x, kernel) + bias [+ residual]`` (NHWC input, HWIO kernel).

    Generated per layer shape as LLVM IR (:mod:`.direct_conv`), with the
    tiling :mod:`.tuning` chose for this CPU; the arguments are checked
    before any memory is touched.

    Parameters
    ----------
    x : float32 [N, H, W, Ci]
    kernel : float32 [Kh, Kw, Ci, Co]
    bias : float32 [Co]
    stride_h, stride_w, pad_top, pad_left : int
        Padding rows above and columns left of the input; the rows and
        columns below and right follow from ``out``'s shape.
    out : float32 [N, Oh, Ow, Co], C-contiguous
        Written in place.
    rectify : bool
        Apply ReLU to the result while it is in registers (the engine does
        this when the convolution's only reader is a ReLU nobody observes).
    residual : float32 [N, Oh, Ow, Co], optional
        Added to the result before the ReLU, as a residual connection's
        ``Add`` would (the engine fuses an ``Add`` fed by a convolution); it
        may be ``out`` itself. The sum ``(conv + bias) + residual`` is the one
        the unfused layers compute, so values are unchanged.
    activity : uint8 [N, Oh * Ow * Co / 8], optional
        Receives ``numpy.packbits(out.reshape(N, -1) > 0, axis=1)``, computed
        while the values are in registers (the activity statistics read these
        bits instead of the values). Needs ``Co`` to be a multiple of 8.
    cap : float, optional
        With ``rectify``: the ReLU's upper bound, ``min(relu(r), cap)`` (ReLU6); the bits of
        ``activity`` are those before the ReLU either way (``> 0`` is the same).
    """
    x, kernel, bias, residual = _checked(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, residual,
                                         activity)
    checks.rectifier_cap("conv2d_forward", rectify, cap)
    n, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    shape = direct_conv.ConvShape(h, w, ci, kh, kw, int(stride_h), int(stride_w), int(pad_top), int(pad_left), out.shape[1],
                      out.shape[2], co, bool(rectify), residual is not None, activity is not None,
                      None if cap is None else float(np.float32(cap)))
    kernel_for(shape)(x.ctypes.data, kernel.ctypes.data, bias.ctypes.data, out.ctypes.data, n,
                      out.ctypes.data if residual is None else residual.ctypes.data,
                      0 if activity is None else activity.ctypes.data)


@jit()
def _dense_forward(x, kernel, bias, out):
    """The kernel of :func:`dense_forward`, called after its checks."""
    n, f = x.shape
    u = kernel.shape[1]
    for b in prange(n):
        acc = np.zeros(u, dtype=np.float32)
        for i in range(f):
            v = x[b, i]
            for o in range(u):
                acc[o] += v * kernel[i, o]
        for o in range(u):
            out[b, o] = acc[o] + bias[o]


def dense_forward(x, kernel, bias, out):
    """``out = x @ kernel + bias``, each output summed in input order.

    Parameters
    ----------
    x : float32 [N, F]
    kernel : float32 [F, K]
    bias : float32 [K]
    out : float32 [N, K], C-contiguous
        Written in place.
    """
    checks.dense_forward(x, kernel, bias, out)
    _dense_forward(x, kernel, bias, out)


@jit()
def _pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, is_max, out):
    """The kernel of :func:`pool2d_forward`, called after its checks."""
    n, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for task in prange(n * oh):
        b = task // oh
        i = task % oh
        for j in range(ow):
            for ch in range(c):
                acc = np.float32(-np.inf) if is_max else np.float32(0.0)
                count = 0
                for dy in range(pool_h):
                    y = i * stride_h + dy - pad_top
                    if y < 0 or y >= h:
                        continue
                    for dx in range(pool_w):
                        xx = j * stride_w + dx - pad_left
                        if xx < 0 or xx >= w:
                            continue
                        v = x[b, y, xx, ch]
                        if is_max:
                            if v > acc:
                                acc = v
                        else:
                            acc += v
                        count += 1
                out[b, i, j, ch] = acc if is_max else acc / np.float32(count)


def pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, is_max, out):
    """Max or average pooling; padding positions are excluded (as in Keras).

    Parameters
    ----------
    x : float32 [N, H, W, C]
    pool_h, pool_w, stride_h, stride_w : int
    pad_top, pad_left : int
        Padding rows above and columns left of the input.
    is_max : bool
        Max pooling, else average.
    out : float32 [N, Oh, Ow, C], C-contiguous
        Written in place.
    """
    checks.pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, out)
    _pool2d_forward(x, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, is_max, out)


@jit()
def _grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                            groups, out):
    """The kernel of :func:`grouped_conv2d_forward`, called after its checks.

    The output channels are the innermost loop (contiguous, so vectorised where
    each reads its own input channel: a depthwise convolution); each output's
    terms still come in the documented order.
    """
    n, h, w, _ = x.shape
    kh, kw, group_ci, co = kernel.shape
    oh, ow = out.shape[1], out.shape[2]
    group_co = co // groups
    own_channel = group_ci == 1 and group_co == 1
    first = np.empty(co, dtype=np.int64)
    for o in range(co):
        first[o] = (o // group_co) * group_ci
    acc = np.empty(co, dtype=np.float32)
    for task in range(n * oh):
        b = task // oh
        i = task % oh
        for j in range(ow):
            acc[:] = 0.0
            for c in range(group_ci):
                for dy in range(kh):
                    y = i * stride_h + dy * dilation_h - pad_top
                    if y < 0 or y >= h:
                        continue
                    for dx in range(kw):
                        xx = j * stride_w + dx * dilation_w - pad_left
                        if xx < 0 or xx >= w:
                            continue
                        if own_channel:
                            for o in range(co):
                                acc[o] = acc[o] + x[b, y, xx, o] * kernel[dy, dx, 0, o]
                        else:
                            for o in range(co):
                                acc[o] = acc[o] + x[b, y, xx, first[o] + c] * kernel[dy, dx, c, o]
            for o in range(co):
                out[b, i, j, o] = acc[o] + bias[o]


def grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                           groups, out):
    """Grouped, dilated 2-D convolution (a depthwise one is ``groups`` = input channels).

    Output channel ``o`` of group ``g = o // (Co / groups)`` reads input
    channels ``g * Ci/groups ...`` only. Each output sums over its group's
    channels, then the window's rows and columns (padding skipped), one
    rounded multiply and add at a time, then adds the bias: the order the
    CUDA twin keeps.

    Parameters
    ----------
    x : float32 [N, H, W, Ci]
    kernel : float32 [Kh, Kw, Ci / groups, Co]
    bias : float32 [Co]
    stride_h, stride_w, dilation_h, dilation_w : int
        At least 1.
    pad_top, pad_left : int
        Padding rows above and columns left of the input.
    groups : int
        Divides ``Ci`` and ``Co``.
    out : float32 [N, Oh, Ow, Co], C-contiguous
        Written in place.
    """
    checks.grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                                  groups, out)
    _grouped_conv2d_forward(x, kernel, bias, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left,
                            groups, out)


@jit()
def _global_average_pool_forward(x, out):
    """The kernel of :func:`global_average_pool_forward`, called after its checks."""
    n, h, w, c = x.shape
    for b in prange(n):
        acc = np.zeros(c, dtype=np.float32)
        for y in range(h):
            for xx in range(w):
                for ch in range(c):
                    acc[ch] += x[b, y, xx, ch]
        for ch in range(c):
            out[b, ch] = acc[ch] / np.float32(h * w)


def global_average_pool_forward(x, out):
    """Mean over height and width, summed in row-major order.

    Parameters
    ----------
    x : float32 [N, H, W, C]
    out : float32 [N, C], C-contiguous
        Written in place.
    """
    checks.global_average_pool_forward(x, out)
    _global_average_pool_forward(x, out)


# --------------------------------------------------------------------------
# activity statistics
# --------------------------------------------------------------------------


@jit()
def _accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed):
    """The kernel of :func:`accumulate_activity`, called after its checks."""
    n, nodes = values.shape
    whole = nodes // 8
    keep_bits = packed.shape[0] > 0
    for b in range(n):
        v = values[b]
        k = concerned_class[b]
        if k >= 0 or keep_bits:
            for byte in range(whole):
                at = byte * 8
                bits = (((v[at] > 0) << 7) | ((v[at + 1] > 0) << 6) | ((v[at + 2] > 0) << 5)
                        | ((v[at + 3] > 0) << 4) | ((v[at + 4] > 0) << 3) | ((v[at + 5] > 0) << 2)
                        | ((v[at + 6] > 0) << 1) | (v[at + 7] > 0))
                if k >= 0:
                    active[k, byte] |= np.uint8(bits)
                if keep_bits:
                    packed[b, byte] = np.uint8(bits)
            if whole * 8 < nodes:
                bits = 0
                for node in range(whole * 8, nodes):
                    if v[node] > 0:
                        bits |= 128 >> (node - whole * 8)
                if k >= 0:
                    active[k, whole] |= np.uint8(bits)
                if keep_bits:
                    packed[b, whole] = np.uint8(bits)
        c = tangle_class[b]
        if c >= 0:
            ranks = first_rank[c]
            bound = np.empty(1, dtype=first_rank.dtype)  # the rank in the table's own type
            bound[0] = tangle_rank[b]
            r = bound[0]
            for node in range(nodes):  # branch-free, so that it vectorises
                old = ranks[node]
                ranks[node] = r if v[node] > 0 and r < old else old


def accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed):
    """Fold a batch's values at one mask point into per-class activity statistics.

    Parameters
    ----------
    values : float32 [B, nodes]
        The images' values at the mask point; a node is active when its value > 0.
    concerned_class : int64 [B]
        Class whose concerned set the image belongs to, or -1.
    tangle_class, tangle_rank : int64 [B]
        The image's class and its rank in that class's seeded order, or -1 when
        the image is beyond every module's unconcerned sample.
    active : uint8 [C, ceil(nodes / 8)]
        Per-class OR of concerned activity, bit-packed big-endian (as
        ``numpy.packbits``); updated in place.
    first_rank : uint8, uint16 or uint32 [C, nodes or more]
        Per-class minimum rank at which each node was active; updated in place.
    packed : uint8 [B, ceil(nodes / 8)] or [0, 0]
        When it has rows, also receives each image's bit-packed activity
        (``numpy.packbits(values > 0, axis=1)``), for a concern decided later
        (:func:`accumulate_concerned`).
    """
    checks.accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed)
    _accumulate_activity(values, concerned_class, tangle_class, tangle_rank, active, first_rank, packed)


@jit()
def _accumulate_concerned(bits, concerned_class, active):
    """The kernel of :func:`accumulate_concerned`, called after its checks."""
    n, nbytes = bits.shape
    for b in range(n):
        k = concerned_class[b]
        if k >= 0:
            row = active[k]
            for byte in range(nbytes):
                row[byte] |= bits[b, byte]


def accumulate_concerned(bits, concerned_class, active):
    """OR bit-packed activity ``bits [B, nbytes]`` into ``active[concerned_class[b]]`` (skipping -1).

    The deferred half of :func:`accumulate_activity`, for when an image's
    concern is known only after its prediction.

    Parameters
    ----------
    bits : uint8 [B, nbytes]
        ``numpy.packbits`` of each image's ``values > 0``.
    concerned_class : int64 [B]
        The class whose concerned set each image joins, or -1.
    active : uint8 [C, nbytes]
        OR-ed into, in place.
    """
    checks.accumulate_concerned(bits, concerned_class, active)
    _accumulate_concerned(bits, concerned_class, active)


@jit()
def _accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank):
    """The kernel of :func:`accumulate_packed_activity`, called after its checks."""
    _accumulate_concerned(bits, concerned_class, active)
    n, nbytes = bits.shape
    for b in range(n):
        c = tangle_class[b]
        if c < 0:
            continue
        ranks = first_rank[c]
        bound = np.empty(1, dtype=first_rank.dtype)  # the rank in the table's own type
        bound[0] = tangle_rank[b]
        r = bound[0]
        for byte in range(nbytes):  # branch-free, so that it vectorises
            word = bits[b, byte]
            for bit in range(8):
                node = byte * 8 + bit
                old = ranks[node]
                ranks[node] = r if ((word >> (7 - bit)) & 1) and r < old else old


def accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank):
    """:func:`accumulate_activity` from bit-packed activity instead of values.

    ``bits [B, nbytes]`` is ``numpy.packbits(values > 0, axis=1)`` (the
    convolution epilogue writes it while the values are in registers); the
    statistics are updated exactly as :func:`accumulate_activity` would from
    the values, reading an eighth of a float's bytes per node.

    Parameters
    ----------
    bits : uint8 [B, nbytes]
    concerned_class, tangle_class, tangle_rank : int64 [B]
        As in :func:`accumulate_activity`.
    active : uint8 [C, nbytes]
    first_rank : uint8/16/32 [C, nbytes * 8 or more]
        Updated in place.
    """
    checks.accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank)
    _accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank, active, first_rank)


@jit(parallel=True)
def _tangling_keep(first_rank, counts, keep):
    """The kernel of :func:`tangling_keep`, called after its checks."""
    m, nodes = keep.shape
    classes = first_rank.shape[0]
    sampled = np.zeros(classes, dtype=np.bool_)
    for k in range(m):
        for c in range(classes):
            if counts[k, c] > 0:
                sampled[c] = True
    floor = np.zeros(m, dtype=np.int64)
    for k in range(m):
        lowest = -1
        for c in range(classes):
            if sampled[c] and c != k and (lowest < 0 or counts[k, c] < lowest):
                lowest = counts[k, c]
        floor[k] = max(lowest, 0)
    block = 4096
    smallest = np.empty(nodes, dtype=first_rank.dtype)
    second = np.empty(nodes, dtype=first_rank.dtype)
    owner = np.full(nodes, -1, dtype=np.int32)
    top = np.iinfo(first_rank.dtype).max
    for b in prange((nodes + block - 1) // block):
        lo = b * block
        hi = min(lo + block, nodes)
        least, next_least, least_class = smallest[lo:hi], second[lo:hi], owner[lo:hi]
        least[:] = top
        next_least[:] = top
        for c in range(classes):
            if not sampled[c]:
                continue
            row = first_rank[c, lo:hi]
            cls = np.int32(c)
            for j in range(hi - lo):  # branch-free on slices, so that it vectorises
                v = row[j]
                low = least[j]
                next_least[j] = min(next_least[j], max(low, v))
                least_class[j] = cls if v < low else least_class[j]
                least[j] = min(low, v)
    for k in prange(m):
        out = keep[k]
        bound = np.empty(1, dtype=first_rank.dtype)  # limits in the ranks' own type
        if floor[k] > 0:
            bound[0] = floor[k]
            limit = bound[0]
            own = np.int32(k)
            for node in range(nodes):
                others = second[node] if owner[node] == own else smallest[node]
                out[node] |= others < limit
        for c in range(classes):
            if counts[k, c] > floor[k] or (c == k and counts[k, c] > 0):
                bound[0] = counts[k, c]
                limit = bound[0]
                row = first_rank[c]
                for node in range(nodes):
                    out[node] |= row[node] < limit


def tangling_keep(first_rank, counts, keep):
    """Add tangling identification to every module's kept nodes, in place.

    Module m keeps a node when, for some class c, the node was active for one
    of the first ``counts[m, c]`` inputs in class c's order, i.e. when
    ``first_rank[c, node] < counts[m, c]``.

    Samples take nearly the same number of inputs from every class (at least
    one from each), so each module has a *floor*: the fewest it takes from any
    sampled class other than its own. A node whose smallest rank over the
    other sampled classes is below the floor is kept; that smallest rank comes
    from each node's two smallest ranks and the class of the first, computed
    once for all modules. Only the classes a module takes more than its floor
    from are then scanned row by row. Every step is a vectorised pass over
    the nodes: no per-node loop over modules and classes.

    Parameters
    ----------
    first_rank : uint8, uint16 or uint32 [C, nodes or more]
    counts : int64 [M, C]
    keep : bool [M, nodes]
        Kept nodes after concern identification; updated in place.
    """
    checks.tangling_keep(first_rank, counts, keep)
    _tangling_keep(first_rank, counts, keep)


# --------------------------------------------------------------------------
# backward dead-node propagation, for many modules at once ([M, ...] arrays)
# --------------------------------------------------------------------------


@jit(parallel=True)
def _window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w,
                       pad_top, pad_left, dilation_h, dilation_w):
    """The kernel of :func:`window_dead_inputs`, called after its checks."""
    m, oh, ow, c = dead_out.shape
    dead_in = np.empty((m, in_h, in_w, c), dtype=np.bool_)
    for task in prange(m * in_h):
        mod = task // in_h
        h = task % in_h
        for w in range(in_w):
            for ch in range(c):
                dead = True
                for dy in range(window_h):
                    num_y = h + pad_top - dy * dilation_h
                    if num_y < 0 or num_y % stride_h:
                        continue
                    i = num_y // stride_h
                    if i >= oh:
                        continue
                    for dx in range(window_w):
                        num_x = w + pad_left - dx * dilation_w
                        if num_x < 0 or num_x % stride_w:
                            continue
                        j = num_x // stride_w
                        if j < ow and not dead_out[mod, i, j, ch]:
                            dead = False
                            break
                    if not dead:
                        break
                dead_in[mod, h, w, ch] = dead
    return dead_in


def window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w,
                       pad_top, pad_left, dilation_h=1, dilation_w=1):
    """Input nodes of a sliding window whose every reader is dead, channel by channel.

    The paper's two-pass map in one: an input (h, w) reads forward into the
    outputs (i, j) whose window covers it (padding positions are not inputs);
    it is dead when all of those are dead (or none reads it). For pooling the
    channels are independent; a convolution passes ``dead_out`` reduced over
    its output channels and broadcasts the result over its input channels.

    Parameters
    ----------
    dead_out : bool [M, Oh, Ow, C]
        Dead outputs of M modules.
    in_h, in_w : int
        The input's height and width.
    window_h, window_w, stride_h, stride_w : int
    pad_top, pad_left : int
    dilation_h, dilation_w : int
        The window reads every ``dilation``-th row and column.

    Returns
    -------
    numpy.ndarray
        bool ``[M, in_h, in_w, C]``.
    """
    checks.window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                              dilation_h, dilation_w)
    return _window_dead_inputs(dead_out, in_h, in_w, window_h, window_w, stride_h, stride_w, pad_top, pad_left,
                               dilation_h, dilation_w)