"""Module size as a measured choice: per-module activity counts, and masks that keep what enough inputs use.

The paper keeps a node when *any* concerned input activates it (concern
identification) or any input of the module's unconcerned sample does (tangling
identification). Here a node is kept by CI when at least a fraction
``activity_threshold`` of the concerned inputs activate it (and one at least),
and by TI when at least ``tangling_threshold`` of the unconcerned sample does.
With ``channel_threshold`` a channel of a map is then kept whole when that
fraction of its positions is kept, and removed whole otherwise, so pruning can
drop it. At thresholds 0 and no channel threshold the masks are the paper's,
bit for bit.

The counts take a second pass over the decomposition's data (the samples are
known only after the first). They are counted per node where
``modules x nodes`` counts fit in the ``activity_count_bytes`` setting, and
per channel otherwise (a channel counts an input when it activates any of its
positions); :attr:`ActivityCounts.level` says which.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import backends, config
from .data import Subset, as_input_source
from .errors import InputError
from .network import check_finite

__all__ = ["ActivityCounts", "count_activity", "thresholded_keep", "labels_digest", "COUNT_LEVELS"]

COUNT_LEVELS = ("node", "channel")


class ActivityCounts:
    """How many of each module's concerned and unconcerned inputs activate each node (or channel).

    Parameters
    ----------
    level : {"node", "channel"}
    shapes : dict
        Mask-point name -> output shape.
    concerned, unconcerned : dict
        Mask-point name -> int32 ``[M, units]``: units are the nodes (level
        ``node``) or the channels (level ``channel``) of the mask point.
    concerned_size, unconcerned_size : numpy.ndarray
        int64 ``[M]``: each module's number of concerned and unconcerned inputs.
    """

    def __init__(self, level, shapes, concerned, unconcerned, concerned_size, unconcerned_size):
        self.level = level
        self.shapes = shapes
        self.concerned, self.unconcerned = concerned, unconcerned
        self.concerned_size = np.asarray(concerned_size, dtype=np.int64)
        self.unconcerned_size = np.asarray(unconcerned_size, dtype=np.int64)

    def __repr__(self):
        return f"ActivityCounts(level={self.level!r}, {len(self.concerned_size)} modules, {len(self.shapes)} mask points)"


def labels_digest(labels):
    """SHA-256 of a data set's labels, to recognise the data a decomposition saw.

    Parameters
    ----------
    labels : numpy.ndarray
    """
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def count_activity(modules, x, y=None, *, batch_size=256, level=None, backend=None):
    """Count, for every module, how many of its concerned and unconcerned inputs activate each node.

    Parameters
    ----------
    modules : ModuleSet
    x : numpy.ndarray or DataSource
        The data the modules were decomposed from (checked against their
        samples and, where recorded, the digest of its labels).
    y : numpy.ndarray, optional
        Labels, with an array ``x``.
    batch_size : int
    level : {"node", "channel"}, optional
        Default: ``node`` where the counts fit in the ``activity_count_bytes``
        setting, else ``channel``.
    backend : str or device, optional
        Where the pass runs (:func:`fastdecomp.backends.get`): the forward, the activity and the
        counting products stay on that device; the counts come back once, at the end.

    Returns
    -------
    ActivityCounts
    """
    network = modules.network
    if y is None and not hasattr(x, "labels"):
        raise InputError("counting activity needs the data's labels: pass y with an array x, or a DataSource")
    source = as_input_source(x, network.input_shape, y)
    _check_same_data(modules, source)
    shapes = {name: keep.shape[1:] for name, keep in modules.base_masks.items()}
    level = _level(level, len(modules), shapes)
    concerned, unconcerned = modules.samples()
    rows = np.unique(np.concatenate(concerned + unconcerned))
    device = backends.get(backend)
    xp = device.xp
    with device.compute():
        membership = [device.asarray(_membership(indices, rows)) for indices in (concerned, unconcerned)]
        tables = [{name: xp.zeros((len(modules), _units(shape, level)), np.int32) for name, shape in shapes.items()}
                  for _ in range(2)]
    subset = Subset(source, rows)
    for positions, _, values, _ in network.iter_mask_values(subset, mask_at=modules.options.mask_at,
                                                            batch_size=batch_size, backend=device):
        for name, v in values.items():
            check_finite(v, rows[positions], name, backend=device)
            with device.compute():
                active, columns = _active_units(v, level), device.asarray(positions)
                for member, table in zip(membership, tables):
                    table[name] += (member[:, columns] @ active).astype(np.int32)
    concerned_counts, unconcerned_counts = ({name: device.to_host(t) for name, t in table.items()} for table in tables)
    return ActivityCounts(level, shapes, concerned_counts, unconcerned_counts, [len(c) for c in concerned],
                          [len(u) for u in unconcerned])


def thresholded_keep(modules, counts, options):
    """Every module's masks after CI and TI under ``options``' thresholds (before backtracking).

    Parameters
    ----------
    modules : ModuleSet
        Unthresholded: its masks are the paper's CI and TI.
    counts : ActivityCounts
        From :func:`count_activity` over the same modules' data.
    options : DecompositionOptions

    Returns
    -------
    dict
        Mask-point name -> bool ``[M] + shape``.
    """
    concerned, unconcerned = modules.samples()
    if (counts.shapes != {name: keep.shape[1:] for name, keep in modules.base_masks.items()}
            or list(counts.concerned_size) != [len(c) for c in concerned]
            or list(counts.unconcerned_size) != [len(u) for u in unconcerned]):
        raise InputError("these activity counts were taken for other modules; count them with "
                         "modules.activity_counts(data) of this set")
    concerned_need = _needed(counts.concerned_size, options.activity_threshold)
    unconcerned_need = _needed(counts.unconcerned_size, options.tangling_threshold)
    out = {}
    for name, shape in counts.shapes.items():
        concerned_ok = counts.concerned[name] >= concerned_need[:, None]
        unconcerned_ok = counts.unconcerned[name] >= unconcerned_need[:, None]
        if counts.level == "node" or len(shape) < 2:
            keep = concerned_ok | unconcerned_ok
        else:
            nodes = int(np.prod(shape))
            if modules.concerned_bits is None:
                raise InputError("channel-level counts need the modules' concern bits, which this set does not "
                                 "carry; decompose again")
            by_concern = np.unpackbits(modules.concerned_bits[name], axis=1, count=nodes).view(bool)
            base = modules.base_masks[name].reshape(len(modules), -1, shape[-1])
            by_concern = by_concern.reshape(base.shape)
            keep = ((by_concern & concerned_ok[:, None, :]) | (base & unconcerned_ok[:, None, :]))
        keep = keep.reshape((len(modules),) + tuple(shape))
        if options.channel_threshold is not None and len(shape) == 3:
            keep = _whole_channels(keep, options.channel_threshold)
        out[name] = keep
    return out


def _whole_channels(keep, fraction):
    """Each channel kept at every position when at least ``fraction`` of its positions are kept, else at none."""
    positions = keep.shape[1] * keep.shape[2]
    kept = keep.sum(axis=(1, 2))
    whole = kept >= fraction * positions
    return np.broadcast_to(whole[:, None, None, :], keep.shape).copy()


def _needed(sizes, fraction):
    """The fewest activating inputs a node needs: one, and ``fraction`` of the set (float64 compare)."""
    return np.maximum(1, np.ceil(np.asarray(sizes, dtype=np.float64) * fraction)).astype(np.int64)


def _units(shape, level):
    return int(np.prod(shape)) if level == "node" or len(shape) < 2 else int(shape[-1])


def _active_units(values, level):
    """float32 ``[B, units]``: 1 where the node (or some position of the channel) is active."""
    b = len(values)
    if level == "node" or values.ndim < 3:
        return (values.reshape(b, -1) > 0).astype(np.float32)
    return (values.reshape(b, -1, values.shape[-1]) > 0).any(axis=1).astype(np.float32)


def _membership(samples, rows):
    """float32 ``[M, len(rows)]``: 1 where the row is in module m's sample."""
    member = np.zeros((len(samples), len(rows)), dtype=np.float32)
    for m, indices in enumerate(samples):
        member[m, np.searchsorted(rows, indices)] = 1.0
    return member


def _level(level, num_modules, shapes):
    if level is not None:
        if level not in COUNT_LEVELS:
            raise InputError(f"level must be one of {COUNT_LEVELS} or None, got {level!r}")
        return level
    per_node = 2 * 4 * num_modules * sum(int(np.prod(shape)) for shape in shapes.values())
    return "node" if per_node <= config.get("activity_count_bytes") else "channel"


def _check_same_data(modules, source):
    """Refuse data other than the decomposition's: the samples index into it."""
    expected = modules.info.get("num_images")
    if expected is not None and len(source) != expected:
        raise InputError(f"the modules were decomposed from {expected} images, this data has {len(source)}; "
                         "counting activity needs the same data (its samples index into it)")
    digest = modules.info.get("labels_sha256")
    if digest is not None and labels_digest(source.labels) != digest:
        raise InputError("this data's labels differ from those of the data the modules were decomposed from; "
                         "counting activity needs the same data, in the same order")
    concerned, _ = modules.samples()
    labels = source.labels
    for k, indices in zip(modules.classes, concerned):
        if len(indices) and (indices.max() >= len(labels) or (labels[indices] != k).any()):
            raise InputError(f"module {k}'s concerned inputs are not of class {k} in this data; counting activity "
                             "needs the data the modules were decomposed from")
