"""Direct 2-D convolution, generated as LLVM IR per layer shape and compiled for this CPU.

BLAS-based convolution (im2col, then ``sgemm``) spends a third of its time
unfolding windows and runs poorly on the thin matrices of a CIFAR-style
ResNet (16 output channels). This kernel instead keeps a tile of
``pixels x channel_blocks`` output vectors in SIMD registers and streams the
input channels past them, one fused multiply-add per tap, so nothing is
unfolded and the weights of a tap are loaded once for the whole tile.

Padding is never materialised: rows and tiles at the border get their own
tile functions in which the taps that fall on padding are left out, and the
kernel reads the caller's array as it is. Values are those of a zero-padded
input bit for bit: a sum starts at +0.0, so under round-to-nearest it is never
-0.0, and adding ``0 * w`` (``w`` finite: the import refuses other weights)
leaves such a sum unchanged.

Numba cannot express the register tile (its auto-vectoriser keeps the
accumulators in memory), so the kernel is written in LLVM IR with explicit
vector types and compiled for the target CPU (:mod:`.llvm_jit`). Every shape
constant is baked in, one compiled function per layer shape and tiling
(memoised).

The tiling fits the target's register file (:mod:`.target`): a tile of
accumulators that does not fit spills, and a spilling tile runs several
times slower (16 accumulators of 16 floats fill AVX-512's 32 registers
but need 32 of AVX2's 16). :func:`candidates` lists the tilings that fit;
:mod:`.tuning` times them on the real shape the first time it is seen and
keeps the fastest, or, with ``FASTDECOMP_TUNE=off``, :func:`rule_tiling`
picks one without measuring.

Each output sums its terms in one fixed order (input channel, then kernel
row, then kernel column, then the bias, then the residual), whatever the
batch, the image's position in it or the thread: values are bit-identical
however the data is batched.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np


from . import target as targets
from .llvm_jit import compile_ir, counted_loop

__all__ = ["ConvShape", "Tiling", "candidates", "rule_tiling", "conv_ir", "compiled", "packs_activity"]


EPILOGUE = ("rectify", "residual", "activity", "cap")  # the ConvShape fields that are not geometry


@dataclass(frozen=True)
class ConvShape:
    """Everything the compiled kernel bakes in.

    Parameters
    ----------
    in_h, in_w, in_channels : int
        The input's height, width and channels.
    kernel_h, kernel_w : int
    stride_h, stride_w : int
    pad_top, pad_left : int
        Padding rows above and columns left of the input (the rest follows from the output's size).
    out_h, out_w, out_channels : int
    rectify, residual, activity : bool
        The epilogue: ReLU, a residual added, packed activity bits written.
    cap : float, optional
        With ``rectify``: the ReLU's upper bound (ReLU6), baked in as a constant.
    """

    in_h: int
    in_w: int
    in_channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    out_h: int
    out_w: int
    out_channels: int
    rectify: bool = False
    residual: bool = False
    activity: bool = False
    cap: float | None = None

    @property
    def geometry(self):
        """The shape without its epilogue: what a tiling is chosen for."""
        return ConvShape(*[getattr(self, f.name) for f in fields(self) if f.name not in EPILOGUE])

    @property
    def flops(self):
        """Floating-point operations per image (two per multiply-add)."""
        return 2 * self.out_h * self.out_w * self.out_channels * self.kernel_h * self.kernel_w * self.in_channels


@dataclass(frozen=True, order=True)
class Tiling:
    """How the output is cut into register tiles.

    Parameters
    ----------
    width : int
        Floats per vector (a vector wider than the target's registers takes
        several of them).
    group : int
        Channel blocks of ``width`` per tile.
    pixels : int
        Output pixels of one row per tile; a row whose width is not a
        multiple of it ends with one shorter tile.
    """

    width: int
    group: int
    pixels: int

    def registers(self, target):
        """Vector registers the tile needs on ``target``: accumulators, weights and the broadcast input."""
        per_vector = math.ceil(self.width / target.vector_floats)
        return (self.pixels + 1) * self.group * per_vector + 1


def packs_activity(out_channels):
    """Whether the epilogue can pack the output's ``> 0`` bits (whole bytes per vector)."""
    return out_channels % 8 == 0


def _widths(out_channels, target):
    """Vector widths worth trying: 8 or 16 floats when the channels allow (the packed
    activity bits need whole bytes), at most two registers wide; else the widest
    power of two dividing the channels that fits one register."""
    if packs_activity(out_channels):
        return [w for w in (16, 8) if out_channels % w == 0 and w <= max(8, 2 * target.vector_floats)]
    return [next(w for w in (8, 4, 2, 1) if out_channels % w == 0 and w <= target.vector_floats)]


ACCUMULATOR_CAP = 16  # accumulator registers per tile beyond which no ResNet shape ran faster (AVX-512, AVX2)


def _pixel_counts(width, group, shape, target):
    """``(capped, options)``: the pixels per tile that keep the accumulators within
    :data:`ACCUMULATOR_CAP` registers, and the counts worth timing (down to half of
    it, and the most the register file holds)."""
    per_vector = math.ceil(width / target.vector_floats)
    most = (target.isa.registers - 1) // (group * per_vector) - 1
    capped = min(most, ACCUMULATOR_CAP // (group * per_vector))
    options = {min(p, shape.out_w) for p in (capped, most, capped * 3 // 4, capped // 2) if p >= 1}
    return min(capped, shape.out_w), sorted(options, reverse=True)


def candidates(shape, target=None):
    """Every tiling worth timing for ``shape`` on ``target`` (default: the current target).

    For each vector width and channel grouping, the pixel counts whose tile fits
    the register file (:func:`_pixel_counts`). The first is :func:`rule_tiling`'s.

    Parameters
    ----------
    shape : ConvShape
    target : fastdecomp.kernels.target.Target, optional

    Returns
    -------
    list of Tiling
    """
    target = target or targets.current()
    rule = rule_tiling(shape, target)
    found = [rule]
    for width in _widths(shape.out_channels, target):
        for group in (1, 2, 4):
            if (shape.out_channels // width) % group == 0:
                found += [Tiling(width, group, pixels) for pixels in _pixel_counts(width, group, shape, target)[1]
                          if pixels >= 1]
    return list(dict.fromkeys(found))


def rule_tiling(shape, target=None):
    """The tiling chosen without measuring: the widest vector that fits one register
    (else the narrowest offered), two channel blocks when they divide evenly, and as
    many pixels as :data:`ACCUMULATOR_CAP` allows.

    Parameters
    ----------
    shape : ConvShape
    target : fastdecomp.kernels.target.Target, optional
        Default: the current target.

    Returns
    -------
    Tiling
    """
    target = target or targets.current()
    widths = _widths(shape.out_channels, target)
    fitting = [w for w in widths if w <= target.vector_floats]
    width = max(fitting) if fitting else min(widths)
    group = 2 if (shape.out_channels // width) % 2 == 0 else 1
    pixels, _ = _pixel_counts(width, group, shape, target)
    return Tiling(width, group, max(1, pixels))


def _runs(keys):
    """``[(start, stop, key)]``: maximal runs of equal consecutive ``keys``."""
    runs = []
    for index, key in enumerate(keys):
        if runs and runs[-1][2] == key:
            runs[-1][1] = index + 1
        else:
            runs.append([index, index + 1, key])
    return [tuple(run) for run in runs]


def _border_classes(s, pixels):
    """Rows and tiles of a layer, grouped by which taps fall inside the input.

    Returns ``(row_runs, tile_runs)``: ``row_runs`` are ``(first, stop, rows)``
    with ``rows`` the kernel rows inside the input for those output rows;
    ``tile_runs`` are ``(first, stop, (size, taps))`` over the tiles of a row
    (the last may be shorter), ``taps`` the ``(pixel, kernel column)`` pairs
    inside the input.
    """
    rows = [tuple(dy for dy in range(s.kernel_h) if 0 <= i * s.stride_h - s.pad_top + dy < s.in_h)
            for i in range(s.out_h)]
    starts = range(0, s.out_w, pixels)
    tiles = []
    for start in starts:
        size = min(pixels, s.out_w - start)
        tiles.append((size, frozenset(
            (p, dx) for p in range(size) for dx in range(s.kernel_w)
            if 0 <= (start + p) * s.stride_w - s.pad_left + dx < s.in_w)))
    return _runs(rows), _runs(tiles)


def conv_ir(shape: ConvShape, tiling: Tiling, name="conv"):
    """LLVM IR of ``void name(i64 x, i64 kernel, i64 bias, i64 out, i64 images, i64 residual, i64 activity)``.

    ``x`` is an NHWC float32 input (unpadded), ``kernel`` HWIO float32,
    ``out`` and ``residual`` NHWC float32 of the output's shape; all addresses
    of C-contiguous arrays. With ``shape.residual`` the epilogue adds
    ``residual`` (which may be ``out`` itself), then with ``shape.rectify``
    applies ReLU (capped at ``shape.cap`` when it is set). With ``shape.activity`` it also writes ``activity``, uint8
    ``[images, nodes / 8]``: the output's ``> 0`` bits packed as
    ``numpy.packbits`` does (needs a vector width of 8 or 16). ``tiling``
    decides the speed, never the values.

    Parameters
    ----------
    shape : ConvShape
    tiling : Tiling
    name : str
        The function's symbol.

    Returns
    -------
    str
        The module's IR text.
    """
    s = shape
    width, group, pixels = tiling.width, tiling.group, tiling.pixels
    groups = s.out_channels // (width * group)
    row_runs, tile_runs = _border_classes(s, pixels)
    vec = f"<{width} x float>"
    ir = [f"declare {vec} @llvm.fma.v{width}f32({vec}, {vec}, {vec})", ""]
    functions = {}
    for _, _, rows in row_runs:
        for _, _, (size, taps) in tile_runs:
            if (size, rows, taps) not in functions:
                functions[size, rows, taps] = f"@tile{len(functions)}"
                ir += _tile_function(s, functions[size, rows, taps], size, group, width, rows, taps)
    loops = ["b", "g"] + [f"i{r}" for r in range(len(row_runs))] + [f"t{r}.{t}" for r in range(len(row_runs))
                                                                     for t in range(len(tile_runs))]
    body = [f"define void @{name}(i64 %xa, i64 %wa, i64 %ba, i64 %oa, i64 %images, i64 %ra, i64 %pa) {{",
            "entry:", "  %x = inttoptr i64 %xa to ptr", "  %w = inttoptr i64 %wa to ptr",
            "  %bias = inttoptr i64 %ba to ptr", "  %o = inttoptr i64 %oa to ptr",
            "  %res = inttoptr i64 %ra to ptr", "  %bits = inttoptr i64 %pa to ptr"]
    body += [f"  %{loop}.var = alloca i64" for loop in loops]

    def tiles(r):
        lines = []
        for t, (first, stop, key) in enumerate(tile_runs):
            loop = f"t{r}.{t}"
            lines += counted_loop(loop, first, stop, [
                f"  %{loop}.px = mul i64 %{loop}, {pixels}",
                f"  %{loop}.xcol = mul i64 %{loop}.px, {s.stride_w}",
                f"  %{loop}.xoff0 = sub i64 %{loop}.xcol, {s.pad_left}",
                f"  %{loop}.xoff = mul i64 %{loop}.xoff0, {s.in_channels}",
                f"  %{loop}.xt = add i64 %i{r}.xrow, %{loop}.xoff",
                f"  %{loop}.ooff = mul i64 %{loop}.px, {s.out_channels}",
                f"  %{loop}.ot0 = add i64 %i{r}.orow, %{loop}.ooff",
                f"  %{loop}.ot = add i64 %{loop}.ot0, %co",
                f"  call void {functions[key[0], row_runs[r][2], key[1]]}(ptr %x, ptr %w, ptr %bias, ptr %o, "
                f"ptr %res, ptr %bits, i64 %{loop}.xt, i64 %{loop}.ot, i64 %co)",
            ])
        return lines

    rows_code = []
    for r, (first, stop, _) in enumerate(row_runs):
        rows_code += counted_loop(f"i{r}", first, stop, [
            f"  %i{r}.y = mul i64 %i{r}, {s.stride_h}",
            f"  %i{r}.y0 = sub i64 %i{r}.y, {s.pad_top}",
            f"  %i{r}.xoff = mul i64 %i{r}.y0, {s.in_w * s.in_channels}",
            f"  %i{r}.xrow = add i64 %x.image, %i{r}.xoff",
            f"  %i{r}.ooff = mul i64 %i{r}, {s.out_w * s.out_channels}",
            f"  %i{r}.orow = add i64 %o.image, %i{r}.ooff",
        ] + tiles(r))
    body += counted_loop("b", 0, "%images", [
        f"  %x.image = mul i64 %b, {s.in_h * s.in_w * s.in_channels}",
        f"  %o.image = mul i64 %b, {s.out_h * s.out_w * s.out_channels}",
    ] + counted_loop("g", 0, groups, [f"  %co = mul i64 %g, {width * group}"] + rows_code))
    body += ["  ret void", "}"]
    return "\n".join(ir + body)


def _tile_function(s, name, pixels, group, width, rows, taps):
    """``pixels`` outputs of one row times ``group`` channel blocks, in registers.

    Only kernel rows ``rows`` and ``(pixel, kernel column)`` pairs ``taps``
    are inside the input; the others read padding and are left out.
    """
    vec = f"<{width} x float>"
    fma = f"@llvm.fma.v{width}f32"
    lines = [
        f"define internal void {name}(ptr %x, ptr %w, ptr %bias, ptr %o, ptr %res, ptr %bits, i64 %xt, i64 %ot, "
        "i64 %co)"
        " alwaysinline {",
        "entry:",
        "  br label %channel",
        "channel:",
        "  %c = phi i64 [0, %entry], [%c.next, %channel]",
    ]
    body = []
    current = {(p, q): f"%acc.{p}.{q}" for p in range(pixels) for q in range(group)}
    body += ["  %xc = add i64 %xt, %c", f"  %wc0 = mul i64 %c, {s.out_channels}", "  %wc = add i64 %wc0, %co"]
    for dy in rows:
        for dx in range(s.kernel_w):
            inside = [p for p in range(pixels) if (p, dx) in taps]
            if not inside:
                continue
            t = dy * s.kernel_w + dx
            for q in range(group):
                body += _load_vector(f"wv.{t}.{q}", "%w", "%wc", t * s.in_channels * s.out_channels + q * width, vec)
            for p in inside:
                offset = (dy * s.in_w + p * s.stride_w + dx) * s.in_channels
                body += [
                    f"  %xi.{t}.{p} = add i64 %xc, {offset}",
                    f"  %xp.{t}.{p} = getelementptr float, ptr %x, i64 %xi.{t}.{p}",
                    f"  %xs.{t}.{p} = load float, ptr %xp.{t}.{p}, align 4",
                    f"  %xe.{t}.{p} = insertelement {vec} poison, float %xs.{t}.{p}, i32 0",
                    f"  %xv.{t}.{p} = shufflevector {vec} %xe.{t}.{p}, {vec} poison, <{width} x i32> zeroinitializer",
                ]
                for q in range(group):
                    body.append(f"  %s.{p}.{q}.{t} = call {vec} {fma}({vec} %xv.{t}.{p}, {vec} %wv.{t}.{q}, "
                                f"{vec} {current[p, q]})")
                    current[p, q] = f"%s.{p}.{q}.{t}"
    for p in range(pixels):
        for q in range(group):
            lines.append(f"  %acc.{p}.{q} = phi {vec} [zeroinitializer, %entry], [{current[p, q]}, %channel]")
    lines += body
    lines += [
        "  %c.next = add i64 %c, 1",
        f"  %c.done = icmp eq i64 %c.next, {s.in_channels}",
        "  br i1 %c.done, label %store, label %channel",
        "store:",
    ]
    for q in range(group):
        lines += _load_vector(f"bv.{q}", "%bias", "%co", q * width, vec)
    for p in range(pixels):
        for q in range(group):
            lines.append(f"  %r.{p}.{q} = fadd {vec} {current[p, q]}, %bv.{q}")
            result = f"%r.{p}.{q}"
            lines.append(f"  %oi.{p}.{q} = add i64 %ot, {p * s.out_channels + q * width}")
            if s.residual:
                lines += _load_vector(f"rv.{p}.{q}", "%res", f"%oi.{p}.{q}", 0, vec)
                lines.append(f"  %sum.{p}.{q} = fadd {vec} {result}, %rv.{p}.{q}")
                result = f"%sum.{p}.{q}"
            if s.activity:
                lines += _store_bits(f"{p}.{q}", result, f"%oi.{p}.{q}", width)
            if s.rectify:  # ordered compares: a NaN is kept, as numpy.maximum(x, 0) keeps it
                lines += [f"  %neg.{p}.{q} = fcmp ole {vec} {result}, zeroinitializer",
                          f"  %relu.{p}.{q} = select <{width} x i1> %neg.{p}.{q}, {vec} zeroinitializer, "
                          f"{vec} {result}"]
                result = f"%relu.{p}.{q}"
            if s.rectify and s.cap is not None:
                lines += [f"  %high.{p}.{q} = fcmp ogt {vec} {result}, {_splat(s.cap, width)}",
                          f"  %cap.{p}.{q} = select <{width} x i1> %high.{p}.{q}, {vec} {_splat(s.cap, width)}, "
                          f"{vec} {result}"]
                result = f"%cap.{p}.{q}"
            lines += [
                f"  %op.{p}.{q} = getelementptr float, ptr %o, i64 %oi.{p}.{q}",
                f"  store {vec} {result}, ptr %op.{p}.{q}, align 4",
            ]
    lines += ["  ret void", "}", ""]
    return lines


def _splat(value, width):
    """An LLVM vector constant of ``width`` copies of the float32 ``value`` (exact: as a double's hex)."""
    bits = struct.unpack("<Q", struct.pack("<d", float(np.float32(value))))[0]
    return "<" + ", ".join([f"float 0x{bits:016X}"] * width) + ">"


def _store_bits(tag, values, index, width):
    """IR storing ``values > 0`` as ``width / 8`` bytes of packbits order at bit ``index``.

    The lanes are reversed within each group of 8 before the comparison, so
    that the mask's bits come out in packbits order (first lane in a byte's
    top bit) with no bit reversal after it.
    """
    vec = f"<{width} x float>"
    order = ", ".join(f"i32 {group + 7 - lane}" for group in range(0, width, 8) for lane in range(8))
    return [f"  %perm.{tag} = shufflevector {vec} {values}, {vec} poison, <{width} x i32> <{order}>",
            f"  %on.{tag} = fcmp ogt {vec} %perm.{tag}, zeroinitializer",
            f"  %mask.{tag} = bitcast <{width} x i1> %on.{tag} to i{width}",
            f"  %byte.{tag} = lshr exact i64 {index}, 3",
            f"  %bp.{tag} = getelementptr i8, ptr %bits, i64 %byte.{tag}",
            f"  store i{width} %mask.{tag}, ptr %bp.{tag}, align 1"]


def _load_vector(name, pointer, index, offset, vec):
    """IR loading ``vec`` from ``pointer[index + offset]`` into ``%name``."""
    return [f"  %{name}.i = add i64 {index}, {offset}",
            f"  %{name}.p = getelementptr float, ptr {pointer}, i64 %{name}.i",
            f"  %{name} = load {vec}, ptr %{name}.p, align 4"]


@lru_cache(maxsize=None)
def compiled(shape: ConvShape, tiling: Tiling, target):
    """The compiled kernel for ``shape`` and ``tiling`` on ``target``, as a ctypes function
    (compiled once per process)."""
    return compile_ir(conv_ir(shape, tiling), "conv", 7, target)
