"""The statistics pass on a Dask cluster: one task per shard, merged in a tree on the workers.

Each worker opens the data itself from the source's picklable
:class:`~fastdecomp.data.DataDescription` (paths, seeds, sizes), so no image
leaves the client; it receives the network once (scattered to every worker)
and runs one shard at a time on all the threads Dask gave it, compiling its
kernels once. Partial statistics merge pairwise on the workers, so the client
only ever receives the merged one. Shards are pure functions of their
arguments: a shard whose worker dies is run again by Dask, with the same result.

Nothing here imports Dask until a cluster is used (``pip install 'fastdecomp[dist]'``).
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from . import backends
from .errors import BackendError, FastDecompError, InputError
from .gathering import PartialStatistics, StatisticsPass, fingerprint, progress_bar, shard_rows

__all__ = ["gather_on_cluster", "default_shards", "connect"]

_ONE_SHARD_AT_A_TIME = threading.Lock()  # per worker process: a shard uses all the worker's threads


def default_shards(workers, num_images):
    """Two shards per worker (one running, one queued behind it), at most one per image.

    Parameters
    ----------
    workers, num_images : int

    Returns
    -------
    int
    """
    return max(1, min(2 * workers, num_images))


def gather_on_cluster(network, source, classes, options, *, client=None, shards=None, batch_size=256,
                      n_jobs=None, progress=False):
    """The merged statistics of every image, gathered shard by shard on a Dask cluster.

    Parameters
    ----------
    network : Network
    source : DataSource
        With a ``description`` the workers can open.
    classes : list of int
    options : DecompositionOptions
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    shards : int, optional
        Default: :func:`default_shards` of the workers.
    batch_size : int
    n_jobs : int, optional
        Threads per shard (default: the threads of the worker running it).
    progress : bool
        A bar over the images, advanced as shards finish.

    Returns
    -------
    PartialStatistics
        Of every image, merged.
    """
    distributed = _distributed()
    client = _client(distributed, client)
    description = _description(source)
    expected = fingerprint(network, source.labels, classes, options)
    workers = _check_workers(client, description, source)
    shards = default_shards(len(workers), len(source)) if shards is None else _checked_shards(shards, len(source))
    remote_network = client.scatter(network, broadcast=True, hash=False)
    parts = {client.submit(_gather_shard, remote_network, description, (i, shards), classes, options, batch_size,
                           n_jobs, key=f"fastdecomp-shard-{i}-of-{shards}-{expected[:16]}"): len(rows)
             for i, rows in enumerate(shard_rows(len(source), (i, shards)) for i in range(shards))}
    merged = _tree_merge(client, list(parts))
    _follow(distributed, parts, len(source), progress)
    del parts
    try:
        result = merged.result()
    except FastDecompError:
        raise
    except Exception as error:  # a worker died too often, or a task failed outside fastdecomp
        raise BackendError(f"the Dask pass failed: {type(error).__name__}: {error}") from error
    if result.fingerprint != expected or not result.complete:
        raise BackendError("the workers' statistics are not those of this model, data and options "
                           "(their fastdecomp or data differ from the client's)")
    return result


def connect(address, timeout=10):
    """A client of the Dask scheduler at ``address``.

    Parameters
    ----------
    address : str
        ``tcp://host:8786``, as ``dask scheduler`` prints it.
    timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    distributed.Client
    """
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        raise BackendError(f"cannot reach the Dask scheduler at {address!r} ({type(error).__name__}: {error}); "
                           "start one with 'dask scheduler' and give the address it prints") from error


def _distributed():
    try:
        import distributed
    except ImportError as error:
        raise BackendError("backend='dask' needs Dask's distributed scheduler: pip install "
                           "'fastdecomp[dist]'") from error
    return distributed


def _client(distributed, client):
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise InputError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError as error:
        raise BackendError("backend='dask' found no Dask client: create one first "
                           "(distributed.Client('tcp://scheduler:8786'), or Client() for a local cluster) "
                           "or pass client=") from error


def _description(source):
    if source.description is None:
        raise InputError(
            "backend='dask' opens the data on every worker, so it needs a source the workers can open "
            "again: fastdecomp.data.open_data, from_npy, from_npz, fashion_mnist, mnist, TinyImageNetFolder "
            "or SyntheticTinyImageNet; save in-memory arrays with numpy.save and use from_npy")
    return source.description


def _checked_shards(shards, num_images):
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or not 1 <= shards <= num_images:
        raise InputError(f"shards must be a number of shards from 1 to the {num_images} images, got {shards!r}")
    return int(shards)


def _labels_digest(labels):
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _check_workers(client, description, source):
    """Every worker runs this fastdecomp and opens the same data; returns the workers' addresses."""
    from . import __version__

    try:
        answers = client.run(_probe, description)
    except Exception as error:  # unpickling _probe needs fastdecomp on the worker; Dask re-raises it as Exception
        raise BackendError(f"a Dask worker cannot run fastdecomp ({type(error).__name__}: {error}); install "
                           f"fastdecomp {__version__} on every worker") from error
    if not answers:
        raise BackendError("the Dask cluster has no workers; start some (dask worker tcp://scheduler:8786)")
    expected = (__version__, len(source), _labels_digest(source.labels))
    for address, answer in sorted(answers.items()):
        if isinstance(answer, str):
            raise BackendError(f"Dask worker {address} cannot open the data: {answer}")
        if answer[0] != __version__:
            raise BackendError(f"Dask worker {address} runs fastdecomp {answer[0]}, the client {__version__}; "
                               "install the same version on every worker")
        if tuple(answer) != expected:
            raise BackendError(f"Dask worker {address} opens other data ({answer[1]} images, labels digest "
                               f"{answer[2][:12]}) than the client ({len(source)}, {expected[2][:12]}); give every "
                               "worker the same files")
    return sorted(answers)


def _probe(description):
    """On a worker: (fastdecomp version, images, labels digest) of the data, or why it cannot open it."""
    from . import __version__

    try:
        source = description.open()
    except (FastDecompError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return __version__, len(source), _labels_digest(source.labels)


def _gather_shard(network, description, shard, classes, options, batch_size, n_jobs):
    """On a worker: the statistics of one shard."""

    source = description.open()
    rows = shard_rows(len(source), shard)
    with _ONE_SHARD_AT_A_TIME:
        gathered = StatisticsPass(network, source, rows, classes, options, backends.get(None))
        stats, correct = gathered.run(batch_size, n_jobs or _worker_threads(), False)
    return PartialStatistics(fingerprint(network, source.labels, classes, options), len(source), rows, correct,
                             stats)


def _worker_threads():
    from distributed import get_worker

    try:
        return get_worker().state.nthreads
    except ValueError:  # not on a worker (run inline)
        return None


def _merge_two(a, b):
    return a.merge(b)


def _tree_merge(client, futures):
    """One future of all ``futures``' statistics merged, pairwise, level by level, on the workers."""
    while len(futures) > 1:
        merged = [client.submit(_merge_two, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
        futures = merged + futures[len(merged) * 2:]
    return futures[0]


def _follow(distributed, parts, total, progress):
    """Wait for the shards (futures to their sizes), advancing the bar as each finishes; the first
    error is raised at once."""
    bar = progress_bar(progress, total, "activity statistics (dask)")
    try:
        for future in distributed.as_completed(parts):
            if future.status == "error":
                error = future.exception()
                if isinstance(error, FastDecompError):
                    raise error
                raise BackendError(f"a shard failed on the cluster: {type(error).__name__}: {error}") from error
            bar.update(parts[future])
    finally:
        bar.close()
