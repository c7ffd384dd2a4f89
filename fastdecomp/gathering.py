"""The statistics pass: every class's activity at every mask point, over all images or a shard."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .data import Subset
from .errors import InputError
from .sampling import class_ranks, max_tangling_counts
from .statistics import ActivityStatistics

__all__ = ["StatisticsPass", "gather_shard", "PartialStatistics", "fingerprint", "shard_rows", "progress_bar"]


@dataclass(frozen=True)
class PartialStatistics:
    """The statistics of a pass over some of the images.

    Parameters
    ----------
    fingerprint : str
        Digest of what the statistics depend on: the network's weights, the
        labels, the classes and the options of the pass.
    num_images : int
        Images in the whole data set.
    rows : numpy.ndarray
        int64, sorted: the images gathered.
    correct : numpy.ndarray
        bool per row: the model classified it correctly.
    statistics : ActivityStatistics
        On the host.
    """

    fingerprint: str
    num_images: int
    rows: np.ndarray
    correct: np.ndarray
    statistics: ActivityStatistics

    @property
    def complete(self):
        """Every image of the data set is in."""
        return len(self.rows) == self.num_images

    def merge(self, other):
        """These statistics and ``other``'s, of other images of the same pass.

        Parameters
        ----------
        other : PartialStatistics

        Returns
        -------
        PartialStatistics
        """
        if not isinstance(other, PartialStatistics) or other.fingerprint != self.fingerprint:
            raise InputError("these statistics come from another model, label set, class list or options "
                             "(their fingerprints differ); merge only shards of one decomposition")
        if np.intersect1d(self.rows, other.rows).size:
            raise InputError(f"images {np.intersect1d(self.rows, other.rows)[:5].tolist()} are in both sets of "
                             "statistics: a shard was given twice")
        rows = np.concatenate([self.rows, other.rows])
        order = np.argsort(rows, kind="stable")
        correct = np.concatenate([self.correct, other.correct])[order]
        return PartialStatistics(self.fingerprint, self.num_images, rows[order], correct,
                                 self.statistics.merged(other.statistics))


def model_fingerprint(network):
    """SHA-256 (hexadecimal) of a network's layers, their settings and weights.

    Parameters
    ----------
    network : Network
    """
    hasher = hashlib.sha256()
    for layer in network.layers:
        hasher.update(f"{layer.name}|{layer.kind}|{layer.shape}|{sorted(layer.config.items())}".encode())
        for key in sorted(layer.weights):
            hasher.update(np.ascontiguousarray(layer.weights[key]).tobytes())
    return hasher.hexdigest()


def fingerprint(network, labels, classes, options):
    """Digest of what a pass's statistics depend on (not the backtracking, applied afterwards).

    Parameters
    ----------
    network : Network
    labels : numpy.ndarray
        Of the whole data set.
    classes : list of int
    options : DecompositionOptions

    Returns
    -------
    str
        SHA-256, hexadecimal.
    """
    hasher = hashlib.sha256(model_fingerprint(network).encode())
    hasher.update(np.asarray(labels, dtype=np.int64).tobytes())
    hasher.update(repr((list(classes), options.mask_at, options.ti_ratio, options.concerned, options.seed)).encode())
    return hasher.hexdigest()


def shard_rows(num_images, shard):
    """The images of shard ``(index, count)``: ``count`` contiguous ranges as even as they can be.

    Parameters
    ----------
    num_images : int
    shard : (int, int)

    Returns
    -------
    numpy.ndarray
        int64 image numbers.
    """
    index, count = shard
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise InputError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return np.array_split(np.arange(num_images, dtype=np.int64), count)[index]


def gather_shard(network, source, shard, classes, options, device, batch_size, n_jobs, progress):
    """The statistics of shard ``(index, count)`` of ``source``, ranked among all its images.

    Parameters
    ----------
    network : Network
    source : DataSource
        The whole data set.
    shard : (int, int)
    classes : list of int
    options : DecompositionOptions
    device : device
    batch_size : int
    n_jobs : int or None
    progress : bool

    Returns
    -------
    PartialStatistics
    """
    rows = shard_rows(len(source), shard)
    stats, correct = StatisticsPass(network, source, rows, classes, options, device).run(batch_size, n_jobs, progress)
    return PartialStatistics(fingerprint(network, source.labels, classes, options), len(source), rows, correct, stats)


class StatisticsPass:
    """The one pass over the data: every class's activity at every mask point, and each image's correctness.

    Parameters
    ----------
    network : Network
    source : DataSource
        The whole data set: every image is ranked among all of them.
    rows : numpy.ndarray
        int64: the images this pass reads (all of them, or a shard).
    classes : list of int
        The classes modules are built for.
    options : DecompositionOptions
    device : device
        Where the pass runs (:func:`fastdecomp.backends.get`).
    """

    def __init__(self, network, source, rows, classes, options, device):
        self.network, self.options, self.device = network, options, device
        self.source = source if len(rows) == len(source) else Subset(source, rows)
        labels = source.labels
        num_classes = network.num_classes
        self.ranks = class_ranks(labels, num_classes, options.seed)[rows]
        self.rank_limit = max_tangling_counts(np.bincount(labels, minlength=num_classes), options.ti_ratio,
                                              options.seed, classes)
        points = network.mask_points(options.mask_at)
        self.stats = ActivityStatistics({p.name: p.shape for p in points}, num_classes, self.rank_limit, device)
        self.is_module = np.zeros(num_classes, dtype=bool)
        self.is_module[classes] = True
        self.correct = np.zeros(len(rows), dtype=bool)

    def run(self, batch_size, n_jobs, progress):
        """Gather the statistics.

        Parameters
        ----------
        batch_size : int
        n_jobs : int or None
            Threads (on the CPU).
        progress : bool
            Show a bar.

        Returns
        -------
        (ActivityStatistics, numpy.ndarray)
            The statistics on the host, and a bool per row: classified correctly.
        """
        bar = progress_bar(progress, len(self.source), "activity statistics")
        for done in self.device.run_batches(self.gather, self.source.batches(batch_size), n_jobs):
            bar.update(done)
        bar.close()
        return self.stats.to_host(), self.correct

    def gather(self, batch):
        """Fold one batch in; returns its size."""
        positions, xb, yb = batch
        stats, device = self.stats, self.device
        known = self.options.concerned == "all"  # else concern waits for the prediction
        roles = stats.batch_roles(yb, self.ranks[positions], self.is_module[yb] if known else None)
        on_device = [stats.upload(r) for r in roles]
        bits = {}

        def observe(layer, values, packed_activity):
            packed = stats.update(layer.name, values, *on_device, packed=not known, bits=packed_activity)
            if not known:
                bits[layer.name] = packed

        probs = self.network.forward(xb, observe=observe, mask_at=self.options.mask_at, backend=device,
                                     packed_activity=True, observed_reusable=True)
        if not np.isfinite(probs).all():
            raise self._overflow(positions, xb, probs)
        self.correct[positions] = probs.argmax(axis=1) == yb
        concerned_class = roles[0]
        if not known:
            concerned_class = np.where(self.is_module[yb] & self.correct[positions], yb, -1)
            moved = stats.upload(concerned_class)
            for name, packed in bits.items():
                stats.update_concerned(name, packed, moved)
        stats.count(concerned_class)
        return len(positions)

    def _overflow(self, positions, xb, probs):
        """The error for images whose values overflow: it names them and the first layer affected."""
        rows = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        first = []

        def find(layer, values):
            if not first and not np.isfinite(np.asarray(values)).all():
                first.append(layer.keras_name)

        host = np.asarray(xb if isinstance(xb, np.ndarray) else self.device.to_host(xb))[rows]
        self.network.forward(host, observe=find, mask_at=self.options.mask_at, backend="cpu")
        where = f"from layer {first[0]!r} on" if first else "at the output layer"
        return InputError(
            f"images {positions[rows][:5].tolist()}{'...' if len(rows) > 5 else ''} overflow to NaN or inf "
            f"{where} (in the batch of images {positions[0]}..{positions[-1]}); check their scale (values up "
            f"to {float(np.abs(host).max()):.3g}) against what the model was trained on")


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(enabled, total, desc):
    """A tqdm bar over ``total`` images, or one that shows nothing.

    Parameters
    ----------
    enabled : bool
    total : int
    desc : str

    Returns
    -------
    object
        With ``update(n)`` and ``close()``.
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")
