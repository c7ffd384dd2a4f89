"""CUDA streams and events, imitated for the emulated device, so that its host code is checked for ordering.

CuPy queues every copy, allocation and kernel on the *current* stream. Two
streams created ``non_blocking=True`` (as the device's are) are not ordered
with each other nor with the NULL stream: what one produces another may read
only after an event recorded on the first has been waited on by the second
(or the host synchronised with it). CuPy's memory pool also hands a freed
block to the next allocation on the stream it was allocated on at once, so
a block read on another stream must not be freed before that read is ordered
back onto its stream.

:class:`StreamLedger` keeps the ``current`` stream (per thread, like CuPy),
a vector clock per stream, and a tag per array: the stream and position of
the operation that last produced it (its allocation, or a write). Every use
is checked against the tag (:meth:`StreamLedger.use`); an array freed while a
read on another stream is unordered is recorded and reported at the next
check. :class:`TrackedNumpy` is NumPy as the emulated device's ``xp``: each
call is an operation on the current stream.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from functools import lru_cache

import numpy as np

from ..errors import BackendError, StreamOrderError

__all__ = ["StreamLedger", "EmulatedStream", "EmulatedEvent", "TrackedNumpy", "EmulatedArray", "EmulatedFlags",
           "cupy_surface"]

UPLOADS = ("asarray", "ascontiguousarray", "array")


class EmulatedEvent:
    """A point in a stream's work (``cupy.cuda.Event``'s interface).

    Parameters
    ----------
    block, disable_timing, interprocess : bool
        Accepted as CuPy does; only ``disable_timing=True`` is expected.
    """

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.disable_timing = disable_timing
        self.clock = {}
        self.ledger = None

    def record(self, stream=None):
        """Mark the work queued so far on ``stream`` (the current one if None).

        Parameters
        ----------
        stream : EmulatedStream, optional
        """
        stream = stream or EmulatedStream.current()
        self.ledger = stream.ledger
        self.clock = dict(stream.clock)

    def synchronize(self):
        """The host waits for the recorded work."""
        self.ledger.host_waits(self.clock)


class EmulatedStream:
    """A stream (``cupy.cuda.Stream``'s interface: a context manager making it current, ``record``,
    ``wait_event``, ``synchronize``).

    Parameters
    ----------
    ledger : StreamLedger
    name : str
    """

    _local = threading.local()

    def __init__(self, ledger, name):
        self.ledger, self.name = ledger, name
        self.clock = {name: 0}

    def __repr__(self):
        return f"<stream {self.name}>"

    @classmethod
    def current(cls):
        stack = getattr(cls._local, "stack", None)
        return stack[-1] if stack else None

    def __enter__(self):
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(self)
        return self

    def __exit__(self, *exc):
        self._local.stack.pop()

    def tick(self):
        """One more operation queued here; its position."""
        self.clock[self.name] += 1
        return self.clock[self.name]

    def record(self, event=None):
        """An event marking the work queued so far (``disable_timing`` as the device's are).

        Parameters
        ----------
        event : EmulatedEvent, optional
        """
        event = event or EmulatedEvent(disable_timing=True)
        event.record(self)
        return event

    def wait_event(self, event):
        """Later work here waits for ``event``.

        Parameters
        ----------
        event : EmulatedEvent
        """
        for name, position in event.clock.items():
            self.clock[name] = max(self.clock.get(name, 0), position)

    def synchronize(self):
        self.ledger.host_waits(self.clock)


class _Tag:
    __slots__ = ("stream", "position", "allocated_on", "foreign_uses")

    def __init__(self, stream, position):
        self.stream, self.position = stream, position
        self.allocated_on = stream
        self.foreign_uses = []


def _owner(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class StreamLedger:
    """The streams of one emulated device and the tag of every array it made (see the module docstring)."""

    _ids = itertools.count()

    def __init__(self):
        self.id = next(self._ids)  # an emulated GPU's number, as ``cupy.cuda.Device(id)``'s
        self.read_backs = []  # what the host read from the device: each waits for the stream, on a GPU
        self.null = EmulatedStream(self, "null")
        self.host = {}
        self._tags = {}
        self._lock = threading.RLock()
        self.violations = []

    def stream(self, name):
        """A new stream.

        Parameters
        ----------
        name : str
        """
        return EmulatedStream(self, name)

    def current(self):
        return EmulatedStream.current() or self.null

    def host_waits(self, clock):
        """The host has waited for the work of ``clock``; everything queued later is ordered after it.

        Parameters
        ----------
        clock : dict
        """
        with self._lock:
            for name, position in clock.items():
                self.host[name] = max(self.host.get(name, 0), position)
        self.report()

    def read_back(self, what):
        """The host reads a value of the device (``int(a.max())``, a copy to the host): on a GPU it waits
        for everything queued on the stream before it. Counted, so tests can bound the waits of a pass.

        Parameters
        ----------
        what : str
        """
        with self._lock:
            self.read_backs.append(what)

    def is_tracked(self, array):
        return isinstance(array, np.ndarray) and id(_owner(array)) in self._tags

    def produced(self, array, stream=None):
        """``array`` (new, or written) was produced by an operation on ``stream`` (the current one).

        Parameters
        ----------
        array : numpy.ndarray
        stream : EmulatedStream, optional
        """
        stream = stream or self.current()
        owner = _owner(array)
        with self._lock:
            tag = self._tags.get(id(owner))
            if tag is None:
                tag = self._tags[id(owner)] = _Tag(stream, stream.tick())
                weakref.finalize(owner, self._freed, id(owner))
            else:
                tag.stream, tag.position = stream, stream.tick()

    def _ordered(self, stream, on):
        """The position up to which ``on``'s later work is ordered after ``stream``'s."""
        return max(on.clock.get(stream.name, 0), self.host.get(stream.name, 0))

    def use(self, array, what, write=False, stream=None):
        """Check that an operation on ``stream`` (the current one) may use ``array`` now.

        Parameters
        ----------
        array : numpy.ndarray
        what : str
            The operation, for the message.
        write : bool
            It writes the array (its tag moves to ``stream``).
        stream : EmulatedStream, optional

        Raises
        ------
        StreamOrderError
            For an array the device did not make, or one produced on another stream and not waited for.
        """
        stream = stream or self.current()
        self.report()
        with self._lock:
            tag = self._tags.get(id(_owner(array)))
            if tag is None:
                raise StreamOrderError(f"{what} on {stream!r} was given a host array, not one of the device "
                                       "(CuPy would refuse it): upload it with device.asarray")
            if tag.stream is not stream and self._ordered(tag.stream, stream) < tag.position:
                raise StreamOrderError(
                    f"{what} on {stream!r} uses an array produced on {tag.stream!r} (operation {tag.position}) "
                    f"with no event of {tag.stream!r} waited on in between: it may read the array before it is "
                    "written. Create it on the stream that uses it, or wait on an event")
            position = stream.tick()
            if tag.allocated_on is not stream:
                tag.foreign_uses.append((stream, position))
            if write:
                tag.stream, tag.position = stream, position

    def _freed(self, key):
        with self._lock:
            tag = self._tags.pop(key)
            for stream, position in tag.foreign_uses:
                if self._ordered(stream, tag.allocated_on) < position:
                    self.violations.append(
                        f"an array allocated on {tag.allocated_on!r} was freed while {stream!r} (operation "
                        f"{position}) may still use it: CuPy's pool gives its memory to the next allocation on "
                        f"{tag.allocated_on!r} at once. Keep it until an event or a synchronisation")

    def report(self):
        """Raise the first violation found since the last report (a free seen by the garbage collector)."""
        with self._lock:
            if self.violations:
                message = self.violations[0]
                self.violations.clear()
                raise StreamOrderError(message)


@lru_cache(maxsize=None)
def cupy_surface():
    """``(array attributes, flags attributes)``: the public names of the installed CuPy's ``ndarray`` and
    ``Flags`` classes, which import without a GPU.

    Raises
    ------
    BackendError
        Without CuPy: the emulated device imitates its arrays, so it needs it installed.
    """
    try:
        import cupy
        from cupy._core.flags import Flags
    except ImportError as exc:
        raise BackendError("the emulated CUDA device hands out arrays with CuPy's attributes, read from the "
                           "installed CuPy: pip install cupy-cuda12x (no GPU needed)") from exc
    return frozenset(dir(cupy.ndarray)), frozenset(name for name in dir(Flags) if not name.startswith("_"))


class EmulatedFlags:
    """``cupy.ndarray.flags`` of an emulated array: CuPy's attributes and nothing else (no ``writeable``:
    a device array is always writable).

    Parameters
    ----------
    flags : numpy.ndarray.flags
    """

    def __init__(self, flags):
        self._c, self._f, self._own = flags.c_contiguous, flags.f_contiguous, flags.owndata

    c_contiguous = property(lambda self: self._c)
    f_contiguous = property(lambda self: self._f)
    owndata = property(lambda self: self._own)
    forc = property(lambda self: self._c or self._f)
    fnc = property(lambda self: self._f and not self._c)

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self._c, "F_CONTIGUOUS": self._f, "OWNDATA": self._own}[name]

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self._c}\n  F_CONTIGUOUS : {self._f}\n  OWNDATA : {self._own}"


class EmulatedArray(np.ndarray):
    """An emulated device's array: NumPy's memory and arithmetic, CuPy's attributes.

    Reading an attribute that ``cupy.ndarray`` lacks (``ctypes``, ``flags.writeable``,
    ``setflags``...) raises ``AttributeError`` as it would on a GPU, so host code that
    works here works on CuPy too. The surface is read from the installed CuPy
    (:func:`cupy_surface`). NumPy's own C code does not go through Python attribute
    access, so arithmetic and slicing behave as NumPy's; the emulator's internals take
    ``numpy.asarray`` of an array to reach the rest.

    As in CuPy, an element is a 0-d array, and turning one into a Python value
    (``int``, ``float``, ``bool``, ``item``, ``tolist``) is a read-back: on a GPU
    it waits for every kernel queued before it. The device's
    :meth:`StreamLedger.read_back` counts them, so tests can bound a pass's waits.

    Parameters
    ----------
    shape, dtype, buffer, offset, strides, order :
        As :class:`numpy.ndarray`'s; the emulated device makes these as views of its own arrays.
    """

    def __array_finalize__(self, obj):
        if isinstance(obj, EmulatedArray):
            self.__dict__["home"] = obj.__dict__.get("home")

    @property
    def device(self):
        """The :class:`StreamLedger` of the emulated device that made it (its ``id`` as CuPy's ``Device``)."""
        return self.__dict__.get("home")

    def __getitem__(self, key):
        item = super().__getitem__(key)
        if isinstance(item, np.ndarray):
            return item
        scalar = np.asarray(item).view(EmulatedArray)  # one element stays on the device, as in CuPy
        scalar.__dict__["home"] = self.__dict__.get("home")
        return scalar

    def __bool__(self):
        _read_back(self, "bool()")
        return super().__bool__()

    def __int__(self):
        _read_back(self, "int()")
        return super().__int__()

    def __float__(self):
        _read_back(self, "float()")
        return super().__float__()

    def __index__(self):  # CuPy's arrays have none: a device value is no Python index
        raise TypeError("a cupy.ndarray cannot be used as a Python index: take int() of it (a read-back) first")

    def item(self, *args):
        _read_back(self, "item()")
        return super().item(*args)

    def tolist(self):
        _read_back(self, "tolist()")
        return super().tolist()

    def __getattribute__(self, name):
        if not name.startswith("__") and name not in cupy_surface()[0]:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (a NumPy-only attribute: "
                                 "host code must use what CuPy arrays have)")
        value = super().__getattribute__(name)
        return EmulatedFlags(value) if name == "flags" else value


def _read_back(array, what):
    home = array.__dict__.get("home")
    if home is not None:
        home.read_back(what)


def as_device_array(array, ledger):
    """``array`` as an :class:`EmulatedArray` of ``ledger``'s device (a view: the ledger's tags, held by its
    base, still apply)."""
    if isinstance(array, np.ndarray) and not isinstance(array, EmulatedArray):
        array = array.view(EmulatedArray)
        array.__dict__["home"] = ledger
    return array


class TrackedNumpy:
    """NumPy as an emulated device's ``xp``: each function call is an operation on the current stream.

    Device arrays it reads must be ordered after their producers; arrays it
    returns that are new (not views of its arguments) are tagged as produced
    on the current stream, and so are ``out=`` arguments. ``asarray``,
    ``ascontiguousarray`` and ``array`` of a host array copy it (an upload).

    Parameters
    ----------
    ledger : StreamLedger
    """

    def __init__(self, ledger):
        self._ledger = ledger

    def __getattr__(self, name):
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            return self._wrap(name, value)
        return value

    def _wrap(self, name, function):
        ledger = self._ledger

        def call(*args, **kwargs):
            if name in UPLOADS and args and isinstance(args[0], np.ndarray) and not ledger.is_tracked(args[0]):
                copy = np.array(args[0], dtype=kwargs.get("dtype"), order="C", copy=True)
                ledger.produced(copy)
                return as_device_array(copy, ledger)
            arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
            written = kwargs.get("out")
            written = [written] if isinstance(written, np.ndarray) else list(written or ())
            if name == "copyto":
                written.append(args[0])
            for array in arrays:
                if name == "copyto" and array is args[1] and not ledger.is_tracked(array):
                    continue  # a host source: an upload
                ledger.use(array, f"numpy.{name}", write=any(array is w for w in written))
            result = function(*args, **kwargs)
            for array in result if isinstance(result, tuple) else (result,):
                if isinstance(array, np.ndarray) and not ledger.is_tracked(array):
                    ledger.produced(array)
            if isinstance(result, tuple):
                return tuple(as_device_array(array, ledger) for array in result)
            return as_device_array(result, ledger)
        return call
