"""How good, how small and how independent modules are: the metrics of the modularization literature.

Accuracy (top-k, per class precision/recall/F1, k-of-N reuse), size (node
Jaccard index, kernel retention rate, parameter fraction, FLOPs),
independence (coupling, cohesion, overlap) and cost (latency; energy in
:mod:`fastdecomp.energy`). Each function's docstring gives its formula and
the paper it comes from; masks are compared as packed bits by popcount
(docs/method.md section 7).
"""

from __future__ import annotations

import copy
import itertools
import math
import time

import numpy as np

from . import backends
from .data import Subset, as_input_source
from .errors import InputError
from .pruning import dead_channels

__all__ = ["topk_accuracy", "jaccard", "sizes", "JACCARD_KINDS", "kernel_retention", "kernel_masks",
           "parameter_fraction", "flops", "pairwise_jaccard", "coupling", "overlap", "cohesion",
           "per_class_scores", "composition_scores", "reuse_accuracy", "reuse_from_margins", "latency", "composed_margins"]

JACCARD_KINDS = ("nodes", "weights")


def topk_accuracy(scores, labels, classes, k):
    """Share of rows whose label is among the ``k`` best-scored ``classes``.

    Parameters
    ----------
    scores : numpy.ndarray
        ``[N, len(classes)]``, higher is better; ties go to the earlier column.
    labels : numpy.ndarray
        ``[N]`` true labels.
    classes : sequence of int
        The label of each column.
    k : int

    Returns
    -------
    float
    """
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((np.asarray(classes)[top] == np.asarray(labels)[:, None]).any(axis=1).mean())


def jaccard(modules, k, kind="nodes"):
    """Jaccard index between module ``k`` and its model (lower: more different).

    Parameters
    ----------
    modules : ModuleSet
    k : int
        The module's class.
    kind : {"nodes", "weights"}
        ``nodes``: kept nodes / all nodes over the mask points.
        ``weights``: the authors' scripts' definition, labelled as such: the
        intersection over union of the *sets of values* of the flattened
        weights the module keeps (removed weights zeroed, output layer
        channeled) and the model's. The paper's JI figures use it.

    Returns
    -------
    float
    """
    if kind == "nodes":
        masks = modules.masks(k)
        return float(sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values()))
    if kind != "weights":
        raise InputError(f"kind must be one of {JACCARD_KINDS}, got {kind!r}")
    network = modules.network
    module = modules.pruned(k, drop_channels=False)
    model_values, module_values = [], []
    for original, kept in zip(network.layers, module.layers):
        for key, w in original.weights.items():
            model_values.append(w.ravel())
            if original.name != network.output_dense:
                module_values.append(kept.weights[key].ravel())
    module_values += [module.head[0].ravel(), module.head[1].ravel()]
    a = np.unique(np.concatenate(model_values))
    b = np.unique(np.concatenate(module_values))
    return float(len(np.intersect1d(a, b, assume_unique=True)) / len(np.union1d(a, b)))


def sizes(modules, k):
    """Size of module ``k`` against its model.

    Parameters
    ----------
    modules : ModuleSet
    k : int

    Returns
    -------
    dict
        ``kept_nodes``, ``nodes``, ``kept_channels``, ``channels`` (channels
        of the layers that own them, not removed at every position),
        ``parameters`` (after physical pruning), ``model_parameters``.
    """
    network = modules.network
    masks = modules.masks(k, names="network")
    channels = kept_channels = 0
    for layer in network.layers:
        if layer.handler.prunes_channels:
            channels += layer.shape[-1]
            kept_channels += int((~dead_channels(network, layer, masks)).sum())
    model_parameters = sum(w.size for l in network.layers for w in l.weights.values())
    return {
        "kept_nodes": int(sum(m.sum() for m in masks.values())),
        "nodes": int(sum(m.size for m in masks.values())),
        "kept_channels": kept_channels, "channels": channels,
        "parameters": modules.pruned(k).parameter_count(),
        "model_parameters": int(model_parameters),
    }


def kernel_retention(modules, k):
    """Kernel retention rate (KRR, MwT ICSE'24): the share of convolution kernels module ``k`` keeps.

    A kernel is one output channel of a layer that owns channels (Conv2D,
    SeparableConv2D): ``KRR = kept kernels / all kernels``, the mean of the
    binary kernel mask.

    Parameters
    ----------
    modules : ModuleSet
    k : int

    Returns
    -------
    dict
        ``masked``: kernels whose output the masks keep at some position (what
        a module run with masks uses); ``pruned``: kernels still present in the
        physically pruned module (:meth:`ModuleSet.pruned`; a removed channel
        stays, zeroed, where a layer that cannot drop it reads it).
    """
    network = modules.network
    live = _kernel_mask(modules, k)
    pruned = modules.pruned(k)
    owners = [layer for layer in network.layers if layer.handler.prunes_channels]
    present = sum(pruned.layers[network.layers.index(layer)].shape[-1] for layer in owners)
    return {"masked": float(live.mean()) if live.size else 1.0,
            "pruned": float(present / live.size) if live.size else 1.0}


def kernel_masks(modules):
    """bool ``[M, kernels]``: each module's kept convolution kernels (see :func:`kernel_retention`).

    Parameters
    ----------
    modules : ModuleSet
    """
    return np.stack([_kernel_mask(modules, k) for k in modules.classes])


def _kernel_mask(modules, k):
    network = modules.network
    masks = modules.masks(k, names="network")
    return np.concatenate([~dead_channels(network, layer, masks) for layer in network.layers
                           if layer.handler.prunes_channels] or [np.zeros(0, bool)])


def parameter_fraction(modules, k):
    """Module ``k``'s parameters over its model's (MODA; Incite's compression ratio is its inverse).

    The module's parameters count its channeled head (``F x 2 + 2``) in place
    of the output layer.

    Parameters
    ----------
    modules : ModuleSet
    k : int

    Returns
    -------
    dict
        ``masked``: parameters not zeroed by removing every channel the masks
        remove everywhere, over the model's; ``pruned``: parameters of the
        physically pruned module over the model's; ``compression_ratio``: the
        model's parameters over the pruned module's.
    """
    network = modules.network
    total = _model_parameters(network)
    removed = _removable_per_kernel(network) @ (~_kernel_mask(modules, k)).astype(np.int64)
    dense = network.by_name[network.output_dense]
    head = sum(w.size for w in modules.head(k)) - sum(w.size for w in dense.weights.values())
    pruned = modules.pruned(k).parameter_count()
    return {"masked": float((total - removed + head) / total), "pruned": float(pruned / total),
            "compression_ratio": float(total / pruned)}


def flops(modules, k):
    """Floating-point operations of one input through module ``k``, pruned, and through its model.

    FLOPs are twice the multiply-accumulates of the layers with weights to
    multiply by (convolutions and Dense layers, as SeaM and CNNSplitter count
    them; :meth:`fastdecomp.layers.LayerKind.multiply_adds`), the channeled
    head included.

    Parameters
    ----------
    modules : ModuleSet
    k : int

    Returns
    -------
    dict
        ``module``, ``model`` (int) and ``fraction``.
    """
    network = modules.network
    pruned = modules.pruned(k)
    module = sum(2 * layer.handler.multiply_adds(pruned.channeled(layer)) for layer in pruned.layers)
    model = sum(2 * layer.handler.multiply_adds(layer) for layer in network.layers)
    return {"module": int(module), "model": int(model), "fraction": float(module / model)}


def pairwise_jaccard(masks):
    """Jaccard index of every pair of rows of a boolean matrix, by popcount on packed bits.

    Parameters
    ----------
    masks : numpy.ndarray
        bool ``[M, units]`` (or a dict of ``[M, ...]`` arrays, concatenated).

    Returns
    -------
    numpy.ndarray
        float64 ``[M, M]``; 1 where both rows are empty.
    """
    if isinstance(masks, dict):
        packed = np.concatenate([_packed(m.reshape(len(m), -1)) for m in masks.values()], axis=1)
    else:
        packed = _packed(np.asarray(masks, dtype=bool).reshape(len(masks), -1))
    sizes = np.bitwise_count(packed).sum(axis=1, dtype=np.int64)
    inter = np.empty((len(packed), len(packed)), dtype=np.int64)
    for i in range(len(packed)):
        inter[i] = np.bitwise_count(packed[i] & packed).sum(axis=1, dtype=np.int64)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def coupling(modules, *, unit="nodes"):
    """Coupling (MwT): the mean Jaccard index of the masks of every pair of modules (lower: more independent).

    ``coupling = 2 / (M (M - 1)) * sum over i < j of |m_i & m_j| / |m_i | m_j|``.

    Parameters
    ----------
    modules : ModuleSet
    unit : {"nodes", "kernels"}
        Compare the node masks at every mask point, or the kernel masks of
        :func:`kernel_retention` (MwT's unit).

    Returns
    -------
    dict
        ``mean`` (float; 0 for one module) and ``pairwise`` (``[M, M]``).
    """
    if unit not in ("nodes", "kernels"):
        raise InputError(f"unit must be 'nodes' or 'kernels', got {unit!r}")
    keep = {name: np.stack([modules.masks(k, names="network")[name] for k in modules.classes])
            for name in modules.base_masks} if unit == "nodes" else kernel_masks(modules)
    pairwise = pairwise_jaccard(keep)
    return {"mean": _mean_off_diagonal(pairwise), "pairwise": pairwise}


def overlap(modules):
    """Overlap (MODA): the parameters two modules share, over the model's, averaged over every pair.

    A parameter belongs to a module when the module keeps the kernel it
    produces (:func:`kernel_masks`; parameters of layers that own no
    channels belong to every module, and each module's channeled head to it
    alone): ``overlap(i, j) = |P_i & P_j| / |P_model|``.

    Parameters
    ----------
    modules : ModuleSet

    Returns
    -------
    dict
        ``mean`` and ``pairwise`` (``[M, M]``; the diagonal is each module's own share).
    """
    network = modules.network
    live = kernel_masks(modules).astype(np.float64)
    per_kernel = _removable_per_kernel(network).astype(np.float64)
    dense = network.by_name[network.output_dense]
    always = _model_parameters(network) - per_kernel.sum() - sum(w.size for w in dense.weights.values())
    shared = (live * per_kernel) @ live.T + always
    pairwise = shared / _model_parameters(network)
    return {"mean": _mean_off_diagonal(pairwise), "pairwise": pairwise}


def cohesion(modules, x, y=None, *, images_per_class=32, batch_size=256, seed=0, backend=None):
    """Cohesion (MwT): the mean Jaccard index of the activation masks of pairs of inputs of one class.

    For class k, a sample of its inputs; each input's activation mask is the
    set of nodes it activates at every mask point (``value > 0``);
    ``cohesion_k`` is the mean Jaccard index over the sample's pairs.

    Parameters
    ----------
    modules : ModuleSet
    x : numpy.ndarray or DataSource
        Labelled images (a test set).
    y : numpy.ndarray, optional
    images_per_class : int
        Sample size per class, at least 2 (fewer where a class has fewer).
    batch_size : int
    seed : int
    backend : str or device, optional
        Where the pass over the images runs (:func:`fastdecomp.backends.get`).

    Returns
    -------
    dict
        ``mean`` and ``per_class`` (class -> float).
    """
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int) or images_per_class < 2:
        raise InputError(f"images_per_class must be an integer >= 2 (a pair at least), got {images_per_class!r}")
    source = _labelled(modules, x, y)
    rng = np.random.default_rng(seed)
    picks = {}
    for k in modules.classes:
        members = np.flatnonzero(source.labels == k)
        if len(members) < 2:
            raise InputError(f"cohesion needs at least 2 images of each class; class {k} has {len(members)}")
        picks[k] = np.sort(rng.choice(members, min(images_per_class, len(members)), replace=False))
    rows = np.concatenate(list(picks.values()))
    packed = _activation_bits(modules, Subset(source, rows), batch_size, backend)
    per_class, start = {}, 0
    for k, chosen in picks.items():
        block = packed[start:start + len(chosen)]
        per_class[int(k)] = _mean_off_diagonal(_packed_jaccard(block))
        start += len(chosen)
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class}


def per_class_scores(labels, predicted, classes):
    """Precision, recall and F1 of each class, from true and predicted labels.

    Parameters
    ----------
    labels, predicted : numpy.ndarray
        int ``[N]``.
    classes : sequence of int

    Returns
    -------
    dict
        class -> ``{"precision", "recall", "f1", "support"}``; 0 where undefined.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    out = {}
    for c in classes:
        tp = int(((predicted == c) & (labels == c)).sum())
        predicted_c, support = int((predicted == c).sum()), int((labels == c).sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[int(c)] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def composition_scores(composition, x, y=None, *, target=None, batch_size=256, backend=None):
    """Accuracy of a composition overall, per class, and around one patched class.

    The replacement protocol (a weak model's module replaced by a strong
    model's) reads the target class's precision, recall and F1, and the
    accuracy on the other classes' images, before and after the patch.

    Parameters
    ----------
    composition : Composition
    x : numpy.ndarray or DataSource
        Labelled images; those of the composition's labels are scored.
    y : numpy.ndarray, optional
    target : int, optional
        The patched class.
    batch_size : int
    backend : str or device, optional

    Returns
    -------
    dict
        ``top1``, ``per_class`` (see :func:`per_class_scores`), ``images``;
        with ``target``: ``target`` (its scores) and ``others_top1``.
    """
    if y is None and not hasattr(x, "labels"):
        raise InputError("composition scores need labelled images: pass y with an array x, or a DataSource")
    source = as_input_source(x, composition.input_shape, y)
    if target is not None and target not in composition.labels:
        raise InputError(f"target {target!r} is not a label of the composition ({composition.labels})")
    rows = np.flatnonzero(np.isin(source.labels, composition.labels))
    if len(rows) == 0:
        raise InputError(f"no image has a label among the composition's {composition.labels}")
    labels = source.labels[rows]
    predicted = composition.predict(Subset(source, rows), batch_size=batch_size, backend=backend)
    out = {"top1": float((predicted == labels).mean()), "images": int(len(rows)),
           "per_class": per_class_scores(labels, predicted, composition.labels)}
    if target is not None:
        others = labels != target
        out["target"] = out["per_class"][int(target)]
        out["others_top1"] = float((predicted[others] == labels[others]).mean()) if others.any() else 0.0
    return out


def reuse_accuracy(modules, x, y=None, *, k=2, subsets=20, seed=0, batch_size=256, backend=None):
    """Top-1 accuracy of compositions of ``k`` of the ``N`` modules, over sampled subsets.

    Each subset of ``k`` classes is composed by voting and scored on the test
    images of those classes; every module runs once over the images, so many
    subsets cost one pass.

    Parameters
    ----------
    modules : ModuleSet
    x : numpy.ndarray or DataSource
    y : numpy.ndarray, optional
    k : int
        Classes per composition, from 1 (a module alone votes for its class) to N.
    subsets : int
        How many distinct subsets to sample (all of them where there are fewer).
    seed : int
    batch_size : int
    backend : str or device, optional

    Returns
    -------
    dict
        ``k``, ``mean``, ``min``, ``max`` and ``subsets`` (a list of
        ``{"classes", "top1", "images"}``).
    """
    _check_reuse(k, subsets, len(modules))
    source = _labelled(modules, x, y)
    rows = np.flatnonzero(np.isin(source.labels, modules.classes))
    scores = composed_margins(modules, Subset(source, rows), batch_size=batch_size, backend=backend)
    return reuse_from_margins(modules, scores, source.labels[rows], k=k, subsets=subsets, seed=seed)


def reuse_from_margins(modules, margins, labels, *, k=2, subsets=20, seed=0):
    """:func:`reuse_accuracy` from margins already computed (:func:`composed_margins`).

    Parameters
    ----------
    modules : ModuleSet
    margins : numpy.ndarray
        ``[N, M]``.
    labels : numpy.ndarray
        ``[N]``, each one of the modules' classes.
    k, subsets, seed : int
        See :func:`reuse_accuracy`.

    Returns
    -------
    dict
    """
    _check_reuse(k, subsets, len(modules))
    results = []
    for chosen in _subsets(len(modules), k, subsets, seed):
        classes = [modules.classes[i] for i in chosen]
        inside = np.isin(labels, classes)
        if not inside.any():
            continue
        top1 = topk_accuracy(margins[inside][:, chosen], labels[inside], classes, 1)
        results.append({"classes": classes, "top1": top1, "images": int(inside.sum())})
    values = [r["top1"] for r in results]
    return {"k": k, "mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
            "subsets": results}


def composed_margins(modules, x, *, batch_size=256, backend=None):
    """``[N, M]``: each module's logit margin, as a composition of every module votes with them.

    Parameters
    ----------
    modules : ModuleSet
    x : numpy.ndarray or DataSource
    batch_size : int
    backend : str or device, optional
    """
    out = modules.predict_proba(x, batch_size=batch_size, logits=True, backend=backend)
    return out[:, :, 0] - out[:, :, 1]


def latency(target, x, *, batch_size=256, repeats=5, backend=None):
    """Wall time of a module or composition on one image and on a batch (median of ``repeats``).

    Parameters
    ----------
    target : Module, Composition or ModuleSet
        Anything with ``predict_proba``.
    x : numpy.ndarray
        Images; the first ``batch_size`` are used.
    batch_size : int
    repeats : int
    backend : str or device, optional

    Returns
    -------
    dict
        ``single_image_ms``, ``batch_ms``, ``images_per_second``, ``batch_size``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats must be a positive integer, got {repeats!r}")
    batch = np.asarray(x[:batch_size])
    if len(batch) == 0:
        raise InputError("latency needs at least one image")
    target.predict_proba(batch[:1], backend=backend)  # compile and warm up before timing

    def median_seconds(images):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            target.predict_proba(images, backend=backend)
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    single, whole = median_seconds(batch[:1]), median_seconds(batch)
    return {"single_image_ms": 1e3 * single, "batch_ms": 1e3 * whole, "images_per_second": len(batch) / whole,
            "batch_size": int(len(batch))}


def _labelled(modules, x, y):
    """A labelled source of test images whose classes include the modules'."""
    if y is None and not hasattr(x, "labels"):
        raise InputError("this metric needs labelled images: pass y with an array x, or a DataSource")
    source = as_input_source(x, modules.network.input_shape, y)
    missing = [k for k in modules.classes if not (source.labels == k).any()]
    if missing:
        raise InputError(f"the test images hold no image of classes {missing}, which these modules recognise; "
                         "pass a test set of the modules' classes")
    if source.labels.max(initial=0) >= modules.network.num_classes:
        raise InputError(f"test labels go up to {source.labels.max()} but the modules' model has "
                         f"{modules.network.num_classes} classes; is this the modules' data set?")
    return source


def _check_reuse(k, subsets, num_modules):
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_modules:
        raise InputError(f"k must be an integer from 1 to {num_modules} (the modules), got {k!r}")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise InputError(f"subsets must be a positive integer, got {subsets!r}")


def _subsets(n, k, count, seed):
    """Up to ``count`` distinct sorted k-subsets of range(n), every one when there are no more than ``count``."""
    if math.comb(n, k) <= count:
        return [list(c) for c in itertools.combinations(range(n), k)]
    rng, seen = np.random.default_rng(seed), set()
    while len(seen) < count:
        seen.add(tuple(sorted(rng.choice(n, k, replace=False).tolist())))
    return [list(c) for c in sorted(seen)]


def _activation_bits(modules, source, batch_size, backend=None):
    """uint64 ``[N, words]``: each image's activation mask over every mask point, packed."""
    blocks = []
    device = backends.get(backend)
    for _, _, values, _ in modules.network.iter_mask_values(source, mask_at=modules.options.mask_at,
                                                            batch_size=batch_size, backend=device):
        blocks.append(np.concatenate([_packed(device.to_host(v).reshape(len(v), -1) > 0) for v in values.values()],
                                     axis=1))
    return np.concatenate(blocks)


def _packed_jaccard(packed):
    sizes = np.bitwise_count(packed).sum(axis=1, dtype=np.int64)
    inter = np.stack([np.bitwise_count(row & packed).sum(axis=1, dtype=np.int64) for row in packed])
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _packed(bits):
    """bool ``[M, n]`` -> uint64 ``[M, ceil(n / 64)]``, the padding bits 0."""
    packed = np.packbits(bits, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _mean_off_diagonal(pairwise):
    m = len(pairwise)
    if m < 2:
        return 0.0
    return float((pairwise.sum() - np.trace(pairwise)) / (m * (m - 1)))


def _model_parameters(network):
    return int(sum(w.size for layer in network.layers for w in layer.weights.values()))


def _removable_per_kernel(network):
    """int64 ``[kernels]``: the parameters removing each kernel zeroes (its slice of the kernel, its bias)."""
    counts = []
    for layer in network.layers:
        if layer.handler.prunes_channels:
            ones = copy.copy(layer)
            ones.weights = {key: np.ones_like(w) for key, w in layer.weights.items()}
            ones.handler.zero_channels(ones, np.ones(layer.shape[-1], dtype=bool))
            zeroed = sum(int((w == 0).sum()) for w in ones.weights.values())
            counts.append(np.full(layer.shape[-1], zeroed // layer.shape[-1], dtype=np.int64))
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)
