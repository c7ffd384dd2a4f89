"""A decomposition split over shards of the data: statistics gathered per shard, merged, then modules.

The statistics of the pass are commutative monoids (activity ORed, first
ranks by minimum, counts summed), so shards gathered anywhere (processes,
machines, array jobs) merge into the statistics of the whole pass, bit for
bit, in any grouping and order. Every shard ranks its images among all of
them (the tangling sample depends only on the labels and the seed), so each
needs the labels of the whole data set, not its images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import backends
from .decompose import _DEFAULTS, _prepared, build_modules
from .gathering import PartialStatistics, fingerprint, gather_shard
from .errors import InputError
from .options import DecompositionOptions
from .statistics import ActivityStatistics

__all__ = ["PartialStatistics", "gather_statistics", "merge", "modules_from_statistics", "save_statistics",
           "load_statistics"]


def _options(mask_at, backtrack, delta, bln_rule, ti_ratio, concerned, seed):
    return DecompositionOptions(mask_at=mask_at, backtrack=backtrack, delta=delta, bln_rule=bln_rule,
                                ti_ratio=ti_ratio, concerned=concerned, seed=seed)


def gather_statistics(model, x, y=None, *, shard=(0, 1), classes=None, mask_at=_DEFAULTS.mask_at,
                      ti_ratio=_DEFAULTS.ti_ratio, concerned=_DEFAULTS.concerned, seed=_DEFAULTS.seed,
                      batch_size=256, backend=None, progress=False, n_jobs=None):
    """The statistics of one shard of the data (the pass of :func:`fastdecomp.decompose`).

    Parameters
    ----------
    model, x, y, classes, batch_size, backend, progress, n_jobs :
        As :func:`fastdecomp.decompose` takes them; ``x``/``y`` are the whole
        data set (a source reads only the shard's images).
    shard : (int, int)
        ``(index, count)``: this shard of ``count`` contiguous ranges.
    mask_at, ti_ratio, concerned, seed :
        The options the statistics depend on.

    Returns
    -------
    PartialStatistics
    """
    options = _options(mask_at, _DEFAULTS.backtrack, _DEFAULTS.delta, _DEFAULTS.bln_rule, ti_ratio, concerned, seed)
    network, source, classes = _prepared(model, x, y, classes, batch_size)
    return gather_shard(network, source, shard, classes, options, backends.get(backend), batch_size, n_jobs,
                        progress)


def merge(parts):
    """Merge the statistics of shards (in any order) into one.

    Parameters
    ----------
    parts : iterable of PartialStatistics

    Returns
    -------
    PartialStatistics
    """
    parts = list(parts)
    if not parts:
        raise InputError("no statistics to merge")
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def modules_from_statistics(model, statistics, y, *, classes=None, mask_at=_DEFAULTS.mask_at,
                            backtrack=_DEFAULTS.backtrack, delta=_DEFAULTS.delta, bln_rule=_DEFAULTS.bln_rule,
                            ti_ratio=_DEFAULTS.ti_ratio, concerned=_DEFAULTS.concerned, seed=_DEFAULTS.seed):
    """The modules :func:`fastdecomp.decompose` builds, from merged statistics of every shard.

    Parameters
    ----------
    model : keras.Model, str, Path or Network
    statistics : PartialStatistics
        Of every image (:func:`merge` of all shards).
    y : numpy.ndarray
        The labels of the whole data set.
    classes, mask_at, backtrack, delta, bln_rule, ti_ratio, concerned, seed :
        As for :func:`fastdecomp.decompose`; those the pass depends on must be the pass's.

    Returns
    -------
    ModuleSet
    """
    from .keras_io import from_keras

    options = _options(mask_at, backtrack, delta, bln_rule, ti_ratio, concerned, seed)
    network = from_keras(model)
    labels = np.asarray(y, dtype=np.int64)
    classes = list(range(network.num_classes)) if classes is None else [int(k) for k in classes]
    if fingerprint(network, labels, classes, options) != statistics.fingerprint:
        raise InputError("the statistics were gathered with another model, labels, classes or options "
                         "(mask_at, ti_ratio, concerned, seed) than these; give the pass's")
    if not statistics.complete:
        missing = np.setdiff1d(np.arange(statistics.num_images), statistics.rows)
        raise InputError(f"{len(missing)} images have no statistics (from image {missing[0]} on): a shard is "
                         "missing; merge the statistics of every shard first")
    return build_modules(network, labels, classes, options, statistics.statistics, statistics.correct)


def save_statistics(part, path, *, overwrite=False, sources=None):
    """Save a shard's statistics to a directory, atomically, checksummed like a module set.

    Parameters
    ----------
    part : PartialStatistics
    path : str or Path
    overwrite : bool
        Replace a statistics directory already there.
    sources : dict, optional
        Where the model and data came from (the CLI's ``model``, ``data``,
        ``limit``), so that a merge can find them again.
    """
    from .saving import STATISTICS, FORMATS, _sha256, _write_manifest
    from .storage import atomic_directory

    stats = part.statistics
    arrays = {"rows": part.rows, "correct": part.correct, "concerned_count": stats.concerned_count,
              "rank_limit": stats.rank_limit}
    for j, name in enumerate(stats.shapes):
        arrays[f"active{j}"], arrays[f"first_rank{j}"] = stats.active[name], stats.first_rank[name]
    with atomic_directory(Path(path), overwrite, replaceable=_is_statistics) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        _write_manifest(tmp / "manifest.json", {
            "format": STATISTICS, "version": FORMATS[STATISTICS][1], "fingerprint": part.fingerprint,
            "num_images": part.num_images, "num_classes": stats.num_classes,
            "points": [{"name": n, "shape": list(shape)} for n, shape in stats.shapes.items()],
            "sources": dict(sources or {}), "sha256": {"arrays.npz": _sha256(tmp / "arrays.npz")}})
    return Path(path)


def _is_statistics(path):
    from .saving import STATISTICS, _format

    try:
        return {p.name for p in Path(path).iterdir()} == {"manifest.json", "arrays.npz"} and \
            _format(Path(path) / "manifest.json") == STATISTICS
    except (OSError, ValueError, AttributeError):
        return False


def load_statistics(path):
    """A shard's statistics as :func:`save_statistics` wrote them, every array checked before use.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    PartialStatistics
    """
    from .errors import ModelFileError
    from .saving import STATISTICS, _read_arrays, read_manifest

    manifest = read_manifest(Path(path), STATISTICS)
    arrays = _read_arrays(Path(path), manifest)
    try:
        return _checked_statistics(manifest, arrays)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: the statistics are inconsistent ({exc}); gather that shard again") from exc


def _checked_statistics(manifest, arrays):
    count, classes = manifest["num_images"], manifest["num_classes"]
    rows, correct = arrays["rows"], arrays["correct"]
    _expect(rows.dtype == np.int64 and rows.ndim == 1 and (np.diff(rows) > 0).all()
            and (not rows.size or 0 <= rows[0] <= rows[-1] < count), "rows: sorted image numbers")
    _expect(correct.dtype == np.bool_ and correct.shape == rows.shape, "correct: a bool per row")
    rank_limit = arrays["rank_limit"]
    _expect(rank_limit.dtype == np.int64 and rank_limit.shape == (classes,) and (rank_limit >= 0).all()
            and arrays["concerned_count"].dtype == np.int64 and arrays["concerned_count"].shape == (classes,),
            "rank_limit and concerned_count: one integer per class")
    shapes = {p["name"]: tuple(p["shape"]) for p in manifest["points"]}
    stats = ActivityStatistics(shapes, classes, rank_limit, backends.get("cpu"))
    for j, name in enumerate(shapes):
        for table, kept in (("active", stats.active), ("first_rank", stats.first_rank)):
            loaded = arrays[f"{table}{j}"]
            _expect(loaded.dtype == kept[name].dtype and loaded.shape == kept[name].shape, f"{table} of {name}")
            kept[name] = loaded
        _expect(int(stats.first_rank[name].max(initial=0)) <= stats.never, f"first ranks of {name}")
    concerned_count = arrays["concerned_count"]
    _expect((concerned_count >= 0).all() and concerned_count.sum() <= len(rows),
            f"concerned_count: counts of this shard's {len(rows)} images, each 0 or more, "
            f"got {concerned_count.min(initial=0)} .. {concerned_count.max(initial=0)} summing to "
            f"{concerned_count.sum()}")
    stats.concerned_count = concerned_count
    return PartialStatistics(manifest["fingerprint"], count, rows, correct, stats)


def _expect(condition, what):
    if not condition:
        raise ValueError(what)
