"""What the benchmarks report about the CPU: the target kernels are generated for, and its FMA peak.

Two peaks are given per core:

- the *estimate* the issue asks for: vector lanes x FMA units x 2 flops x
  clock, with the clock from ``/proc/cpuinfo`` (the nominal one; a core that
  boosts above it can exceed the estimate);
- a *measured* peak: a generated loop of independent vector FMAs, enough of
  them to cover the FMA latency, with no memory traffic, compiled for the same
  target as the engine. Fractions of peak are given against both.
"""

import re
import time
from functools import lru_cache

import numpy as np

from fastdecomp.kernels import target as targets
from fastdecomp.kernels.llvm_jit import compile_ir, counted_loop


def nominal_ghz():
    """The clock ``/proc/cpuinfo`` reports, in GHz (``None`` where it reports none)."""
    try:
        found = re.findall(r"cpu MHz\s*:\s*([\d.]+)", open("/proc/cpuinfo").read())
    except OSError:
        return None
    return float(found[0]) / 1000 if found else None


def _peak_ir(width, chains):
    vec = f"<{width} x float>"
    body = []
    for c in range(chains):
        body.append(f"  %a{c} = load {vec}, ptr %acc{c}")
        body.append(f"  %n{c} = call {vec} @llvm.fma.v{width}f32({vec} %a{c}, {vec} %m, {vec} %k)")
        body.append(f"  store {vec} %n{c}, ptr %acc{c}")
    lines = [f"declare {vec} @llvm.fma.v{width}f32({vec}, {vec}, {vec})",
             "define void @peak(i64 %oa, i64 %iterations, i64 %u2, i64 %u3, i64 %u4, i64 %u5, i64 %u6) {",
             "entry:", "  %o = inttoptr i64 %oa to ptr", "  %i.var = alloca i64",
             f"  %m = insertelement {vec} zeroinitializer, float 0x3FEFFFFFE0000000, i32 0",
             f"  %k = insertelement {vec} zeroinitializer, float 0x3F50624DE0000000, i32 0"]
    lines += [f"  %acc{c} = alloca {vec}" for c in range(chains)]
    lines += [f"  store {vec} zeroinitializer, ptr %acc{c}" for c in range(chains)]
    lines += counted_loop("i", 0, "%iterations", body)
    for c in range(chains):
        lines += [f"  %r{c} = load {vec}, ptr %acc{c}", f"  %p{c} = getelementptr {vec}, ptr %o, i64 {c}",
                  f"  store {vec} %r{c}, ptr %p{c}, align 4"]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


@lru_cache(maxsize=None)
def measured_peak_gflops(iterations=20_000_000):
    """One core's measured float32 FMA throughput on the current target, in GFLOP/s."""
    target = targets.current()
    width = target.vector_floats
    chains = min(target.isa.registers - 2, 12)
    kernel = compile_ir(_peak_ir(width, chains), "peak", 7)
    out = np.zeros((chains, width), np.float32)
    kernel(out.ctypes.data, 1000, 0, 0, 0, 0, 0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        kernel(out.ctypes.data, iterations, 0, 0, 0, 0, 0)
        best = min(best, time.perf_counter() - start)
    return iterations * chains * width * 2 / best / 1e9


def describe():
    """``{"target", "isa", "estimated_peak", "measured_peak"}``: GFLOP/s per core."""
    target = targets.current()
    ghz = nominal_ghz()
    return {"target": target.describe(), "isa": target.isa.name,
            "estimated_peak": target.peak_gflops(ghz) if ghz else float("nan"),
            "measured_peak": measured_peak_gflops(), "ghz": ghz}


def header():
    """One line for a benchmark's output."""
    d = describe()
    return (f"target {d['target']}; FMA peak per core: estimated {d['estimated_peak']:.0f} GFLOP/s "
            f"(lanes x 2 FMA units x 2 x {d['ghz']:.2f} GHz nominal), measured {d['measured_peak']:.0f} GFLOP/s")
