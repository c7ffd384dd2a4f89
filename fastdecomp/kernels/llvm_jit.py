"""Compiling LLVM IR text for the target CPU through llvmlite (the compiler Numba itself uses).

The kernels that Numba cannot express well (a register tile of SIMD
accumulators, vector compares turned into bit masks) are written as LLVM IR
text, compiled here and called through :mod:`ctypes`, which releases the GIL,
so the engine's threads run them concurrently.

Compiled machine code is kept on disk, as Numba's ``cache=True`` keeps its
own: a ResNet-56 needs two dozen kernel variants, half a second each to
optimise. The cache lives in ``FASTDECOMP_CACHE_DIR`` (default
``$XDG_CACHE_HOME/fastdecomp`` or ``~/.cache/fastdecomp``), one file per
kernel, keyed by the IR text, the target CPU's name and features
(:mod:`.target`), and the llvmlite version. An entry is run only when its
HMAC under this user's secret ties its code to its key (:mod:`.trusted_cache`):
any other file is compiled again and replaced; a folder other users could
write is not used at all; one that cannot be written just means no caching.
"""

import ctypes
import hashlib
import threading
from functools import lru_cache

from .. import config
from ..errors import TargetError
from ..storage import atomic_file
from . import target as targets
from . import trusted_cache

__all__ = ["compile_ir", "object_code", "assembly", "counted_loop"]

_LOCK = threading.RLock()  # LLVM's global context is not thread-safe
_ENGINES = []  # loaded code lives as long as its execution engine


@lru_cache(maxsize=None)
def _machine(target):
    """llvmlite's target machine for ``target``, and the key its compiled code is stored under."""
    import llvmlite
    import llvmlite.binding as llvm

    machine = llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3)
    return machine, f"{target.key}|{llvmlite.__version__}"


def object_code(ir, target=None):
    """Machine code of ``ir`` for ``target`` (default: :func:`.target.current`), from the cache or
    compiled (and then cached). Works for targets this machine cannot execute.

    Parameters
    ----------
    ir : str
        LLVM IR text of one module.
    target : fastdecomp.kernels.target.Target, optional

    Returns
    -------
    bytes
        An object file.
    """
    machine, target_key = _machine(target or targets.current())
    key = hashlib.sha256(f"{target_key}\n{ir}".encode()).hexdigest()
    folder = config.cache_dir()
    secret = trusted_cache.secret(folder)
    path = folder / f"{key}.o"
    if secret is not None:
        try:
            code = trusted_cache.unseal(key, path.read_bytes(), secret)
            if code is not None:
                return code
        except OSError:
            pass
    with _LOCK:
        code = machine.emit_object(_optimised(ir, machine))
    if secret is not None:
        try:
            atomic_file(path, trusted_cache.seal(key, code, secret))
        except OSError:
            pass  # an unwritable cache folder only means no caching
    return code


def _optimised(ir, machine):
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(ir)
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    return module


def assembly(ir, target=None):
    """The assembly text ``ir`` compiles to for ``target`` (default: the current one), for inspection.

    Parameters
    ----------
    ir : str
    target : fastdecomp.kernels.target.Target, optional
    """
    machine, _ = _machine(target or targets.current())
    with _LOCK:
        return machine.emit_assembly(_optimised(ir, machine))


def compile_ir(ir, name, arguments, target=None):
    """Function ``name`` of the IR module ``ir``, optimised for ``target`` (default: the
    current one, :func:`.target.current`) and loaded.

    Parameters
    ----------
    ir : str
        LLVM IR text of one module.
    name : str
        The function to load.
    arguments : int
        How many 64-bit integer arguments it takes.
    target : fastdecomp.kernels.target.Target, optional

    Returns
    -------
    ctypes function
        Of ``arguments`` 64-bit integer arguments (addresses and counts), returning nothing.

    Raises
    ------
    TargetError
        When the target CPU is one this machine cannot execute.
    """
    import llvmlite.binding as llvm

    target = target or targets.current()
    target.check_runnable()
    with _LOCK:
        code = object_code(ir, target)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _machine(target)[0])
        engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        engine.finalize_object()
        _ENGINES.append(engine)
        address = engine.get_function_address(name)
        if not address:
            raise TargetError(f"the compiled kernel has no function {name!r}: the IR defines another name")
        return ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * arguments)(address)


def counted_loop(loop, first, stop, body):
    """IR of ``for (%loop = first; %loop < stop; ++%loop) body``, its counter kept in
    ``%loop.var`` (an ``alloca`` the caller declares; the optimiser makes it a register).

    Parameters
    ----------
    loop : str
        The counter's name.
    first, stop : str or int
        IR values: the first count and the bound.
    body : list of str
        IR lines of the body.

    Returns
    -------
    list of str
    """
    return [f"  store i64 {first}, ptr %{loop}.var", f"  br label %{loop}.test", f"{loop}.test:",
            f"  %{loop} = load i64, ptr %{loop}.var", f"  %{loop}.more = icmp slt i64 %{loop}, {stop}",
            f"  br i1 %{loop}.more, label %{loop}.body, label %{loop}.end", f"{loop}.body:",
            *body,
            f"  %{loop}.next = add i64 %{loop}, 1", f"  store i64 %{loop}.next, ptr %{loop}.var",
            f"  br label %{loop}.test", f"{loop}.end:"]
