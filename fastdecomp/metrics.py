"""How good and how small modules are: top-k accuracy, Jaccard indices, sizes (docs/method.md section 7)."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .pruning import dead_channels

__all__ = ["topk_accuracy", "jaccard", "sizes", "JACCARD_KINDS"]

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
