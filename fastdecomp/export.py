"""Turning a module (network + masks + channeled head) into a pruned network and a Keras model.

:func:`prune` is framework-free: it zeroes the kernel and bias of every
convolution channel whose output is removed at every position, drops such
channels physically where only convolutions read them (through ReLU, pooling
or zero padding), and keeps the remaining masks as element-wise multipliers.
:func:`to_keras` rebuilds the result as a Keras model.
"""

from __future__ import annotations

import copy

import numpy as np

from .network import Network

__all__ = ["PrunedModule", "prune", "to_keras", "keras_custom_objects"]

CHANNEL_PASS_THROUGH = ("relu", "maxpool", "avgpool", "zeropad")


class PrunedModule:
    """A module as a list of layers with their own weights, masks and channel counts.

    Attributes
    ----------
    layers : list of Layer
        Copies of the network's layers, kernels already pruned.
    masks : dict
        Layer name -> boolean multiplier of its (pruned) output; only where
        some node is still removed.
    head : (numpy.ndarray, numpy.ndarray)
        Channeled output kernel ``[F, 2]`` and bias ``[2]``.
    output_dense : str
    """

    def __init__(self, layers, masks, head, output_dense, name):
        self.layers = layers
        self.masks = masks
        self.head = head
        self.output_dense = output_dense
        self.name = name

    def parameter_count(self):
        """Weights left after pruning, the channeled head included."""
        total = 0
        for layer in self.layers:
            if layer.name == self.output_dense:
                total += self.head[0].size + self.head[1].size
            else:
                total += sum(w.size for w in layer.weights.values())
        return int(total)

    def predict(self, x):
        """Run the pruned module with fastdecomp's engine: ``[N, 2]`` probabilities."""
        network = Network(self.layers, name=self.name)
        return network.forward(x, masks=self.masks, head=self.head)


def prune(network, masks, head, name="module", drop_channels=True):
    """Build the pruned form of a module.

    Parameters
    ----------
    network : Network
    masks : dict
        Layer name -> boolean keep mask of the layer's output.
    head : (numpy.ndarray, numpy.ndarray)
        Channeled output kernel ``[F, 2]`` and bias ``[2]``.
    drop_channels : bool
        Physically drop removed channels where only convolutions read them;
        otherwise only zero their weights.

    Returns
    -------
    PrunedModule
    """
    layers = {l.name: copy.copy(l) for l in network.layers}
    for layer in layers.values():
        layer.weights = {k: v.copy() for k, v in layer.weights.items()}
    remaining = {name: np.array(m, dtype=bool) for name, m in masks.items()}

    for layer in network.layers:
        if layer.kind != "conv2d":
            continue
        dead = dead_channels(network, layer, remaining)
        if not dead.any():
            continue
        target = layers[layer.name]
        target.weights["kernel"][..., dead] = 0.0
        target.weights["bias"][dead] = 0.0
        for name in (layer.name, *_relu_readers(network, layer)):
            if name in remaining:
                remaining[name][..., dead] = True
        if drop_channels:
            chain = _channel_chain(network, layer)
            if chain is not None:
                keep = ~dead
                target.weights["kernel"] = target.weights["kernel"][..., keep]
                target.weights["bias"] = target.weights["bias"][keep]
                for name in [layer.name] + chain["through"]:
                    layers[name].shape = tuple(layers[name].shape[:-1]) + (int(keep.sum()),)
                    if name in remaining:
                        remaining[name] = remaining[name][..., keep]
                for name in chain["convs"]:
                    layers[name].weights["kernel"] = layers[name].weights["kernel"][:, :, keep, :]

    kept_masks = {name: m for name, m in remaining.items() if not m.all()}
    ordered = [layers[l.name] for l in network.layers]
    return PrunedModule(ordered, kept_masks, head, network.output_dense, name)


def _relu_readers(network, layer):
    readers = network.readers[layer.name]
    return [r for r in readers if network.by_name[r].kind == "relu"] if len(readers) == 1 else []


def dead_channels(network, layer, masks):
    """Channels of a convolution whose output ends up 0 at every position."""
    channels = layer.shape[-1]
    dead = np.zeros(channels, dtype=bool)
    if layer.name in masks:
        dead |= ~masks[layer.name].reshape(-1, channels).any(axis=0)
    for relu in _relu_readers(network, layer):
        if relu in masks:
            dead |= ~masks[relu].reshape(-1, channels).any(axis=0)
    return dead


def _channel_chain(network, layer):
    """Layers a convolution's channels flow through to convolutions only, or None."""
    through, convs, frontier = [], [], [layer.name]
    while frontier:
        name = frontier.pop()
        for reader in network.readers[name]:
            kind = network.by_name[reader].kind
            if kind == "conv2d":
                convs.append(reader)
            elif kind in CHANNEL_PASS_THROUGH and len(network.by_name[reader].inputs) == 1:
                through.append(reader)
                frontier.append(reader)
            else:
                return None
    return {"through": through, "convs": convs}


_CUSTOM = {}


def keras_custom_objects():
    """Custom Keras objects of exported modules (pass to ``keras.models.load_model``)."""
    if not _CUSTOM:
        import keras

        @keras.saving.register_keras_serializable(package="fastdecomp")
        class NodeMask(keras.layers.Layer):
            """Multiplies its input by a fixed 0/1 mask (removed nodes output 0)."""

            def __init__(self, shape, **kwargs):
                super().__init__(**kwargs)
                self.mask_shape = tuple(shape)
                self.node_mask = self.add_weight(shape=self.mask_shape, initializer="ones",
                                                 trainable=False, name="node_mask")

            def call(self, inputs):
                return inputs * self.node_mask

            def get_config(self):
                return {**super().get_config(), "shape": list(self.mask_shape)}

        _CUSTOM["NodeMask"] = NodeMask
    return dict(_CUSTOM)


def to_keras(pruned):
    """A Keras model of a pruned module: output ``(None, 2)`` = [P(concerned), P(unconcerned)].

    Parameters
    ----------
    pruned : PrunedModule

    Returns
    -------
    keras.Model
    """
    import keras

    node_mask = keras_custom_objects()["NodeMask"]
    tensors = {}
    first = pruned.layers[0]
    tensors[first.name] = inputs = keras.Input(shape=first.shape, name=_keras_safe(first.name))
    for layer in pruned.layers[1:]:
        args = [tensors[s] for s in layer.inputs]
        if layer.name == pruned.output_dense:
            keras_layer = keras.layers.Dense(2, name=_keras_safe(layer.name))
            out = keras_layer(args[0])
            keras_layer.set_weights([pruned.head[0], pruned.head[1]])
        else:
            keras_layer = layer.handler.to_keras(layer)
            out = keras_layer(args if len(args) > 1 else args[0])
            if layer.weights:
                keras_layer.set_weights([layer.weights["kernel"], layer.weights["bias"]])
        if layer.name in pruned.masks:
            mask_layer = node_mask(pruned.masks[layer.name].shape, name=_keras_safe(layer.name) + "_mask")
            out = mask_layer(out)
            mask_layer.set_weights([pruned.masks[layer.name].astype(np.float32)])
        tensors[layer.name] = out
    return keras.Model(inputs, tensors[pruned.layers[-1].name], name=_keras_safe(pruned.name))


def _keras_safe(name):
    return name.replace("/", "_")
