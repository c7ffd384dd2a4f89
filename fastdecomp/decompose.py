"""``decompose``: one streamed pass for all classes, then CI, TI, MC and backtracking."""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np

from . import backends
from .data import DataSource, as_source
from .errors import InputError
from .gathering import StatisticsPass
from .keras_io import from_keras
from .modules import assemble
from .energy import EnergyMeter
from .options import THRESHOLDS, DecompositionOptions
from .sampling import class_ranks, max_tangling_counts, tangling_counts
from .thresholds import labels_digest

__all__ = ["decompose", "DecompositionWarning"]


class DecompositionWarning(UserWarning):
    """A decomposition ran, but its modules may not be what the caller wants (the message says why)."""

_DEFAULTS = DecompositionOptions()


def decompose(model, x, y=None, *, classes=None, mask_at=_DEFAULTS.mask_at, backtrack=_DEFAULTS.backtrack,
              delta=_DEFAULTS.delta, bln_rule=_DEFAULTS.bln_rule, ti_ratio=_DEFAULTS.ti_ratio,
              concerned=_DEFAULTS.concerned, seed=_DEFAULTS.seed, activity_threshold=_DEFAULTS.activity_threshold,
              tangling_threshold=_DEFAULTS.tangling_threshold, channel_threshold=_DEFAULTS.channel_threshold,
              batch_size=256, backend=None, progress=True, n_jobs=None, client=None, shards=None):
    """Decompose a trained classifier into one module per class.

    Implements docs/method.md sections 1-4 (Pan & Rajan, ICSE 2022) in one
    streamed pass over the data for all classes.

    Parameters
    ----------
    model : keras.Model, str, Path or Network
        A trained classifier ending in a softmax Dense layer, or its file.
    x : numpy.ndarray or DataSource
        Training images (or a source, then ``y`` is omitted).
    y : numpy.ndarray, optional
        Integer class labels.
    classes : sequence of int, optional
        Classes to build modules for (default: all).
    mask_at, backtrack, delta, bln_rule, ti_ratio, concerned, seed :
        What the decomposition computes; see :class:`DecompositionOptions`.
    activity_threshold, tangling_threshold, channel_threshold :
        Smaller modules than the paper's (:class:`DecompositionOptions`);
        other than 0, 0 and None they take a second pass over ``x``, on this
        machine's CPU, to count activity (:meth:`ModuleSet.thresholded`).
    batch_size : int
    backend : str or device, optional
        Where the pass runs (:mod:`fastdecomp.backends`; default
        ``FASTDECOMP_BACKEND``, else ``"cpu"``). ``"cuda"`` streams batches to
        a GPU through pinned memory and keeps the statistics there,
        bit-packed (needs ``pip install 'fastdecomp[gpu]'``); ``"auto"``
        takes the GPU when one is reachable, else the CPU;
        ``"emulated-cuda"`` runs the GPU code path with its CUDA kernels
        compiled for the CPU, for testing (slow). ``"dask"`` runs the pass
        on a Dask cluster, shard by shard (:mod:`fastdecomp.cluster`; needs
        ``pip install 'fastdecomp[dist]'`` and data the workers can open,
        e.g. from :func:`fastdecomp.data.open_data`); each worker uses its
        ``FASTDECOMP_BACKEND``. The modules are bit-identical whichever
        backend computed them.
    progress : bool
        Show a progress bar.
    n_jobs : int, optional
        Threads on the CPU, each running whole batches (default: every core,
        or ``FASTDECOMP_JOBS``; on Dask, the worker's threads). The result
        does not depend on it.
    client : distributed.Client, optional
        With ``backend="dask"``: the cluster (default: the current client).
    shards : int, optional
        With ``backend="dask"``: how many shards the data is cut into
        (default: two per worker).

    Returns
    -------
    ModuleSet
    """
    thresholds = dict(activity_threshold=activity_threshold, tangling_threshold=tangling_threshold,
                      channel_threshold=channel_threshold)
    options = DecompositionOptions(mask_at=mask_at, backtrack=backtrack, delta=delta, bln_rule=bln_rule,
                                   ti_ratio=ti_ratio, concerned=concerned, seed=seed, **thresholds)
    device = None if backend == "dask" else backends.get(backend)  # a missing GPU is said before data is read
    network, source, classes = _prepared(model, x, y, classes, batch_size)
    with EnergyMeter() as meter:
        modules = _decomposed(network, source, classes, options, device, client, shards, batch_size, n_jobs,
                              progress)
    modules.info["energy"] = meter.result
    return modules


def _decomposed(network, source, classes, wanted, device, client, shards, batch_size, n_jobs, progress):
    """The pass, the modules from its statistics, and the thresholds' counting pass where they need one."""
    started = time.perf_counter()
    options = wanted.replace(activity_threshold=0.0, tangling_threshold=0.0, channel_threshold=None)
    if device is None:
        from .cluster import gather_on_cluster

        merged = gather_on_cluster(network, source, classes, options, client=client, shards=shards,
                                   batch_size=batch_size, n_jobs=n_jobs, progress=progress)
        stats, correct = merged.statistics, merged.correct
    else:
        if client is not None or shards is not None:
            raise InputError("client= and shards= are for backend='dask'")
        gathered = StatisticsPass(network, source, np.arange(len(source)), classes, options, device)
        stats, correct = gathered.run(batch_size, n_jobs, progress)
    statistics_seconds = time.perf_counter() - started
    modules = build_modules(network, source.labels, classes, options, stats, correct)
    if wanted.thresholded:
        thresholds = {name: getattr(wanted, name) for name in THRESHOLDS}
        modules = modules.thresholded(modules.activity_counts(source, batch_size=batch_size), **thresholds)
    modules.info.update(statistics_seconds=statistics_seconds, seconds=time.perf_counter() - started)
    return modules


def _prepared(model, x, y, classes, batch_size):
    """The network, the data as a source, and the checked classes."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    network = from_keras(model)
    source = x if isinstance(x, DataSource) and y is None else as_source(x, y)
    return network, source, _checked_classes(network, source, classes)


def build_modules(network, labels, classes, options, stats, correct):
    """The modules from one pass's statistics over all of ``labels`` (CI, TI, MC and backtracking).

    Parameters
    ----------
    network : Network
    labels : numpy.ndarray
        int64, one per image of the data.
    classes : list of int
    options : DecompositionOptions
    stats : ActivityStatistics
        On the host, gathered over every image.
    correct : numpy.ndarray
        bool per image: the model classified it correctly.

    Returns
    -------
    ModuleSet
    """
    started = time.perf_counter()
    _check_concerned(stats, classes, options)
    class_sizes = np.bincount(labels, minlength=network.num_classes)
    tangling = np.stack([tangling_counts(k, stats.concerned_count[k], class_sizes, options.ti_ratio, options.seed)
                         for k in classes])
    base_keep = stats.keep(classes, tangling, release=True)
    samples = _samples(labels, correct, classes, options, tangling, network.num_classes)
    alone = [k for k, unconcerned in zip(classes, samples[1]) if options.ti_ratio > 0 and len(unconcerned) == 0]
    if alone:
        warnings.warn(f"the modules of classes {alone} saw no input of any other class (the data holds no other "
                      "class), so tangling identification kept nothing for them: they will not tell their class "
                      "from others. Decompose with data of several classes", DecompositionWarning, stacklevel=2)
    if options.thresholded:
        raise InputError("thresholds need a second pass over the data: build the paper's modules, then apply "
                         "them with modules.thresholded(data, ...)")
    info = {"num_images": len(labels), "train_top1": float(correct.mean()) if len(labels) else 0.0,
            "labels_sha256": labels_digest(labels)}
    concerned_bits = {name: active[classes] for name, active in stats.active.items()}
    modules = assemble(network, classes, options, base_keep, samples, info, concerned_bits)
    modules.info["seconds"] = time.perf_counter() - started
    return modules


def _samples(labels, correct, classes, options, tangling, num_classes):
    """Each module's concerned inputs, and its unconcerned sample (docs/method.md section 2)."""
    concerned = [np.flatnonzero((labels == k) & (correct if options.concerned == "correct" else True))
                 for k in classes]
    ranks = class_ranks(labels, num_classes, options.seed)
    rank_limit = max_tangling_counts(np.bincount(labels, minlength=num_classes), options.ti_ratio, options.seed,
                                     classes)
    ranked = {}  # class -> its inputs in rank order, among those any sample can reach
    for c in np.flatnonzero(rank_limit):
        members = np.flatnonzero((labels == c) & (ranks < rank_limit[c]))
        ranked[c] = members[np.argsort(ranks[members])]
    unconcerned = []
    for i in range(len(classes)):
        picked = [ranked[c][:tangling[i, c]] for c in np.flatnonzero(tangling[i])]
        unconcerned.append(np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64))
    return concerned, unconcerned


def _check_concerned(stats, classes, options):
    empty = [k for k in classes if stats.concerned_count[k] == 0]
    if empty:
        raise InputError(
            f"classes {empty} have no {'correctly classified ' if options.concerned == 'correct' else ''}"
            "inputs in the data, so no module can be built for them; pass more data, "
            "leave them out with classes=, or use concerned='all'")


def _checked_classes(network, source, classes):
    """The classes to decompose, after checking the data against the model."""
    if tuple(source.sample_shape) != network.input_shape:
        raise InputError(
            f"the data's images have shape {tuple(source.sample_shape)} but the model takes "
            f"{network.input_shape}; resize or reshape the images")
    if len(source) == 0:
        raise InputError("the data has no images")
    labels = source.labels
    if labels.max() >= network.num_classes:
        raise InputError(
            f"labels go up to {labels.max()} but the model has {network.num_classes} classes "
            f"(0..{network.num_classes - 1}); are these the model's labels?")
    if network.num_classes < 2:
        raise InputError("the model must have at least two classes")
    if classes is not None and (isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__")
                                or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
                                           for c in classes)):
        raise InputError(f"classes must be a list of class numbers, got {classes!r}")
    classes = list(range(network.num_classes)) if classes is None else [int(c) for c in classes]
    unknown = [c for c in classes if not 0 <= c < network.num_classes]
    if unknown:
        raise InputError(f"classes {unknown} are not classes of the model (0..{network.num_classes - 1})")
    if len(set(classes)) != len(classes) or not classes:
        raise InputError(f"classes must be a non-empty list without repeats, got {classes}")
    absent = [c for c in classes if not (labels == c).any()]
    if absent:
        raise InputError(f"classes {absent} have no inputs in the data; pass data of every "
                         "class you decompose, or leave them out with classes=")
    return classes
