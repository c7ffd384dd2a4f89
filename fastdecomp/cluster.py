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
import pickle
import threading
import uuid

import numpy as np

from . import backends
from .errors import BackendError, FastDecompError, InputError
from .gathering import fingerprint, gather_shard, progress_bar, shard_rows

__all__ = ["gather_on_cluster", "default_shards", "connect"]

_ONE_SHARD_AT_A_TIME = threading.Lock()  # per worker process: a shard uses all the worker's threads
_SAMPLED_IMAGES = 16  # images whose values the client and every worker compare before the pass


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
    futures = []
    try:
        workers = _check_workers(client, description, source)
        shards = default_shards(len(workers), len(source)) if shards is None else \
            _checked_shards(shards, len(source))
        result = _run_shards(distributed, client, network, description, shards, len(source), futures,
                             (classes, options, batch_size, n_jobs), progress)
    except FastDecompError as error:  # a fresh one: the stored one's traceback would keep the futures alive
        raise type(error)(*error.args) from None
    except Exception as error:  # the scheduler lost, a worker dead too often, a task failing outside fastdecomp
        raise BackendError(f"the Dask pass failed: {type(error).__name__}: {error}") from None
    finally:
        _release(client, futures)
    if result.fingerprint != expected or not result.complete:
        raise BackendError("the workers' statistics are not those of this model, data and options "
                           "(their fastdecomp or data differ from the client's)")
    return result


def _run_shards(distributed, client, network, description, shards, num_images, futures, pass_arguments,
                progress):
    """Submit the shards and their tree merge (every future into ``futures``); the merged statistics."""
    run = uuid.uuid4().hex[:12]  # keys of this call only: another call's data may share everything else
    remote_network = client.submit(pickle.loads, pickle.dumps(network, protocol=5), pure=False,
                                   key=f"fastdecomp-network-{run}")  # in the graph: recomputed if its holder dies
    futures.append(remote_network)
    parts = {}
    for i in range(shards):
        future = client.submit(_gather_shard, remote_network, description, (i, shards), *pass_arguments,
                               key=f"fastdecomp-shard-{i}-of-{shards}-{run}")
        parts[future] = len(shard_rows(num_images, (i, shards)))
        futures.append(future)
    merged = _tree_merge(client, list(parts), futures)
    _follow(distributed, parts, num_images, progress)
    return merged.result()


def _release(client, futures):
    try:
        client.cancel(futures)
    except Exception:  # the client may be gone already; nothing is left to release then
        pass
    futures.clear()


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


def _data_digest(source):
    """Images, shape, labels and some images' values as read (so after any scale) of a source."""
    rows = np.unique(np.linspace(0, len(source) - 1, min(len(source), _SAMPLED_IMAGES)).astype(np.int64))
    hasher = hashlib.sha256(np.asarray(source.labels, dtype=np.int64).tobytes())
    hasher.update(repr(tuple(source.sample_shape)).encode())
    hasher.update(source.read(rows).tobytes())
    return len(source), hasher.hexdigest()


def _check_workers(client, description, source):
    """Every worker runs this fastdecomp and opens the same data; returns the workers' addresses."""
    from . import __version__

    try:
        answers = client.run(_probe, description)
    except Exception as error:  # unpickling _probe needs fastdecomp on the worker; Dask re-raises it as Exception
        raise BackendError(f"a Dask worker cannot run fastdecomp ({type(error).__name__}: {error}); install "
                           f"fastdecomp {__version__} on every worker") from None
    if not answers:
        raise BackendError("the Dask cluster has no workers; start some (dask worker tcp://scheduler:8786)")
    expected = _data_digest(source)
    for address, answer in sorted(answers.items()):
        if isinstance(answer, str):
            raise BackendError(f"Dask worker {address} cannot open the data: {answer}")
        if answer[0] != __version__:
            raise BackendError(f"Dask worker {address} runs fastdecomp {answer[0]}, the client {__version__}; "
                               "install the same version on every worker")
        if tuple(answer[1:]) != expected:
            raise BackendError(f"Dask worker {address} opens other data ({answer[1]} images, digest of labels, "
                               f"shape and sampled images {answer[2][:12]}) than the client ({expected[0]}, "
                               f"{expected[1][:12]}); give every worker the same files, and change data only "
                               "through the function that opens it")
    return sorted(answers)


def _probe(description):
    """On a worker: (fastdecomp version, images, data digest), or why it cannot open the data."""
    from . import __version__

    try:
        return (__version__, *_data_digest(description.open()))
    except Exception as error:  # anything the data does on this worker is the answer, not a crash
        return f"{type(error).__name__}: {error}"


def _gather_shard(network, description, shard, classes, options, batch_size, n_jobs):
    """On a worker: the statistics of one shard."""
    with _ONE_SHARD_AT_A_TIME:
        return gather_shard(network, description.open(), shard, classes, options, backends.get(None), batch_size,
                            n_jobs or _worker_threads(), False)


def _worker_threads():
    from distributed import get_worker

    try:
        return get_worker().state.nthreads
    except ValueError:  # not on a worker (run inline)
        return None


def _merge_two(a, b):
    return a.merge(b)


def _tree_merge(client, futures, submitted):
    """One future of all ``futures``' statistics merged, pairwise, level by level, on the workers (each
    merge's future also into ``submitted``)."""
    while len(futures) > 1:
        merged = [client.submit(_merge_two, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
        submitted.extend(merged)
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
                    raise type(error)(*error.args) from None
                raise BackendError(f"a shard failed on the cluster: {type(error).__name__}: {error}") from None
            bar.update(parts[future])
    finally:
        bar.close()
