"""``ModuleSet``: the modules of one decomposition, their composition and storage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .backtrack import apply_backtracking, channel_head
from .compose import ModuleRef, compose, topk_accuracy
from .data import Subset, as_input_source
from .errors import InputError, ModelFileError
from .export import dead_channels, prune, to_keras
from .layers import Layer
from .network import Network
from .parallel import map_batches
from .storage import atomic_directory

__all__ = ["ModuleSet", "load_modules", "FORMAT_VERSION"]

FORMAT_VERSION = 1
JACCARD_KINDS = ("nodes", "weights")


class ModuleSet:
    """The modules of a decomposition, one per class, sharing one network.

    Built by :func:`fastdecomp.decompose` or :func:`load_modules`.

    Attributes
    ----------
    network : Network
    classes : list of int
        The class of each module, in module order.
    options : dict
        The decomposition's options.
    info : dict
        Timings and counts of the decomposition.
    """

    def __init__(self, network, classes, options, base_keep, concerned_idx, unconcerned_idx, info,
                 concerned_bits=None):
        self.network = network
        self.classes = list(classes)
        self.options = dict(options)
        self.info = dict(info)
        self._base_keep = base_keep  # layer name -> bool [M] + shape, after CI and TI
        for mask in base_keep.values():
            mask.flags.writeable = False  # shared with the backtracked masks and with variants
        self._concerned_bits = concerned_bits  # layer name -> uint8 [M, nbytes]: CI alone, bit-packed
        self._keep, self._feature_keep = apply_backtracking(
            network, self.classes, base_keep, options["backtrack"], options["delta"], options["bln_rule"])
        self._concerned = [np.asarray(a, dtype=np.int64) for a in concerned_idx]
        self._unconcerned = [np.asarray(a, dtype=np.int64) for a in unconcerned_idx]
        self._keras_cache = {}
        self._key_cache = {}

    def __repr__(self):
        return (f"ModuleSet({len(self.classes)} modules of {self.network.name!r}, "
                f"mask_at={self.options['mask_at']!r}, backtrack={self.options['backtrack']!r})")

    def __len__(self):
        return len(self.classes)

    def variant(self, backtrack="bln", delta=None, bln_rule=None):
        """The same decomposition with another backtracking, without a new pass over the data.

        Parameters
        ----------
        backtrack : {None, "bln", "bi"}
        delta, bln_rule : optional
            Default: this set's own.

        Returns
        -------
        ModuleSet
        """
        options = dict(self.options, backtrack=backtrack)
        if delta is not None:
            options["delta"] = float(delta)
        if bln_rule is not None:
            options["bln_rule"] = bln_rule
        return ModuleSet(self.network, self.classes, options, self._base_keep, self._concerned,
                         self._unconcerned, self.info, self._concerned_bits)

    def _index(self, k):
        try:
            return self.classes.index(int(k))
        except ValueError:
            raise InputError(f"no module for class {k}; this set has modules for {self.classes}") from None

    def layer_masks(self, k):
        """Mask of module ``k`` keyed by fastdecomp layer name (see :meth:`masks`; read-only views)."""
        i = self._index(k)
        return {name: keep[i] for name, keep in self._keep.items()}

    def masks(self, k):
        """Boolean keep masks of module ``k`` (True = kept).

        Returns
        -------
        dict
            Keras layer name of each mask point (the Conv2D/Dense layer for
            ``mask_at="conv"``; the ReLU layer, or the layer with the inline
            ReLU, for ``"relu"``) -> bool array of its output shape: a read-only
            view into the set (copy it to edit).
        """
        return {self.network.keras_name_of(name): m for name, m in self.layer_masks(k).items()}

    def sample_indices(self, k):
        """Indices into the decomposed data of module ``k``'s concerned and unconcerned inputs.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
        """
        i = self._index(k)
        return self._concerned[i].copy(), self._unconcerned[i].copy()

    def head(self, k):
        """Channeled output layer of module ``k``: kernel ``[F, 2]``, bias ``[2]``.

        Features MC-BLN removed have their outgoing edges zeroed.
        """
        i = self._index(k)
        dense = self.network.by_name[self.network.output_dense]
        kernel, bias = channel_head(dense.weights["kernel"], dense.weights["bias"], k)
        kernel[~self._feature_keep[i]] = 0.0
        return kernel, bias

    def pruned(self, k, drop_channels=True):
        """Module ``k`` in pruned form (:class:`fastdecomp.export.PrunedModule`)."""
        return prune(self.network, self.layer_masks(k), self.head(k),
                     name=f"{self.network.name}_module{k}", drop_channels=drop_channels)

    def module_predict(self, k, x, batch_size=256, logits=False):
        """Probabilities ``[N, 2]`` (concerned, unconcerned) of module ``k`` by fastdecomp's engine.

        With ``logits=True``, the channeled output layer's values before the softmax.
        """
        masks, head = self.layer_masks(k), self.head(k)
        source = self._source(x)
        out = np.empty((len(source), 2), dtype=np.float32)

        def run(batch):
            positions, xb, _ = batch
            out[positions] = self.network.forward(xb, masks=masks, head=head, logits=logits)

        for _ in map_batches(run, source.batches(batch_size)):
            pass
        return out

    def modules_predict(self, ks, x, batch_size=256, logits=False, backend="cpu"):
        """Outputs ``[N, len(ks), 2]`` of several modules by fastdecomp's engine, sharing work.

        Modules run together through :meth:`Network.forward_many`: each layer
        is computed once for every group of modules whose masks agree up to
        it. Each module's output is bit-identical to :meth:`module_predict`.

        Parameters
        ----------
        ks : sequence of int
        x : numpy.ndarray or DataSource
        batch_size : int
        logits : bool
            The channeled output layer's values instead of probabilities.
        backend : {"cpu", "auto", "cuda", "emulated-cuda"}
            Run on the CPU, or batch all modules on a GPU.
        """
        from .kernels.gpu import get_device

        ks = [int(k) for k in ks]
        branches = [(self.layer_masks(k), self.head(k)) for k in ks]
        keys = {}
        for k in ks:
            for name, digest in self._module_keys(k).items():
                keys.setdefault(name, []).append(digest)
        source = self._source(x)
        device = get_device(backend)
        out = np.empty((len(source), len(ks), 2), dtype=np.float32)
        if device is not None:
            for positions, xb, _ in device.streamed(source.batches(batch_size)):
                out[positions] = np.stack(self.network.forward_many(xb, branches, keys, logits, device), axis=1)
            return out

        def run(batch):
            positions, xb, _ = batch
            out[positions] = np.stack(self.network.forward_many(xb, branches, keys, logits), axis=1)

        for _ in map_batches(run, source.batches(batch_size)):
            pass
        return out

    def _module_keys(self, k):
        if k not in self._key_cache:
            keys = self.network.branch_keys([(self.layer_masks(k), self.head(k))])
            self._key_cache[k] = {name: digests[0] for name, digests in keys.items()}
        return self._key_cache[k]

    def to_keras(self, k):
        """Module ``k`` as a Keras model with output ``(None, 2)`` = [P(concerned), P(unconcerned)].

        Removed nodes output 0; convolution channels removed at every position
        are zeroed, and dropped where only convolutions read them.
        """
        return to_keras(self.pruned(k))

    def updated(self, k, x, batch_size=256, mode="add"):
        """Module ``k`` updated for new company (continuous learning, ALGORITHM.md section 6).

        Parameters
        ----------
        k : int
        x : numpy.ndarray or DataSource
            Images of the classes the module will now be composed with (their
            labels are not used).
        mode : {"add", "remove"}
            ``"add"`` (the default) re-applies tangling identification with
            ``x``: every node active for one of them is brought back, so the
            channeled unconcerned output sees them. ``"remove"`` removes the
            nodes active for one of them and for none of the module's
            concerned inputs. Backtracking is applied again either way.

        Returns
        -------
        ModuleSet
            A copy in which only module ``k`` changed; use ``.module(k)``.
        """
        if mode not in ("add", "remove"):
            raise InputError(f"mode must be 'add' or 'remove', got {mode!r}")
        if mode == "remove" and self._concerned_bits is None:
            raise InputError("this module set has no record of its concern identification (it was "
                             "saved by an older fastdecomp); decompose again to update with mode='remove'")
        i = self._index(k)
        source = self._source(x)
        new_active = {name: np.zeros(keep.shape[1:], dtype=bool) for name, keep in self._base_keep.items()}
        for _, _, values, _ in self.network.iter_mask_values(source, mask_at=self.options["mask_at"],
                                                             batch_size=batch_size):
            for name, v in values.items():
                new_active[name] |= (v > 0).any(axis=0)
        base_keep = {name: keep.copy() for name, keep in self._base_keep.items()}
        for name, active in new_active.items():
            if mode == "add":
                base_keep[name][i] |= active
            else:
                concerned = np.unpackbits(self._concerned_bits[name][i], count=active.size).astype(bool)
                base_keep[name][i] &= ~(active & ~concerned.reshape(active.shape))
        updates = self.info.get("updated", {})
        info = dict(self.info, updated=dict(updates, **{str(int(k)): mode}))
        return ModuleSet(self.network, self.classes, self.options, base_keep, self._concerned,
                         self._unconcerned, info, self._concerned_bits)

    def module(self, k):
        """A reference to module ``k``, to compose with others (:func:`fastdecomp.compose`)."""
        self._index(k)
        return ModuleRef(self, int(k))

    def keras_predict(self, k, x, batch_size=256, margin=False):
        """P(concerned | x) of module ``k``, run as its exported Keras model (batched).

        With ``margin=True``: the concerned minus the unconcerned logit, which
        orders modules as P does but without float32 saturation at P = 1.
        """
        source = self._source(x)
        model = self._keras_model(k)
        if margin:
            import keras

            model = keras.Model(model.inputs[0], model.layers[-1].input)
        out = np.empty(len(source), dtype=np.float32)
        for positions, xb, _ in source.batches(max(batch_size, 1024)):
            values = np.asarray(model(xb, training=False))
            out[positions] = values[:, 0] - values[:, 1] if margin else values[:, 0]
        return out

    def predict(self, x, batch_size=256, engine="keras"):
        """Composed scores by voting: ``[N, len(classes)]`` of P_m(concerned | x).

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        engine : {"keras", "fastdecomp"}
            Run the exported Keras modules (batched), or fastdecomp's engine.

        Returns
        -------
        numpy.ndarray
            Column j is module ``classes[j]``; the predicted class is
            ``classes[argmax]``.
        """
        if engine not in ("keras", "fastdecomp"):
            raise InputError(f"engine must be 'keras' or 'fastdecomp', got {engine!r}")
        return compose(self).predict(self._source(x), batch_size, engine)

    def _keras_model(self, k):
        if k not in self._keras_cache:
            self._keras_cache[k] = self.to_keras(k)
        return self._keras_cache[k]

    def evaluate(self, x, y=None, batch_size=256, engine="keras"):
        """Top-1/top-5 accuracy of the composed modules and of the model.

        Only inputs whose label is one of the set's classes are scored.

        Returns
        -------
        dict
            ``top1``, ``top5`` (composed), ``model_top1``, ``model_top5``, ``num_images``.
        """
        source = self._source(x, y)
        result = compose(self).evaluate(source, batch_size=batch_size, engine=engine)
        subset = Subset(source, np.flatnonzero(np.isin(source.labels, self.classes)))
        model_probs = self.network.predict(subset, batch_size)
        every_class = np.arange(self.network.num_classes)
        result["model_top1"] = topk_accuracy(model_probs, subset.labels, every_class, 1)
        result["model_top5"] = topk_accuracy(model_probs, subset.labels, every_class, 5)
        return result

    def jaccard(self, k, kind="nodes"):
        """Jaccard index between module ``k`` and the model (lower: more different).

        Parameters
        ----------
        kind : {"nodes", "weights"}
            ``nodes``: kept nodes / all nodes over the mask points.
            ``weights``: the authors' scripts' definition, labelled as such: the
            intersection over union of the *sets of values* of the flattened
            weights the module keeps (removed weights zeroed, output layer
            channeled) and the model's. The paper's JI figures use it.
        """
        if kind == "nodes":
            masks = self.layer_masks(k)
            return float(sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values()))
        if kind != "weights":
            raise InputError(f"kind must be one of {JACCARD_KINDS}, got {kind!r}")
        module = self.pruned(k, drop_channels=False)
        model_values, module_values = [], []
        for original, kept in zip(self.network.layers, module.layers):
            for key, w in original.weights.items():
                model_values.append(w.ravel())
                if original.name != self.network.output_dense:
                    module_values.append(kept.weights[key].ravel())
        module_values += [module.head[0].ravel(), module.head[1].ravel()]
        a = np.unique(np.concatenate(model_values))
        b = np.unique(np.concatenate(module_values))
        return float(len(np.intersect1d(a, b, assume_unique=True)) / len(np.union1d(a, b)))

    def sizes(self, k):
        """Size of module ``k`` against the model.

        Returns
        -------
        dict
            ``kept_nodes``, ``nodes``, ``kept_channels``, ``channels`` (conv
            channels not removed at every position), ``parameters`` (after
            physical pruning), ``model_parameters``.
        """
        masks = self.layer_masks(k)
        channels = kept_channels = 0
        for layer in self.network.layers:
            if layer.kind == "conv2d":
                channels += layer.shape[-1]
                kept_channels += int((~dead_channels(self.network, layer, masks)).sum())
        model_parameters = sum(w.size for l in self.network.layers for w in l.weights.values())
        return {
            "kept_nodes": int(sum(m.sum() for m in masks.values())),
            "nodes": int(sum(m.size for m in masks.values())),
            "kept_channels": kept_channels, "channels": channels,
            "parameters": self.pruned(k).parameter_count(),
            "model_parameters": int(model_parameters),
        }

    def _source(self, x, y=None):
        return as_input_source(x, self.network.input_shape, y)

    # ------------------------------------------------------------------ storage

    def save(self, path, overwrite=False):
        """Save to a directory: the network's weights, bit-packed masks and a manifest.

        The directory is written beside its final place and renamed into it
        when complete, so a failed save leaves nothing behind.
        """
        path = Path(path)
        with atomic_directory(path, overwrite) as tmp:
            arrays = {}
            graph = []
            for i, layer in enumerate(self.network.layers):
                graph.append({"name": layer.name, "kind": layer.kind, "inputs": layer.inputs,
                              "shape": list(layer.shape), "keras_name": layer.keras_name,
                              "config": _jsonable(layer.config), "weights": sorted(layer.weights)})
                for key, w in layer.weights.items():
                    arrays[f"w{i}_{key}"] = w
            masks_meta = []
            for j, (name, keep) in enumerate(self._base_keep.items()):
                arrays[f"mask{j}"] = np.packbits(keep.reshape(len(self.classes), -1), axis=1)
                if self._concerned_bits is not None:
                    arrays[f"concerned_mask{j}"] = self._concerned_bits[name]
                masks_meta.append({"layer": name, "shape": list(keep.shape[1:])})
            for i in range(len(self.classes)):
                arrays[f"concerned{i}"] = self._concerned[i]
                arrays[f"unconcerned{i}"] = self._unconcerned[i]
            np.savez(tmp / "arrays.npz", **arrays)
            manifest = {
                "format": "fastdecomp-modules", "version": FORMAT_VERSION,
                "network_name": self.network.name, "graph": graph, "masks": masks_meta,
                "classes": self.classes,
                "options": self.options, "info": _jsonable(self.info),
                "sha256": {"arrays.npz": _sha256(tmp / "arrays.npz")},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return path


def load_modules(path):
    """Load a :class:`ModuleSet` saved with :meth:`ModuleSet.save`.

    Raises
    ------
    ModelFileError
        If the directory is missing, truncated, tampered with or of another version.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a saved module set (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{manifest_path} is corrupt ({exc}); save the modules again") from exc
    if manifest.get("format") != "fastdecomp-modules":
        raise ModelFileError(f"{path} is not a fastdecomp module set")
    if manifest.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {manifest.get('version')}; this fastdecomp "
                             f"reads version {FORMAT_VERSION}. Decompose again with this version")
    arrays_path = path / "arrays.npz"
    if not arrays_path.is_file():
        raise ModelFileError(f"{arrays_path} is missing")
    if _sha256(arrays_path) != manifest["sha256"]["arrays.npz"]:
        raise ModelFileError(f"{arrays_path} does not match its checksum: the file is truncated "
                             "or was changed after saving")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        layers = []
        for i, g in enumerate(manifest["graph"]):
            config = {k: tuple(v) if isinstance(v, list) else v for k, v in g["config"].items()}
            weights = {key: arrays[f"w{i}_{key}"] for key in g["weights"]}
            layers.append(Layer(g["name"], g["kind"], list(g["inputs"]), tuple(g["shape"]),
                                config, weights, g["keras_name"]))
        network = Network(layers, name=manifest["network_name"])
        m = len(manifest["classes"])
        keep, concerned_bits = {}, {}
        for j, meta in enumerate(manifest["masks"]):
            shape = tuple(meta["shape"])
            bits = np.unpackbits(arrays[f"mask{j}"], axis=1, count=int(np.prod(shape)))
            keep[meta["layer"]] = bits.astype(bool).reshape((m,) + shape)
            if f"concerned_mask{j}" in arrays:
                concerned_bits[meta["layer"]] = arrays[f"concerned_mask{j}"]
        concerned = [arrays[f"concerned{i}"] for i in range(m)]
        unconcerned = [arrays[f"unconcerned{i}"] for i in range(m)]
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path} is inconsistent ({type(exc).__name__}: {exc}); save the modules again") from exc
    return ModuleSet(network, manifest["classes"], manifest["options"], keep,
                     concerned, unconcerned, manifest["info"], concerned_bits or None)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
