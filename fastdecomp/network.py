"""A framework-free layer graph imported from Keras, run by fastdecomp's kernels."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from .data import as_input_source
from .errors import InputError, ModelFileError, UnsupportedLayerError
from .kernels.direct_conv import packs_activity
from .layers import KERAS_CLASSES, KINDS, BatchNormKind, Layer, kernels, refuser
from .parallel import map_batches

__all__ = ["Network", "from_keras", "MASK_PLACEMENTS"]

MASK_PLACEMENTS = ("conv", "relu")


class Network:
    """A trained classifier as a plain layer graph in topological order.

    Build one with :func:`from_keras`. The last layers are always the output
    Dense layer (``output_dense``) and a softmax.

    Attributes
    ----------
    layers : list of Layer
        In topological order; ``layers[0]`` is the input.
    input_shape : tuple of int
    num_classes : int
    output_dense : str
        Name of the output Dense layer.
    """

    def __init__(self, layers, name="network"):
        self.layers = list(layers)
        self.name = name
        self.by_name = {layer.name: layer for layer in self.layers}
        self.readers = {layer.name: [] for layer in self.layers}
        for layer in self.layers:
            for src in layer.inputs:
                self.readers[src].append(layer.name)
        self.input_shape = tuple(self.layers[0].shape)
        last = self.layers[-1]
        if last.kind != "softmax" or self.by_name[last.inputs[0]].kind != "dense":
            raise UnsupportedLayerError(
                f"model {name!r} must end in a Dense layer with a softmax activation "
                f"(its last layer is {last.keras_name!r}, a {last.kind}); fastdecomp channels "
                "that Dense layer into concerned/unconcerned outputs")
        self.output_dense = last.inputs[0]
        self.num_classes = last.shape[0]

    def __repr__(self):
        return (f"Network({self.name!r}, {len(self.layers)} layers, input {self.input_shape}, "
                f"{self.num_classes} classes)")

    def mask_points(self, mask_at="conv"):
        """Layers whose outputs are mask points (ALGORITHM.md, "Node").

        Parameters
        ----------
        mask_at : {"conv", "relu"}
            ``conv``: every Conv2D and hidden Dense output (before activation);
            ``relu``: every ReLU output.

        Returns
        -------
        list of Layer
        """
        if mask_at == "conv":
            return [l for l in self.layers if l.kind == "conv2d"
                    or (l.kind == "dense" and l.name != self.output_dense)]
        if mask_at == "relu":
            return [l for l in self.layers if l.kind == "relu"]
        raise InputError(f"mask_at must be one of {MASK_PLACEMENTS}, got {mask_at!r}")

    def check_input(self, x):
        """Raise a clear error unless ``x`` is a float batch this network takes."""
        if x.ndim == len(self.input_shape) and tuple(x.shape) == self.input_shape:
            raise InputError(f"got one image of shape {x.shape}; pass a batch, e.g. x[None]")
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"images of shape {tuple(x.shape[1:])} do not fit the model's input "
                f"{self.input_shape}; resize or reshape them (batch axis first, channels last)")

    def forward(self, x, masks=None, observe=None, mask_at="conv", head=None, logits=False, device=None,
                packed_activity=False, observed_reusable=False):
        """Run one batch through the network.

        Parameters
        ----------
        x : numpy.ndarray
            float32 batch, shape ``(N,) + input_shape``.
        masks : dict, optional
            Layer name -> boolean array of the layer's output shape; the layer's
            output is multiplied by it (removed nodes output 0).
        observe : callable, optional
            Called as ``observe(layer, values)`` at every mask point of
            ``mask_at``, after masking.
        mask_at : {"conv", "relu"}
        head : tuple of numpy.ndarray, optional
            ``(kernel [F, K], bias [K])`` replacing the output Dense layer's
            weights (a channeled output).
        logits : bool
            Return the output layer's values before the softmax.
        device : fastdecomp.kernels.gpu.Device, optional
            Run on this device (``x`` a host array or already the device's;
            masks and head are copied over). ``observe`` then sees device
            arrays. The result is a host array either way.
        packed_activity : bool
            Call ``observe(layer, values, bits)`` instead, ``bits`` being
            ``numpy.packbits(values.reshape(N, -1) > 0, axis=1)`` where the
            convolution producing the values wrote them in its epilogue, else None.
        observed_reusable : bool
            ``observe`` keeps no reference to the values it is passed, so the
            engine may write later results over them (less memory traffic).

        Returns
        -------
        numpy.ndarray
            Softmax probabilities (or logits), shape ``(N, K)``.
        """
        return self._run(x, device, lambda x: self._walk(x, [(masks, head)], observe, mask_at, logits, device,
                                                         packed_activity=packed_activity,
                                                         observed_reusable=observed_reusable))[0]

    def _run(self, x, device, walk):
        """Check ``x``, place it where ``walk`` runs, and bring ``walk(x)``'s outputs to the host."""
        if device is not None:
            if isinstance(x, np.ndarray):
                x = np.ascontiguousarray(x, dtype=np.float32)
                self.check_input(x)
                x = device.asarray(x)
            with device.compute():
                return [device.to_host(out) for out in walk(x)]
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_input(x)
        return walk(x)

    def forward_many(self, x, branches, keys=None, logits=False, device=None):
        """Several masked variants of the network (modules) on one batch, sharing work.

        Each layer is computed once for every group of variants whose masks
        (and head) agree up to it; groups split where masks first differ. Each
        variant's output is bit-identical to :meth:`forward` with its masks and
        head alone (same kernels on the same values).

        Parameters
        ----------
        x : numpy.ndarray
        branches : list of (dict or None, tuple or None)
            ``(masks, head)`` of each variant, as :meth:`forward` takes them.
        keys : dict, optional
            Layer name -> a hashable per variant identifying its mask there
            (or its head, at the output Dense layer). By default digests of
            the arrays; pass cached ones when calling often.
        logits, device :
            As in :meth:`forward`.

        Returns
        -------
        list of numpy.ndarray
        """
        return self._run(x, device, lambda x: self._walk(x, branches, None, "conv", logits, device, keys))

    def branch_keys(self, branches):
        """Digests of each variant's mask at every masked layer, and of its head."""
        keys = {}
        for masks, _ in branches:
            for name in masks or {}:
                keys[name] = None
        for name in keys:
            keys[name] = [_digest(m.get(name)) if m else None for m, _ in branches]
        keys[self.output_dense] = [None if h is None else _digest(h[0], h[1]) for _, h in branches]
        return keys

    def _walk(self, x, branches, observe, mask_at, logits, device, keys=None, packed_activity=False,
              observed_reusable=False):
        observed = {l.name for l in self.mask_points(mask_at)} if observe else ()
        masked = {name for masks, _ in branches for name in (masks or {})}
        residuals, rectified = self._epilogue_fusions(observed, masked)
        bits_for = {}  # convolution -> the observed layer whose packed activity its epilogue writes
        if packed_activity and device is None:
            bits_for = self._activity_sources(observed, masked, residuals, rectified)
        bits = {}

        kept = () if observed_reusable else observed

        def owned(src, shared):
            """The array of ``src`` belongs to this walk alone: computed after the variants parted
            (``shared`` holds what was computed before), kept by no observer, not the caller's."""
            return src not in shared and src not in kept and src != self.layers[0].name

        def overwritable(src, shared, remaining):
            """A value only one reader is left to read, and owned, may be overwritten."""
            return remaining[src] == 1 and owned(src, shared)

        if len(branches) > 1 and keys is None:
            keys = self.branch_keys(branches)
        final = self.output_dense if logits else self.layers[-1].name
        results = [None] * len(branches)
        pending = [(list(range(len(branches))), 1, {self.layers[0].name: x},
                    {name: len(r) for name, r in self.readers.items()}, frozenset())]
        while pending:
            group, start, values, remaining, shared = pending.pop()
            masks, head = branches[group[0]]
            finished = True
            for index in range(start, len(self.layers)):
                layer = self.layers[index]
                if logits and layer is self.layers[-1]:
                    break
                if len(group) > 1 and keys is not None and layer.name in keys:
                    parts = {}
                    for b in group:
                        parts.setdefault(keys[layer.name][b], []).append(b)
                    if len(parts) > 1:  # the variants part ways: each part goes on alone
                        pending += [(part, index, dict(values), dict(remaining), frozenset(values))
                                    for part in parts.values()]
                        finished = False
                        break
                inputs = [values[src] for src in layer.inputs]
                alias = None  # the layer whose array this layer's output is, when it computes nothing
                if head is not None and layer.name == self.output_dense:
                    channeled = dataclasses.replace(layer, shape=(head[0].shape[1],), weights={
                        "kernel": np.ascontiguousarray(head[0], dtype=np.float32),
                        "bias": np.ascontiguousarray(head[1], dtype=np.float32)})
                    out = layer.handler.forward(channeled, inputs, device=device)
                elif layer.kind == "conv2d":
                    options = {}
                    if layer.name in bits_for:
                        options["activity"] = bits[bits_for[layer.name]] = np.empty(
                            (len(x), int(np.prod(layer.shape)) // 8), np.uint8)
                    if layer.name in residuals:
                        add, shortcut = residuals[layer.name]
                        options.update(rectify=add in rectified, residual=values[shortcut],
                                       in_place=overwritable(shortcut, shared, remaining))
                    else:
                        options["rectify"] = layer.name in rectified
                    out = layer.handler.forward(layer, inputs, device=device, **options)
                elif layer.kind == "add" and any(src in residuals for src in layer.inputs):
                    alias = next(src for src in layer.inputs if src in residuals)
                    out = values[alias]
                elif layer.kind == "relu" and layer.inputs[0] in rectified:
                    alias = layer.inputs[0]
                    out = inputs[0]
                else:
                    reusable = [overwritable(src, shared, remaining) and layer.inputs.count(src) == 1
                                for src in layer.inputs]
                    out = layer.handler.forward(layer, inputs, reusable, device=device)
                if masks is not None and layer.name in masks:
                    mask = masks[layer.name] if device is None else device.weights(masks[layer.name])
                    fresh = alias is None or (remaining[alias] == 1 and owned(alias, shared))
                    out = kernels(device).xp.multiply(out, mask, out=out if fresh else None)
                if layer.name in observed:
                    if packed_activity:
                        observe(layer, out, bits.pop(layer.name, None))
                    else:
                        observe(layer, out)
                values[layer.name] = out
                for src in layer.inputs:
                    remaining[src] -= 1
                    if remaining[src] == 0:
                        del values[src]
            if finished:
                for b in group:
                    results[b] = values[final]
        return results

    def _epilogue_fusions(self, observed, masked):
        """What the convolution epilogue computes in place of the layers after it.

        Returns ``(residuals, rectified)``. ``residuals`` maps a convolution to
        ``(add, shortcut)`` when it is the only input of a two-input ``Add``
        that it alone feeds, and ``shortcut`` is computed before it: the
        convolution then adds ``shortcut`` itself and the ``Add`` passes its
        result on. ``rectified`` holds the convolutions (and fused ``Add``\ s)
        whose only reader is a ReLU, which then runs in the epilogue too. No
        value that is observed or masked is skipped.
        """
        position = {layer.name: i for i, layer in enumerate(self.layers)}
        untouched = set(observed) | set(masked)

        def sole_reader(layer, kind):
            readers = self.readers[layer.name]
            if len(readers) == 1 and self.by_name[readers[0]].kind == kind and layer.name not in untouched:
                return self.by_name[readers[0]]
            return None

        residuals, rectified = {}, set()
        for layer in self.layers:
            if layer.kind != "conv2d":
                continue
            after = layer
            add = sole_reader(layer, "add")
            if add is not None and len(add.inputs) == 2 and add.inputs[0] != add.inputs[1]:
                shortcut = next(src for src in add.inputs if src != layer.name)
                if position[shortcut] < position[layer.name]:
                    residuals[layer.name] = (add.name, shortcut)
                    after = add
            if sole_reader(after, "relu") is not None:
                rectified.add(after.name)
        return residuals, rectified

    def _activity_sources(self, observed, masked, residuals, rectified):
        """Convolutions whose output (through a fused Add and ReLU) is an observed, unmasked
        value, and with a vector width the epilogue can pack bits from: conv -> that layer."""
        sources = {}
        for layer in self.layers:
            if layer.kind != "conv2d" or not packs_activity(layer.shape[-1]):
                continue
            chain = [layer.name]
            if layer.name in residuals:
                chain.append(residuals[layer.name][0])
            if chain[-1] in rectified:
                chain.append(self.readers[chain[-1]][0])
            seen = [name for name in chain if name in observed]
            if seen and seen[-1] not in masked:
                sources[layer.name] = seen[-1]
        return sources

    def predict(self, x, batch_size=256, n_jobs=None):
        """Softmax outputs of the model, streamed over batches.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
            Images ``(N,) + input_shape`` (float32, or uint8 scaled by 1/255), or
            a data source.
        batch_size : int
        n_jobs : int, optional
            Threads (default: every core; see :mod:`fastdecomp.parallel`).

        Returns
        -------
        numpy.ndarray
            float32, shape ``(N, num_classes)``.
        """
        source = as_input_source(x, self.input_shape)
        out = np.empty((len(source), self.num_classes), dtype=np.float32)

        def run(batch):
            positions, xb, _ = batch
            out[positions] = self.forward(xb)

        for _ in map_batches(run, source.batches(batch_size), n_jobs):
            pass
        return out

    def iter_mask_values(self, x, y=None, mask_at="conv", batch_size=256):
        """Stream every batch's values at the mask points, one batch in memory at a time.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        y : numpy.ndarray, optional
            Labels (with an array ``x``).
        mask_at : {"conv", "relu"}
        batch_size : int

        Yields
        ------
        positions : numpy.ndarray
            Indices of the batch's images in ``x``.
        labels : numpy.ndarray
        values : dict
            Mask-point layer name -> float32 ``[B] + shape``.
        probabilities : numpy.ndarray
            The model's softmax outputs ``[B, num_classes]``.
        """
        source = as_input_source(x, self.input_shape, y)
        for positions, xb, yb in source.batches(batch_size):
            values = {}
            probs = self.forward(xb, observe=lambda layer, v: values.__setitem__(layer.name, v),
                                 mask_at=mask_at)
            yield positions, yb, values, probs

    def keras_name_of(self, name):
        """The Keras layer a graph layer came from."""
        return self.by_name[name].keras_name


def _digest(*arrays):
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.packbits(a).tobytes() if a.dtype == bool else a.tobytes())
    return h.digest()


def load_keras_model(path):
    """Load a ``.keras`` or ``.h5`` file with a clear error when it is missing or corrupt."""
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
    model_or_path : keras.Model, str or Path
        A Sequential or functional model, or a ``.keras``/``.h5`` file.

    Returns
    -------
    Network
        BatchNormalization folded into the convolution before it; Dropout and
        linear activations removed; inline ReLU/softmax activations split off as
        layers named ``<layer>/relu`` and ``<layer>/softmax``.

    Raises
    ------
    UnsupportedLayerError
        For a layer or activation outside ALGORITHM.md's list, naming it.
    ModelFileError
        For a missing or unreadable model file.
    """
    if isinstance(model_or_path, Network):
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        model = load_keras_model(model_or_path)
    else:
        model = model_or_path
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

    order = _topological_keras_nodes(model)
    layers, alias, bn_pending = [], {}, {}
    n_readers = {}
    for op, node in order:
        for t in node.input_tensors:
            src = t._keras_history.operation.name
            n_readers[src] = n_readers.get(src, 0) + 1

    for op, node in order:
        cls = type(op).__name__
        refuse = refuser(op)
        if cls in ("Functional", "Sequential", "Model") or hasattr(op, "layers"):
            refuse("a nested model; build the classifier as one flat model")
        srcs = [alias[t._keras_history.operation.name] for t in node.input_tensors]
        in_shapes = [tuple(layers_by(layers, s).shape) for s in srcs]
        if cls == "InputLayer":
            shape = tuple(int(d) for d in op.batch_shape[1:]) if hasattr(op, "batch_shape") \
                else tuple(int(d) for d in op.output.shape[1:])
            if any(d is None for d in shape) or len(shape) != 3:
                refuse(f"input shape {shape}; fastdecomp needs a fixed (height, width, channels)")
            layers.append(Layer(op.name, "input", [], shape, keras_name=op.name))
            alias[op.name] = op.name
            continue
        if cls not in KERAS_CLASSES:
            refuse("no handler for this layer type")
        kind = KERAS_CLASSES[cls]
        handler = KINDS[kind]
        config, weights, activation = handler.from_keras(op, op.get_config(), in_shapes, refuse)
        if kind == "batchnorm":
            prev = layers_by(layers, srcs[0])
            if prev.kind != "conv2d" or prev.name != layers[-1].name or n_readers.get(prev.keras_name, 0) != 1:
                refuse("BatchNormalization must directly follow the Conv2D it normalises "
                       "(with nothing else reading that convolution's output) to be folded")
            BatchNormKind.fold_into(prev, weights)
            alias[op.name] = prev.name
            continue
        if kind == "identity":
            out_name = srcs[0]
        else:
            shape = handler.output_shape(config, weights, in_shapes)
            layers.append(Layer(op.name, kind, srcs, shape, config, weights, keras_name=op.name))
            out_name = op.name
        if activation is not None:
            act = layers_by(layers, out_name)
            if activation == "relu":
                layers.append(Layer(f"{op.name}/relu", "relu", [out_name], act.shape, keras_name=op.name))
            else:
                layers.append(Layer(f"{op.name}/softmax", "softmax", [out_name], act.shape, keras_name=op.name))
            out_name = layers[-1].name
        alias[op.name] = out_name
    for layer in layers:  # after BatchNorm folding, which can also overflow
        broken = [key for key, w in layer.weights.items() if not np.isfinite(w).all()]
        if broken:
            raise InputError(
                f"layer {layer.keras_name!r} of model {model.name!r} has NaN or infinite {' and '.join(broken)} "
                "weights (did training diverge?); fix or retrain the model before decomposing it")
    return Network(layers, name=model.name)


def layers_by(layers, name):
    for layer in reversed(layers):
        if layer.name == name:
            return layer
    raise KeyError(name)


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
    if len(set(names)) != len(names):
        raise UnsupportedLayerError(
            "a layer is called more than once in the model (shared layers); fastdecomp "
            "needs each layer to appear once in the graph")
    return order
