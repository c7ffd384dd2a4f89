"""Every fact about a layer kind, one class per kind, in one registry.

A kind's class says

- what Keras import does with a layer of its kind (:attr:`LayerKind.imported_as`:
  a layer of its own, folded into the layer before it, or an identity that
  vanishes) and how it reads the layer's settings and weights;
- its output shape and its forward pass, through the kernels of whichever
  device (:mod:`fastdecomp.backends`) runs it;
- at which mask placements its output is a mask point;
- its part in the convolution epilogue (which layers after a convolution the
  engine can fuse into it);
- its dead-input rule for backtracking;
- what pruning may do with its channels;
- its Keras layer and weights for export.

No other module asks a layer its kind: supporting a new kind means one class
decorated with :func:`register`, here or in the caller's own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from .errors import InputError, UnsupportedLayerError
from .kernels import cpu
from .kernels.direct_conv import packs_activity

KINDS = {}
KERAS_CLASSES = {}
ONNX_OPS = {}  # ONNX operator -> the kind that reads it (LayerKind.onnx_reads)
MASK_PLACEMENTS = ("conv", "relu")
DEFAULT_MASK_AT = "relu"  # docs/method.md section 0.2


def register(cls=None, *, replace=False):
    """Add a layer kind to the registry (by ``cls.kind`` and its Keras classes).

    Parameters
    ----------
    cls : type
        A :class:`LayerKind` subclass with a unique ``kind``.
    replace : bool
        Let it replace a registered kind of the same name or Keras class
        (``@register(replace=True)``); otherwise that is refused.

    Returns
    -------
    type
        ``cls``, so that ``register`` can decorate the class.
    """
    if cls is None:
        return lambda cls: register(cls, replace=replace)
    own_ops = cls.__dict__.get("onnx_reads", ())  # declared by the class itself: a subclass reads none by default
    taken = ([cls.kind] if cls.kind in KINDS else []) + [k for k in cls.keras_classes if k in KERAS_CLASSES] \
        + [op for op in own_ops if op in ONNX_OPS]
    if taken and not replace:
        raise InputError(f"layer kind {cls.__name__}: {taken} are registered already; pass replace=True "
                         "to replace them")
    KINDS[cls.kind] = cls()
    for name in cls.keras_classes:
        KERAS_CLASSES[name] = cls.kind
    for op in own_ops:
        ONNX_OPS[op] = cls.kind
    return cls


@dataclass
class Layer:
    """One layer of a :class:`~fastdecomp.network.Network`.

    Parameters
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
    """Keras/TensorFlow ``same`` padding along one axis.

    Parameters
    ----------
    size, kernel, stride : int
        The input's length, the window's and the stride.

    Returns
    -------
    (int, int, int)
        Output size, padding before, padding after.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def window_geometry(in_shape, kernel, strides, padding, pads=None):
    """Output size and padding of a sliding window over an (H, W, C) map.

    Parameters
    ----------
    in_shape : tuple of int
        ``(H, W, C)``.
    kernel, strides : (int, int)
        The window's and the stride's height and width.
    padding : {"same", "valid", "explicit"}
        Keras' two, or ``pads`` as given (an ONNX or PyTorch model's).
    pads : (int, int, int, int), optional
        With ``"explicit"``: top, bottom, left, right.

    Returns
    -------
    (int, int, (int, int, int, int))
        Output height, width, and the padding (top, bottom, left, right).
    """
    h, w = in_shape[0], in_shape[1]
    if padding == "explicit":
        pt, pb, pl, pr = pads
        return (h + pt + pb - kernel[0]) // strides[0] + 1, (w + pl + pr - kernel[1]) // strides[1] + 1, tuple(pads)
    if padding == "same":
        oh, pt, pb = same_padding(h, kernel[0], strides[0])
        ow, pl, pr = same_padding(w, kernel[1], strides[1])
    else:
        oh = (h - kernel[0]) // strides[0] + 1
        ow = (w - kernel[1]) // strides[1] + 1
        pt = pb = pl = pr = 0
    return oh, ow, (pt, pb, pl, pr)


class LayerKind:
    """Base of the per-kind handlers; see the module docstring.

    Attributes
    ----------
    kind : str
        The registry key, stored in saved module sets.
    keras_classes : tuple of str
        Keras class names imported as this kind.
    onnx_reads : tuple of str
        ONNX operators this kind reads (:meth:`from_onnx`); declared on the class itself, not inherited.
    keras_module : str
        The module that defines them (a subclass or a namesake from elsewhere is refused).
    imported_as : {"layer", "fold", "identity"}
        ``layer``: a graph layer of its own; ``fold``: merged into the layer
        before it (:meth:`fold_into`); ``identity``: removed from the graph.
    mask_placements : tuple of str
        Placements (``mask_at``) at which this kind's output is a mask point
        (the output layer excepted).
    epilogue : bool
        Its forward pass can compute the layers after it that fuse into an
        epilogue (a residual ``Add`` and a ReLU) and pack activity bits.
    fuses_as : {None, "residual", "rectify"}
        What a layer of this kind is when it directly follows an epilogue:
        the residual sum, or the rectifier (:meth:`fusion` may say otherwise
        for one layer).
    passes_channels : bool
        One input, and output channel c depends on input channel c alone and
        is 0 where it is all 0: pruning may drop a channel through it.
    prunes_channels : bool
        Owns output channels it can drop (and reads input channels it can
        drop): :meth:`zero_channels`, :meth:`drop_channels`.
    folds_normalisation : bool
        A following normalisation may be folded into its weights.
    output_activation, output_layer : bool
        It may end the classifier (the softmax), or be the layer before that,
        whose columns are channeled into modules (the Dense layer).
    keeps_order : bool
        Monotone: a classifier ending in it after its output layer keeps its
        ranking of the classes, so the output layer's values serve as the
        logits (:func:`logits_head`).
    weight_names : tuple of str
        The weights a layer of this kind has.
    config_keys : tuple of str
        The settings a layer of this kind may have.
    input_count : (int, int or None)
        The fewest and the most inputs it takes (None: no limit).
    """

    kind = ""
    keras_classes = ()
    onnx_reads = ()
    keras_module = "keras.layers"
    imported_as = "layer"
    mask_placements = ()
    epilogue = False
    fuses_as = None
    passes_channels = False
    prunes_channels = False
    folds_normalisation = False
    output_activation = False
    output_layer = False
    keeps_order = False
    weight_names = ()
    config_keys = ()
    input_count = (1, 1)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        """Read a Keras layer of this kind.

        Parameters
        ----------
        keras_layer : keras.layers.Layer
        cfg : dict
            ``keras_layer.get_config()``.
        input_shapes : list of tuple of int
            The shapes (without the batch axis) of the layer's inputs in the graph.
        refuse : callable
            ``refuse(why)`` raises :class:`UnsupportedLayerError` naming the layer.

        Returns
        -------
        (dict, dict, str or None)
            The layer's ``config``, its float32 ``weights``, and the name of an
            inline activation to split off as a layer of its own (``"relu"``,
            ``"softmax"``) or None.
        """
        return {}, {}, None

    def from_onnx(self, reader, node, name, attributes):
        """Read an ONNX node of one of this kind's :attr:`onnx_reads` into ``reader``'s graph.

        Parameters
        ----------
        reader : fastdecomp.onnx_io.OnnxReader
            The graph being built: ``source``, ``constant``, ``add``, ``emit``, ``refuse``...
        node : onnx.NodeProto
        name : str
            The layer's name (the node's, or one made up for a nameless node).
        attributes : dict
            The node's attributes as Python values.
        """
        reader.refuse(node, name, f"the {self.kind} kind reads no ONNX operator")

    def kind_for(self, cfg, input_shapes):
        """The kind that imports a Keras layer of this kind's classes: this one, or another registered
        kind for a variant (a grouped or dilated ``Conv2D``, a 1x1 ``Conv2D`` over a vector, a flatten
        of a vector).

        Parameters
        ----------
        cfg : dict
            The Keras layer's ``get_config()``.
        input_shapes : list of tuple of int
            The shapes of its inputs in the graph, without the batch axis.

        Returns
        -------
        str
        """
        return self.kind

    def output_shape(self, config, weights, input_shapes):
        """Output shape, without the batch axis.

        Parameters
        ----------
        config, weights : dict
            As :meth:`from_keras` returned them.
        input_shapes : list of tuple of int

        Returns
        -------
        tuple of int
        """
        return tuple(input_shapes[0])

    def forward(self, layer, inputs, reusable=None, *, backend):
        """The layer's output for a batch.

        Parameters
        ----------
        layer : Layer
        inputs : list of arrays
            The outputs of ``layer.inputs``, arrays of ``backend``.
        reusable : list of bool, optional
            ``reusable[i]``: ``inputs[i]`` is read by no one else and may be overwritten.
        backend : device
            Where the layer runs (:func:`fastdecomp.backends.get`).
        """
        raise NotImplementedError

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        """Per input, the nodes dead because every node of this layer that reads them is dead.

        Parameters
        ----------
        layer : Layer
        dead_out : numpy.ndarray
            bool ``[M] + layer.shape``: dead output nodes of M modules at once.
        input_shapes : list of tuple of int
        through_conv : bool
            MC-BI: the walk goes on through convolutions (MC-BLN stops at them).

        Returns
        -------
        list of numpy.ndarray
            bool ``[M] + input_shapes[i]`` per input (views allowed; read-only).
        """
        return [dead_out]

    def check(self, layer, input_shapes):
        """Raise ValueError unless ``layer`` is a consistent layer of this kind (a saved graph is
        checked so before anything runs: no kernel may read or write out of bounds).

        Parameters
        ----------
        layer : Layer
        input_shapes : list of tuple of int
            The shapes of its inputs, themselves checked.
        """
        expected = self.checked_output_shape(layer, input_shapes)
        if tuple(layer.shape) != expected:
            raise ValueError(f"layer {layer.name!r} ({self.kind}) has shape {tuple(layer.shape)}; its inputs "
                             f"and settings give {expected}")

    def checked_output_shape(self, layer, input_shapes):
        """The output shape ``layer``'s inputs and settings give, after checking all but its own shape.

        Parameters
        ----------
        layer : Layer
        input_shapes : list of tuple of int

        Returns
        -------
        tuple of int

        Raises
        ------
        ValueError
            Where the layer is inconsistent, naming it.
        """
        low, high = self.input_count
        if len(input_shapes) < low or (high is not None and len(input_shapes) > high):
            raise ValueError(f"layer {layer.name!r} ({self.kind}) has {len(input_shapes)} inputs")
        if self.imported_as != "layer":
            raise ValueError(f"layer {layer.name!r} is of kind {self.kind}, which is never a layer of a graph")
        if not set(layer.config) <= set(self.config_keys):
            raise ValueError(f"layer {layer.name!r} ({self.kind}) has settings {sorted(layer.config)}; "
                             f"a {self.kind} takes {sorted(self.config_keys)}")
        if set(layer.weights) != set(self.weight_names):
            raise ValueError(f"layer {layer.name!r} ({self.kind}) has weights {sorted(layer.weights)}, "
                             f"not {sorted(self.weight_names)}")
        self.check_config(layer, input_shapes)
        return tuple(int(d) for d in self.output_shape(layer.config, layer.weights, input_shapes))

    def build(self, name, inputs, input_shapes, config, weights, keras_name):
        """A new layer of this kind, checked as a loaded one is: an importer reads untrusted files too.

        Parameters
        ----------
        name : str
        inputs : list of str
        input_shapes : list of tuple of int
        config, weights : dict
        keras_name : str

        Returns
        -------
        Layer

        Raises
        ------
        ValueError
            Where the settings, weights or inputs are inconsistent, naming the layer.
        """
        layer = Layer(name, self.kind, list(inputs), (), config, weights, keras_name)
        layer.shape = self.checked_output_shape(layer, input_shapes)
        return layer

    def check_config(self, layer, input_shapes):
        """Raise ValueError unless ``layer``'s settings and weight shapes fit its inputs (see :meth:`check`).

        Parameters
        ----------
        layer : Layer
        input_shapes : list of tuple of int
        """

    def fusion(self, layer):
        """What ``layer`` is when it directly follows an epilogue (see :attr:`fuses_as`)."""
        return self.fuses_as

    def writes_activity(self, layer):
        """Whether its epilogue can pack the ``> 0`` bits of ``layer``'s output (:attr:`epilogue` kinds)."""
        return False

    def cap(self, layer):
        """The upper bound a rectifier (``fuses_as == "rectify"``) clips its output to.

        Parameters
        ----------
        layer : Layer

        Returns
        -------
        float or None
            None where it has none (a plain ReLU, or not a rectifier).
        """
        return None

    def unfolded(self, weights):
        """What a ``fold`` kind becomes where it cannot fold (after a ReLU, at the input, after a layer
        read elsewhere too).

        Parameters
        ----------
        weights : dict
            The weights its import gave, to be folded.

        Returns
        -------
        (str, dict, dict)
            The kind, settings and weights of a layer of its own.
        """
        raise NotImplementedError

    def fold_into(self, previous, weights, refuse):
        """Fold this layer's imported weights into the layer before it (``imported_as == "fold"``).

        Parameters
        ----------
        previous : Layer
            Changed in place.
        weights : dict
            This layer's weights, as :meth:`from_keras` returned them.
        refuse : callable
            Raises :class:`UnsupportedLayerError` when ``previous`` cannot take them.
        """
        raise NotImplementedError

    def multiply_adds(self, layer):
        """Multiply-accumulate operations of one forward pass of one input through ``layer`` (0 for
        kinds without weights to multiply by; FLOPs are twice this).

        Parameters
        ----------
        layer : Layer
        """
        return 0

    def zero_channels(self, layer, dead):
        """Zero the weights producing some output channels, in place (:attr:`prunes_channels` kinds).

        Parameters
        ----------
        layer : Layer
        dead : numpy.ndarray
            bool per output channel.
        """
        raise NotImplementedError

    def drop_channels(self, layer, keep, axis):
        """Keep only some channels of one side of ``layer``, in place (:attr:`prunes_channels` kinds).

        Parameters
        ----------
        layer : Layer
        keep : numpy.ndarray
            bool per channel.
        axis : {"output", "input"}
            The channels it produces (its shape changes too), or those it reads.
        """
        raise NotImplementedError

    def to_onnx(self, layer, graph, inputs):
        """Write ``layer``'s nodes into an ONNX graph (maps NCHW, vectors ``[N, F]``).

        Parameters
        ----------
        layer : Layer
        graph : fastdecomp.onnx_io.OnnxGraph
        inputs : list of str
            The tensors of ``layer.inputs`` (the input layer: the NHWC images).

        Returns
        -------
        str
            The tensor of its output.
        """
        raise InputError(f"layer {layer.name!r} ({self.kind}) has no ONNX form")

    def to_keras(self, layer, name):
        """A new Keras layer equivalent to ``layer``.

        Parameters
        ----------
        layer : Layer
        name : str
            The Keras layer's name.

        Returns
        -------
        keras.layers.Layer
        """
        raise NotImplementedError

    def head_weights(self, layer):
        """``(kernel [F, K], bias [K])`` of an :attr:`output_layer` kind: what modules channel."""
        raise NotImplementedError

    def logits_output(self, layer):
        """The layers that stand for a model ending in ``layer``'s logits (an :attr:`output_layer` kind).

        Parameters
        ----------
        layer : Layer

        Returns
        -------
        list of Layer
            Its output layer, then the softmax implied.
        """
        raise NotImplementedError

    def with_head(self, layer, head):
        """A copy of an :attr:`output_layer` layer with its weights replaced by a channeled head.

        Parameters
        ----------
        layer : Layer
        head : (numpy.ndarray, numpy.ndarray)
            ``kernel [F, K']`` and ``bias [K']``.
        """
        raise NotImplementedError

    def keras_weights(self, layer):
        """The arrays ``set_weights`` takes for the layer :meth:`to_keras` returns."""
        return [layer.weights["kernel"], layer.weights["bias"]] if layer.weights else []


@register
class InputKind(LayerKind):
    kind = INPUT_KIND = "input"
    keras_classes = ("InputLayer",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        shape = keras_layer.batch_shape[1:] if hasattr(keras_layer, "batch_shape") else keras_layer.output.shape[1:]
        if len(shape) != 3:
            refuse(f"input shape {tuple(shape)}; fastdecomp takes images of (height, width, channels)")
        if any(d is None for d in shape):
            refuse(f"a variable-size input {tuple(shape)}; fastdecomp decomposes at one size: build the model "
                   "with input_shape=(height, width, channels) (keras.Input(shape=...)) for the size of your "
                   "data, or resize the data to one size")
        return {"shape": tuple(int(d) for d in shape)}, {}, None

    input_count = (0, 0)
    config_keys = ("shape",)

    def output_shape(self, config, weights, input_shapes):
        return tuple(config["shape"])

    def check_config(self, layer, input_shapes):
        _expect(_ints(layer.config.get("shape"), 3, low=1), layer, "shape", "3 positive integers")

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return []

    def to_onnx(self, layer, graph, inputs):
        return graph.node("Transpose", inputs, layer.name, perm=[0, 3, 1, 2])


@register
class Conv2DKind(LayerKind):
    kind = "conv2d"
    keras_classes = ("Conv2D",)
    onnx_reads = ("Conv",)
    mask_placements = ("conv",)
    epilogue = True
    prunes_channels = True
    folds_normalisation = True
    weight_names = ("kernel", "bias")
    config_keys = ("strides", "padding", "pads")

    def check_config(self, layer, input_shapes):
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(kernel.ndim == 4 and kernel.shape[2] == input_shapes[0][2] and min(kernel.shape) >= 1, layer,
                "kernel", f"[height, width, {input_shapes[0][2]}, channels]")
        _expect(bias.shape == (kernel.shape[3],), layer, "bias", f"[{kernel.shape[3]}]")
        _check_window(layer, kernel.shape[:2], input_shapes[0])

    def kind_for(self, cfg, input_shapes):
        if len(input_shapes[0]) == 1 and _pair(cfg["kernel_size"]) == (1, 1) and cfg.get("groups", 1) == 1:
            return DenseKind.kind  # a classifier head over a global pooling's 1x1 map (MobileNet)
        if _pair(cfg.get("dilation_rate", 1)) != (1, 1) or cfg.get("groups", 1) != 1:
            return GroupedConv2DKind.kind
        return self.kind

    def from_onnx(self, reader, node, name, a):
        x = reader.source(node, name)
        kernel = np.ascontiguousarray(reader.constant(node, name, 1).transpose(2, 3, 1, 0), dtype=np.float32)
        if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel.shape[:2]:
            reader.refuse(node, name, f"kernel_shape {tuple(a['kernel_shape'])} contradicts its weights' "
                                      f"{kernel.shape[:2]} (ONNX Runtime refuses it too)")
        bias = reader.constant(node, name, 2)
        weights = {"kernel": kernel, "bias": (np.zeros(kernel.shape[3]) if bias is None else bias).astype(np.float32)}
        groups, dilation = a.get("group", 1), tuple(a.get("dilations", (1, 1)))
        if len(reader.shape(x)) == 1:  # after a global pooling that kept its 1x1 map: a Dense layer
            if kernel.shape[:2] != (1, 1) or groups != 1 or any(a.get("pads", ())):
                reader.refuse(node, name, "a convolution over the vector a global pooling made; only a 1x1 one "
                                          "without groups or pads (a Dense layer) reads it")
            dense = KINDS[DenseKind.kind]
            reader.emit(node, reader.add(name, dense.kind, [x], {}, {"kernel": np.ascontiguousarray(kernel[0, 0]),
                                                                     "bias": weights["bias"]}))
            return
        config = onnx_window(reader, node, name, a, x, kernel.shape[:2], dilation)
        if groups == 1 and dilation == (1, 1):
            reader.emit(node, reader.add(name, self.kind, [x], config, weights))
            return
        ci = reader.shape(x)[2]
        multiplier = kernel.shape[3] // ci if groups == ci and kernel.shape[2] == 1 else 0
        grouped = KINDS[GroupedConv2DKind.kind]
        config = grouped.settings(config, groups, dilation, multiplier)
        reader.emit(node, reader.add(name, grouped.kind, [x], config, weights))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        kernel = keras_layer.kernel.numpy().astype(np.float32)
        bias = keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[3])
        weights = {"kernel": kernel, "bias": bias.astype(np.float32)}
        return window_config(kernel.shape[:2], cfg, input_shapes, refuse), weights, \
            inline_activation(keras_layer.activation, refuse)

    def output_shape(self, config, weights, input_shapes):
        oh, ow, _ = window_geometry(input_shapes[0], weights["kernel"].shape[:2],
                                    config["strides"], config["padding"], config.get("pads"))
        return (oh, ow, weights["kernel"].shape[3])

    def forward(self, layer, inputs, reusable=None, *, backend, rectify=False, residual=None, in_place=False,
                activity=None, cap=None):
        """The convolution of a batch, with the layers its epilogue fuses.

        Parameters
        ----------
        layer, inputs, reusable, backend :
            As in :meth:`LayerKind.forward`.
        rectify : bool
            Apply ReLU in the epilogue (after the residual).
        residual : array, optional
            Added to the result in the epilogue.
        in_place : bool
            Write the result into ``residual`` itself.
        activity : numpy.ndarray, optional
            uint8 ``[B, nodes / 8]``: receives the output's packed ``> 0`` bits
            (on a device that ``writes_activity_bits``).
        cap : float, optional
            The fused ReLU's upper bound (ReLU6).
        """
        x = inputs[0]
        c = layer.config
        out = residual if in_place else backend.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        backend.kernels.conv2d_forward(
            x, backend.weights(layer.weights["kernel"]), backend.weights(layer.weights["bias"]),
            c["strides"][0], c["strides"][1], c["pads"][0], c["pads"][2], out, rectify=rectify,
            residual=residual, activity=activity, cap=cap)
        return out

    def writes_activity(self, layer):
        return packs_activity(layer.shape[-1])

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [_window_dead_inputs(layer, dead_out, input_shapes[0], groups=1, through_conv=through_conv)]

    def multiply_adds(self, layer):
        return _positions(layer) * sum(layer.weights[name].size for name in ("depthwise", "kernel")
                                       if name in layer.weights)

    def zero_channels(self, layer, dead):
        layer.weights["kernel"][..., dead] = 0.0
        layer.weights["bias"][dead] = 0.0

    def drop_channels(self, layer, keep, axis):
        if axis == "output":
            layer.weights["kernel"] = np.ascontiguousarray(layer.weights["kernel"][..., keep])
            layer.weights["bias"] = layer.weights["bias"][keep]
            layer.shape = tuple(layer.shape[:-1]) + (int(keep.sum()),)
        else:
            layer.weights["kernel"] = np.ascontiguousarray(layer.weights["kernel"][:, :, keep, :])

    def to_onnx(self, layer, graph, inputs):
        return _onnx_conv(graph, layer, inputs[0], layer.weights["kernel"], layer.weights["bias"], 1)

    def to_keras(self, layer, name):
        from keras import layers

        kh, kw, _, co = layer.weights["kernel"].shape
        return keras_window(layer, name, lambda padding, name: layers.Conv2D(
            co, (kh, kw), strides=layer.config["strides"], padding=padding, name=name))


@register
class GroupedConv2DKind(LayerKind):
    """A convolution whose output channels each read one group of input channels, through a window
    that may be dilated: Keras' ``DepthwiseConv2D`` (a group per input channel, ``depth_multiplier``
    outputs each), and a ``Conv2D`` with ``groups`` or ``dilation_rate``.

    The kernel is stored as ``[Kh, Kw, Ci / groups, Co]``, output channel ``o``
    reading group ``o // (Co / groups)``; a depthwise kernel ``[Kh, Kw, Ci, M]``
    is that with ``groups = Ci`` (output ``c * M + m`` reads channel ``c``).
    """

    kind = "grouped_conv2d"
    keras_classes = ("DepthwiseConv2D",)
    mask_placements = ("conv",)
    folds_normalisation = True
    weight_names = ("kernel", "bias")
    config_keys = ("strides", "padding", "pads", "dilation", "groups", "depth_multiplier")

    def multiply_adds(self, layer):
        return _positions(layer) * layer.weights["kernel"].size

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        kernel = keras_layer.kernel.numpy().astype(np.float32)
        kh, kw, group_ci, co = kernel.shape
        groups, multiplier = cfg.get("groups", 1), 0
        if "depth_multiplier" in cfg:
            groups, multiplier = group_ci, co
            kernel = kernel.reshape(kh, kw, 1, group_ci * co)
        bias = keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[3])
        dilation = _pair(cfg.get("dilation_rate", 1))
        config = window_config((kh, kw), cfg, input_shapes, refuse, dilation)
        return self.settings(config, groups, dilation, multiplier), \
            {"kernel": kernel, "bias": bias.astype(np.float32)}, inline_activation(keras_layer.activation, refuse)

    @staticmethod
    def settings(window, groups, dilation, depth_multiplier):
        """A grouped convolution's settings.

        Parameters
        ----------
        window : dict
            ``strides``, ``padding`` and ``pads`` (as :func:`window_config` gives them).
        groups : int
        dilation : tuple of int
        depth_multiplier : int
            The outputs per input channel of a depthwise convolution (exported as Keras'
            ``DepthwiseConv2D``), or 0 (exported as a ``Conv2D`` with ``groups``).

        Returns
        -------
        dict
        """
        return {**window, "dilation": tuple(dilation), "groups": groups, "depth_multiplier": depth_multiplier}

    def output_shape(self, config, weights, input_shapes):
        span = window_span(weights["kernel"].shape[:2], config["dilation"])
        oh, ow, _ = window_geometry(input_shapes[0], span, config["strides"], config["padding"], config.get("pads"))
        return (oh, ow, weights["kernel"].shape[3])

    def check_config(self, layer, input_shapes):
        kernel, bias, c = layer.weights["kernel"], layer.weights["bias"], layer.config
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(_ints([c.get("groups")], 1, low=1) and _ints(c.get("dilation"), 2, low=1), layer,
                "groups and dilation", "positive integers")
        ci, groups = input_shapes[0][2], c["groups"]
        _expect(kernel.ndim == 4 and min(kernel.shape) >= 1 and kernel.shape[2] * groups == ci
                and kernel.shape[3] % groups == 0, layer, "kernel",
                f"[height, width, {ci} / groups, a multiple of {groups} channels]")
        multiplier = c.get("depth_multiplier")
        _expect(_ints([multiplier], 1, low=0) and multiplier in (0, kernel.shape[3] // groups) and
                (multiplier == 0 or kernel.shape[2] == 1), layer, "depth_multiplier",
                "0 (a Conv2D), or the outputs per input channel of a depthwise kernel")
        _expect(bias.shape == (kernel.shape[3],), layer, "bias", f"[{kernel.shape[3]}]")
        _check_window(layer, window_span(kernel.shape[:2], c["dilation"]), input_shapes[0])

    def forward(self, layer, inputs, reusable=None, *, backend):
        x, c = inputs[0], layer.config
        out = backend.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        backend.kernels.grouped_conv2d_forward(
            x, backend.weights(layer.weights["kernel"]), backend.weights(layer.weights["bias"]), *c["strides"],
            *c["dilation"], c["pads"][0], c["pads"][2], c["groups"], out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [_window_dead_inputs(layer, dead_out, input_shapes[0], groups=layer.config["groups"],
                                    through_conv=through_conv)]

    def to_onnx(self, layer, graph, inputs):
        return _onnx_conv(graph, layer, inputs[0], layer.weights["kernel"], layer.weights["bias"],
                          layer.config["groups"])

    def to_keras(self, layer, name):
        from keras import layers

        c, (kh, kw, _, co) = layer.config, layer.weights["kernel"].shape
        if c["depth_multiplier"]:
            return keras_window(layer, name, lambda padding, name: layers.DepthwiseConv2D(
                (kh, kw), strides=c["strides"], padding=padding, depth_multiplier=c["depth_multiplier"],
                dilation_rate=c["dilation"], name=name))
        return keras_window(layer, name, lambda padding, name: layers.Conv2D(
            co, (kh, kw), strides=c["strides"], padding=padding, dilation_rate=c["dilation"], groups=c["groups"],
            name=name))

    def keras_weights(self, layer):
        kernel, c = layer.weights["kernel"], layer.config
        if c["depth_multiplier"]:
            kernel = kernel.reshape(kernel.shape[:2] + (c["groups"], c["depth_multiplier"]))
        return [kernel, layer.weights["bias"]]


@register
class SeparableConv2DKind(Conv2DKind):
    """Keras' ``SeparableConv2D``: a depthwise convolution (no bias), then a 1x1 convolution over its
    channels, one layer with one output. The depthwise kernel is stored grouped, as
    :class:`GroupedConv2DKind` stores it; ``kernel`` and ``bias`` are the 1x1 convolution's, into which
    a following normalisation folds and whose epilogue fuses what follows."""

    kind = "separable_conv2d"
    keras_classes = ("SeparableConv2D",)
    weight_names = ("depthwise", "kernel", "bias")
    config_keys = ("strides", "padding", "pads", "dilation", "depth_multiplier")

    def kind_for(self, cfg, input_shapes):
        return self.kind

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        depthwise = keras_layer.depthwise_kernel.numpy().astype(np.float32)
        kh, kw, ci, multiplier = depthwise.shape
        kernel = keras_layer.pointwise_kernel.numpy().astype(np.float32)
        bias = keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[3])
        dilation = _pair(cfg.get("dilation_rate", 1))
        config = window_config((kh, kw), cfg, input_shapes, refuse, dilation)
        config.update(dilation=dilation, depth_multiplier=multiplier)
        weights = {"depthwise": depthwise.reshape(kh, kw, 1, ci * multiplier), "kernel": kernel,
                   "bias": bias.astype(np.float32)}
        return config, weights, inline_activation(keras_layer.activation, refuse)

    def output_shape(self, config, weights, input_shapes):
        span = window_span(weights["depthwise"].shape[:2], config["dilation"])
        oh, ow, _ = window_geometry(input_shapes[0], span, config["strides"], config["padding"], config.get("pads"))
        return (oh, ow, weights["kernel"].shape[3])

    def check_config(self, layer, input_shapes):
        depthwise, kernel, bias = (layer.weights[k] for k in ("depthwise", "kernel", "bias"))
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        ci = input_shapes[0][2]
        _expect(_ints(layer.config.get("dilation"), 2, low=1), layer, "dilation", "2 positive integers")
        multiplier = layer.config.get("depth_multiplier")
        _expect(_ints([multiplier], 1, low=1), layer, "depth_multiplier", "a positive integer")
        _expect(depthwise.ndim == 4 and min(depthwise.shape) >= 1 and depthwise.shape[2] == 1
                and depthwise.shape[3] == ci * multiplier, layer, "depthwise", f"[height, width, 1, {ci * multiplier}]")
        _expect(kernel.ndim == 4 and kernel.shape[:3] == (1, 1, depthwise.shape[3]) and kernel.shape[3] >= 1,
                layer, "kernel", f"[1, 1, {depthwise.shape[3]}, channels]")
        _expect(bias.shape == (kernel.shape[3],), layer, "bias", f"[{kernel.shape[3]}]")
        _check_window(layer, window_span(depthwise.shape[:2], layer.config["dilation"]), input_shapes[0])

    def forward(self, layer, inputs, reusable=None, *, backend, rectify=False, residual=None, in_place=False,
                activity=None, cap=None):
        x, c, depthwise = inputs[0], layer.config, layer.weights["depthwise"]
        middle = backend.xp.empty(x.shape[:1] + layer.shape[:2] + depthwise.shape[3:], dtype=np.float32)
        backend.kernels.grouped_conv2d_forward(
            x, backend.weights(depthwise), backend.weights(_zeros(depthwise.shape[3])), *c["strides"],
            *c["dilation"], c["pads"][0], c["pads"][2], x.shape[3], middle)
        out = residual if in_place else backend.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        backend.kernels.conv2d_forward(
            middle, backend.weights(layer.weights["kernel"]), backend.weights(layer.weights["bias"]), 1, 1, 0, 0,
            out, rectify=rectify, residual=residual, activity=activity, cap=cap)
        return out

    def drop_channels(self, layer, keep, axis):
        if axis == "output":
            return super().drop_channels(layer, keep, axis)
        middle = np.repeat(keep, layer.config["depth_multiplier"])
        layer.weights["depthwise"] = np.ascontiguousarray(layer.weights["depthwise"][..., middle])
        layer.weights["kernel"] = np.ascontiguousarray(layer.weights["kernel"][:, :, middle, :])

    def to_onnx(self, layer, graph, inputs):
        depthwise = layer.weights["depthwise"]
        groups = depthwise.shape[3] // layer.config["depth_multiplier"]
        middle = _onnx_conv(graph, layer, inputs[0], depthwise, _zeros(depthwise.shape[3]), groups)
        return graph.node("Conv", [middle, graph.constant(layer.weights["kernel"].transpose(3, 2, 0, 1), "pointwise"),
                                   graph.constant(layer.weights["bias"], "bias")], layer.name, kernel_shape=[1, 1])

    def to_keras(self, layer, name):
        from keras import layers

        c, depthwise = layer.config, layer.weights["depthwise"]
        return keras_window(layer, name, lambda padding, name: layers.SeparableConv2D(
            layer.shape[-1], depthwise.shape[:2], strides=c["strides"], padding=padding, dilation_rate=c["dilation"],
            depth_multiplier=c["depth_multiplier"], name=name))

    def keras_weights(self, layer):
        depthwise, multiplier = layer.weights["depthwise"], layer.config["depth_multiplier"]
        depthwise = depthwise.reshape(depthwise.shape[:2] + (depthwise.shape[3] // multiplier, multiplier))
        return [depthwise, layer.weights["kernel"], layer.weights["bias"]]



@register
class DenseKind(LayerKind):
    kind = "dense"
    keras_classes = ("Dense",)
    onnx_reads = ("Gemm", "MatMul")
    mask_placements = ("conv",)
    output_layer = True
    folds_normalisation = True
    weight_names = ("kernel", "bias")

    def multiply_adds(self, layer):
        return layer.weights["kernel"].size

    def check_config(self, layer, input_shapes):
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        _expect(len(input_shapes[0]) == 1, layer, "input", "a vector")
        _expect(kernel.ndim == 2 and kernel.shape[0] == input_shapes[0][0] and kernel.shape[1] >= 1, layer,
                "kernel", f"[{input_shapes[0][0]}, units]")
        _expect(bias.shape == (kernel.shape[1],), layer, "bias", f"[{kernel.shape[1]}]")

    def from_onnx(self, reader, node, name, a):
        if node.op_type == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                reader.refuse(node, name, "a Gemm with transA, alpha or beta; fastdecomp takes x @ W + b")
            kernel = reader.constant(node, name, 1)
            kernel = (kernel.T if a.get("transB", 0) else kernel).astype(np.float32)
            bias = reader.constant(node, name, 2)
            bias = np.zeros(kernel.shape[1]) if bias is None else bias.reshape(-1)
        else:  # MatMul: its bias, if any, is the Add after it (AddKind.from_onnx)
            kernel = reader.constant(node, name, 1)
            if kernel.ndim != 2:
                reader.refuse(node, name, f"a MatMul by a {kernel.shape} tensor; fastdecomp takes a vector times "
                                          "a matrix")
            kernel, bias = kernel.astype(np.float32), np.zeros(kernel.shape[1])
        x = reader.source(node, name)
        if len(reader.shape(x)) != 1:
            reader.refuse(node, name, "a product over an image map; flatten it first")
        order = reader.order.get(node.input[0])
        kernel = np.ascontiguousarray(kernel if order is None else kernel[order], dtype=np.float32)
        weights = {"kernel": kernel, "bias": np.asarray(bias, dtype=np.float32)}
        reader.emit(node, reader.add(name, self.kind, [x], {}, weights))
        if node.op_type == "MatMul":
            reader.product = name

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if len(input_shapes[0]) != 1:
            refuse(f"input of shape {input_shapes[0]}; put a Flatten or GlobalAveragePooling2D before it")
        kernel = keras_layer.kernel.numpy().astype(np.float32)
        kernel = kernel.reshape(kernel.shape[-2:])  # a 1x1 Conv2D's [1, 1, F, K]
        bias = (keras_layer.bias.numpy() if cfg["use_bias"] else np.zeros(kernel.shape[1])).astype(np.float32)
        if kernel.shape[1] == 1 and _is_keras_activation(keras_layer.activation, "sigmoid"):
            return {}, _two_classes(kernel, bias), ("softmax", {})
        return {}, {"kernel": kernel, "bias": bias}, inline_activation(keras_layer.activation, refuse)

    def logits_output(self, layer):
        """The layers a model ending in this layer's logits stands for: the layer (one unit, a binary
        classifier's logit, becomes two classes) and its implied softmax."""
        if layer.shape == (1,):
            layer = replace(layer, shape=(2,), weights=_two_classes(layer.weights["kernel"], layer.weights["bias"]))
        return [layer, Layer(f"{layer.name}/softmax", "softmax", [layer.name], layer.shape,
                             keras_name=layer.keras_name)]

    def output_shape(self, config, weights, input_shapes):
        return (weights["kernel"].shape[1],)

    def forward(self, layer, inputs, reusable=None, *, backend):
        x = inputs[0]
        out = backend.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        backend.kernels.dense_forward(x, backend.weights(layer.weights["kernel"]),
                                      backend.weights(layer.weights["bias"]), out)
        return out

    def head_weights(self, layer):
        return layer.weights["kernel"], layer.weights["bias"]

    def with_head(self, layer, head):
        kernel, bias = (np.ascontiguousarray(a, dtype=np.float32) for a in head)
        return replace(layer, shape=(kernel.shape[1],), weights={"kernel": kernel, "bias": bias})

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        # a node is dead when every outgoing edge ends in a dead node
        dead_all = dead_out.all(axis=1)
        return [np.repeat(dead_all[:, None], input_shapes[0][0], axis=1)]

    def to_onnx(self, layer, graph, inputs):
        return graph.node("Gemm", [inputs[0], graph.constant(layer.weights["kernel"], "kernel"),
                                   graph.constant(layer.weights["bias"], "bias")], layer.name)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Dense(layer.shape[0], name=name)


@register
class ReLUKind(LayerKind):
    kind = "relu"
    keras_classes = ("ReLU",)
    onnx_reads = ("Relu", "Clip")
    keeps_order = True
    mask_placements = ("relu",)
    fuses_as = "rectify"
    passes_channels = True
    config_keys = ("max_value",)

    def from_onnx(self, reader, node, name, a):
        cap = None
        if node.op_type == "Clip":
            low, high = reader.constant(node, name, 1), reader.constant(node, name, 2)
            if low is None or float(low) != 0.0 or (high is not None and not float(high) > 0):
                reader.refuse(node, name, f"Clip({low}, {high}); fastdecomp takes Clip(0, cap), a capped ReLU (ReLU6)")
            cap = None if high is None else float(np.float32(high))
        x = reader.source(node, name)
        reader.emit(node, reader.add(name, self.kind, [x], {} if cap is None else {"max_value": cap}, {}),
                    reader.order.get(node.input[0]))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            refuse("a ReLU with negative_slope or threshold: the method needs an activation whose inactive "
                   "region outputs exactly 0; use a plain ReLU (max_value is fine)")
        cap = cfg.get("max_value")
        if cap is not None and not (isinstance(cap, (int, float)) and np.isfinite(cap) and cap > 0):
            refuse(f"max_value={cap!r}; give a positive cap (ReLU(max_value=6) is ReLU6)")
        return ({} if cap is None else {"max_value": float(cap)}), {}, None

    def cap(self, layer):
        return layer.config.get("max_value")

    def forward(self, layer, inputs, reusable=None, *, backend):
        out = inputs[0] if reusable and reusable[0] else None
        out = backend.xp.maximum(inputs[0], np.float32(0.0), out=out)
        cap = layer.config.get("max_value")
        return out if cap is None else backend.xp.minimum(out, np.float32(cap), out=out)

    def check_config(self, layer, input_shapes):
        cap = layer.config.get("max_value")
        _expect(cap is None or (isinstance(cap, float) and np.isfinite(cap) and cap > 0), layer, "max_value",
                "a positive number")

    def to_onnx(self, layer, graph, inputs):
        cap = layer.config.get("max_value")
        if cap is None:
            return graph.node("Relu", inputs, layer.name)
        bounds = [graph.constant(np.float32(v), "bound") for v in (0.0, cap)]
        return graph.node("Clip", [inputs[0], *bounds], layer.name)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.ReLU(max_value=layer.config.get("max_value"), name=name)


@register
class SoftmaxKind(LayerKind):
    kind = "softmax"
    keras_classes = ("Softmax",)
    onnx_reads = ("Softmax",)
    output_activation = True

    def from_onnx(self, reader, node, name, a):
        x = reader.source(node, name)
        if a.get("axis", -1) not in (-1, len(reader.shape(x))):
            reader.refuse(node, name, "a softmax over another axis than the classes'")
        reader.emit(node, reader.add(name, self.kind, [x], {}, {}))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("axis", -1) not in (-1, [-1], len(input_shapes[0]), [len(input_shapes[0])]):
            refuse("softmax over an axis other than the last")
        return {}, {}, None

    def forward(self, layer, inputs, reusable=None, *, backend):
        x = backend.to_host(inputs[0])  # NumPy on every device, so that the bits agree
        z = x - x.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def to_onnx(self, layer, graph, inputs):
        return graph.node("Softmax", inputs, layer.name, axis=-1)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Softmax(name=name)


@register
class AddKind(LayerKind):
    kind = "add"
    keras_classes = ("Add",)
    onnx_reads = ("Add",)
    fuses_as = "residual"
    input_count = (2, None)

    def check_config(self, layer, input_shapes):
        _expect(len({tuple(s) for s in input_shapes}) == 1, layer, "inputs", "of one shape")

    def from_onnx(self, reader, node, name, a):
        if len(node.input) == 2 and node.input[1] in reader.constants and reader.tensors.get(node.input[0]) is not None \
                and reader.tensors[node.input[0]] == reader.product:  # MatMul + Add: the product's bias
            last = reader.layers[-1]
            last.weights["bias"] = last.weights["bias"] + reader.constants[node.input[1]].astype(np.float32).reshape(-1)
            reader.emit(node, last.name)
            return
        reader.unordered(node, name)
        sources = [reader.source(node, name, i) for i in range(len(node.input))]
        reader.emit(node, reader.add(name, self.kind, sources, {}, {}))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if len({tuple(s) for s in input_shapes}) != 1:
            refuse(f"inputs of different shapes {input_shapes}")
        return {}, {}, None

    def forward(self, layer, inputs, reusable=None, *, backend):
        out = inputs[0] if reusable and reusable[0] else inputs[0].copy()
        for other in inputs[1:]:
            out += other
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [dead_out for _ in input_shapes]

    def to_onnx(self, layer, graph, inputs):
        out = inputs[0]
        for other in inputs[1:]:  # in the engine's order
            out = graph.node("Add", [out, other], layer.name)
        return out

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Add(name=name)


class Pool2DKind(LayerKind):
    is_max = True
    passes_channels = True
    config_keys = ("strides", "padding", "pads", "pool")

    def check_config(self, layer, input_shapes):
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(_ints(layer.config.get("pool"), 2, low=1), layer, "pool", "2 positive integers")
        _check_window(layer, layer.config["pool"], input_shapes[0])

    def from_onnx(self, reader, node, name, a):
        x = reader.source(node, name)
        window = tuple(a["kernel_shape"])
        if tuple(a.get("dilations", (1, 1))) != (1, 1) or a.get("storage_order", 0):
            reader.refuse(node, name, "a dilated or column-major pooling")
        config = onnx_window(reader, node, name, a, x, window, ceil=bool(a.get("ceil_mode", 0)))
        if not self.is_max and a.get("count_include_pad", 0) and any(config["pads"]):
            if a.get("ceil_mode", 0):
                reader.refuse(node, name, "an average that counts padding (count_include_pad=1) with ceil_mode=1")
            x = reader.add(f"{name}/pad", ZeroPaddingKind.kind, [x], {"pads": config["pads"]}, {})  # zeros it counts
            config = {"strides": config["strides"], "padding": "valid", "pads": (0, 0, 0, 0)}
        config["pool"] = window
        reader.emit(node, reader.add(name, self.kind, [x], config, {}))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        config = window_config(tuple(cfg["pool_size"]), cfg, input_shapes, refuse)
        config["pool"] = tuple(cfg["pool_size"])
        return config, {}, None

    def output_shape(self, config, weights, input_shapes):
        oh, ow, _ = window_geometry(input_shapes[0], config["pool"], config["strides"], config["padding"],
                                    config.get("pads"))
        return (oh, ow, input_shapes[0][2])

    def forward(self, layer, inputs, reusable=None, *, backend):
        x = inputs[0]
        c = layer.config
        out = backend.xp.empty((x.shape[0],) + layer.shape, dtype=np.float32)
        backend.kernels.pool2d_forward(x, c["pool"][0], c["pool"][1], c["strides"][0], c["strides"][1],
                                       c["pads"][0], c["pads"][2], self.is_max, out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        h, w, _ = input_shapes[0]
        c = layer.config
        return [cpu.window_dead_inputs(np.ascontiguousarray(dead_out), h, w, c["pool"][0], c["pool"][1],
                                       c["strides"][0], c["strides"][1], c["pads"][0], c["pads"][2])]

    def to_onnx(self, layer, graph, inputs):
        c = layer.config
        pt, pb, pl, pr = c["pads"]
        return graph.node("MaxPool" if self.is_max else "AveragePool", inputs, layer.name,
                          kernel_shape=list(c["pool"]), strides=list(c["strides"]), pads=[pt, pl, pb, pr])

    def to_keras(self, layer, name):
        from keras import layers

        if not self.is_max and layer.config["padding"] == "explicit":
            raise InputError(f"layer {layer.name!r} averages over windows that leave out its explicit pads "
                             f"{layer.config['pads']} (top, bottom, left, right), which no Keras pooling does; "
                             "export this module with to_onnx instead")
        cls = layers.MaxPooling2D if self.is_max else layers.AveragePooling2D
        return keras_window(layer, name, lambda padding, name: cls(
            layer.config["pool"], strides=layer.config["strides"], padding=padding, name=name),
            pad_value=-np.inf)


@register
class MaxPoolKind(Pool2DKind):
    kind = "maxpool"
    keras_classes = ("MaxPooling2D",)
    onnx_reads = ("MaxPool",)
    is_max = True


@register
class AveragePoolKind(Pool2DKind):
    kind = "avgpool"
    keras_classes = ("AveragePooling2D",)
    onnx_reads = ("AveragePool",)
    is_max = False


@register
class GlobalAveragePoolKind(LayerKind):
    """Mean over height and width, a vector per image (with ``keepdims=True`` too: a 1x1 map is read as
    the vector it is; a 1x1 ``Conv2D`` after it is a Dense layer, a ``Reshape`` an identity)."""

    kind = "gap"
    keras_classes = ("GlobalAveragePooling2D",)
    onnx_reads = ("GlobalAveragePool", "ReduceMean", "ReduceSum")

    def check_config(self, layer, input_shapes):
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")

    def from_onnx(self, reader, node, name, a):
        # Global*Pool, or a Reduce* over the spatial axes (as PyTorch exports x.mean((2, 3)) and
        # AdaptiveAvgPool2d(1)), with or without keepdims (a 1x1 map is the vector it is); a sum is the mean
        # times the positions
        x = reader.source(node, name)
        if node.op_type.startswith("Reduce"):
            axes = a.get("axes", reader.constant(node, name, 1))
            if axes is None or {int(axis) % 4 for axis in np.ravel(axes)} != {2, 3}:
                reader.refuse(node, name, f"a reduction over axes {None if axes is None else np.ravel(axes).tolist()}"
                                          "; fastdecomp reads one over the spatial axes (2, 3) as a global pooling")
        out = reader.add(name, self.kind, [x], {}, {})
        if node.op_type == "ReduceSum":
            h, w, c = reader.shape(x)
            out = reader.add(f"{name}/sum", RescalingKind.kind, [out], {},
                             {"a": np.full(c, h * w, np.float32), "b": np.zeros(c, np.float32)})
        reader.emit(node, out)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if len(input_shapes[0]) != 3:
            refuse(f"input of shape {input_shapes[0]}; expected (height, width, channels)")
        if cfg.get("data_format", "channels_last") != "channels_last":
            refuse("data_format='channels_first'; use channels_last")
        return {}, {}, None

    def output_shape(self, config, weights, input_shapes):
        return (input_shapes[0][2],)

    def forward(self, layer, inputs, reusable=None, *, backend):
        x = inputs[0]
        out = backend.xp.empty((x.shape[0], x.shape[3]), dtype=np.float32)
        backend.kernels.global_average_pool_forward(x, out)
        return out

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        h, w, c = input_shapes[0]
        return [np.broadcast_to(dead_out[:, None, None, :], (dead_out.shape[0], h, w, c))]

    onnx_op = "GlobalAveragePool"

    def to_onnx(self, layer, graph, inputs):
        return graph.node("Flatten", [graph.node(self.onnx_op, inputs, layer.name)], layer.name, axis=1)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.GlobalAveragePooling2D(name=name)


@register
class ScaledAddKind(LayerKind):
    """``x + scale * r``: the residual sum of Inception-ResNet (its ``CustomScaleLayer``), computed as
    Keras does (the product rounded, then the sum). A dead output is dead in both inputs, as for Add."""

    kind = "scaled_add"
    keras_classes = ("CustomScaleLayer",)
    keras_module = "keras.src.applications.inception_resnet_v2"
    input_count = (2, 2)
    config_keys = ("scale",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if input_shapes[0] != input_shapes[1]:
            refuse(f"inputs of shapes {input_shapes}; the sum needs one shape")
        return {"scale": float(np.float32(cfg["scale"]))}, {}, None

    def check_config(self, layer, input_shapes):
        _expect(input_shapes[0] == input_shapes[1], layer, "inputs", "of one shape")
        _expect(isinstance(layer.config.get("scale"), float) and np.isfinite(layer.config["scale"]), layer,
                "scale", "a finite number")

    def forward(self, layer, inputs, reusable=None, *, backend):
        out = backend.xp.multiply(inputs[1], np.float32(layer.config["scale"]))
        return backend.xp.add(inputs[0], out, out=out)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [dead_out, dead_out]

    def to_onnx(self, layer, graph, inputs):
        scaled = graph.node("Mul", [inputs[1], graph.constant(np.float32(layer.config["scale"]), "scale")],
                            layer.name)
        return graph.node("Add", [inputs[0], scaled], layer.name)

    def to_keras(self, layer, name):
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        return CustomScaleLayer(layer.config["scale"], name=name)


@register
class GlobalMaxPoolKind(GlobalAveragePoolKind):
    """Keras ``GlobalMaxPooling2D``: each channel's largest value (a pooling with the whole map as window)."""

    kind = "gmp"
    keras_classes = ("GlobalMaxPooling2D",)
    onnx_reads = ("GlobalMaxPool", "ReduceMax")

    def forward(self, layer, inputs, reusable=None, *, backend):
        x = inputs[0]
        n, h, w, c = x.shape
        out = backend.xp.empty((n, 1, 1, c), dtype=np.float32)
        backend.kernels.pool2d_forward(x, h, w, 1, 1, 0, 0, True, out)
        return out.reshape(n, c)

    onnx_op = "GlobalMaxPool"

    def to_keras(self, layer, name):
        from keras import layers

        return layers.GlobalMaxPooling2D(name=name)


@register
class ConcatenateKind(LayerKind):
    """Keras ``Concatenate`` along the channels: a dead output node is dead in the input it came from."""

    kind = "concat"
    keras_classes = ("Concatenate",)
    onnx_reads = ("Concat",)
    input_count = (2, None)

    def from_onnx(self, reader, node, name, a):
        sources = [reader.source(node, name, i) for i in range(len(node.input))]
        if len(sources) == 1:  # PyTorch exports DenseNet's first torch.cat([x]) so: the identity
            reader.emit(node, sources[0], reader.order.get(node.input[0]))
            return
        reader.unordered(node, name)
        rank = len(reader.shape(sources[0])) + 1
        if a.get("axis") not in (1, 1 - rank):
            reader.refuse(node, name, f"concatenation along axis {a.get('axis')}; fastdecomp concatenates channels")
        reader.emit(node, reader.add(name, self.kind, sources, {}, {}))

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("axis", -1) not in (-1, len(input_shapes[0])):
            refuse(f"concatenation along axis {cfg.get('axis')}; fastdecomp concatenates channels (axis=-1)")
        if len({tuple(shape[:-1]) for shape in input_shapes}) != 1:
            refuse(f"inputs of shapes {input_shapes}, which differ before the channel axis")
        return {}, {}, None

    def output_shape(self, config, weights, input_shapes):
        return tuple(input_shapes[0][:-1]) + (sum(shape[-1] for shape in input_shapes),)

    def check_config(self, layer, input_shapes):
        _expect(len({tuple(shape[:-1]) for shape in input_shapes}) == 1, layer, "inputs",
                "of one shape but for the channels")

    def forward(self, layer, inputs, reusable=None, *, backend):
        return backend.xp.concatenate(inputs, axis=-1)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        ends = np.cumsum([shape[-1] for shape in input_shapes])[:-1]
        return np.split(dead_out, ends, axis=-1)

    def to_onnx(self, layer, graph, inputs):
        return graph.node("Concat", inputs, layer.name, axis=1)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Concatenate(axis=-1, name=name)


@register
class CroppingKind(LayerKind):
    """Keras ``Cropping2D``: input nodes cropped away are read by no one, so MC-BI finds them dead."""

    kind = "crop"
    keras_classes = ("Cropping2D",)
    passes_channels = True
    config_keys = ("crops",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("data_format", "channels_last") != "channels_last" or len(input_shapes[0]) != 3:
            refuse("a channels_first or non-image input; crop a (height, width, channels) map")
        (top, bottom), (left, right) = cfg["cropping"]
        h, w, _ = input_shapes[0]
        if top + bottom >= h or left + right >= w:
            refuse(f"cropping {cfg['cropping']} leaves nothing of a {h}x{w} map")
        return {"crops": (top, bottom, left, right)}, {}, None

    def output_shape(self, config, weights, input_shapes):
        top, bottom, left, right = config["crops"]
        h, w, c = input_shapes[0]
        return (h - top - bottom, w - left - right, c)

    def check_config(self, layer, input_shapes):
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(_ints(layer.config.get("crops"), 4, low=0), layer, "crops", "4 integers of at least 0")
        top, bottom, left, right = layer.config["crops"]
        _expect(top + bottom < input_shapes[0][0] and left + right < input_shapes[0][1], layer, "crops",
                "smaller than the input")

    def forward(self, layer, inputs, reusable=None, *, backend):
        top, _, left, _ = layer.config["crops"]
        h, w, _ = layer.shape
        return backend.xp.ascontiguousarray(inputs[0][:, top:top + h, left:left + w, :])

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        top, _, left, _ = layer.config["crops"]
        h, w, _ = layer.shape
        dead_in = np.ones((dead_out.shape[0],) + tuple(input_shapes[0]), dtype=bool)
        dead_in[:, top:top + h, left:left + w, :] = dead_out
        return [dead_in]

    def to_onnx(self, layer, graph, inputs):
        top, _, left, _ = layer.config["crops"]
        h, w, _ = layer.shape
        bounds = [graph.constant(v, "crop", dtype=np.int64) for v in ([top, left], [top + h, left + w], [2, 3])]
        return graph.node("Slice", [inputs[0], *bounds], layer.name)

    def to_keras(self, layer, name):
        from keras import layers

        top, bottom, left, right = layer.config["crops"]
        return layers.Cropping2D(((top, bottom), (left, right)), name=name)


@register
class UpSamplingKind(LayerKind):
    """Keras ``UpSampling2D`` (nearest): an input node is dead when all its copies are."""

    kind = "upsample"
    keras_classes = ("UpSampling2D",)
    passes_channels = True
    config_keys = ("size",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("interpolation", "nearest") != "nearest":
            refuse(f"interpolation={cfg['interpolation']!r}; only 'nearest' copies nodes (use it)")
        if cfg.get("data_format", "channels_last") != "channels_last" or len(input_shapes[0]) != 3:
            refuse("a channels_first or non-image input; upsample a (height, width, channels) map")
        return {"size": _pair(cfg["size"])}, {}, None

    def output_shape(self, config, weights, input_shapes):
        h, w, c = input_shapes[0]
        return (h * config["size"][0], w * config["size"][1], c)

    def check_config(self, layer, input_shapes):
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(_ints(layer.config.get("size"), 2, low=1), layer, "size", "2 positive integers")

    def forward(self, layer, inputs, reusable=None, *, backend):
        sh, sw = layer.config["size"]
        return backend.xp.repeat(backend.xp.repeat(inputs[0], sh, axis=1), sw, axis=2)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        sh, sw = layer.config["size"]
        h, w, c = input_shapes[0]
        return [dead_out.reshape(dead_out.shape[0], h, sh, w, sw, c).all(axis=(2, 4))]

    def to_onnx(self, layer, graph, inputs):
        scales = graph.constant([1, 1, *layer.config["size"]], "scales")
        return graph.node("Resize", [inputs[0], "", scales], layer.name, mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def to_keras(self, layer, name):
        from keras import layers

        return layers.UpSampling2D(layer.config["size"], interpolation="nearest", name=name)


@register
class ZeroPaddingKind(LayerKind):
    kind = "zeropad"
    keras_classes = ("ZeroPadding2D",)
    passes_channels = True
    config_keys = ("pads",)

    def check_config(self, layer, input_shapes):
        _expect(len(input_shapes[0]) == 3, layer, "input", "a (height, width, channels) map")
        _expect(_ints(layer.config.get("pads"), 4, low=0), layer, "pads", "4 integers of at least 0")

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("data_format", "channels_last") != "channels_last":
            refuse("data_format='channels_first'; use channels_last")
        (pt, pb), (pl, pr) = cfg["padding"]
        return {"pads": (pt, pb, pl, pr)}, {}, None

    def output_shape(self, config, weights, input_shapes):
        pt, pb, pl, pr = config["pads"]
        s = input_shapes[0]
        return (s[0] + pt + pb, s[1] + pl + pr, s[2])

    def forward(self, layer, inputs, reusable=None, *, backend):
        pt, pb, pl, pr = layer.config["pads"]
        return backend.xp.pad(inputs[0], ((0, 0), (pt, pb), (pl, pr), (0, 0)))

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        pt, pb, pl, pr = layer.config["pads"]
        h, w, _ = input_shapes[0]
        return [dead_out[:, pt:pt + h, pl:pl + w, :]]

    def to_onnx(self, layer, graph, inputs):
        pt, pb, pl, pr = layer.config["pads"]
        pads = graph.constant([0, 0, pt, pl, 0, 0, pb, pr], "pads", dtype=np.int64)
        return graph.node("Pad", [inputs[0], pads], layer.name)

    def to_keras(self, layer, name):
        from keras import layers

        pt, pb, pl, pr = layer.config["pads"]
        return layers.ZeroPadding2D(((pt, pb), (pl, pr)), name=name)


@register
class FlattenKind(LayerKind):
    kind = "flatten"
    keras_classes = ("Flatten", "Reshape")
    onnx_reads = ("Flatten", "Reshape")

    def kind_for(self, cfg, input_shapes):
        if len(input_shapes[0]) == 1 and self._keeps_vector(cfg, input_shapes[0][0]):
            return IdentityKind.kind
        return self.kind

    @staticmethod
    def _keeps_vector(cfg, size):
        """Whether a Flatten or Reshape of a vector of ``size`` leaves it a vector (or a 1x1 map)."""
        if "target_shape" not in cfg:
            return True
        target = tuple(cfg["target_shape"])
        return target in ((size,), (-1,)) or (target[-1] in (size, -1) and set(target[:-1]) == {1})

    def from_onnx(self, reader, node, name, a):
        if node.op_type == "Reshape":
            target = reader.constant(node, name, 1)
            size = int(np.prod(reader.shape(reader.source(node, name))))
            if target is None or len(target) != 2 or int(target[1]) not in (-1, size) \
                    or int(target[0]) not in (0, -1, 1):
                reader.refuse(node, name, f"a reshape to {None if target is None else target.tolist()}; fastdecomp "
                                          f"takes a Reshape only where it flattens each image, to (N, {size})")
        elif a.get("axis", 1) != 1:
            reader.refuse(node, name, f"a flatten from axis {a.get('axis')}; fastdecomp flattens each image (axis=1)")
        x = reader.source(node, name)
        shape = reader.shape(x)
        if len(shape) == 1:
            reader.emit(node, x, reader.order.get(node.input[0]))
            return
        h, w, c = shape
        order = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)  # engine row -> ONNX row
        reader.emit(node, reader.add(name, self.kind, [x], {}, {}), order)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("data_format") not in (None, "channels_last"):
            refuse("data_format='channels_first'; use channels_last")
        size = int(np.prod(input_shapes[0]))
        if "target_shape" in cfg and tuple(cfg["target_shape"]) not in ((size,), (-1,)):
            refuse(f"a reshape to {tuple(cfg['target_shape'])}; fastdecomp takes a Reshape only where it "
                   f"flattens, to ({size},)")
        return {}, {}, None

    def output_shape(self, config, weights, input_shapes):
        return (int(np.prod(input_shapes[0])),)

    def forward(self, layer, inputs, reusable=None, *, backend):
        return inputs[0].reshape(inputs[0].shape[0], -1)

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        return [dead_out.reshape((dead_out.shape[0],) + tuple(input_shapes[0]))]

    def to_onnx(self, layer, graph, inputs):
        nhwc = graph.node("Transpose", inputs, layer.name, perm=[0, 2, 3, 1])  # the engine's order
        return graph.node("Flatten", [nhwc], layer.name, axis=1)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Flatten(name=name)


class ChannelMapKind(LayerKind):
    """Preprocessing inside the model: a per-channel map, element by element, computed as Keras does."""

    weight_names = ("a", "b")

    def check_config(self, layer, input_shapes):
        channels = input_shapes[0][-1]
        for key in self.weight_names:
            _expect(layer.weights[key].shape == (channels,), layer, key, f"[{channels}]")

    def _channels(self, values, input_shapes, refuse, what):
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        channels = input_shapes[0][-1]
        if values.size not in (1, channels):
            refuse(f"{what} of {values.size} values for {channels} channels; use one, or one per channel")
        return np.ascontiguousarray(np.broadcast_to(values, (channels,)))

    def keras_weights(self, layer):
        return []  # the Keras layer takes its values as arguments


@register
class RescalingKind(ChannelMapKind):
    """Keras ``Rescaling``: ``x * a + b`` (scale, then offset)."""

    kind = "rescale"
    keras_classes = ("Rescaling",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        return {}, {"a": self._channels(cfg["scale"], input_shapes, refuse, "a scale"),
                    "b": self._channels(cfg["offset"], input_shapes, refuse, "an offset")}, None

    def forward(self, layer, inputs, reusable=None, *, backend):
        a, b = (backend.weights(layer.weights[key]) for key in ("a", "b"))
        out = backend.xp.multiply(inputs[0], a)
        return backend.xp.add(out, b, out=out)

    onnx_ops = ("Mul", "Add")

    def to_onnx(self, layer, graph, inputs):
        a, b = (graph.channel_constant(layer.weights[k], k, layer.shape) for k in ("a", "b"))
        return graph.node(self.onnx_ops[1], [graph.node(self.onnx_ops[0], [inputs[0], a], layer.name), b],
                          layer.name)

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Rescaling(layer.weights["a"].tolist(), offset=layer.weights["b"].tolist(), name=name)


@register
class UnfoldedBatchNormKind(RescalingKind):
    """``x * a + b`` per channel: a BatchNormalization that cannot fold into the layer before it
    (exported as a ``Rescaling`` that computes the same)."""

    kind = "affine"
    keras_classes = ()


@register
class NormalizationKind(ChannelMapKind):
    """Keras ``Normalization`` over the channel axis: ``(x - a) / b``, ``b`` = max(sqrt(variance), 1e-7)."""

    kind = "normalize"
    keras_classes = ("Normalization",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        axis = cfg.get("axis")
        if cfg.get("invert") or tuple(axis if isinstance(axis, (list, tuple)) else (axis,)) not in ((-1,),
                                                                                                  (len(input_shapes[0]),)):
            refuse("a Normalization that inverts, or normalises another axis than the channels'")
        mean = np.asarray(keras_layer.mean, dtype=np.float32)
        deviation = np.maximum(np.sqrt(np.asarray(keras_layer.variance, dtype=np.float32)), np.float32(1e-7))
        return {}, {"a": self._channels(mean, input_shapes, refuse, "a mean"),
                    "b": self._channels(deviation, input_shapes, refuse, "a variance")}, None

    def forward(self, layer, inputs, reusable=None, *, backend):
        a, b = (backend.weights(layer.weights[key]) for key in ("a", "b"))
        out = backend.xp.subtract(inputs[0], a)
        return backend.xp.divide(out, b, out=out)

    onnx_ops = ("Sub", "Div")
    to_onnx = RescalingKind.to_onnx

    def to_keras(self, layer, name):
        from keras import layers

        return layers.Normalization(mean=layer.weights["a"].tolist(),
                                    variance=(layer.weights["b"].astype(np.float64) ** 2).tolist(), name=name)



@register
class IdentityKind(LayerKind):
    """Layers that are the identity at inference; they vanish from the graph."""

    kind = "identity"
    keras_classes = ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
                     "ActivityRegularization", "Activation", "Identity", "RandomFlip", "RandomRotation",
                     "RandomZoom", "RandomContrast", "RandomTranslation", "RandomBrightness")
    onnx_reads = ("Dropout", "Identity")
    imported_as = "identity"

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        return {}, {}, inline_activation(getattr(keras_layer, "activation", None), refuse)

    def from_onnx(self, reader, node, name, a):
        reader.emit(node, reader.source(node, name), reader.order.get(node.input[0]))


@register
class BatchNormKind(LayerKind):
    """Inference-mode BatchNormalization; folded into the convolution before it."""

    kind = "batchnorm"
    keras_classes = ("BatchNormalization",)
    onnx_reads = ("BatchNormalization",)
    imported_as = "fold"

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        axis = cfg["axis"]
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(input_shapes[0])):
            refuse(f"normalisation over axis {axis}; only the channel axis (-1) can be folded")
        gamma = keras_layer.gamma.numpy() if cfg["scale"] else 1.0
        beta = keras_layer.beta.numpy() if cfg["center"] else 0.0
        return {}, self.scale_shift(gamma, beta, keras_layer.moving_mean.numpy(), keras_layer.moving_variance.numpy(),
                                    cfg["epsilon"]), None

    def from_onnx(self, reader, node, name, a):
        x = reader.source(node, name)
        weights = self.scale_shift(*(reader.constant(node, name, i) for i in (1, 2, 3, 4)), a.get("epsilon", 1e-5))
        previous = reader.layer(x)
        if self.folds_after(previous, reader.layers[-1], reader.tensors, reader.readers):
            self.fold_into(previous, weights, lambda why: reader.refuse(node, name, why))
            reader.emit(node, x)
            return
        kind, config, weights = self.unfolded(weights)
        reader.emit(node, reader.add(name, kind, [x], config, weights))

    @staticmethod
    def scale_shift(gamma, beta, mean, var, epsilon):
        """``{"scale", "shift"}`` per channel (float64) of an inference normalisation: ``scale * x + shift``.

        Parameters
        ----------
        gamma, beta, mean, var : array_like or float
        epsilon : float
        """
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in (gamma, beta, mean, var))
        scale = gamma / np.sqrt(var + epsilon)
        return {"scale": scale, "shift": beta - mean * scale}

    def folds_after(self, previous, last, aliases, readers):
        """Whether the normalisation of ``previous``'s output folds into it exactly.

        It does where ``previous`` is the last layer built, its kind folds, and nothing else reads
        its output, directly or through the identities (Dropout, Identity) after it.

        Parameters
        ----------
        previous : Layer
            The layer the normalisation reads.
        last : Layer
            The last layer built.
        aliases : Mapping
            Each name in the source graph (a Keras layer, an ONNX tensor) to the layer standing for it.
        readers : Mapping
            Each name in the source graph to how many calls or nodes read it.

        Returns
        -------
        bool
        """
        passing_on = [name for name, target in aliases.items() if target == previous.name]
        other_readers = sum(readers.get(name, 0) for name in passing_on) - len(passing_on)
        return previous is last and other_readers == 0 and previous.handler.folds_normalisation

    def unfolded(self, weights):
        return UnfoldedBatchNormKind.kind, {}, {"a": weights["scale"].astype(np.float32),
                                           "b": weights["shift"].astype(np.float32)}

    def fold_into(self, previous, weights, refuse):
        """Fold the normalisation into a layer's output weights, in place (float64, then float32).

        Parameters
        ----------
        previous : Layer
            A layer whose kind ``folds_normalisation`` (its ``kernel``'s last axis is its output channels).
        weights : dict
            ``scale`` and ``shift`` per channel.
        refuse : callable
        """
        scale, shift = weights["scale"], weights["shift"]
        kernel = previous.weights["kernel"].astype(np.float64) * scale
        bias = previous.weights["bias"].astype(np.float64) * scale + shift
        previous.weights["kernel"] = kernel.astype(np.float32)
        previous.weights["bias"] = bias.astype(np.float32)


def _two_classes(kernel, bias):
    """A binary classifier's one logit z as two classes: sigmoid(z) = softmax([0, z])[1], so class 1
    is p and class 0 is 1 - p."""
    return {"kernel": np.concatenate([np.zeros_like(kernel), kernel], axis=1),
            "bias": np.concatenate([np.zeros(1, np.float32), bias])}


OUTSIDE_THE_METHOD = {  # Keras layers of real models that the method cannot take, and why
    **dict.fromkeys(("LeakyReLU", "PReLU", "ELU"), "its negative region is not 0"),
    "LayerNormalization": "it rescales every position by statistics of all its channels, so a removed node "
                          "changes the nodes kept",
    "Multiply": "a gate (squeeze-and-excitation) multiplies nodes, so an inactive one does not output 0",
    "Lambda": "its function is arbitrary code",
}


def supported():
    """The Keras layer classes fastdecomp imports, as a sentence."""
    return (", ".join(sorted(KERAS_CLASSES)) + " layers (nested models flattened), with relu, relu6 or linear "
            "activations and a softmax, logits or one-unit sigmoid output; a BatchNormalization folds into the "
            "Conv2D, DepthwiseConv2D, SeparableConv2D or Dense before it, and is a per-channel affine layer "
            "anywhere else")


def refuser(keras_layer):
    """A function that raises :class:`UnsupportedLayerError` naming ``keras_layer``."""
    def refuse(why):
        raise UnsupportedLayerError(
            f"layer {keras_layer.name!r} ({type(keras_layer).__name__}) is not supported: "
            f"{why}. fastdecomp decomposes {supported()}")
    return refuse


class LogitsHeadWarning(UserWarning):
    """A classifier ends in a monotone activation after its output layer; its values before it are taken
    as the logits."""


def logits_head(layers, model_name):
    """The layers of an imported classifier with the head the method channels: a monotone activation
    (a ReLU) ending the model after its output layer is dropped with a warning, its input taken as the
    logits; a logits output gets its implied softmax.

    Parameters
    ----------
    layers : list of Layer
    model_name : str
        For the warning.

    Returns
    -------
    list of Layer
    """
    import warnings

    last = layers[-1]
    if len(layers) > 2 and last.handler.keeps_order and last.inputs == [layers[-2].name] \
            and layers[-2].handler.output_layer:
        warnings.warn(f"model {model_name!r} ends in {last.keras_name!r} ({last.kind}) after its output layer "
                      f"{layers[-2].keras_name!r}: that layer's values are taken as the logits (the activation "
                      "keeps their order, except among classes it sets to the same value), and their softmax as "
                      "the probabilities", LogitsHeadWarning, stacklevel=3)
        layers = layers[:-1]
        last = layers[-1]
    if last.handler.output_layer:  # a logits output (trained with from_logits=True): the softmax is implied
        layers = layers[:-1] + last.handler.logits_output(last)
    return layers


def inline_activation(activation, refuse):
    """The layer an ``activation`` setting adds after its layer: None, or ``(kind, config)``.

    Parameters
    ----------
    activation : str, callable or None
        The Keras setting.
    refuse : callable
        Raises :class:`UnsupportedLayerError` for any other activation.
    """
    name = activation if isinstance(activation, str) or activation is None \
        else getattr(activation, "__name__", str(activation))
    if not isinstance(activation, (str, type(None))) and not _is_keras_activation(activation, name):
        refuse(f"the activation function {activation!r} is not Keras' own {name!r}; use the Keras activation")
    if name in ("linear", None):
        return None
    if name in ("relu", "softmax"):
        return name, {}
    if name == "relu6":
        return "relu", {"max_value": 6.0}
    refuse(f"activation {name!r}: the method needs an activation whose inactive region outputs exactly 0; "
           "use 'relu' or 'relu6' (or 'softmax' on the output)")


def _is_keras_activation(function, name):
    import keras

    try:
        return keras.activations.get(name) is function
    except ValueError:
        return False


def _onnx_conv(graph, layer, x, kernel, bias, groups):
    """An ONNX Conv of an HWIO ``kernel`` with ``layer``'s strides, padding and dilation."""
    c = layer.config
    pt, pb, pl, pr = c["pads"]
    return graph.node("Conv", [x, graph.constant(kernel.transpose(3, 2, 0, 1), "kernel"), graph.constant(bias, "bias")],
                      layer.name, kernel_shape=list(kernel.shape[:2]), strides=list(c["strides"]),
                      pads=[pt, pl, pb, pr], dilations=list(c.get("dilation", (1, 1))), group=groups)


def _pair(value):
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value), int(value))


def onnx_window(reader, node, name, a, x, window, dilation=(1, 1), ceil=False):
    """``strides``, ``padding`` and ``pads`` of an ONNX window node (``auto_pad``, ``pads``, ``ceil_mode``):
    Keras' ``same`` or ``valid`` where its pads are those, else ``explicit``.

    Parameters
    ----------
    reader : fastdecomp.onnx_io.OnnxReader
    node : onnx.NodeProto
    name : str
    a : dict
        The node's attributes.
    x : str
        The input layer's name.
    window, dilation : tuple of int
    ceil : bool
        ``ceil_mode``: a last window hanging over the end is taken.
    """
    h, w, _ = reader.shape(x)
    span = window_span(window, dilation)
    strides = tuple(a.get("strides", (1, 1)))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        _, _, same = window_geometry((h, w), span, strides, "same")
        pads = same if auto == "SAME_UPPER" else (same[1], same[0], same[3], same[2])
    else:
        top, left, bottom, right = a.get("pads", (0, 0, 0, 0)) if auto == "NOTSET" else (0, 0, 0, 0)
        pads = (top, bottom, left, right)
    if ceil:  # the last window may hang over the end: more padding there, which the kernels skip
        pads = (pads[0], pads[1] + _ceil_extra(h, span[0], strides[0], pads[0], pads[1]),
                pads[2], pads[3] + _ceil_extra(w, span[1], strides[1], pads[2], pads[3]))
    for padding in ("valid", "same"):
        if window_geometry((h, w), span, strides, padding)[2] == tuple(pads):
            return {"strides": strides, "padding": padding, "pads": tuple(pads)}
    if max(pads[:2]) >= span[0] or max(pads[2:]) >= span[1]:
        reader.refuse(node, name, f"pads {pads} as large as its window")
    return {"strides": strides, "padding": "explicit", "pads": tuple(int(p) for p in pads)}


def _ceil_extra(size, window, stride, before, after):
    """Padding ``ceil_mode`` adds after a row: as PyTorch and ONNX count it, a last window that would
    start in the padding after the input is not taken."""
    out = -(-(size + before + after - window) // stride) + 1
    if (out - 1) * stride >= size + before:
        out -= 1
    return max(0, (out - 1) * stride + window - (size + before + after))


def window_span(window, dilation):
    """The rows and columns a dilated window spans.

    Parameters
    ----------
    window, dilation : tuple of int
        (rows, columns) each.

    Returns
    -------
    tuple of int
    """
    return tuple((k - 1) * d + 1 for k, d in zip(window, dilation))


@lru_cache(maxsize=None)
def _zeros(size):
    zeros = np.zeros(size, dtype=np.float32)
    zeros.flags.writeable = False
    return zeros


def _window_dead_inputs(layer, dead_out, in_shape, groups, through_conv):
    """MC-BI through a convolution: input (h, w, c) is dead when every output node of ``c``'s group
    whose window covers (h, w) is dead (MC-BLN stops here: nothing is dead)."""
    h, w, ci = in_shape
    if not through_conv:
        return np.zeros((dead_out.shape[0], h, w, ci), dtype=bool)
    c = layer.config
    window = layer.weights.get("depthwise", layer.weights["kernel"]).shape[:2]
    group_dead = np.ascontiguousarray(dead_out.reshape(dead_out.shape[:3] + (groups, -1)).all(axis=-1))
    dead_in = cpu.window_dead_inputs(group_dead, h, w, *window, *c["strides"], c["pads"][0], c["pads"][2],
                                     *c.get("dilation", (1, 1)))
    if groups == ci:
        return dead_in
    return np.repeat(dead_in, ci // groups, axis=-1)


def window_config(window, cfg, input_shapes, refuse, dilation=(1, 1)):
    """Strides and padding of a convolution or pooling layer, checked against its input.

    Parameters
    ----------
    window : (int, int)
        Kernel or pool size.
    cfg : dict
        The Keras layer's configuration.
    input_shapes : list of tuple of int
    refuse : callable
        Raises :class:`UnsupportedLayerError` for what cannot be imported.
    dilation : (int, int)
        The window reads every ``dilation``-th row and column.

    Returns
    -------
    dict
        ``strides``, ``padding`` and ``pads`` (top, bottom, left, right).
    """
    if len(input_shapes[0]) != 3:
        refuse(f"input of shape {input_shapes[0]}; expected (height, width, channels)")
    if cfg.get("data_format", "channels_last") != "channels_last":
        refuse("data_format='channels_first'; use channels_last")
    if cfg["padding"] not in ("same", "valid"):
        refuse(f"padding={cfg['padding']!r}; use 'same' or 'valid'")
    strides = tuple(cfg["strides"] or window)
    oh, ow, pads = window_geometry(input_shapes[0], window_span(window, dilation), strides, cfg["padding"])
    if oh < 1 or ow < 1:
        refuse(f"a {tuple(window)} window does not fit its {tuple(input_shapes[0][:2])} input")
    return {"strides": strides, "padding": cfg["padding"], "pads": pads}


def keras_window(layer, name, build, pad_value=0.0):
    """The Keras layer of a window layer: ``build(padding, name)`` with Keras' ``same`` or ``valid``, or for
    explicit pads (an ONNX model's) that layer ``valid`` after a padding of its own, as one ``Sequential``.

    Parameters
    ----------
    layer : Layer
    name : str
    build : callable
        ``build(padding, name)`` -> the Keras layer.
    pad_value : float
        What the explicit padding holds: 0 before a convolution, ``-inf`` before a max pooling (which
        then never takes it).
    """
    if layer.config["padding"] != "explicit":
        return build(layer.config["padding"], name)
    import keras

    top, bottom, left, right = layer.config["pads"]
    if pad_value == 0.0:
        pad = keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{name}_pad")
    else:
        pad = keras_window_pad()((top, bottom, left, right), pad_value, name=f"{name}_pad")
    return keras.Sequential([pad, build("valid", f"{name}_window")], name=name)


@lru_cache(maxsize=None)
def keras_window_pad():
    """The Keras layer ``WindowPad(pads, value)``: rows and columns padded with a constant (``-inf`` before a
    max pooling, which then takes no padding, as ONNX's explicit pads and the engine do). One of
    :func:`fastdecomp.keras_io.keras_custom_objects`."""
    import keras

    @keras.saving.register_keras_serializable(package="fastdecomp")
    class WindowPad(keras.layers.Layer):
        def __init__(self, pads, value, **kwargs):
            super().__init__(**kwargs)
            self.pads, self.value = tuple(int(p) for p in pads), float(value)

        def call(self, inputs):
            top, bottom, left, right = self.pads
            return keras.ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=self.value)

        def compute_output_shape(self, input_shape):
            n, h, w, c = input_shape
            top, bottom, left, right = self.pads
            return (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)

        def get_config(self):
            return {**super().get_config(), "pads": list(self.pads), "value": self.value}

    return WindowPad


def _expect(condition, layer, field, what):
    if not condition:
        raise ValueError(f"layer {layer.name!r} ({layer.kind}): {field} should be {what}")


def _ints(values, count, low):
    return (isinstance(values, (tuple, list)) and len(values) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values))


def _check_window(layer, window, in_shape):
    """Strides, padding and pads of a sliding window: valid, and the ones its input and size give."""
    c = layer.config
    _expect(_ints(c.get("strides"), 2, low=1), layer, "strides", "2 positive integers")
    _expect(c.get("padding") in ("same", "valid", "explicit"), layer, "padding", "'same', 'valid' or 'explicit'")
    if c["padding"] == "explicit":
        _expect(_ints(c.get("pads"), 4, low=0) and max(c["pads"][:2]) < window[0] and max(c["pads"][2:]) < window[1],
                layer, "pads", "4 integers from 0 to the window's size less 1")
    oh, ow, pads = window_geometry(in_shape, window, c["strides"], c["padding"], c.get("pads"))
    _expect(oh >= 1 and ow >= 1, layer, "window", f"no larger than its input {tuple(in_shape[:2])}")
    _expect(tuple(c.get("pads", ())) == pads, layer, "pads", f"{pads}, as its padding gives")


def _positions(layer):
    """The output positions of a layer with a channel axis last."""
    return int(np.prod(layer.shape[:-1]))
