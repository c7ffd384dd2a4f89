"""Keras in and out: a trained Keras classifier into a :class:`~fastdecomp.network.Network`,
and a pruned module back into a Keras model.

Each layer kind (:mod:`fastdecomp.layers`) says how it imports and exports;
this module walks the Keras graph and builds the models. TensorFlow/Keras is
imported only when one of these functions runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import InputError, ModelFileError, UnsupportedLayerError
from .layers import KERAS_CLASSES, KINDS, OUTSIDE_THE_METHOD, keras_window_pad, logits_head, refuser
from .network import Network, check_weights

__all__ = ["from_keras", "load_keras_model", "to_keras", "keras_custom_objects"]

NESTED_MODEL_CLASSES = ("Functional", "Sequential", "Model")


def load_keras_model(path):
    """Load a ``.keras`` or ``.h5`` file with a clear error when it is missing or corrupt.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    keras.Model
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelFileError(f"{path}: expected a .keras or .h5 model file")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a bad file
        raise ModelFileError(
            f"could not read the Keras model {path}: {type(exc).__name__}: {exc}. "
            "Is the file complete? Re-save it with model.save()") from exc


def from_keras(model_or_path):
    """Import a trained Keras classifier as a :class:`Network`.

    Parameters
    ----------
    model_or_path : keras.Model, str, Path or Network
        A Sequential or functional model, or a ``.keras``/``.h5`` file (a
        Network is returned as it is; an ONNX model or ``.onnx`` file goes to
        :func:`fastdecomp.onnx_io.from_onnx`).

    Returns
    -------
    Network
        Layers that fold (BatchNormalization) merged into the layer before
        them; identities (Dropout, linear activations) removed; inline
        ReLU/softmax activations split off as layers named ``<layer>/relu``
        and ``<layer>/softmax``. A model that ends in a Dense layer without
        an activation (logits, as trained with ``from_logits=True``) gets its
        implied softmax: the network's probabilities are the softmax of the
        model's outputs.

    Raises
    ------
    UnsupportedLayerError
        For a layer or activation no registered kind imports, naming it.
    ModelFileError
        For a missing or unreadable model file.
    """
    if isinstance(model_or_path, Network):
        return model_or_path
    if type(model_or_path).__name__ == "ModelProto" or (isinstance(model_or_path, (str, Path))
                                                        and Path(model_or_path).suffix == ".onnx"):
        from .onnx_io import from_onnx

        return from_onnx(model_or_path)
    model = load_keras_model(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    _check_model(model)
    return Network(check_weights(_import_layers(model), model.name), name=model.name)


def _check_model(model):
    if not hasattr(model, "layers"):
        raise InputError(f"expected a Keras model or a model file path, got {type(model).__name__}")
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise InputError(f"model {model.name!r} is not built: give it an Input layer "
                         "(keras.Input(shape=...)) or call it on data once before importing it")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedLayerError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "fastdecomp takes a classifier with one image input and one softmax output")


class _Call(NamedTuple):
    """One call of a Keras layer in the flattened graph: its inputs and its name there."""

    op: object
    node: object
    sources: list
    name: str


def _flat_calls(model, sources=None, taken=None):
    """The layer calls from ``model``'s input to its output, in order, and the name of its output.

    A nested model (a base network inside a transfer-learning ``Sequential``,
    an augmentation ``Sequential``) is replaced by its own calls, its input
    standing for the tensor it is called on. A layer whose name an earlier
    one took is renamed ``<model>/<layer>``.
    """
    taken = set() if taken is None else taken
    calls, renamed = [], {}
    for op, node in _topological_keras_nodes(model):
        inputs = [renamed[t._keras_history.operation.name] for t in node.input_tensors]
        if sources is not None and type(op).__name__ == "InputLayer":
            renamed[op.name] = sources[0]
            continue
        if type(op).__name__ in NESTED_MODEL_CLASSES or hasattr(op, "layers"):
            _check_model(op)
            inner, renamed[op.name] = _flat_calls(op, inputs, taken)
            calls += inner
            continue
        name = op.name if op.name not in taken else f"{model.name}/{op.name}"
        taken.add(name)
        renamed[op.name] = name
        calls.append(_Call(op, node, inputs, name))
    return calls, renamed[model.outputs[0]._keras_history.operation.name]


class _Import:
    """The graph being built: its layers, and which graph layer stands for each Keras layer."""

    def __init__(self, calls):
        self.layers, self.alias, self.readers = [], {}, {}
        for call in calls:
            for source in call.sources:
                self.readers[source] = self.readers.get(source, 0) + 1

    def layer(self, name):
        return next(layer for layer in reversed(self.layers) if layer.name == name)

    def add(self, call):
        op, name = call.op, call.name
        refuse = refuser(op)
        handler = KINDS[_registered_kind(op, call.node, refuse)]
        sources = [self.alias[source] for source in call.sources]
        for source in sources:
            _refuse_an_inner_output(self.layer(source))
        input_shapes = [tuple(self.layer(s).shape) for s in sources]
        handler = KINDS[handler.kind_for(op.get_config(), input_shapes)]
        config, weights, activation = handler.from_keras(op, op.get_config(), input_shapes, refuse)
        if handler.imported_as == "fold":
            self.alias[name] = self._fold(handler, name, sources[0], weights, refuse)
            return
        if handler.imported_as == "identity":
            out = sources[0]
        else:
            out = self._build(handler.kind, name, sources, config, weights, name, refuse)
        if activation is not None:
            kind, activation_config = activation
            out = self._build(kind, f"{name}/{kind}", [out], activation_config, {}, name, refuse)
        self.alias[name] = out

    def _build(self, kind, name, sources, config, weights, keras_name, refuse):
        try:
            layer = KINDS[kind].build(name, sources, [self.layer(s).shape for s in sources], config, weights,
                                      keras_name)
        except ValueError as error:
            refuse(str(error))
        self.layers.append(layer)
        return name

    def _fold(self, handler, name, source, weights, refuse):
        """Fold into the layer before where that is exact; otherwise the layer of its own the kind says."""
        previous = self.layer(source)
        if handler.folds_after(previous, self.layers[-1], self.alias, self.readers):
            handler.fold_into(previous, weights, refuse)
            return previous.name
        kind, config, weights = handler.unfolded(weights)
        return self._build(kind, name, [source], config, weights, name, refuse)


def _registered_kind(op, node, refuse):
    """The registered kind of a Keras layer call, after refusing what no kind may import."""
    import keras

    cls = type(op).__name__
    if not isinstance(op, keras.layers.Layer):
        refuse(f"a Keras operation ({type(op).__module__}.{cls}, from an expression such as x + 3.0 or a "
               "keras.ops call), not a layer; write it with keras.layers so that all its inputs are known")
    if cls in OUTSIDE_THE_METHOD:
        refuse(f"{OUTSIDE_THE_METHOD[cls]}; the method needs layers whose inactive region outputs exactly 0")
    if cls not in KERAS_CLASSES:
        refuse("no handler for this layer type")
    module = KINDS[KERAS_CLASSES[cls]].keras_module
    try:
        defined = getattr(importlib.import_module(module), cls, None)
    except ImportError:
        defined = None
    if defined is not type(op):  # a subclass or a namesake computes something else
        refuse(f"{type(op).__module__}.{cls} is not {module}.{cls}; fastdecomp reads Keras' own layers")
    constants = [leaf for leaf in keras.tree.flatten(getattr(node.arguments, "args", ()))
                 if leaf is not None and not isinstance(leaf, keras.KerasTensor)]
    if constants:
        refuse(f"an input that is a constant ({type(constants[0]).__name__}), not a tensor of the model; "
               "fastdecomp reads layers whose inputs are all layers' outputs")
    return KERAS_CLASSES[cls]


def _import_layers(model):
    calls, _ = _flat_calls(model)
    graph = _Import(calls)
    for call in calls:
        graph.add(call)
    for layer in graph.layers[:-1]:
        _refuse_an_inner_output(layer)
    return logits_head(graph.layers, model.name)


def _refuse_an_inner_output(layer):
    if layer.handler.output_activation:
        raise UnsupportedLayerError(
            f"layer {layer.keras_name!r} ends in a {layer.kind} (or a one-unit sigmoid) inside the model; "
            "fastdecomp takes it only on the output layer, which it channels into modules")


def _topological_keras_nodes(model):
    """(operation, node) pairs from the model's input to its output, each once."""
    order, seen = [], set()
    stack = [(model.outputs[0]._keras_history.operation, model.outputs[0]._keras_history.node_index, False)]
    while stack:
        op, node_index, expanded = stack.pop()
        key = (id(op), node_index)
        if expanded:
            if key not in seen:
                seen.add(key)
                order.append((op, op._inbound_nodes[node_index]))
            continue
        if key in seen:
            continue
        stack.append((op, node_index, True))
        for t in reversed(op._inbound_nodes[node_index].input_tensors):
            hist = t._keras_history
            if (id(hist.operation), hist.node_index) not in seen:
                stack.append((hist.operation, hist.node_index, False))
    names = [op.name for op, _ in order]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:
        raise UnsupportedLayerError(
            f"layer {shared[0]!r} of model {model.name!r} is called more than once (a shared layer or model); "
            "fastdecomp needs each layer to appear once in the graph: give each call a layer of its own")
    return order


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
        _CUSTOM["WindowPad"] = keras_window_pad()
    return dict(_CUSTOM)


def to_keras(pruned):
    """A Keras model of a pruned module: output ``(None, 2)`` = [P(concerned), P(unconcerned)].

    Parameters
    ----------
    pruned : fastdecomp.pruning.PrunedModule

    Returns
    -------
    keras.Model
    """
    import keras

    node_mask = keras_custom_objects()["NodeMask"]
    first = pruned.layers[0]
    tensors = {first.name: keras.Input(shape=first.shape, name=_keras_safe(first.name))}
    for layer in pruned.layers[1:]:
        layer = pruned.channeled(layer)
        keras_layer = layer.handler.to_keras(layer, _keras_safe(layer.name))
        args = [tensors[s] for s in layer.inputs]
        out = keras_layer(args if len(args) > 1 else args[0])
        weights = layer.handler.keras_weights(layer)
        if weights:
            keras_layer.set_weights(weights)
        if layer.name in pruned.masks:
            mask_layer = node_mask(pruned.masks[layer.name].shape, name=_keras_safe(layer.name) + "_mask")
            out = mask_layer(out)
            mask_layer.set_weights([pruned.masks[layer.name].astype(np.float32)])
        tensors[layer.name] = out
    return keras.Model(tensors[first.name], tensors[pruned.layers[-1].name], name=_keras_safe(pruned.name))


def _keras_safe(name):
    return name.replace("/", "_")
