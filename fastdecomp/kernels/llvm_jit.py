"""Compiling LLVM IR text for this CPU through llvmlite (the compiler Numba itself uses).

The kernels that Numba cannot express well (a register tile of SIMD
accumulators, vector compares turned into bit masks) are written as LLVM IR
text, compiled here once per process and called through :mod:`ctypes`, which
releases the GIL, so the engine's threads run them concurrently.
"""

import ctypes
import threading
from functools import lru_cache

__all__ = ["compile_ir", "counted_loop"]

_LOCK = threading.Lock()
_ENGINES = []  # compiled code lives as long as its execution engine


@lru_cache(maxsize=None)
def _target_machine():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(), opt=3)


def compile_ir(ir, name, arguments):
    """Function ``name`` of the IR module ``ir``, optimised for the host CPU.

    Returns a ctypes function of ``arguments`` 64-bit integer arguments
    (addresses and counts) returning nothing.
    """
    import llvmlite.binding as llvm

    with _LOCK:
        machine = _target_machine()
        module = llvm.parse_assembly(ir)
        module.verify()
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        _ENGINES.append(engine)
        return ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * arguments)(engine.get_function_address(name))


def counted_loop(loop, first, stop, body):
    """IR of ``for (%loop = first; %loop < stop; ++%loop) body``, its counter kept in
    ``%loop.var`` (an ``alloca`` the caller declares; the optimiser makes it a register)."""
    return [f"  store i64 {first}, ptr %{loop}.var", f"  br label %{loop}.test", f"{loop}.test:",
            f"  %{loop} = load i64, ptr %{loop}.var", f"  %{loop}.more = icmp slt i64 %{loop}, {stop}",
            f"  br i1 %{loop}.more, label %{loop}.body, label %{loop}.end", f"{loop}.body:",
            *body,
            f"  %{loop}.next = add i64 %{loop}, 1", f"  store i64 %{loop}.next, ptr %{loop}.var",
            f"  br label %{loop}.test", f"{loop}.end:"]
