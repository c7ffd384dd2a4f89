"""ONNX in and out: an ONNX classifier (as PyTorch exports one) as a network; a module, or a whole
voting composition, as one ONNX graph that runs anywhere.

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

__all__ = ["from_onnx", "OnnxGraph", "network_to_onnx", "module_to_onnx", "composition_to_onnx", "save_onnx",
           "OPSET", "OPSETS", "GRAPH_OPS", "imported_ops", "OnnxReader"]

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
    tensors = {}
    for layer in layers:
        if head is not None and layer.name == output_layer:
            layer = layer.handler.with_head(layer, head)
        mask = masks.get(layer.name)
        inputs = [tensors[s] for s in layer.inputs] or [images]
        # the inputs' tensors stand for their whole computations: a flat key, whatever the graph's depth
        key = (layer.name, tuple(inputs), _digest(mask),
               _digest(*head) if head is not None and layer.name == output_layer else None)
        if key not in memo:
            out = layer.handler.to_onnx(layer, graph, inputs)
            memo[key] = out if mask is None else graph.masked(out, mask, layer.name)
        tensors[layer.name] = memo[key]
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


# --------------------------------------------------------------------------
# ONNX in
# --------------------------------------------------------------------------

OPSETS = range(13, 22)
GRAPH_OPS = ("Constant",)  # operators that make no layer: the reader keeps their tensors as constants


def imported_ops():
    """The ONNX operators :func:`from_onnx` reads: those the registered kinds read, and :data:`GRAPH_OPS`."""
    from .layers import ONNX_OPS

    return tuple(ONNX_OPS) + GRAPH_OPS


def from_onnx(model_or_path):
    """Import an ONNX image classifier (as ``torch.onnx.export`` writes one) as a :class:`Network`.

    The network takes NHWC float32 images, as every fastdecomp network does:
    give it ``x.transpose(0, 2, 3, 1)`` of NCHW data.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, str or Path
        A model, or a ``.onnx`` file.

    Returns
    -------
    Network

    Raises
    ------
    ModelFileError
        A missing, truncated or invalid file, or an opset outside 13-21.
    UnsupportedLayerError
        An operator or a graph fastdecomp cannot import, naming the node (every operator it does not
        read, at once).
    """
    from .network import Network

    from .network import check_weights

    model = _load_onnx(model_or_path)
    reader = OnnxReader(model.graph)
    _check_ops(model.graph)
    for node in model.graph.node:
        reader.read(node)
    name = model.graph.name or "onnx"
    return Network(check_weights(reader.finish(), name), name=name)


def _load_onnx(model_or_path):
    import onnx

    from .errors import ModelFileError

    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        from pathlib import Path

        path = Path(model_or_path)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises several kinds for a bad file
            raise ModelFileError(f"could not read the ONNX model {path}: {type(exc).__name__}: {exc}. Is the file "
                                 "complete? Export it again with torch.onnx.export") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset not in OPSETS:
        raise ModelFileError(f"the ONNX model uses opset {opset}; fastdecomp reads opsets 13 to 21: export it "
                             "again with opset_version=17, or convert it with "
                             "onnx.version_converter.convert_version(model, 17)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFileError(f"the ONNX model is not valid: {exc}") from exc
    return model


def _check_ops(graph):
    """Refuse a graph with operators no kind reads, naming each and the nodes that use it."""
    from .errors import UnsupportedLayerError

    known = set(imported_ops())
    unknown = {}
    for index, node in enumerate(graph.node):
        if node.op_type not in known:
            unknown.setdefault(node.op_type, []).append(node.name or f"{node.op_type}_{index}")
    if unknown:
        listed = "; ".join(f"{', '.join(repr(n) for n in names[:3])}{' and more' if len(names) > 3 else ''} ({op})"
                           for op, names in unknown.items())
        raise UnsupportedLayerError(
            f"{len(unknown)} operator{'s' if len(unknown) > 1 else ''} of this graph cannot be imported, at the "
            f"nodes {listed}. fastdecomp imports {', '.join(sorted(known))} (the method needs activations "
            "whose inactive region outputs exactly 0)")


class OnnxReader:
    """The graph being built from ONNX nodes: tensors to layers, constants, and the row order of
    flattened maps (ONNX flattens channels first, the engine channels last).

    Each node goes to the kind that reads its operator (:attr:`fastdecomp.layers.LayerKind.onnx_reads`),
    whose ``from_onnx`` builds its layer through the methods here.

    Parameters
    ----------
    graph : onnx.GraphProto
    """

    def __init__(self, graph):
        from onnx import numpy_helper

        self.layers, self.tensors, self.order, self.product = [], {}, {}, None
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.readers = {}
        for node in graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        self.output = self._single(graph)
        self.name = graph.name or "onnx"

    def _single(self, graph):
        from .errors import UnsupportedLayerError
        from .layers import InputKind

        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedLayerError(f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)} outputs; "
                                        "fastdecomp takes a classifier with one image input and one output")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or None in dims[1:]:
            raise UnsupportedLayerError(
                f"input {inputs[0].name!r} has shape {dims}; fastdecomp takes NCHW images of one size: export "
                "the model with a fixed (channels, height, width), e.g. a dummy input of the real size")
        c, h, w = dims[1:]
        self.add(inputs[0].name, InputKind.INPUT_KIND, [], {"shape": (h, w, c)}, {})
        self.tensors[inputs[0].name] = inputs[0].name
        return graph.output[0].name

    def add(self, name, kind, sources, config, weights):
        """Build a layer of ``kind`` reading the layers ``sources``; its name.

        Parameters
        ----------
        name, kind : str
        sources : list of str
        config, weights : dict
        """
        from .errors import UnsupportedLayerError
        from .layers import KINDS

        try:
            layer = KINDS[kind].build(name, sources, [self.shape(s) for s in sources], config, weights, name)
        except ValueError as error:
            raise UnsupportedLayerError(f"node {name!r} is not supported: {error}") from None
        self.layers.append(layer)
        return name

    def layer(self, name):
        """The layer built last under ``name``."""
        return next(layer for layer in reversed(self.layers) if layer.name == name)

    def shape(self, layer_name):
        """The output shape of layer ``layer_name``, without the batch axis."""
        return self.layer(layer_name).shape

    def read(self, node):
        """Read one node: its operator's kind builds its layer, or the reader keeps its constant.

        Parameters
        ----------
        node : onnx.NodeProto
        """
        from .layers import KINDS, ONNX_OPS

        name = node.name or f"{node.op_type}_{len(self.layers)}"
        attributes = {a.name: _attribute(a) for a in node.attribute}
        if node.op_type == "Constant":
            self._constant(node, name, attributes)
        else:
            KINDS[ONNX_OPS[node.op_type]].from_onnx(self, node, name, attributes)

    def refuse(self, node, name, why):
        """Raise :class:`UnsupportedLayerError` naming the node and ``why``.

        Parameters
        ----------
        node : onnx.NodeProto
        name : str
            The node's layer name, for the message.
        why : str
        """
        from .errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"node {name!r} ({node.op_type}) is not supported: {why}")

    def source(self, node, name, index=0):
        """The layer that node input ``index`` comes from (refused where it is a constant or unknown).

        Parameters
        ----------
        node : onnx.NodeProto
        name : str
            The node's layer name, for the message.
        index : int
        """
        tensor = node.input[index]
        if tensor not in self.tensors:
            self.refuse(node, name, f"its input {tensor!r} is a constant or unknown; fastdecomp reads nodes whose "
                                    "data input comes from the image")
        return self.tensors[tensor]

    def constant(self, node, name, index):
        """Node input ``index`` as an array (None where the optional input is absent); refused unless constant.

        Parameters
        ----------
        node : onnx.NodeProto
        name : str
            The node's layer name, for the message.
        index : int
        """
        if index >= len(node.input) or node.input[index] == "":
            return None
        if node.input[index] not in self.constants:
            self.refuse(node, name, f"input {node.input[index]!r} must be a constant (an initializer)")
        return self.constants[node.input[index]]

    def emit(self, node, layer_name, order=None):
        """The node's output tensor is layer ``layer_name`` (rows in ONNX ``order`` for a flattened map).

        Parameters
        ----------
        node : onnx.NodeProto
        layer_name : str
        order : numpy.ndarray, optional
            Engine row -> ONNX row of a flattened map.
        """
        self.tensors[node.output[0]] = layer_name
        if order is not None:
            self.order[node.output[0]] = order

    def unordered(self, node, name):
        """Refuse a flattened map's vector in ONNX order where the node would mix features.

        Parameters
        ----------
        node : onnx.NodeProto
        name : str
            The node's layer name, for the message.
        """
        if any(t in self.order for t in node.input):
            self.refuse(node, name, "it reads a flattened map before a Gemm or MatMul has taken it")

    def finish(self):
        """The layers, with the head the method channels (:func:`fastdecomp.layers.logits_head`)."""
        from .layers import logits_head

        if self.tensors.get(self.output) != self.layers[-1].name:
            from .errors import UnsupportedLayerError

            raise UnsupportedLayerError(f"the graph's output {self.output!r} is not its last layer's")
        return logits_head(self.layers, self.name)

    def _constant(self, node, name, a):
        from onnx import numpy_helper

        if "value" not in a:
            self.refuse(node, name, "a Constant without a tensor value")
        self.constants[node.output[0]] = numpy_helper.to_array(a["value"])


def _attribute(attribute):
    from onnx import helper

    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    return tuple(value) if isinstance(value, list) else value
