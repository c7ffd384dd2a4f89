"""A module (network + masks + channeled head) in pruned form.

:func:`prune` is framework-free: it zeroes the weights of every channel whose
output is removed at every position, drops such channels physically where
only layers that can drop them read them (through layers that pass channels
on one by one: ReLU, pooling, zero padding), and keeps the remaining masks as
element-wise multipliers. Which kinds own, pass or read channels is each
kind's fact in :mod:`fastdecomp.layers`. :func:`fastdecomp.keras_io.to_keras`
rebuilds the result as a Keras model.
"""

from __future__ import annotations

import copy

import numpy as np

from .network import Network

__all__ = ["PrunedModule", "prune", "dead_channels"]


class PrunedModule:
    """A module as a list of layers with their own weights, masks and channel counts.

    Parameters
    ----------
    layers : list of Layer
        Copies of the network's layers, weights already pruned.
    masks : dict
        Layer name -> boolean multiplier of its (pruned) output; only where
        some node is still removed.
    head : (numpy.ndarray, numpy.ndarray)
        Channeled output kernel ``[F, 2]`` and bias ``[2]``.
    output_dense : str
        The layer ``head`` replaces.
    name : str
    """

    def __init__(self, layers, masks, head, output_dense, name):
        self.layers = layers
        self.masks = masks
        self.head = head
        self.output_dense = output_dense
        self.name = name

    def channeled(self, layer):
        """``layer``, or for the output layer a copy carrying the channeled head."""
        return layer.handler.with_head(layer, self.head) if layer.name == self.output_dense else layer

    def parameter_count(self):
        """Weights left after pruning, the channeled head included."""
        return int(sum(w.size for layer in self.layers for w in self.channeled(layer).weights.values()))

    def predict_proba(self, x, *, backend=None):
        """Run the pruned module with fastdecomp's engine.

        Parameters
        ----------
        x : numpy.ndarray
            One batch.
        backend : str or device, optional

        Returns
        -------
        numpy.ndarray
            ``[N, 2]``: P(concerned), P(unconcerned).
        """
        network = Network(self.layers, name=self.name)
        return network.forward(x, masks=self.masks, head=self.head, backend=backend)


def prune(network, masks, head, *, name="module", drop_channels=True):
    """Build the pruned form of a module.

    Parameters
    ----------
    network : Network
    masks : dict
        Layer name -> boolean keep mask of the layer's output.
    head : (numpy.ndarray, numpy.ndarray)
        Channeled output kernel ``[F, 2]`` and bias ``[2]``.
    name : str
    drop_channels : bool
        Physically drop removed channels where only layers that can drop
        them read them; otherwise only zero their weights.

    Returns
    -------
    PrunedModule
    """
    layers = {l.name: copy.copy(l) for l in network.layers}
    for layer in layers.values():
        layer.weights = {k: v.copy() for k, v in layer.weights.items()}
    remaining = {name: np.array(m, dtype=bool) for name, m in masks.items()}
    for layer in network.layers:
        if layer.handler.prunes_channels:
            _prune_channels(network, layer, layers, remaining, drop_channels)
    kept_masks = {name: m for name, m in remaining.items() if not m.all()}
    return PrunedModule([layers[l.name] for l in network.layers], kept_masks, head, network.output_dense, name)


def _prune_channels(network, layer, layers, remaining, drop_channels):
    """Zero (and where possible drop) the channels of ``layer`` that are removed everywhere."""
    dead = dead_channels(network, layer, remaining)
    if not dead.any():
        return
    target = layers[layer.name]
    target.handler.zero_channels(target, dead)
    for name in (layer.name, *_channel_readers(network, layer)):
        if name in remaining:
            remaining[name][..., dead] = True  # the zeroed weights remove them now
    chain = _channel_chain(network, layer) if drop_channels else None
    if chain is None:
        return
    keep = ~dead
    keep[0] |= not keep.any()  # one zeroed channel stays: Keras and ONNX Runtime run no layer of none
    target.handler.drop_channels(target, keep, "output")
    for name in chain["through"]:
        layers[name].shape = tuple(layers[name].shape[:-1]) + (int(keep.sum()),)
    for name in [layer.name] + chain["through"]:
        if name in remaining:
            remaining[name] = remaining[name][..., keep]
    for name in chain["readers"]:
        layers[name].handler.drop_channels(layers[name], keep, "input")


def _channel_readers(network, layer):
    """The chain of sole readers after ``layer`` that pass its channels on one by one (ReLU, pooling,
    cropping...): a channel their masks remove everywhere is removed from ``layer`` too."""
    chain, name = [], layer.name
    while len(network.readers[name]) == 1 and network.by_name[network.readers[name][0]].handler.passes_channels:
        name = network.readers[name][0]
        chain.append(name)
    return chain


def dead_channels(network, layer, masks):
    """Channels of a layer whose output ends up 0 at every position.

    Parameters
    ----------
    network : Network
    layer : Layer
        A layer whose kind ``prunes_channels``.
    masks : dict
        Layer name -> boolean keep mask.

    Returns
    -------
    numpy.ndarray
        bool per channel.
    """
    channels = layer.shape[-1]
    dead = np.zeros(channels, dtype=bool)
    for name in (layer.name, *_channel_readers(network, layer)):
        if name in masks:
            dead |= ~masks[name].reshape(-1, channels).any(axis=0)
    return dead


def _channel_chain(network, layer):
    """Layers a layer's channels flow through, to layers that can drop them only; or None."""
    through, readers, frontier = [], [], [layer.name]
    while frontier:
        name = frontier.pop()
        for reader in network.readers[name]:
            handler = network.by_name[reader].handler
            if handler.prunes_channels:
                readers.append(reader)
            elif handler.passes_channels and len(network.by_name[reader].inputs) == 1:
                through.append(reader)
                frontier.append(reader)
            else:
                return None
    return {"through": through, "readers": readers}
