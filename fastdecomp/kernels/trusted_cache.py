"""Cache entries that only this user's fastdecomp can have written.

The kernel cache holds machine code that fastdecomp loads and runs, so an
entry is used only when it carries an HMAC-SHA256, under a secret kept in the
cache folder with mode 0600, over the entry's key and its bytes: code compiled
elsewhere, or another entry's code renamed, fails the check and is compiled
again. As ssh does with its keys, a folder (or secret) that other users could
write is not used at all: a warning says so and kernels are compiled in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

__all__ = ["secret", "seal", "unseal", "private_folder", "UntrustedCacheWarning"]

SECRET_FILE = "secret.key"
SECRET_BYTES = 32
_DIGEST = hashlib.sha256().digest_size


class UntrustedCacheWarning(UserWarning):
    """The kernel cache folder is not used: other users could write to it."""


def secret(folder):
    """This user's secret for the cache in ``folder`` (created on first use), or None when the folder is
    not to be trusted (then nothing is read from it or written to it).

    Parameters
    ----------
    folder : str or Path
    """
    return _secret(str(Path(folder).absolute()))


@lru_cache(maxsize=None)
def _secret(folder):
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _unsafe(folder)
        if problem is None:
            key = _read_or_create(folder / SECRET_FILE)
            problem = _unsafe(folder / SECRET_FILE) if key is not None else "its secret is damaged"
            if problem is None:
                return key
    except OSError as exc:
        problem = f"it cannot be used ({exc.strerror})"
    warnings.warn(f"the kernel cache {folder} is not used: {problem}. Kernels are compiled in memory; fix the "
                  "permissions (chmod go-w), or set FASTDECOMP_CACHE_DIR to a folder of your own",
                  UntrustedCacheWarning, stacklevel=4)
    return None


def private_folder(folder):
    """``folder`` (created with mode 0700) when only this user can write it, else a new private temporary
    folder, with a warning: libraries loaded from it are then this process's own.

    Parameters
    ----------
    folder : str or Path
    """
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _unsafe(folder)
    except OSError as exc:
        problem = f"it cannot be used ({exc.strerror})"
    if problem is None:
        return folder
    warnings.warn(f"{folder} is not used: {problem}; compiling into a private temporary folder",
                  UntrustedCacheWarning, stacklevel=3)
    return Path(tempfile.mkdtemp(prefix="fastdecomp-"))


def _unsafe(path):
    """Why ``path`` could hold what another user wrote, or None."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if info.st_uid not in (os.geteuid(), 0):
        return f"{path} belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users"
    if path.name == SECRET_FILE and info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{path} is readable by other users"
    return None


def _read_or_create(path):
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        return key if len(key) == SECRET_BYTES else None
    with os.fdopen(descriptor, "wb") as out:
        out.write(os.urandom(SECRET_BYTES))
    return path.read_bytes()


def seal(key, data, secret_bytes):
    """``data`` with its HMAC, tied to ``key`` (the name the entry is stored under).

    Parameters
    ----------
    key : str
    data : bytes
    secret_bytes : bytes
        From :func:`secret`.
    """
    return _mac(key, data, secret_bytes) + data


def unseal(key, stored, secret_bytes):
    """The data of an entry :func:`seal` wrote for ``key`` under this secret, else None.

    Parameters
    ----------
    key : str
    stored : bytes
    secret_bytes : bytes
    """
    data = stored[_DIGEST:]
    return data if hmac.compare_digest(stored[:_DIGEST], _mac(key, data, secret_bytes)) else None


def _mac(key, data, secret_bytes):
    return hmac.new(secret_bytes, key.encode() + b"\0" + data, hashlib.sha256).digest()
