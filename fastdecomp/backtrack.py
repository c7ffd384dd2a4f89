"""Channeling (MC) and backtracking (MC-BLN, MC-BI), for many modules at once."""

import numpy as np

from .errors import InputError

__all__ = ["channel_head", "bln_removed_features", "propagate_dead", "apply_backtracking",
           "BACKTRACKS", "BLN_RULES"]

BACKTRACKS = (None, "bln", "bi")
BLN_RULES = ("algorithm", "prose")


def channel_head(kernel, bias, k):
    """The output Dense layer channeled into [concerned, unconcerned] for class ``k``.

    Parameters
    ----------
    kernel : numpy.ndarray
        ``[F, C]``: the output layer's kernel.
    bias : numpy.ndarray
        ``[C]``.
    k : int
        The module's class.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        kernel ``[F, 2]`` (column 0: ``W[:, k]``; column 1: mean of the other
        columns) and bias ``[2]``, float32.
    """
    others = [c for c in range(kernel.shape[1]) if c != k]
    w = np.stack([kernel[:, k], kernel[:, others].mean(axis=1)], axis=1)
    b = np.array([bias[k], bias[others].mean()])
    return w.astype(np.float32), b.astype(np.float32)


def bln_removed_features(head_kernel, delta, rule="algorithm"):
    """Features of the layer feeding the output that MC-BLN removes.

    Parameters
    ----------
    head_kernel : numpy.ndarray
        ``[F, 2]``: a channeled head's kernel (:func:`channel_head`).
    delta : float
        The threshold.
    rule : {"algorithm", "prose"}

    Returns
    -------
    numpy.ndarray
        bool ``[F]``.

    Notes
    -----
    ``rule="algorithm"`` (the paper's Algorithm 2, default): ``W_uc <= -delta``
    and ``W_c >= delta``. ``rule="prose"``: ``W_uc >= delta`` and ``W_c <= -delta``.
    """
    w_c, w_uc = head_kernel[:, 0], head_kernel[:, 1]
    if rule == "algorithm":
        return (w_uc <= -delta) & (w_c >= delta)
    if rule == "prose":
        return (w_uc >= delta) & (w_c <= -delta)
    raise InputError(f"bln_rule must be one of {BLN_RULES}, got {rule!r}")


def propagate_dead(network, dead_features, through_conv):
    """Walk dead nodes back from the output layer's input through the graph.

    Parameters
    ----------
    network : Network
    dead_features : numpy.ndarray
        bool ``[M, F]``: features feeding the output Dense layer, per module.
    through_conv : bool
        False for MC-BLN (stop at the last convolutions: their inputs are
        never dead), True for MC-BI (back to the input).

    Returns
    -------
    dict
        Layer name -> bool ``[M] + layer.shape`` for every layer found to have
        a dead node. A node read by several layers is dead only when it is dead
        for every reader; a layer in which a module has no dead node kills
        nothing upstream for that module (not even the positions a strided
        window never reads), module by module as the reference does.
    """
    m = dead_features.shape[0]
    contributions = {}  # layer -> list of dead arrays, one per reader that reached it
    source = network.by_name[network.output_dense].inputs[0]
    contributions[source] = [dead_features.reshape((m,) + tuple(network.by_name[source].shape))]
    dead = {}
    for layer in reversed(network.layers):
        if layer.name in (network.output_dense, network.layers[-1].name):
            continue
        found = contributions.pop(layer.name, [])
        if len(found) < len(network.readers[layer.name]) or not found:
            continue  # some reader was not reached: it still needs every node
        dead_out = found[0]
        for other in found[1:]:
            dead_out = dead_out & other
        if not dead_out.any():
            continue
        dead[layer.name] = dead_out
        input_shapes = [network.by_name[s].shape for s in layer.inputs]
        idle = ~dead_out.reshape(m, -1).any(axis=1)  # modules with nothing dead here kill nothing upstream
        for src, dead_in in zip(layer.inputs,
                                layer.handler.dead_inputs(layer, dead_out, input_shapes, through_conv)):
            if idle.any() and dead_in[idle].any():  # e.g. the positions a strided window never reads
                dead_in = np.array(dead_in)
                dead_in[idle] = False
            contributions.setdefault(src, []).append(dead_in)
    return dead


def apply_backtracking(network, classes, base_keep, backtrack, delta, bln_rule):
    """Masks after MC-BLN / MC-BI for every module, from the CI+TI masks.

    Parameters
    ----------
    network : Network
    classes : list of int
        The class of each module.
    base_keep : dict
        Layer name -> bool ``[M] + shape``, the CI+TI masks.
    backtrack : {None, "bln", "bi"}
    delta : float
    bln_rule : {"algorithm", "prose"}

    Returns
    -------
    (dict, numpy.ndarray)
        The masks, and bool ``[M, F]``: the features of the output layer's
        input each module keeps. A layer where nothing is removed shares its
        array with ``base_keep`` (no copy: at 200 modules of a ResNet-56 that
        is hundreds of MB); treat both as read-only.
    """
    if backtrack not in BACKTRACKS:
        raise InputError(f"backtrack must be one of {BACKTRACKS}, got {backtrack!r}")
    dense = network.by_name[network.output_dense]
    kernel, bias = dense.handler.head_weights(dense)
    removed = np.zeros((len(classes), kernel.shape[0]), dtype=bool)
    keep = dict(base_keep)
    if backtrack is None:
        return keep, ~removed
    for i, k in enumerate(classes):
        removed[i] = bln_removed_features(channel_head(kernel, bias, k)[0], delta, bln_rule)
    dead = propagate_dead(network, removed, through_conv=backtrack == "bi")
    for name in keep:
        if name in dead and (keep[name] & dead[name]).any():
            keep[name] = keep[name] & ~dead[name]
    return keep, ~removed
