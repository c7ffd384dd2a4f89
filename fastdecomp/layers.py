"""Per-layer behaviour, one class per layer kind, in one registry.

Each kind knows how to import itself from Keras, its output shape, its forward
pass (through the Numba kernels), how dead nodes propagate from its output
back to its inputs, and how to rebuild itself as a Keras layer. Supporting a
new layer kind means adding one class here and decorating it with
:func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UnsupportedLayerError
from .kernels import cpu, direct_conv
from .kernels import target as targets

KINDS = {}
KERAS_CLASSES = {}


class _CpuKernels:
    """The kernels and arrays of a forward pass on the CPU."""

    xp = np
    conv2d_forward = staticmethod(direct_conv.conv2d_forward)
    dense_forward = staticmethod(cpu.dense_forward)
    pool2d_forward = staticmethod(cpu.pool2d_forward)
    global_average_pool_forward = staticmethod(cpu.global_average_pool_forward)

    @staticmethod
    def weights(array):
        return array


class _DeviceKernels:
    """The same kernels' device twins, bound to one device."""

    def __init__(self, device):
        from functools import partial

        from .kernels import gpu

        self.xp = device.xp
        self.weights = device.weights
        for name in ("conv2d_forward", "dense_forward", "pool2d_forward", "global_average_pool_forward"):
            setattr(self, name, partial(getattr(gpu, name), device=device))


def kernels(device):
    """The kernels a forward pass runs: the CPU's, or ``device``'s twins."""
    if device is None:
        targets.current().check_runnable()
        return _CpuKernels
    if not hasattr(device, "_layer_kernels"):
        device._layer_kernels = _DeviceKernels(device)
    return device._layer_kernels


def register(cls):
    """Add a layer kind to the registry (by ``cls.kind`` and its Keras classes)."""
    KINDS[cls.kind] = cls()
    for name in cls.keras_classes:
        KERAS_CLASSES[name] = cls.kind
    return cls


@dataclass
class Layer:
    """One layer of a :class:`~fastdecomp.network.Network`.

    Attributes
    ----------
    name : str
        Unique name in the network (the Keras name, or ``<keras>/relu`` or
        ``<keras>/softmax`` for an activation given inline).
    kind : str
        Key into :data:`KINDS`.
    inputs : list of str
        Names of the layers feeding this one.
    shape : tuple of int
        Output shape without the batch axis.
    config : dict
        Kind-specific settings (strides, padding, ...).
    weights : dict of numpy.ndarray
        Kind-specific weights (``kernel``, ``bias``), float32.
    keras_name : str
        The Keras layer this layer came from (masks are keyed by it).
    """

    name: str
    kind: str
    inputs: list
    shape: tuple
    config: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    keras_name: str = ""

    @property
    def handler(self):
        return KINDS[self.kind]


def same_padding(size, kernel, stride):
    """Keras/TensorFlow ``same`` padding: (output size, pad before, pad after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def window_geometry(in_shape, kernel, strides, padding):
    """Output size and padding of a sliding window over an (H, W, C) map."""
    h, w = in_shape[0], in_shape[1]
    if padding == "same":
        oh, pt, pb = same_padding(h, kernel[0], strides[0])
        ow, pl, pr = same_padding(w, kernel[1], strides[1])
    else:
        oh = (h - kernel[0]) // strides[0] + 1
        ow = (w - kernel[1]) // strides[1] + 1
        pt = pb = pl = pr = 0
    return oh, ow, (pt, pb, pl, pr)


class LayerKind:
    """Base of the per-kind handlers; see the module docstring."""

    kind = ""
    keras_classes = ()

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        """Return ``(config, weights, inline_activation)`` for a Keras layer of this kind."""
        return {}, {}, None

    def output_shape(self, config, weights, input_shapes):
        """Output shape, without the batch axis."""
        return tuple(input_shapes[0])

    def forward(self, layer, inputs, reusable=None, device=None):
        """The layer's output for a batch.

        ``reusable[i]`` is True when ``inputs[i]`` is read by no one else and
        may be overwritten. With a ``device`` (:mod:`fastdecomp.kernels.gpu`)
        the inputs and the output are that device's arrays and the layer runs
        its kernels' device twins.
        """
        raise NotImplementedError

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        """Per input, the nodes dead because every reader among this layer's outputs is dead.

        ``dead_out`` has shape ``[M] + layer.shape`` (M modules at once).
        """
        return [dead_out]

    def to_keras(self, layer):
        raise NotImplementedError


@register
class InputKind(LayerKind):
    kind = "input"
    keras_classes = ("InputLayer",)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return []


@register
class Conv2DKind(LayerKind):
    kind = "conv2d"
    keras_classes = ("Conv2D",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1:
            refuse("dilated or grouped convolution")
        kernel = keras_layer.kernel.numpy().astype(np.float32)
        bias = keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[3])
        weights = {"kernel": kernel, "bias": bias.astype(np.float32)}
        return window_config(kernel.shape[:2], cfg, input_shapes, refuse), weights, \
            inline_activation(cfg["activation"], refuse)

    def output_shape(self, config, weights, input_shapes):
        oh, ow, _ = window_geometry(input_shapes[0], weights["kernel"].shape[:2],
                                    config["strides"], config["padding"])
        return (oh, ow, weights["kernel"].shape[3])

    def forward(self, layer, inputs, reusable=None, device=None, rectify=False, residual=None, in_place=False,
                activity=None):
        """See :meth:`LayerKind.forward`; ``residual`` is added (then ``rectify``
        applies ReLU) in the epilogue, into ``residual`` itself when ``in_place``;
        ``activity`` receives the output's packed ``> 0`` bits (CPU only)."""
        x, k = inputs[0], kernels(device)
        c = layer.config
        out = residual if in_place else k.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        k.conv2d_forward(x, k.weights(layer.weights["kernel"]), k.weights(layer.weights["bias"]),
                         c["strides"][0], c["strides"][1], c["pads"][0], c["pads"][2], out, rectify=rectify,
                         residual=residual, activity=activity)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        h, w, ci = input_shapes[0]
        if not through_conv:
            return [np.zeros((dead_out.shape[0], h, w, ci), dtype=bool)]
        c = layer.config
        kh, kw = layer.weights["kernel"].shape[:2]
        all_channels_dead = np.ascontiguousarray(dead_out.all(axis=-1, keepdims=True))
        dead_in = cpu.window_dead_inputs(all_channels_dead, h, w, kh, kw, c["strides"][0],
                                         c["strides"][1], c["pads"][0], c["pads"][2])
        return [np.broadcast_to(dead_in, dead_in.shape[:3] + (ci,))]

    def to_keras(self, layer):
        from keras import layers

        kh, kw, _, co = layer.weights["kernel"].shape
        return layers.Conv2D(co, (kh, kw), strides=layer.config["strides"],
                             padding=layer.config["padding"], name=layer.name)


@register
class DenseKind(LayerKind):
    kind = "dense"
    keras_classes = ("Dense",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if len(input_shapes[0]) != 1:
            refuse(f"input of shape {input_shapes[0]}; put a Flatten or GlobalAveragePooling2D before it")
        kernel = keras_layer.kernel.numpy().astype(np.float32)
        bias = keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[1])
        return {}, {"kernel": kernel, "bias": bias.astype(np.float32)}, \
            inline_activation(cfg["activation"], refuse)

    def output_shape(self, config, weights, input_shapes):
        return (weights["kernel"].shape[1],)

    def forward(self, layer, inputs, reusable=None, device=None):
        x, k = inputs[0], kernels(device)
        out = k.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        k.dense_forward(x, k.weights(layer.weights["kernel"]), k.weights(layer.weights["bias"]), out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        # a node is dead when every outgoing edge ends in a dead node
        dead_all = dead_out.all(axis=1)
        return [np.repeat(dead_all[:, None], input_shapes[0][0], axis=1)]

    def to_keras(self, layer):
        from keras import layers

        return layers.Dense(layer.shape[0], name=layer.name)


@register
class ReLUKind(LayerKind):
    kind = "relu"
    keras_classes = ("ReLU",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            refuse("a ReLU with max_value, negative_slope or threshold; use a plain ReLU")
        return {}, {}, None

    def forward(self, layer, inputs, reusable=None, device=None):
        out = inputs[0] if reusable and reusable[0] else None
        return kernels(device).xp.maximum(inputs[0], np.float32(0.0), out=out)

    def to_keras(self, layer):
        from keras import layers

        return layers.ReLU(name=layer.name.replace("/", "_"))


@register
class SoftmaxKind(LayerKind):
    kind = "softmax"
    keras_classes = ("Softmax",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("axis", -1) not in (-1, [-1], len(input_shapes[0]), [len(input_shapes[0])]):
            refuse("softmax over an axis other than the last")
        return {}, {}, None

    def forward(self, layer, inputs, reusable=None, device=None):
        x = inputs[0] if device is None else device.to_host(inputs[0])  # as on the CPU, bit for bit
        z = x - x.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def to_keras(self, layer):
        from keras import layers

        return layers.Softmax(name=layer.name.replace("/", "_"))


@register
class AddKind(LayerKind):
    kind = "add"
    keras_classes = ("Add",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if len({tuple(s) for s in input_shapes}) != 1:
            refuse(f"inputs of different shapes {input_shapes}")
        return {}, {}, None

    def forward(self, layer, inputs, reusable=None, device=None):
        out = inputs[0] if reusable and reusable[0] else inputs[0].copy()
        for other in inputs[1:]:
            out += other
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [dead_out for _ in input_shapes]

    def to_keras(self, layer):
        from keras import layers

        return layers.Add(name=layer.name)


class Pool2DKind(LayerKind):
    is_max = True

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        config = window_config(tuple(cfg["pool_size"]), cfg, input_shapes, refuse)
        config["pool"] = tuple(cfg["pool_size"])
        return config, {}, None

    def output_shape(self, config, weights, input_shapes):
        oh, ow, _ = window_geometry(input_shapes[0], config["pool"], config["strides"], config["padding"])
        return (oh, ow, input_shapes[0][2])

    def forward(self, layer, inputs, reusable=None, device=None):
        x, k = inputs[0], kernels(device)
        c = layer.config
        out = k.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        k.pool2d_forward(x, c["pool"][0], c["pool"][1], c["strides"][0], c["strides"][1],
                         c["pads"][0], c["pads"][2], self.is_max, out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        h, w, _ = input_shapes[0]
        c = layer.config
        return [cpu.window_dead_inputs(np.ascontiguousarray(dead_out), h, w, c["pool"][0], c["pool"][1],
                                       c["strides"][0], c["strides"][1], c["pads"][0], c["pads"][2])]

    def to_keras(self, layer):
        from keras import layers

        cls = layers.MaxPooling2D if self.is_max else layers.AveragePooling2D
        return cls(layer.config["pool"], strides=layer.config["strides"],
                   padding=layer.config["padding"], name=layer.name)


@register
class MaxPoolKind(Pool2DKind):
    kind = "maxpool"
    keras_classes = ("MaxPooling2D",)
    is_max = True


@register
class AveragePoolKind(Pool2DKind):
    kind = "avgpool"
    keras_classes = ("AveragePooling2D",)
    is_max = False


@register
class GlobalAveragePoolKind(LayerKind):
    kind = "gap"
    keras_classes = ("GlobalAveragePooling2D",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("keepdims"):
            refuse("keepdims=True; use the default keepdims=False")
        if cfg.get("data_format", "channels_last") != "channels_last":
            refuse("data_format='channels_first'; use channels_last")
        return {}, {}, None

    def output_shape(self, config, weights, input_shapes):
        return (input_shapes[0][2],)

    def forward(self, layer, inputs, reusable=None, device=None):
        x, k = inputs[0], kernels(device)
        out = k.xp.empty((x.shape[0], x.shape[3]), dtype=np.float32)
        k.global_average_pool_forward(x, out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        h, w, c = input_shapes[0]
        return [np.broadcast_to(dead_out[:, None, None, :], (dead_out.shape[0], h, w, c))]

    def to_keras(self, layer):
        from keras import layers

        return layers.GlobalAveragePooling2D(name=layer.name)


@register
class ZeroPaddingKind(LayerKind):
    kind = "zeropad"
    keras_classes = ("ZeroPadding2D",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("data_format", "channels_last") != "channels_last":
            refuse("data_format='channels_first'; use channels_last")
        (pt, pb), (pl, pr) = cfg["padding"]
        return {"pads": (pt, pb, pl, pr)}, {}, None

    def output_shape(self, config, weights, input_shapes):
        pt, pb, pl, pr = config["pads"]
        s = input_shapes[0]
        return (s[0] + pt + pb, s[1] + pl + pr, s[2])

    def forward(self, layer, inputs, reusable=None, device=None):
        pt, pb, pl, pr = layer.config["pads"]
        return kernels(device).xp.pad(inputs[0], ((0, 0), (pt, pb), (pl, pr), (0, 0)))

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        pt, pb, pl, pr = layer.config["pads"]
        h, w, _ = input_shapes[0]
        return [dead_out[:, pt:pt + h, pl:pl + w, :]]

    def to_keras(self, layer):
        from keras import layers

        pt, pb, pl, pr = layer.config["pads"]
        return layers.ZeroPadding2D(((pt, pb), (pl, pr)), name=layer.name)


@register
class FlattenKind(LayerKind):
    kind = "flatten"
    keras_classes = ("Flatten",)

    def output_shape(self, config, weights, input_shapes):
        return (int(np.prod(input_shapes[0])),)

    def forward(self, layer, inputs, reusable=None, device=None):
        return inputs[0].reshape(inputs[0].shape[0], -1)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [dead_out.reshape((dead_out.shape[0],) + tuple(input_shapes[0]))]

    def to_keras(self, layer):
        from keras import layers

        return layers.Flatten(name=layer.name)



@register
class IdentityKind(LayerKind):
    """Layers that are the identity at inference; they vanish from the graph."""

    kind = "identity"
    keras_classes = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
                     "ActivityRegularization", "Activation")

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        return {}, {}, inline_activation(cfg.get("activation", "linear"), refuse)


@register
class BatchNormKind(LayerKind):
    """Inference-mode BatchNormalization; folded into the convolution before it."""

    kind = "batchnorm"
    keras_classes = ("BatchNormalization",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        axis = cfg["axis"]
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(input_shapes[0])):
            refuse(f"normalisation over axis {axis}; only the channel axis (-1) can be folded")
        gamma = keras_layer.gamma.numpy() if cfg["scale"] else 1.0
        beta = keras_layer.beta.numpy() if cfg["center"] else 0.0
        mean = keras_layer.moving_mean.numpy().astype(np.float64)
        var = keras_layer.moving_variance.numpy().astype(np.float64)
        scale = gamma / np.sqrt(var + cfg["epsilon"])
        return {}, {"scale": scale, "shift": beta - mean * scale}, None

    @staticmethod
    def fold_into(conv, bn_weights):
        """Fold the normalisation into a convolution (or dense) layer's weights, in place."""
        scale, shift = bn_weights["scale"], bn_weights["shift"]
        kernel = conv.weights["kernel"].astype(np.float64) * scale
        bias = conv.weights["bias"].astype(np.float64) * scale + shift
        conv.weights["kernel"] = kernel.astype(np.float32)
        conv.weights["bias"] = bias.astype(np.float32)


SUPPORTED = ("Conv2D, BatchNormalization, ReLU, Add, MaxPooling2D, AveragePooling2D, "
             "GlobalAveragePooling2D, ZeroPadding2D, Flatten, Dropout and Dense layers "
             "with relu/linear activations and a softmax output")


def refuser(keras_layer):
    """A function that raises :class:`UnsupportedLayerError` naming ``keras_layer``."""
    def refuse(why):
        raise UnsupportedLayerError(
            f"layer {keras_layer.name!r} ({type(keras_layer).__name__}) is not supported: "
            f"{why}. fastdecomp decomposes {SUPPORTED}")
    return refuse


def inline_activation(activation, refuse):
    """``None``, ``"relu"`` or ``"softmax"`` for a layer's ``activation`` setting."""
    name = activation if isinstance(activation, str) or activation is None \
        else getattr(activation, "__name__", str(activation))
    if name in ("linear", None):
        return None
    if name in ("relu", "softmax"):
        return name
    refuse(f"activation {name!r}; use 'relu' (or 'softmax' on the output)")


def window_config(window, cfg, input_shapes, refuse):
    """Strides and padding of a convolution or pooling layer, checked against its input."""
    if len(input_shapes[0]) != 3:
        refuse(f"input of shape {input_shapes[0]}; expected (height, width, channels)")
    if cfg.get("data_format", "channels_last") != "channels_last":
        refuse("data_format='channels_first'; use channels_last")
    if cfg["padding"] not in ("same", "valid"):
        refuse(f"padding={cfg['padding']!r}; use 'same' or 'valid'")
    strides = tuple(cfg["strides"] or window)
    oh, ow, pads = window_geometry(input_shapes[0], window, strides, cfg["padding"])
    if oh < 1 or ow < 1:
        refuse(f"a {tuple(window)} window does not fit its {tuple(input_shapes[0][:2])} input")
    return {"strides": strides, "padding": cfg["padding"], "pads": pads}
