"""Each convolution shape's tiling, chosen by timing the candidates on that shape, once per machine.

As FFTW keeps its *wisdom* and oneDNN dispatches per shape, the first time
a layer shape is seen every tiling in :func:`.direct_conv.candidates` is
compiled and timed on it (random data of the real shape, interleaved
rounds, best of each), and the fastest is kept: in memory for the process,
and in a record on disk beside the compiled kernels, keyed by the target
CPU, so each machine pays for it once (a few seconds for a ResNet-56).

A record is only a hint: one that is unreadable, corrupt (its checksum
does not match), written for another CPU or another version of the
generator, or that names a tiling no longer among the candidates, is
ignored and the shape is measured again. Whatever the tiling, the values
are the same bit for bit (each output keeps its one summation order), so a
record can change the speed, never a result.

``FASTDECOMP_TUNE=off`` skips all of this and takes
:func:`.direct_conv.rule_tiling`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import astuple, fields

import numpy as np

from .. import config
from ..storage import atomic_file
from . import direct_conv
from . import target as targets
from . import trusted_cache

__all__ = ["choose", "measure", "record_path", "GENERATOR"]

FORMAT = "fastdecomp-tuning"
VERSION = 1
GENERATOR = 1  # bump when the generated code changes enough to make old timings meaningless
ROUNDS = 3
SECONDS_PER_RUN = 0.002  # images per timed run are chosen to take about this long

GEOMETRY_FIELDS = [f.name for f in fields(direct_conv.ConvShape) if f.name not in direct_conv.EPILOGUE]  # a record's shape keys, in order

_LOCK = threading.Lock()
_CHOSEN = {}


def choose(geometry, target):
    """The tiling for convolutions of ``geometry`` (a :class:`.direct_conv.ConvShape`) on ``target``.

    The rule's choice when tuning is off, when there is only one candidate,
    or when the target cannot run here; else the recorded or measured fastest.

    Parameters
    ----------
    geometry : fastdecomp.kernels.direct_conv.ConvShape
        Without its epilogue (``ConvShape.geometry``).
    target : fastdecomp.kernels.target.Target

    Returns
    -------
    fastdecomp.kernels.direct_conv.Tiling
    """
    key = (target, geometry)
    if key in _CHOSEN:
        return _CHOSEN[key]
    with _LOCK:
        if key not in _CHOSEN:
            _CHOSEN[key] = _choose(geometry, target)
    return _CHOSEN[key]


def _choose(geometry, target):
    options = direct_conv.candidates(geometry, target)
    if not config.get("tune") or len(options) == 1 or not target.runnable:
        return direct_conv.rule_tiling(geometry, target)
    records = _read(target)
    stored = records.get(_shape_key(geometry))
    if stored is not None:
        tiling = direct_conv.Tiling(*stored)
        if tiling in options:
            return tiling
    timings = measure(geometry, options, target)
    best = min(timings, key=timings.get)
    _write(target, _shape_key(geometry), best)
    return best


def measure(geometry, options, target, rounds=ROUNDS):
    """Seconds per image of each tiling in ``options`` on ``geometry``: the best of ``rounds``
    interleaved runs, after one run that compiles and warms each.

    Parameters
    ----------
    geometry : fastdecomp.kernels.direct_conv.ConvShape
    options : list of Tiling
    target : fastdecomp.kernels.target.Target
    rounds : int

    Returns
    -------
    dict
        Tiling -> seconds per image.
    """
    rng = np.random.default_rng(0)
    images = int(np.clip(SECONDS_PER_RUN * 50e9 / geometry.flops, 1, 64))
    x = rng.standard_normal((images, geometry.in_h, geometry.in_w, geometry.in_channels)).astype(np.float32)
    weights = rng.standard_normal((geometry.kernel_h, geometry.kernel_w, geometry.in_channels,
                                   geometry.out_channels)).astype(np.float32)
    bias = rng.standard_normal(geometry.out_channels).astype(np.float32)
    out = np.empty((images, geometry.out_h, geometry.out_w, geometry.out_channels), np.float32)
    kernels = {tiling: direct_conv.compiled(geometry, tiling, target) for tiling in options}
    arguments = (x.ctypes.data, weights.ctypes.data, bias.ctypes.data, out.ctypes.data, images, out.ctypes.data, 0)
    best = {}
    for round_ in range(rounds + 1):
        for tiling, kernel in kernels.items():
            start = time.perf_counter()
            kernel(*arguments)
            elapsed = (time.perf_counter() - start) / images
            if round_:
                best[tiling] = min(best.get(tiling, elapsed), elapsed)
    return best


def _record_key(target):
    """What a record is valid for: the target, the machine that timed it, the compiler."""
    import llvmlite

    return f"{target.key}|host={targets.resolve('native').key}|llvmlite={llvmlite.__version__}"


def record_path(target):
    """The file holding ``target``'s tuning record."""
    name = hashlib.sha256(f"{_record_key(target)}|{GENERATOR}".encode()).hexdigest()[:24]
    return config.cache_dir() / "tuning" / f"{name}.json"


def _shape_key(geometry):
    return ",".join(str(value) for value in astuple(geometry)[:len(GEOMETRY_FIELDS)])


def _checksum(choices):
    return hashlib.sha256(json.dumps(choices, sort_keys=True).encode()).hexdigest()


def _read(target):
    """``{shape key: [width, group, pixels]}`` from ``target``'s record; ``{}`` for a missing,
    unreadable, corrupt or foreign one, or in a cache folder others could write (never read)."""
    if trusted_cache.secret(config.cache_dir()) is None:
        return {}
    try:
        path = record_path(target)
        if not path.is_file() or path.is_symlink():
            return {}
        document = json.loads(path.read_text())
        choices = document["choices"]
        if (document["format"] != FORMAT or document["version"] != VERSION or document["target"] != _record_key(target)
                or document["generator"] != GENERATOR or document["checksum"] != _checksum(choices)):
            return {}
        return {key: value for key, value in choices.items()
                if isinstance(value, list) and len(value) == 3
                and all(type(v) is int and 1 <= v <= 4096 for v in value)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError):
        return {}


def _write(target, shape_key, tiling):
    """Add one choice to ``target``'s record, written whole or not at all (no caching
    when the folder cannot be written)."""
    if trusted_cache.secret(config.cache_dir()) is None:
        return
    path = record_path(target)
    choices = _read(target)
    choices[shape_key] = list(astuple(tiling))
    document = {"format": FORMAT, "version": VERSION, "generator": GENERATOR, "target": _record_key(target),
                "fields": GEOMETRY_FIELDS, "choices": choices, "checksum": _checksum(choices)}
    try:
        atomic_file(path, json.dumps(document, indent=1, sort_keys=True).encode())
    except OSError:
        pass  # an unwritable cache folder only means no record


def _reset():
    """Forget the choices made in this process (for tests)."""
    with _LOCK:
        _CHOSEN.clear()
