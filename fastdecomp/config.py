"""fastdecomp's settings: every default and every environment variable, in one place.

Each setting has a default in :data:`DEFAULTS` and may be overridden by an
environment variable, read here and nowhere else:

==================  ========================  ==============================================
setting             environment variable      meaning
==================  ========================  ==============================================
``jobs``            ``FASTDECOMP_JOBS``       threads the engine runs batches on (``None``:
                                              every core this process may use)
``cache_dir``       ``FASTDECOMP_CACHE_DIR``  where compiled kernels and tuning records are
                                              kept (``None``: ``$XDG_CACHE_HOME/fastdecomp``
                                              or ``~/.cache/fastdecomp``)
``target_cpu``      ``FASTDECOMP_TARGET_CPU`` the CPU kernels are generated for: ``native``,
                                              or a name from
                                              :data:`fastdecomp.kernels.target.KNOWN_TARGETS`
``tune``            ``FASTDECOMP_TUNE``       ``on``: time candidate convolution tilings the
                                              first time a layer shape is seen; ``off``: the
                                              rule-based tiling
``backend``         ``FASTDECOMP_BACKEND``    where passes run when a function is given no
                                              ``backend=``: a name from
                                              :data:`fastdecomp.backends.BACKENDS`
``fashion_mnist_dir`` ``FASHION_MNIST_DIR``   the Fashion-MNIST IDX files (``None``: the
                                              Debian package's folder)
``cxx``             ``CXX``                   the C++ compiler of the CUDA kernels' CPU emulator
``activity_count_bytes`` ``FASTDECOMP_ACTIVITY_COUNT_BYTES`` the most memory per-node activity counts
                                              may take (:mod:`fastdecomp.thresholds`); above
                                              it they are counted per channel
``watts_per_core``  ``FASTDECOMP_WATTS_PER_CORE`` the power assumed per busy core where RAPL
                                              cannot be read (:mod:`fastdecomp.metrics`)
``gpu_spin``        ``FASTDECOMP_GPU_SPIN``   GPU clock cycles a kernel spins on the NULL stream
                                              and on the upload's stream before each upload
                                              (0: none). For testing: it makes a missing
                                              stream wait a deterministic wrong result
==================  ========================  ==============================================

Values are read once and kept; :func:`set` overrides one for the rest of the
process, :func:`using` for the length of a ``with`` block, and :func:`_reset`
forgets them all (for tests that change the environment).
"""

from __future__ import annotations

import numbers
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

__all__ = ["DEFAULTS", "ENVIRONMENT", "get", "set", "using", "cache_dir", "jobs"]

DEFAULTS = {
    "jobs": None,
    "cache_dir": None,
    "target_cpu": "native",
    "tune": True,
    "backend": "cpu",
    "fashion_mnist_dir": None,
    "cxx": "g++",
    "activity_count_bytes": 2 * 2**30,
    "watts_per_core": 10.0,
    "gpu_spin": 0,
}

ENVIRONMENT = {
    "jobs": "FASTDECOMP_JOBS",
    "cache_dir": "FASTDECOMP_CACHE_DIR",
    "target_cpu": "FASTDECOMP_TARGET_CPU",
    "tune": "FASTDECOMP_TUNE",
    "backend": "FASTDECOMP_BACKEND",
    "fashion_mnist_dir": "FASHION_MNIST_DIR",
    "cxx": "CXX",
    "activity_count_bytes": "FASTDECOMP_ACTIVITY_COUNT_BYTES",
    "watts_per_core": "FASTDECOMP_WATTS_PER_CORE",
    "gpu_spin": "FASTDECOMP_GPU_SPIN",
}

_values = {}


def _parse_jobs(text, variable):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{variable}={text!r} is not a number of threads: give a positive integer, "
                          f"or unset it to use every core")
    return value


def _parse_cycles(text, variable):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{variable}={text!r} is not a number of GPU clock cycles: give 0 or more "
                          "(e.g. 100000000, about 0.05 s), or unset it")
    return value


def _parse_tune(text, variable):
    words = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}
    if text.strip().lower() not in words:
        raise ConfigError(f"{variable}={text!r} is not understood: use 'on' or 'off'")
    return words[text.strip().lower()]


def _parse_positive(kind):
    def parse(text, variable):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise ConfigError(f"{variable}={text!r} is not understood: give a positive {kind.__name__}")
        return value
    return parse


_PARSERS = {"jobs": _parse_jobs, "cache_dir": lambda text, variable: Path(text),
            "target_cpu": lambda text, variable: text.strip(),
            "tune": _parse_tune, "backend": lambda text, variable: text.strip(),
            "fashion_mnist_dir": lambda text, variable: Path(text), "cxx": lambda text, variable: text.strip(),
            "activity_count_bytes": _parse_positive(int), "watts_per_core": _parse_positive(float),
            "gpu_spin": _parse_cycles}


def get(name):
    """The value of setting ``name``: its environment variable if set, else its default.

    Raises
    ------
    ConfigError
        When the environment variable holds a value the setting cannot take;
        the message names the variable.
    """
    if name not in DEFAULTS:
        raise ConfigError(f"unknown setting {name!r}; the settings are {sorted(DEFAULTS)}")
    if name not in _values:
        variable = ENVIRONMENT[name]
        text = os.environ.get(variable)
        _values[name] = DEFAULTS[name] if not text else _PARSERS[name](text, variable)
    return _values[name]


def set(name, value):
    """Use ``value`` for setting ``name`` from now on in this process (the environment is not read).

    Parameters
    ----------
    name : str
        A key of :data:`DEFAULTS`.
    value : object
        The value, as :func:`get` would return it.
    """
    _values[name] = _checked(name, value)


@contextmanager
def using(**values):
    """Override settings inside a ``with`` block, then restore what was there.

    Parameters
    ----------
    **values
        Setting name -> value, e.g. ``using(backend="emulated-cuda")``.
    """
    values = {name: _checked(name, value) for name, value in values.items()}
    saved = {name: _values[name] for name in values if name in _values}
    _values.update(values)
    try:
        yield
    finally:
        for name in values:
            _values.pop(name, None)
        _values.update(saved)


def _checked(name, value):
    """``value`` for setting ``name``, as :func:`get` returns it, or ConfigError."""
    if name not in DEFAULTS:
        raise ConfigError(f"unknown setting {name!r}; the settings are {sorted(DEFAULTS)}")
    kinds = {"jobs": (int, type(None)), "cache_dir": (str, os.PathLike, type(None)), "target_cpu": (str,),
             "tune": (bool,), "backend": (str,), "fashion_mnist_dir": (str, os.PathLike, type(None)),
             "cxx": (str,), "activity_count_bytes": (int,), "watts_per_core": (int, float),
             "gpu_spin": (int,)}[name]
    if not isinstance(value, kinds) or (name == "jobs" and value is not None and (isinstance(value, bool)
                                                                                   or value < 1)):
        raise ConfigError(f"setting {name}={value!r} is not valid: give {' or '.join(k.__name__ for k in kinds)}"
                          + (" (a positive number of threads)" if name == "jobs" else ""))
    return Path(value) if name in ("cache_dir", "fashion_mnist_dir") and value is not None else value


def cache_dir():
    """Where compiled kernels and tuning records are kept."""
    configured = get("cache_dir")
    if configured is not None:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastdecomp"


def jobs(n_jobs=None):
    """Threads to use: ``n_jobs`` if given, else ``FASTDECOMP_JOBS``, else every core this process may use.

    Raises
    ------
    ConfigError
        When ``n_jobs`` is not a positive integer.
    """
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs < 1:
            raise ConfigError(f"n_jobs={n_jobs!r} is not a number of threads: give a positive integer, "
                              f"or None to use every core")
        return int(n_jobs)
    configured = get("jobs")
    if configured is not None:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _reset():
    """Forget every value read, so the next :func:`get` reads the environment again."""
    _values.clear()
