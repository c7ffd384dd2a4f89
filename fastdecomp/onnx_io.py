"""ONNX out: a module, or a whole voting composition, as one ONNX graph that runs anywhere.

Each layer kind (:mod:`fastdecomp.layers`) writes its own nodes
(:meth:`~fastdecomp.layers.LayerKind.to_onnx`); this module builds the graph
around them. Images go in as the engine takes them, NHWC float32, and are
transposed once to ONNX's NCHW; a map is transposed back only before a
Flatten, so that the features reach a Dense layer in the engine's order. The
``onnx`` package is imported only when these functions run.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import InputError, OutputExistsError
from .storage import atomic_file

__all__ = ["OnnxGraph", "network_to_onnx", "module_to_onnx", "composition_to_onnx", "save_onnx", "OPSET"]

OPSET = 17
_FLOAT = 1  # onnx.TensorProto.FLOAT


class OnnxGraph:
    """Nodes and initializers of one ONNX graph, with unique tensor names.

    Parameters
    ----------
    prefix : str
        Put before every name this builder makes (to keep several networks apart).
    """

    def __init__(self, prefix=""):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self.prefix, self._count = [], [], prefix, 0

    def name(self, hint):
        """A new tensor name from ``hint``."""
        self._count += 1
        return f"{self.prefix}{hint}.{self._count}"

    def constant(self, array, hint, dtype=np.float32):
        """An initializer holding ``array``, and its name.

        Parameters
        ----------
        array : array_like
        hint : str
            The start of its name.
        dtype : numpy dtype
            float32 unless given (int64 for shapes and indices).

        Returns
        -------
        str
        """
        name = self.name(hint)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def node(self, op, inputs, hint, **attributes):
        """A node of ``op`` over ``inputs``, and the name of its one output.

        Parameters
        ----------
        op : str
            The ONNX operator.
        inputs : list of str
            Tensor names ("" for an optional input left out).
        hint : str
            The start of the output's name.
        **attributes
            The operator's attributes.

        Returns
        -------
        str
        """
        output = self.name(hint)
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def channel_constant(self, values, hint, shape):
        """Per-channel ``values`` shaped to broadcast over a tensor of the layer shape ``shape``.

        Parameters
        ----------
        values : array_like
            One per channel.
        hint : str
        shape : tuple of int
            The engine's shape (HWC for a map, whose ONNX tensor is NCHW; F for a vector).

        Returns
        -------
        str
        """
        values = np.asarray(values, dtype=np.float32)
        return self.constant(values.reshape(-1, 1, 1) if len(shape) == 3 else values, hint)

    def masked(self, tensor, mask, hint):
        """``tensor`` times a node mask.

        Parameters
        ----------
        tensor : str
        mask : numpy.ndarray
            bool or float, in the engine's layout (HWC or F).
        hint : str

        Returns
        -------
        str
        """
        mask = np.asarray(mask, dtype=np.float32)
        layout = mask.transpose(2, 0, 1) if mask.ndim == 3 else mask
        return self.node("Mul", [tensor, self.constant(layout[None], f"{hint}.mask")], f"{hint}.masked")


def _layers_to_onnx(graph, layers, images, masks=None, head=None, output_layer=None, memo=None):
    """The nodes of ``layers`` from the NHWC ``images`` tensor on; returns the tensor of every layer.

    ``memo`` (shared across calls) maps a computation's key to its tensor, so
    that variants whose masks agree up to a layer share its nodes.
    """
    masks, memo = masks or {}, {} if memo is None else memo
    tensors, keys = {}, {}
    for layer in layers:
        if head is not None and layer.name == output_layer:
            layer = layer.handler.with_head(layer, head)
        mask = masks.get(layer.name)
        key = (layer.name, tuple(keys[s] for s in layer.inputs), _digest(mask),
               _digest(*head) if head is not None and layer.name == output_layer else None)
        if key not in memo:
            inputs = [tensors[s] for s in layer.inputs] or [images]
            out = layer.handler.to_onnx(layer, graph, inputs)
            memo[key] = out if mask is None else graph.masked(out, mask, layer.name)
        tensors[layer.name], keys[layer.name] = memo[key], key
    return tensors


def _digest(*arrays):
    if len(arrays) == 1 and arrays[0] is None:
        return None
    hasher = hashlib.sha256()
    for array in arrays:
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()


def _model(graph, input_shape, outputs, name):
    helper = graph.helper
    from onnx import TensorProto, checker

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *input_shape])
    values = [helper.make_tensor_value_info(out, dtype, ["N", *shape]) for out, dtype, shape in outputs]
    model = helper.make_model(helper.make_graph(graph.nodes, name, [images], values, graph.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastdecomp")
    checker.check_model(model)
    return model


def _renamed(graph, tensor, name):
    graph.nodes.append(graph.helper.make_node("Identity", [tensor], [name]))
    return name


def network_to_onnx(network):
    """``network``'s probabilities ``[N, classes]`` from NHWC float32 ``images``, as an ONNX model.

    Parameters
    ----------
    network : fastdecomp.network.Network

    Returns
    -------
    onnx.ModelProto
    """
    graph = OnnxGraph()
    tensors = _layers_to_onnx(graph, network.layers, "images")
    out = _renamed(graph, tensors[network.layers[-1].name], "probabilities")
    return _model(graph, network.input_shape, [(out, _FLOAT, network.layers[-1].shape)], network.name)


def module_to_onnx(pruned):
    """A pruned module as an ONNX model: ``probabilities [N, 2]`` = [P(concerned), P(unconcerned)].

    Parameters
    ----------
    pruned : fastdecomp.pruning.PrunedModule

    Returns
    -------
    onnx.ModelProto
    """
    graph = OnnxGraph()
    tensors = _layers_to_onnx(graph, pruned.layers, "images", pruned.masks, pruned.head, pruned.output_dense)
    out = _renamed(graph, tensors[pruned.layers[-1].name], "probabilities")
    return _model(graph, pruned.layers[0].shape, [(out, _FLOAT, (2,))], pruned.name)


def composition_to_onnx(composition):
    """A voting composition as one ONNX model that runs every module, sharing the nodes of modules
    whose masks agree up to them (as :meth:`~fastdecomp.network.Network.forward_many` shares layers).

    Outputs ``probabilities [N, M]`` (column j: module j's P(concerned), as
    :meth:`~fastdecomp.compose.Composition.predict_proba`), ``margins [N, M]``
    (logit margins, as :meth:`~fastdecomp.compose.Composition.decision_function`)
    and ``labels [N]`` (int64: the label of the module with the largest
    margin, as :meth:`~fastdecomp.compose.Composition.predict`).

    Parameters
    ----------
    composition : fastdecomp.compose.Composition

    Returns
    -------
    onnx.ModelProto
    """
    graph, memo, networks = OnnxGraph(), {}, []
    probabilities, margins = [], []
    for ref in composition.refs:
        network = ref.modules.network
        index = next((i for i, n in enumerate(networks) if n is network), None)
        if index is None:
            index, _ = len(networks), networks.append(network)
        graph.prefix = f"n{index}/"
        tensors = _layers_to_onnx(graph, network.layers, "images", ref.modules.masks(ref.k, names="network"),
                                  ref.modules.head(ref.k), network.output_dense, memo.setdefault(index, {}))
        logits = tensors[network.output_dense]
        probabilities.append(_column(graph, tensors[network.layers[-1].name], 0))
        margins.append(graph.node("Sub", [_column(graph, logits, 0), _column(graph, logits, 1)], "margin"))
    graph.prefix = ""
    scores = _renamed(graph, graph.node("Concat", probabilities, "scores", axis=1), "probabilities")
    margin = _renamed(graph, graph.node("Concat", margins, "margins", axis=1), "margins")
    best = graph.node("ArgMax", [margin], "best", axis=1, keepdims=0)
    labels = graph.constant(np.asarray(composition.labels), "label_table", dtype=np.int64)
    chosen = _renamed(graph, graph.node("Gather", [labels, best], "labels", axis=0), "labels")
    from onnx import TensorProto

    columns = (len(composition.refs),)
    return _model(graph, composition.input_shape, [(scores, TensorProto.FLOAT, columns),
                                                   (margin, TensorProto.FLOAT, columns),
                                                   (chosen, TensorProto.INT64, ())], "composition")


def _column(graph, tensor, j):
    starts, ends, axes = (graph.constant([v], "slice", dtype=np.int64) for v in (j, j + 1, 1))
    return graph.node("Slice", [tensor, starts, ends, axes], "column")


def save_onnx(model, path, *, overwrite=False):
    """Write an ONNX model to ``path`` atomically (a temporary file renamed into place).

    Parameters
    ----------
    model : onnx.ModelProto
    path : str, Path or None
        None writes nothing.
    overwrite : bool
        Replace an existing file; otherwise that is refused.

    Returns
    -------
    onnx.ModelProto
        ``model``.
    """
    from pathlib import Path

    if path is None:
        return model
    path = Path(path)
    if path.suffix != ".onnx":
        raise InputError(f"{path}: an ONNX file's name ends in .onnx")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder")
    atomic_file(path, model.SerializeToString())
    return model
