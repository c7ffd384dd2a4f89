"""Writing a directory or a file all at once: complete, or not at all."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_file"]


@contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    On any error the temporary directory is removed and ``path`` is left as it
    was, so a failed save never leaves half-written output behind.

    Parameters
    ----------
    path : str or Path
    overwrite : bool
        Replace an existing ``path`` (else :class:`FileExistsError`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file beside it, renamed into place.

    Readers see the old file or the new one, whole; on any error the temporary
    file is removed and the error raised.

    Parameters
    ----------
    path : str or Path
    data : bytes
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
