"""Exceptions raised by fastdecomp.

Every error names what was wrong and how to fix it. They subclass the
built-in exception a caller would expect (``ValueError``, ``FileNotFoundError``)
so that generic handlers keep working.
"""


class FastDecompError(Exception):
    """Base class of every fastdecomp error."""


class UnsupportedLayerError(FastDecompError, ValueError):
    """A model contains a layer or activation fastdecomp cannot decompose."""


class InputError(FastDecompError, ValueError):
    """Input data or labels have the wrong shape, dtype or values."""


class ModelFileError(FastDecompError, ValueError):
    """A model or module file is missing, corrupt or of the wrong kind."""


class OutputExistsError(FastDecompError, FileExistsError):
    """A save would replace something it may not (an existing folder without ``overwrite``, a
    folder that is not a fastdecomp save, the current directory)."""


class SaveError(FastDecompError, OSError):
    """A save could not be written (permissions, a full disk, a name the file system refuses)."""


class DatasetNotFoundError(FastDecompError, FileNotFoundError):
    """A dataset's files are not on this machine."""


class BackendError(FastDecompError, RuntimeError):
    """A requested compute backend is not available."""


class ConfigError(FastDecompError, ValueError):
    """A setting (an environment variable or an argument) has a value fastdecomp cannot use."""


class TargetError(FastDecompError, RuntimeError):
    """Kernels were asked for a CPU that is unknown, or that this machine cannot execute."""


class KernelLaunchError(FastDecompError, TypeError):
    """A kernel was launched with arguments its compiled parameters do not take (a fastdecomp bug)."""


class StreamOrderError(FastDecompError, RuntimeError):
    """Device work used an array before the stream that produced it was waited on, or freed it while
    another stream may still read it (raised by the emulated device; a fastdecomp bug)."""
