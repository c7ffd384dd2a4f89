"""The CPU that kernels are generated for: its name, instruction set and register file.

The convolution keeps its output tile in vector registers, so how wide a
vector is and how many of them there are decide its tiling
(:mod:`.direct_conv`): 32 registers of 512 bits with AVX-512, 16 of 256 bits
with AVX2, 16 of 128 bits with SSE, 32 of 128 bits with NEON. A tile sized
for one of these spills on a smaller one, and spilling costs several times
the speed.

The target is the host CPU (``native``, as llvmlite reports it) unless
``FASTDECOMP_TARGET_CPU`` names another one from :data:`KNOWN_TARGETS`. A
named target lets one machine generate, run and time the code another
machine would get: AVX2 code on an AVX-512 host, for instance. Code for a
CPU the host cannot execute (AVX-512 on an AVX2 host, AArch64 on x86) can be
compiled, but :meth:`Target.check_runnable` refuses to run it, so it never
ends in an illegal instruction.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache

from .. import config
from ..errors import TargetError

__all__ = ["Target", "ISAS", "KNOWN_TARGETS", "current", "resolve", "host_features"]


@dataclass(frozen=True)
class Isa:
    """An instruction set's vector registers, and the host features it needs to run."""

    name: str
    vector_bits: int
    registers: int
    fma: bool
    requires: frozenset
    fma_ports: int  # FMA units per core, for the peak estimate (2 on every current x86 core with AVX2)


_X86_V3 = frozenset({"avx", "avx2", "fma", "bmi", "bmi2", "lzcnt", "movbe", "f16c", "popcnt", "sse4.2"})
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

ISAS = {
    "avx512": Isa("avx512", 512, 32, True, _X86_V4, 2),
    "avx2": Isa("avx2", 256, 16, True, _X86_V3, 2),
    "avx": Isa("avx", 256, 16, False, frozenset({"avx", "popcnt", "sse4.2"}), 1),
    "sse4.2": Isa("sse4.2", 128, 16, False, frozenset({"popcnt", "sse4.2"}), 1),
    "neon": Isa("neon", 128, 32, True, frozenset({"neon"}), 2),
}

# name: (architecture, instruction set, host features needed beyond the instruction set's).
# The names are LLVM's CPU names; LLVM may use any feature such a CPU has.
KNOWN_TARGETS = {
    "skylake-avx512": ("x86_64", "avx512", frozenset({"adx", "clflushopt", "rdseed"})),
    "x86-64-v4": ("x86_64", "avx512", frozenset()),
    "znver4": ("x86_64", "avx512", frozenset({"sse4a", "clzero", "avx512vbmi", "avx512vnni", "avx512bf16"})),
    "haswell": ("x86_64", "avx2", frozenset()),
    "skylake": ("x86_64", "avx2", frozenset({"adx", "clflushopt", "rdseed"})),
    "x86-64-v3": ("x86_64", "avx2", frozenset()),
    "znver3": ("x86_64", "avx2", frozenset({"sse4a", "clzero"})),
    "sandybridge": ("x86_64", "avx", frozenset()),
    "x86-64-v2": ("x86_64", "sse4.2", frozenset()),
    "nehalem": ("x86_64", "sse4.2", frozenset()),
    "neoverse-n1": ("aarch64", "neon", frozenset({"lse", "fullfp16", "dotprod", "rcpc"})),
    "neoverse-v1": ("aarch64", "neon", frozenset({"lse", "fullfp16", "dotprod", "rcpc", "sve", "bf16", "i8mm"})),
    "apple-m1": ("aarch64", "neon", frozenset({"lse", "fullfp16", "dotprod", "rcpc", "sha3"})),
    "cortex-a72": ("aarch64", "neon", frozenset()),
}

_TRIPLES = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}


@dataclass(frozen=True)
class Target:
    """A CPU to generate code for.

    Parameters
    ----------
    name : str
        ``"native"`` or a key of :data:`KNOWN_TARGETS`.
    cpu : str
        LLVM's name for the CPU.
    triple : str
        LLVM target triple.
    features : str
        LLVM feature string (``""``: the CPU's own defaults).
    isa : Isa
        Vector width, register count and FMA of its instruction set.
    runnable : bool
        Whether this machine can execute code generated for it.
    missing : tuple of str
        Host features the target needs and this machine lacks.
    """

    name: str
    cpu: str
    triple: str
    features: str
    isa: Isa
    runnable: bool
    missing: tuple = ()

    @property
    def vector_floats(self):
        """float32 lanes in one vector register."""
        return self.isa.vector_bits // 32

    @property
    def key(self):
        """What compiled code and tuning records are keyed by."""
        return f"{self.triple}|{self.cpu}|{self.features}|{self.isa.name}"

    def describe(self):
        """One line: the name, the CPU and its registers, e.g. for benchmark reports."""
        return (f"{self.name} ({self.cpu}, {self.isa.name}: {self.isa.registers} x {self.isa.vector_bits}-bit "
                f"registers{', FMA' if self.isa.fma else ', no FMA'})")

    def check_runnable(self):
        """Raise :class:`TargetError` unless this machine can execute code generated for this target."""
        if not self.runnable:
            raise TargetError(
                f"FASTDECOMP_TARGET_CPU={self.name!r} generates {self.isa.name} code for {self.triple.split('-')[0]}, "
                f"which this machine cannot execute (it lacks {', '.join(self.missing)}); such code can be "
                f"compiled but not run here: unset FASTDECOMP_TARGET_CPU, or pick one of "
                f"{', '.join(runnable_names())}")

    def peak_gflops(self, ghz):
        """An estimate of one core's float32 FMA peak: lanes x FMA units x 2 flops x clock."""
        return self.vector_floats * self.isa.fma_ports * 2 * ghz


def _llvm():
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm


@lru_cache(maxsize=None)
def _host_feature_set():
    features = _llvm().get_host_cpu_features()
    return frozenset(name for name, present in features.items() if present)


def host_features():
    """The host CPU's LLVM features that are present, as a frozenset of names."""
    return _host_feature_set()


def host_architecture():
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _host_isa(features, architecture):
    if architecture == "aarch64":
        return ISAS["neon"]
    for name in ("avx512", "avx2", "avx", "sse4.2"):
        if ISAS[name].requires <= features:
            return ISAS[name]
    return Isa("generic", 128, 16, False, frozenset(), 1)


@lru_cache(maxsize=None)
def resolve(name):
    """The :class:`Target` called ``name``: ``"native"`` or a key of :data:`KNOWN_TARGETS`.

    Raises
    ------
    TargetError
        When ``name`` is neither; the message lists the valid names.
    """
    llvm = _llvm()
    features = host_features()
    architecture = host_architecture()
    if name == "native":
        return Target("native", llvm.get_host_cpu_name(), llvm.get_default_triple(),
                      llvm.get_host_cpu_features().flatten(), _host_isa(features, architecture), True)
    if name not in KNOWN_TARGETS:
        raise TargetError(f"FASTDECOMP_TARGET_CPU={name!r} is not a target fastdecomp knows; use 'native' or one of "
                          f"{', '.join(KNOWN_TARGETS)}")
    target_architecture, isa_name, extra = KNOWN_TARGETS[name]
    isa = ISAS[isa_name]
    if target_architecture != architecture:
        missing = (f"the {target_architecture} architecture",)
    else:
        missing = tuple(sorted((isa.requires | extra) - features))
    triple = llvm.get_default_triple() if target_architecture == architecture else _TRIPLES[target_architecture]
    return Target(name, name, triple, "", isa, not missing, missing)


def runnable_names():
    """The target names this machine can execute, ``"native"`` first."""
    return ["native"] + [name for name in KNOWN_TARGETS if resolve(name).runnable]


def current():
    """The target the kernels are generated for (``FASTDECOMP_TARGET_CPU``, else ``native``)."""
    return resolve(config.get("target_cpu"))
