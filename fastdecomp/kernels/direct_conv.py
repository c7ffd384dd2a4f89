"""Direct 2-D convolution, generated as LLVM IR per layer shape and compiled for this CPU.

BLAS-based convolution (im2col, then ``sgemm``) spends a third of its time
unfolding windows and runs poorly on the thin matrices of a CIFAR-style
ResNet (16 output channels). This kernel instead keeps a tile of
``pixels x channel_blocks`` output vectors in SIMD registers and streams the
input channels past them, one fused multiply-add per tap, so nothing is
unfolded and the weights of a tap are loaded once for the whole tile.

Numba cannot express the register tile (its auto-vectoriser keeps the
accumulators in memory), so the kernel is written in LLVM IR with explicit
vector types and compiled through llvmlite, the compiler Numba itself uses,
for the host CPU's features. Every shape constant is baked in, one compiled
function per layer shape (memoised). The function takes raw addresses and is
called through :mod:`ctypes`, which releases the GIL, so the engine's threads
run it concurrently.

Each output sums its terms in one fixed order (input channel, then kernel
row, then kernel column, then the bias), whatever the batch, the image's
position in it or the thread: values are bit-identical however the data is
batched.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["conv2d_forward", "ConvShape", "tiling", "conv_ir"]

ACCUMULATORS = 16  # vector registers kept for the output tile (AVX-512 has 32, AVX2 16)


@dataclass(frozen=True)
class ConvShape:
    """Everything the compiled kernel bakes in; ``padded_h/w`` are the input rows/columns it reads."""

    padded_h: int
    padded_w: int
    in_channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    out_h: int
    out_w: int
    out_channels: int
    rectify: bool = False


def tiling(out_channels, out_w):
    """Vector width, channel blocks per tile and pixels per tile for one layer.

    The vector width is the widest of 16, 8, 4, 2, 1 floats dividing the
    output channels; a tile holds at most :data:`ACCUMULATORS` vectors:
    ``group`` channel blocks (at most two) for each of ``pixels`` outputs of
    one row. A row whose width is not a multiple of ``pixels`` ends with one
    shorter tile.
    """
    width = next(v for v in (16, 8, 4, 2, 1) if out_channels % v == 0)
    blocks = out_channels // width
    group = 2 if blocks % 2 == 0 else 1
    pixels = min(out_w, ACCUMULATORS // group)
    return width, group, pixels


def conv_ir(shape: ConvShape, name="conv"):
    """LLVM IR of ``void name(i64 x, i64 kernel, i64 bias, i64 out, i64 images)``.

    ``x`` is an NHWC float32 input already padded to ``padded_h x padded_w``,
    ``kernel`` HWIO float32, ``out`` NHWC float32; all addresses of C-contiguous
    arrays. With ``shape.rectify`` the epilogue also applies ReLU.
    """
    s = shape
    width, group, pixels = tiling(s.out_channels, s.out_w)
    groups = s.out_channels // (width * group)
    full, rest = divmod(s.out_w, pixels)
    vec = f"<{width} x float>"
    fma = f"@llvm.fma.v{width}f32"
    ir = [f"declare {vec} {fma}({vec}, {vec}, {vec})", ""]
    for tile_pixels in sorted({pixels, rest} - {0}):
        ir += _tile_function(s, tile_pixels, group, width)
    ir += [
        f"define void @{name}(i64 %xa, i64 %wa, i64 %ba, i64 %oa, i64 %images) {{",
        "entry:",
        "  %x = inttoptr i64 %xa to ptr", "  %w = inttoptr i64 %wa to ptr",
        "  %bias = inttoptr i64 %ba to ptr", "  %o = inttoptr i64 %oa to ptr",
        "  %none = icmp eq i64 %images, 0",
        "  br i1 %none, label %exit, label %image",
        "image:",
        "  %b = phi i64 [0, %entry], [%b.next, %image.end]",
        f"  %x.image = mul i64 %b, {s.padded_h * s.padded_w * s.in_channels}",
        f"  %o.image = mul i64 %b, {s.out_h * s.out_w * s.out_channels}",
        "  br label %row",
        "row:",
        "  %i = phi i64 [0, %image], [%i.next, %row.end]",
        f"  %x.row.off = mul i64 %i, {s.stride_h * s.padded_w * s.in_channels}",
        "  %x.row = add i64 %x.image, %x.row.off",
        f"  %o.row.off = mul i64 %i, {s.out_w * s.out_channels}",
        "  %o.row = add i64 %o.image, %o.row.off",
        "  br label %group",
        "group:",
        "  %g = phi i64 [0, %row], [%g.next, %group.end]",
        f"  %co = mul i64 %g, {width * group}",
    ]
    ir += _tile_calls(s, pixels, full, rest)
    ir += [
        "  %g.next = add i64 %g, 1",
        f"  %g.done = icmp eq i64 %g.next, {groups}",
        "  br i1 %g.done, label %row.end, label %group",
        "row.end:",
        "  %i.next = add i64 %i, 1",
        f"  %i.done = icmp eq i64 %i.next, {s.out_h}",
        "  br i1 %i.done, label %image.end, label %row",
        "image.end:",
        "  %b.next = add i64 %b, 1",
        "  %b.done = icmp eq i64 %b.next, %images",
        "  br i1 %b.done, label %exit, label %image",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(ir)


def _tile_calls(s, pixels, full, rest):
    """Body of the ``group`` block: the row's full tiles in a loop, then the short one."""
    lines = [
        "  br label %tile",
        "tile:",
        "  %t = phi i64 [0, %group], [%t.next, %tile]",
        f"  %x.tile.off = mul i64 %t, {pixels * s.stride_w * s.in_channels}",
        "  %x.tile = add i64 %x.row, %x.tile.off",
        f"  %o.tile.off = mul i64 %t, {pixels * s.out_channels}",
        "  %o.tile0 = add i64 %o.row, %o.tile.off",
        "  %o.tile = add i64 %o.tile0, %co",
        f"  call void @tile{pixels}(ptr %x, ptr %w, ptr %bias, ptr %o, i64 %x.tile, i64 %o.tile, i64 %co)",
        "  %t.next = add i64 %t, 1",
        f"  %t.done = icmp eq i64 %t.next, {full}",
        "  br i1 %t.done, label %tile.rest, label %tile",
        "tile.rest:",
    ]
    if rest:
        lines += [
            f"  %x.rest = add i64 %x.row, {full * pixels * s.stride_w * s.in_channels}",
            f"  %o.rest0 = add i64 %o.row, {full * pixels * s.out_channels}",
            "  %o.rest = add i64 %o.rest0, %co",
            f"  call void @tile{rest}(ptr %x, ptr %w, ptr %bias, ptr %o, i64 %x.rest, i64 %o.rest, i64 %co)",
        ]
    lines.append("  br label %group.end")
    lines.append("group.end:")
    return lines


def _tile_function(s, pixels, group, width):
    """``tile<pixels>``: ``pixels`` outputs of one row times ``group`` channel blocks, in registers."""
    vec = f"<{width} x float>"
    fma = f"@llvm.fma.v{width}f32"
    taps = [(dy, dx) for dy in range(s.kernel_h) for dx in range(s.kernel_w)]
    last = len(taps) - 1
    lines = [
        f"define internal void @tile{pixels}(ptr %x, ptr %w, ptr %bias, ptr %o, i64 %xt, i64 %ot, i64 %co)"
        " alwaysinline {",
        "entry:",
        "  br label %channel",
        "channel:",
        "  %c = phi i64 [0, %entry], [%c.next, %channel]",
    ]
    for p in range(pixels):
        for q in range(group):
            lines.append(f"  %acc.{p}.{q} = phi {vec} [zeroinitializer, %entry], [%s.{p}.{q}.{last}, %channel]")
    lines += ["  %xc = add i64 %xt, %c", f"  %wc0 = mul i64 %c, {s.out_channels}", "  %wc = add i64 %wc0, %co"]
    for t, (dy, dx) in enumerate(taps):
        for q in range(group):
            lines += _load_vector(f"wv.{t}.{q}", "%w", "%wc", t * s.in_channels * s.out_channels + q * width, vec)
        for p in range(pixels):
            offset = (dy * s.padded_w + p * s.stride_w + dx) * s.in_channels
            lines += [
                f"  %xi.{t}.{p} = add i64 %xc, {offset}",
                f"  %xp.{t}.{p} = getelementptr float, ptr %x, i64 %xi.{t}.{p}",
                f"  %xs.{t}.{p} = load float, ptr %xp.{t}.{p}, align 4",
                f"  %xe.{t}.{p} = insertelement {vec} poison, float %xs.{t}.{p}, i32 0",
                f"  %xv.{t}.{p} = shufflevector {vec} %xe.{t}.{p}, {vec} poison, <{width} x i32> zeroinitializer",
            ]
            for q in range(group):
                previous = f"%acc.{p}.{q}" if t == 0 else f"%s.{p}.{q}.{t - 1}"
                lines.append(f"  %s.{p}.{q}.{t} = call {vec} {fma}({vec} %xv.{t}.{p}, {vec} %wv.{t}.{q}, {vec} {previous})")
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
            lines.append(f"  %r.{p}.{q} = fadd {vec} %s.{p}.{q}.{last}, %bv.{q}")
            result = f"%r.{p}.{q}"
            if s.rectify:
                lines += [f"  %pos.{p}.{q} = fcmp ogt {vec} %r.{p}.{q}, zeroinitializer",
                          f"  %relu.{p}.{q} = select <{width} x i1> %pos.{p}.{q}, {vec} %r.{p}.{q}, {vec} zeroinitializer"]
                result = f"%relu.{p}.{q}"
            lines += [
                f"  %oi.{p}.{q} = add i64 %ot, {p * s.out_channels + q * width}",
                f"  %op.{p}.{q} = getelementptr float, ptr %o, i64 %oi.{p}.{q}",
                f"  store {vec} {result}, ptr %op.{p}.{q}, align 4",
            ]
    lines += ["  ret void", "}", ""]
    return lines


def _load_vector(name, pointer, index, offset, vec):
    """IR loading ``vec`` from ``pointer[index + offset]`` into ``%name``."""
    return [f"  %{name}.i = add i64 {index}, {offset}",
            f"  %{name}.p = getelementptr float, ptr {pointer}, i64 %{name}.i",
            f"  %{name} = load {vec}, ptr %{name}.p, align 4"]


_COMPILE_LOCK = threading.Lock()
_ENGINES = []  # compiled code lives as long as its execution engine
_SIGNATURE = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 5)


@lru_cache(maxsize=None)
def _target_machine():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(), opt=3)


@lru_cache(maxsize=None)
def compiled(shape: ConvShape):
    """The compiled kernel for ``shape``, as a ctypes function (compiled once per process)."""
    import llvmlite.binding as llvm

    with _COMPILE_LOCK:
        machine = _target_machine()
        module = llvm.parse_assembly(conv_ir(shape))
        module.verify()
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        _ENGINES.append(engine)
        return _SIGNATURE(engine.get_function_address("conv"))


_BUFFERS = threading.local()


def _padded_buffer(n, shape, pad_top, pad_left, rows, cols):
    """This thread's zero-bordered input buffer for ``shape``, at least ``n`` images long.

    Only the interior is ever written, so the border stays zero from one call
    to the next and the buffer is not cleared (nor its pages faulted in) again.
    """
    cache = _BUFFERS.__dict__.setdefault("by_geometry", {})
    key = (shape.padded_h, shape.padded_w, shape.in_channels, pad_top, pad_left, rows, cols)
    buffer = cache.get(key)
    if buffer is None or len(buffer) < n:
        buffer = cache[key] = np.zeros((n, shape.padded_h, shape.padded_w, shape.in_channels), np.float32)
    return buffer[:n]


def conv2d_forward(x, kernel, bias, stride_h, stride_w, pad_top, pad_left, out, rectify=False):
    """2-D convolution ``out = conv(x, kernel) + bias`` (NHWC input, HWIO kernel).

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
    """
    n, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    oh, ow = out.shape[1], out.shape[2]
    shape = ConvShape((oh - 1) * stride_h + kh, (ow - 1) * stride_w + kw, ci, kh, kw,
                      stride_h, stride_w, oh, ow, co, bool(rectify))
    rows, cols = min(h, shape.padded_h - pad_top), min(w, shape.padded_w - pad_left)
    if pad_top == pad_left == 0 and (rows, cols) == (h, w) == (shape.padded_h, shape.padded_w):
        padded = np.ascontiguousarray(x, dtype=np.float32)
    else:
        padded = _padded_buffer(n, shape, pad_top, pad_left, rows, cols)
        padded[:, pad_top:pad_top + rows, pad_left:pad_left + cols] = x[:, :rows, :cols]
    kernel = np.ascontiguousarray(kernel, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if not (out.flags.c_contiguous and out.dtype == np.float32):
        raise ValueError("conv2d_forward writes into a C-contiguous float32 array")
    compiled(shape)(padded.ctypes.data, kernel.ctypes.data, bias.ctypes.data, out.ctypes.data, n)
