"""A trained classifier as a framework-free layer graph, run by fastdecomp's engine.

Import one with :func:`fastdecomp.keras_io.from_keras`; the forward pass
itself is :mod:`fastdecomp.engine`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import backends, engine
from .data import as_input_source
from .errors import InputError, UnsupportedLayerError
from .layers import DEFAULT_MASK_AT, MASK_PLACEMENTS

__all__ = ["Network", "check_finite"]


class Network:
    """A trained classifier as a plain layer graph in topological order.

    Build one with :func:`fastdecomp.from_keras`. The last layers are always
    the output layer (``output_dense``, a Dense layer) and its softmax.

    Parameters
    ----------
    layers : list of Layer
        In topological order; ``layers[0]`` is the input.
    name : str

    Attributes
    ----------
    layers : list of Layer
    input_shape : tuple of int
    num_classes : int
    output_dense : str
        Name of the output layer, whose columns are channeled into modules.
    """

    def __init__(self, layers, name="network"):
        self.layers = list(layers)
        if len(self.layers) < 3:
            raise InputError(f"a network needs an input, an output layer and its softmax; got {len(self.layers)} "
                             "layers (build one with fastdecomp.from_keras)")
        self.name = name
        self.by_name = {layer.name: layer for layer in self.layers}
        self.position = {layer.name: i for i, layer in enumerate(self.layers)}
        self.readers = {layer.name: [] for layer in self.layers}
        for layer in self.layers:
            for src in layer.inputs:
                self.readers[src].append(layer.name)
        self.input_shape = tuple(self.layers[0].shape)
        last = self.layers[-1]
        if not last.handler.output_activation or not self.by_name[last.inputs[0]].handler.output_layer:
            raise UnsupportedLayerError(
                f"model {name!r} must end in a Dense layer (in ONNX: Gemm, or MatMul + Add), with a softmax "
                f"activation or none (logits) (its last layer is {last.keras_name!r}, a {last.kind}); fastdecomp "
                "channels that Dense layer into concerned/unconcerned outputs")
        self.output_dense = last.inputs[0]
        self.num_classes = last.shape[0]
        self._plans = {}

    def __getstate__(self):
        """Pickled without the fusion plans it has cached (they are planned again on demand)."""
        return {**self.__dict__, "_plans": {}}

    def __repr__(self):
        return (f"Network({self.name!r}, {len(self.layers)} layers, input {self.input_shape}, "
                f"{self.num_classes} classes)")

    def mask_points(self, mask_at=DEFAULT_MASK_AT):
        """Layers whose outputs are mask points (docs/method.md section 0.2).

        Parameters
        ----------
        mask_at : {"relu", "conv"}
            ``relu``: every ReLU output; ``conv``: every Conv2D and hidden
            Dense output (before activation). Each kind says where it is one.

        Returns
        -------
        list of Layer
        """
        if mask_at not in MASK_PLACEMENTS:
            raise InputError(f"mask_at must be one of {MASK_PLACEMENTS}, got {mask_at!r}")
        return [l for l in self.layers if mask_at in l.handler.mask_placements and l.name != self.output_dense]

    def fusion_plan(self, observed, masked, activity_bits):
        """The engine's :class:`~fastdecomp.engine.FusionPlan` for these observed and masked layers
        (planned once, then kept).

        Parameters
        ----------
        observed, masked : frozenset of str
        activity_bits : bool
            Plan packed activity bits too.
        """
        key = (observed, masked, activity_bits)
        if key not in self._plans:
            self._plans[key] = engine.plan_fusions(self, observed, masked, activity_bits)
        return self._plans[key]

    def check_input(self, x):
        """Raise a clear error unless ``x`` is a float batch this network takes."""
        if x.ndim == len(self.input_shape) and tuple(x.shape) == self.input_shape:
            raise InputError(f"got one image of shape {x.shape}; pass a batch, e.g. x[None]")
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"images of shape {tuple(x.shape[1:])} do not fit the model's input "
                f"{self.input_shape}; resize or reshape them (batch axis first, channels last)")

    def forward(self, x, *, masks=None, observe=None, mask_at=DEFAULT_MASK_AT, head=None, logits=False,
                backend=None, packed_activity=False, observed_reusable=False):
        """Run one batch through the network.

        Parameters
        ----------
        x : numpy.ndarray
            float32 batch, shape ``(N,) + input_shape`` (or already an array of ``backend``).
        masks : dict, optional
            Layer name -> boolean array of the layer's output shape; the layer's
            output is multiplied by it (removed nodes output 0).
        observe : callable, optional
            Called as ``observe(layer, values)`` at every mask point of
            ``mask_at``, after masking, with arrays of ``backend``.
        mask_at : {"relu", "conv"}
        head : tuple of numpy.ndarray, optional
            ``(kernel [F, K], bias [K])`` replacing the output layer's
            weights (a channeled output).
        logits : bool
            Return the output layer's values before the softmax.
        backend : str or device, optional
            Where to run (:func:`fastdecomp.backends.get`; default ``FASTDECOMP_BACKEND``).
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
            Softmax probabilities (or logits), shape ``(N, K)``, on the host.
        """
        device = backends.get(backend)
        return self._run(x, device, lambda x: engine.walk(
            self, x, [(masks, head)], device, observe=observe, mask_at=mask_at, logits=logits,
            packed_activity=packed_activity, observed_reusable=observed_reusable))[0]

    def forward_many(self, x, variants, *, keys=None, logits=False, backend=None):
        """Several masked variants of the network (modules) on one batch, sharing work.

        Each layer is computed once for every group of variants whose masks
        (and head) agree up to it; groups split where masks first differ. Each
        variant's output is bit-identical to :meth:`forward` with its masks and
        head alone (same kernels on the same values).

        Parameters
        ----------
        x : numpy.ndarray
        variants : list of (dict or None, tuple or None)
            ``(masks, head)`` of each variant, as :meth:`forward` takes them.
        keys : dict, optional
            Layer name -> a hashable per variant identifying its mask there
            (or its head, at the output layer). By default digests of the
            arrays (:meth:`variant_keys`); pass cached ones when calling often.
        logits, backend :
            As in :meth:`forward`.

        Returns
        -------
        list of numpy.ndarray
        """
        device = backends.get(backend)
        if len(variants) > 1 and keys is None:
            keys = self.variant_keys(variants)
        return self._run(x, device, lambda x: engine.walk(self, x, variants, device, logits=logits, keys=keys))

    def _run(self, x, device, walk):
        """Check ``x``, place it on ``device``, and bring ``walk(x)``'s outputs to the host."""
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x, dtype=np.float32)
            self.check_input(x)
            x = device.asarray(x)
        with device.compute():
            return [device.to_host(out) for out in walk(x)]

    def variant_keys(self, variants):
        """Digests of each variant's mask at every masked layer, and of its head."""
        keys = {}
        for masks, _ in variants:
            for name in masks or {}:
                keys[name] = None
        for name in keys:
            keys[name] = [_digest(m.get(name)) if m else None for m, _ in variants]
        keys[self.output_dense] = [None if h is None else _digest(h[0], h[1]) for _, h in variants]
        return keys

    def predict_proba(self, x, *, batch_size=256, n_jobs=None, backend=None):
        """Softmax outputs of the model, streamed over batches.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
            Images ``(N,) + input_shape`` (any numeric dtype, fed as given, as Keras does), or
            a data source.
        batch_size : int
        n_jobs : int, optional
            Threads on the CPU (default: every core; see :mod:`fastdecomp.parallel`).
        backend : str or device, optional

        Returns
        -------
        numpy.ndarray
            float32, shape ``(N, num_classes)``.
        """
        device = backends.get(backend)
        source = as_input_source(x, self.input_shape)
        out = np.empty((len(source), self.num_classes), dtype=np.float32)

        def run(batch):
            positions, xb, _ = batch
            probabilities = self.forward(xb, backend=device)
            check_finite(probabilities, positions)
            out[positions] = probabilities

        for _ in device.run_batches(run, source.batches(batch_size), n_jobs):
            pass
        return out

    def predict(self, x, *, batch_size=256, n_jobs=None, backend=None):
        """The model's class for every image (argmax of :meth:`predict_proba`).

        Parameters
        ----------
        x, batch_size, n_jobs, backend :
            As in :meth:`predict_proba`.

        Returns
        -------
        numpy.ndarray
            int64, shape ``(N,)``.
        """
        return self.predict_proba(x, batch_size=batch_size, n_jobs=n_jobs, backend=backend).argmax(axis=1)

    def iter_mask_values(self, x, y=None, *, mask_at=DEFAULT_MASK_AT, batch_size=256, backend=None):
        """Stream every batch's values at the mask points, one batch in memory at a time.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        y : numpy.ndarray, optional
            Labels (with an array ``x``).
        mask_at : {"relu", "conv"}
        batch_size : int
        backend : str or device, optional
            Where the forward runs (:func:`fastdecomp.backends.get`); the values are that device's
            arrays, made on its compute stream.

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
        device = backends.get(backend)
        source = as_input_source(x, self.input_shape, y)
        for positions, xb, yb in source.batches(batch_size):
            values = {}
            probs = self.forward(xb, observe=lambda layer, v: values.__setitem__(layer.name, v),
                                 mask_at=mask_at, backend=device)
            yield positions, yb, values, probs

    def keras_name_of(self, name):
        """The Keras layer a graph layer came from."""
        return self.by_name[name].keras_name


def check_finite(values, positions, where="the output layer", backend=None):
    """Raise InputError naming the images (``positions``) whose ``values`` overflowed to NaN or inf.

    Parameters
    ----------
    values : array
        ``[B, ...]``, one row per image: a host array, or ``backend``'s.
    positions : numpy.ndarray
        The images' indices in their source.
    where : str
        The layer the values come from, for the message.
    backend : device, optional
        The device ``values`` live on (read there; one flag per image comes back).
    """
    if backend is None:
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    else:
        with backend.compute():
            bad = backend.to_host(~backend.xp.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if bad.any():
        raise InputError(f"images {positions[bad][:5].tolist()}{'...' if bad.sum() > 5 else ''} overflow to NaN "
                         f"or inf at {where}; check their scale against what the model was trained on")


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


def check_weights(layers, model_name):
    """``layers``, after checking that every weight is finite (folding can overflow too).

    Parameters
    ----------
    layers : list of Layer
    model_name : str
        For the message.

    Returns
    -------
    list of Layer
    """
    for layer in layers:
        broken = [key for key, w in layer.weights.items() if not np.isfinite(w).all()]
        if broken:
            raise InputError(
                f"layer {layer.keras_name!r} of model {model_name!r} has NaN or infinite {' and '.join(broken)} "
                "weights (did training diverge?); fix or retrain the model before decomposing it")
    return layers
