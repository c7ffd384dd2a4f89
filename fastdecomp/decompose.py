"""``decompose``: one streamed pass for all classes, then CI, TI, MC and backtracking."""

from __future__ import annotations

import time

import numpy as np

from .backtrack import BACKTRACKS, BLN_RULES
from .data import DataSource, as_source
from .errors import InputError
from .modules import ModuleSet
from .network import MASK_PLACEMENTS, from_keras
from .parallel import map_batches
from .sampling import class_ranks, max_tangling_counts, tangling_counts
from .statistics import ActivityStatistics

__all__ = ["decompose"]

BACKENDS = ("cpu", "auto", "cuda", "emulated-cuda")


def decompose(model, x, y=None, *, classes=None, mask_at="relu", backtrack="bln", delta=0.5,
              bln_rule="algorithm", ti_ratio=1.0, concerned="correct", batch_size=256, seed=0,
              backend="cpu", progress=True, n_jobs=None):
    """Decompose a trained classifier into one module per class.

    Implements ALGORITHM.md sections 1-4 (Pan & Rajan, ICSE 2022) in one
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
    mask_at : {"relu", "conv"}
        Where nodes are observed and removed: every ReLU output (default;
        exact on the concerned inputs), or every Conv2D/hidden Dense output
        before its activation (the paper's). ALGORITHM.md lets the default
        follow the better on real data: on the zoo models, ``relu`` loses
        0.07 top-1 points (ResNet-20) where ``conv`` loses 0.3, and
        ``conv`` collapses on ResNet-56 (see bench/results/decompose.md).
    backtrack : {None, "bln", "bi"}
        CI+TI+MC, CI+TI+MC-BLN, or CI+TI+MC-BLN+MC-BI.
    delta : float
        MC-BLN threshold (the paper's 0.5).
    bln_rule : {"algorithm", "prose"}
        Which reading of the paper's MC-BLN rule to use.
    ti_ratio : float
        Size of each unconcerned sample relative to the concerned set; 0 turns
        tangling identification off (CI + MC only).
    concerned : {"correct", "all"}
        Concerned inputs: the class's images the model classifies correctly, or all.
    batch_size : int
    seed : int
        Seed of the tangling samples.
    backend : {"cpu", "auto", "cuda", "emulated-cuda"}
        Where the pass runs. ``"cuda"`` streams batches to a GPU through
        pinned memory and keeps the statistics there, bit-packed (needs
        ``pip install 'fastdecomp[gpu]'``); ``"auto"`` takes the GPU when one
        is reachable, else the CPU; ``"emulated-cuda"`` runs the GPU code path
        with its CUDA kernels compiled for the CPU, for testing (slow). The
        modules are bit-identical whichever backend computed them.
    progress : bool
        Show a progress bar.
    n_jobs : int, optional
        Threads, each running whole batches (default: every core, or
        ``FASTDECOMP_JOBS``). The result does not depend on it.

    Returns
    -------
    ModuleSet
    """
    started = time.perf_counter()
    network = from_keras(model)
    source = x if isinstance(x, DataSource) and y is None else as_source(x, y)
    classes = _check_options(network, source, classes, mask_at, backtrack, delta, bln_rule,
                             ti_ratio, concerned, batch_size, backend)
    num_classes = network.num_classes
    labels = source.labels
    class_sizes = np.bincount(labels, minlength=num_classes)
    ranks = class_ranks(labels, num_classes, seed)
    rank_limit = max_tangling_counts(class_sizes, ti_ratio, seed, classes)
    points = network.mask_points(mask_at)
    device = _device(backend)
    stats = ActivityStatistics({p.name: p.shape for p in points}, num_classes, rank_limit, device)
    is_module = np.zeros(num_classes, dtype=bool)
    is_module[classes] = True
    correct = np.zeros(len(source), dtype=bool)

    def gather(batch):
        positions, xb, yb = batch
        known = concerned == "all"  # else concern waits for the prediction
        roles = stats.batch_roles(yb, ranks[positions], is_module[yb] if known else None)
        on_device = roles if device is None else [device.asarray(r) for r in roles]
        bits = {}

        def observe(layer, values, packed_activity):
            packed = stats.update(layer.name, values, *on_device, packed=not known, bits=packed_activity)
            if not known:
                bits[layer.name] = packed

        probs = network.forward(xb, observe=observe, mask_at=mask_at, device=device, packed_activity=True,
                                observed_reusable=True)
        correct[positions] = probs.argmax(axis=1) == yb
        concerned_class = roles[0]
        if not known:
            concerned_class = np.where(is_module[yb] & correct[positions], yb, -1)
            moved = concerned_class if device is None else device.asarray(concerned_class)
            for name, packed in bits.items():
                stats.update_concerned(name, packed, moved)
        stats.count(concerned_class)
        return len(positions)

    bar = _progress(progress, len(source), "activity statistics")
    if device is None:
        for done in map_batches(gather, source.batches(batch_size), n_jobs):
            bar.update(done)
    else:
        for batch in device.streamed(source.batches(batch_size)):
            bar.update(gather(batch))
        device.synchronize()
        stats = stats.to_host()
    bar.close()
    stats_seconds = time.perf_counter() - started

    empty = [k for k in classes if stats.concerned_count[k] == 0]
    if empty:
        raise InputError(
            f"classes {empty} have no {'correctly classified ' if concerned == 'correct' else ''}"
            "inputs in the data, so no module can be built for them; pass more data, "
            "leave them out with classes=, or use concerned='all'")

    tangling = np.stack([tangling_counts(k, stats.concerned_count[k], class_sizes, ti_ratio, seed)
                         for k in classes])
    base_keep = stats.keep(classes, tangling, release=True)

    concerned_idx = [np.flatnonzero((labels == k) & (correct if concerned == "correct" else True))
                     for k in classes]
    ranked = {}  # class -> its inputs in rank order, among those any sample can reach
    for c in np.flatnonzero(rank_limit):
        members = np.flatnonzero((labels == c) & (ranks < rank_limit[c]))
        ranked[c] = members[np.argsort(ranks[members])]
    unconcerned_idx = []
    for i in range(len(classes)):
        picked = [ranked[c][:tangling[i, c]] for c in np.flatnonzero(tangling[i])]
        unconcerned_idx.append(np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64))

    info = {
        "num_images": len(source), "statistics_seconds": stats_seconds,
        "seconds": time.perf_counter() - started,
        "train_top1": float(correct.mean()) if len(source) else 0.0,
    }
    options = {"mask_at": mask_at, "backtrack": backtrack, "delta": float(delta), "bln_rule": bln_rule,
               "ti_ratio": float(ti_ratio), "concerned": concerned, "seed": int(seed)}
    concerned_bits = {name: active[classes] for name, active in stats.active.items()}
    modules = ModuleSet(network, list(classes), options, base_keep, concerned_idx, unconcerned_idx, info,
                        concerned_bits)
    modules.info["seconds"] = time.perf_counter() - started
    return modules


def _device(backend):
    from .kernels.gpu import get_device

    return get_device(backend)


def _check_options(network, source, classes, mask_at, backtrack, delta, bln_rule, ti_ratio,
                   concerned, batch_size, backend):
    if mask_at not in MASK_PLACEMENTS:
        raise InputError(f"mask_at must be one of {MASK_PLACEMENTS}, got {mask_at!r}")
    if backtrack not in BACKTRACKS:
        raise InputError(f"backtrack must be one of {BACKTRACKS}, got {backtrack!r}")
    if bln_rule not in BLN_RULES:
        raise InputError(f"bln_rule must be one of {BLN_RULES}, got {bln_rule!r}")
    if concerned not in ("correct", "all"):
        raise InputError(f"concerned must be 'correct' or 'all', got {concerned!r}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not np.isfinite(delta) or delta < 0:
        raise InputError(f"delta must be a finite number >= 0, got {delta!r}")
    if not np.isfinite(ti_ratio) or ti_ratio < 0:
        raise InputError(f"ti_ratio must be a number >= 0 (0 turns TI off), got {ti_ratio!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
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
    if classes is None:
        classes = list(range(network.num_classes))
    classes = [int(c) for c in classes]
    unknown = [c for c in classes if not 0 <= c < network.num_classes]
    if unknown:
        raise InputError(f"classes {unknown} are not classes of the model (0..{network.num_classes - 1})")
    if len(set(classes)) != len(classes) or not classes:
        raise InputError(f"classes must be a non-empty list without repeats, got {classes}")
    absent = [c for c in classes if not (labels == c).any()]
    if absent:
        raise InputError(f"classes {absent} have no inputs in the data; pass data of every "
                         "class you decompose, or leave them out with classes=")
    if network.num_classes < 2:
        raise InputError("the model must have at least two classes")
    return classes


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(enabled, total, desc):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")
