"""Writing a directory or a file all at once: complete, or not at all.

A directory is written beside its final place under a lock on the parent
folder, then swapped into place: with ``renameat2(RENAME_EXCHANGE)`` where the
file system has it, so that at every instant the path holds the complete old
directory or the complete new one; else by two renames. A directory left by a
killed save is removed by the next save of the same path.
"""

import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError, OutputExistsError

__all__ = ["atomic_directory", "atomic_file", "check_replaceable_file"]

PARTIAL, REPLACED = ".partial", ".replaced"
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


@contextmanager
def atomic_directory(path, overwrite=False, *, replaceable=None):
    """Yield a temporary directory beside ``path``; on success it takes ``path``'s place.

    On any error the temporary directory is removed and ``path`` is left as it
    was, so a failed save never leaves half-written output behind.

    Parameters
    ----------
    path : str or Path
    overwrite : bool
        Replace an existing ``path`` (else :class:`OutputExistsError`, also
        when another process creates ``path`` meanwhile).
    replaceable : callable, optional
        ``replaceable(path)`` is True when an existing ``path`` may be
        replaced (e.g. it is a save holding nothing else); else
        :class:`OutputExistsError` says why not.

    Raises
    ------
    OutputExistsError
        ``path`` exists and may not be replaced: ``overwrite`` is False, it is
        not ``replaceable``, or it holds the current directory.
    """
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite must be True or False, got {overwrite!r}")
    path = Path(os.path.abspath(path))
    if path.parent == path:
        raise OutputExistsError(f"{path} is a root folder; save into a folder of its own")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        _remove_leftovers(path)
        _check_replaceable(path, overwrite, replaceable)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=PARTIAL, dir=path.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            _check_replaceable(path, overwrite, replaceable)
            _swap_into_place(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(path, overwrite, replaceable):
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True or choose another path")
    cwd = Path.cwd().resolve()
    if cwd == path.resolve() or path.resolve() in cwd.parents:
        raise OutputExistsError(f"{path} holds the current directory; it is not replaced. Choose a new folder")
    if not path.is_dir() or path.is_symlink() or (replaceable is not None and not replaceable(path)):
        raise OutputExistsError(f"{path} is not a folder this kind of save wrote, so it is not replaced; "
                                "remove it yourself or choose another path")


def _swap_into_place(tmp, path):
    """Put ``tmp`` at ``path``; what was at ``path`` ends up at ``tmp`` (to be removed)."""
    if os.path.lexists(path):
        if not _renameat2(tmp, path, _RENAME_EXCHANGE):
            os.rename(path, str(tmp) + REPLACED)
            os.rename(tmp, path)
            os.rename(str(tmp) + REPLACED, tmp)
    elif not _renameat2(tmp, path, _RENAME_NOREPLACE):
        os.rename(tmp, path)


def _renameat2(source, target, flags):
    """Linux's ``renameat2``: True when done, False where the system or the file system lacks it."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), ctypes.c_uint(flags)) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if code == errno.EEXIST:
        raise OutputExistsError(f"{target} was created by someone else during the save; it is not replaced")
    raise OSError(code, os.strerror(code), str(target))


@contextmanager
def _locked(folder):
    """An exclusive lock on ``folder`` (saves into one folder wait for each other)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _remove_leftovers(path):
    """Temporary folders of earlier saves of ``path`` that were killed (we hold the lock: nobody writes them)."""
    for leftover in path.parent.glob(glob.escape(_temporary_prefix(path)) + "*"):
        if leftover.name.endswith((PARTIAL, PARTIAL + REPLACED)) and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _temporary_prefix(path):
    """Temporary folders' name prefix: short, so that any name the file system takes can be saved to."""
    name = path.name if len(os.fsencode(path.name)) <= 64 else hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    return f".{name}."


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    check_replaceable_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary file, not the output
        check_replaceable_file(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable_file(path):
    """Refuse an output path where something other than a regular file is: a rename over a FIFO, a device
    node, a socket or a link would replace it (as root, ``/dev/null`` itself), and a directory is no file.

    Parameters
    ----------
    path : str or Path

    Raises
    ------
    OutputExistsError
        Naming what is there.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        what = ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise OutputExistsError(f"{path} is {what}; fastdecomp replaces only regular files: choose another path")
