"""``ModuleSet``: the modules of one decomposition (masks, heads, options), and ``Module``, one of them.

A set is built by :func:`fastdecomp.decompose` (and by :meth:`ModuleSet.variant`
and :meth:`ModuleSet.updated`, which derive new masks without a new pass over
the training data) through :func:`assemble`, which applies backtracking. Voting
lives in :mod:`fastdecomp.compose`, metrics in :mod:`fastdecomp.metrics`, files
in :mod:`fastdecomp.saving`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import backends
from .backtrack import apply_backtracking, channel_head
from .data import as_input_source
from .errors import InputError
from .keras_io import to_keras
from .network import check_finite
from .pruning import prune

__all__ = ["ModuleSet", "Module", "assemble", "UPDATE_MODES", "MASK_NAMES"]

UPDATE_MODES = ("add", "remove")
MASK_NAMES = ("keras", "network")


def assemble(network, classes, options, base_keep, samples, info, concerned_bits=None):
    """A :class:`ModuleSet` from the masks after CI and TI: backtracking applied for ``options``.

    Parameters
    ----------
    network : Network
    classes : list of int
        The class of each module.
    options : DecompositionOptions
    base_keep : dict
        Mask-point name -> bool ``[M] + shape``, after CI and TI (made read-only).
    samples : (list of numpy.ndarray, list of numpy.ndarray)
        Each module's concerned and unconcerned input indices.
    info : dict
        Timings and counts.
    concerned_bits : dict, optional
        Mask-point name -> uint8 ``[M, nbytes]``: CI alone, bit-packed (for
        ``updated(mode="remove")``).

    Returns
    -------
    ModuleSet
    """
    for mask in base_keep.values():
        mask.flags.writeable = False  # shared with the backtracked masks and with variants
    keep, feature_keep = apply_backtracking(network, classes, base_keep, options.backtrack, options.delta,
                                            options.bln_rule)
    return ModuleSet(network, classes, options, keep, feature_keep, base_keep, samples, info, concerned_bits)


class ModuleSet:
    """The modules of a decomposition, one per class, sharing one network.

    Built by :func:`fastdecomp.decompose` or :func:`fastdecomp.load_modules`
    (through :func:`assemble`, which computes the masks).

    Parameters
    ----------
    network : Network
    classes : list of int
        The class of each module, in module order.
    options : DecompositionOptions
    keep : dict
        Mask-point name -> bool ``[M] + shape``: the masks after backtracking.
    feature_keep : numpy.ndarray
        bool ``[M, F]``: the output layer's input features each module keeps.
    base_keep : dict
        The masks after CI and TI (see :func:`assemble`).
    samples : (list, list)
        Each module's concerned and unconcerned input indices.
    info : dict
        Timings and counts of the decomposition.
    concerned_bits : dict, optional
    """

    def __init__(self, network, classes, options, keep, feature_keep, base_keep, samples, info,
                 concerned_bits=None):
        self.network = network
        self.classes = [int(k) for k in classes]
        self.options = options
        self.info = dict(info)
        self._keep, self._feature_keep = keep, feature_keep
        self._base_keep = base_keep
        self._concerned_bits = concerned_bits
        self._concerned = [np.asarray(a, dtype=np.int64) for a in samples[0]]
        self._unconcerned = [np.asarray(a, dtype=np.int64) for a in samples[1]]
        self._key_cache = {}
        self._paper = None  # the paper's CI and TI masks, for a thresholded set

    def __repr__(self):
        return (f"ModuleSet({len(self.classes)} modules of {self.network.name!r}, "
                f"mask_at={self.options.mask_at!r}, backtrack={self.options.backtrack!r})")

    def __len__(self):
        return len(self.classes)

    @property
    def base_masks(self):
        """Mask-point name -> bool ``[M] + shape``: every module's masks after CI and TI, before backtracking."""
        return self._base_keep

    @property
    def concerned_bits(self):
        """Mask-point name -> uint8 ``[M, nbytes]``: CI alone, bit-packed; None when unknown."""
        return self._concerned_bits

    def variant(self, backtrack="bln", *, delta=None, bln_rule=None):
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
        changes = {"backtrack": backtrack}
        if delta is not None:
            changes["delta"] = delta
        if bln_rule is not None:
            changes["bln_rule"] = bln_rule
        modules = assemble(self.network, self.classes, self.options.replace(**changes), self._base_keep,
                           self.samples(), self.info, self._concerned_bits)
        modules._paper = self._paper
        return modules

    def activity_counts(self, x, y=None, *, batch_size=256, level=None, backend=None):
        """How many of each module's concerned and unconcerned inputs activate each node: a pass over ``x``.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
            The data these modules were decomposed from.
        y : numpy.ndarray, optional
            Labels, with an array ``x``.
        batch_size : int
        level : {"node", "channel"}, optional
            See :func:`fastdecomp.thresholds.count_activity`.
        backend : str or device, optional
            Where the pass runs (:func:`fastdecomp.backends.get`).

        Returns
        -------
        fastdecomp.thresholds.ActivityCounts
        """
        from .thresholds import count_activity

        return count_activity(self, x, y, batch_size=batch_size, level=level, backend=backend)

    def thresholded(self, counts, y=None, *, activity_threshold=0.0, tangling_threshold=0.0, channel_threshold=None):
        """The same decomposition keeping only the nodes enough inputs use (smaller modules).

        Parameters
        ----------
        counts : ActivityCounts or numpy.ndarray or DataSource
            From :meth:`activity_counts` (reuse them across thresholds), or the
            data to count them on: the decomposition's own.
        activity_threshold, tangling_threshold, channel_threshold :
            See :class:`fastdecomp.DecompositionOptions`; 0, 0 and None give
            the paper's masks.
        y : numpy.ndarray, optional
            Labels, with an array of images as ``counts``.

        Returns
        -------
        ModuleSet
        """
        from .thresholds import ActivityCounts, thresholded_keep

        options = self.options.replace(activity_threshold=activity_threshold, tangling_threshold=tangling_threshold,
                                       channel_threshold=channel_threshold)
        if not isinstance(counts, ActivityCounts):
            counts = self.activity_counts(counts, y)
        paper = self if not self.options.thresholded else self._paper
        if paper is None:
            raise InputError("these modules are thresholded and the paper's masks they came from are not at hand "
                             "(they were saved, or updated, since): threshold the set decompose() returned")
        base_keep = thresholded_keep(paper, counts, options)
        info = dict(self.info, activity_counts=counts.level)
        modules = assemble(self.network, self.classes, options, base_keep, self.samples(), info,
                           self._concerned_bits)
        modules._paper = paper
        return modules

    def report(self, test, y=None, **options):
        """Every metric of these modules on ``test``, as one versioned JSON-ready dict (docs/report.md).

        Parameters
        ----------
        test : numpy.ndarray or DataSource
            Labelled test images of every class of the modules.
        y : numpy.ndarray, optional
            Labels, with an array ``test``.
        **options
            See :func:`fastdecomp.report.build_report` (``train=`` and
            ``thresholds=`` add the size-vs-accuracy points).

        Returns
        -------
        dict
        """
        from .report import build_report

        return build_report(self, test, y, **options)

    def index(self, k):
        """Position of class ``k``'s module in :attr:`classes`."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) not in self.classes:
            raise InputError(f"no module for class {k!r}; this set has modules for {self.classes}")
        return self.classes.index(int(k))

    def masks(self, k, *, names="keras"):
        """Boolean keep masks of module ``k`` (True = kept): read-only views into the set.

        Parameters
        ----------
        k : int
        names : {"keras", "network"}
            Key the masks by the Keras layer of each mask point (the Conv2D or
            Dense layer for ``mask_at="conv"``; the ReLU layer, or the layer
            with the inline ReLU, for ``"relu"``), or by fastdecomp's layer
            name (``<keras>/relu`` for an inline ReLU), as
            :meth:`Network.forward` takes them.

        Returns
        -------
        dict
            Name -> bool array of the mask point's output shape (copy it to edit).
        """
        i = self.index(k)
        if names == "network":
            return {name: keep[i] for name, keep in self._keep.items()}
        if names == "keras":
            return {self.network.keras_name_of(name): keep[i] for name, keep in self._keep.items()}
        raise InputError(f"names must be one of {MASK_NAMES}, got {names!r}")

    def samples(self):
        """Every module's concerned and unconcerned input indices: two lists of arrays."""
        return self._concerned, self._unconcerned

    def sample_indices(self, k):
        """Indices into the decomposed data of module ``k``'s concerned and unconcerned inputs.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
        """
        i = self.index(k)
        return self._concerned[i].copy(), self._unconcerned[i].copy()

    def head(self, k):
        """Channeled output layer of module ``k``: kernel ``[F, 2]``, bias ``[2]``.

        Features MC-BLN removed have their outgoing edges zeroed.
        """
        i = self.index(k)
        dense = self.network.by_name[self.network.output_dense]
        kernel, bias = channel_head(*dense.handler.head_weights(dense), self.classes[i])
        kernel[~self._feature_keep[i]] = 0.0
        return kernel, bias

    def pruned(self, k, *, drop_channels=True):
        """Module ``k`` in pruned form.

        Parameters
        ----------
        k : int
        drop_channels : bool
            Drop removed channels physically where possible, else only zero them.

        Returns
        -------
        fastdecomp.pruning.PrunedModule
        """
        return prune(self.network, self.masks(k, names="network"), self.head(k),
                     name=f"{self.network.name}_module{k}", drop_channels=drop_channels)

    def to_keras(self, k):
        """Module ``k`` as a Keras model with output ``(None, 2)`` = [P(concerned), P(unconcerned)].

        Removed nodes output 0; channels removed at every position are zeroed,
        and dropped where only layers that can drop them read them.
        """
        return to_keras(self.pruned(k))

    def to_onnx(self, k, path=None, *, overwrite=False):
        """Module ``k``, physically pruned, as an ONNX model: NHWC float32 ``images`` in,
        ``probabilities [N, 2]`` = [P(concerned), P(unconcerned)] out.

        Parameters
        ----------
        k : int
        path : str or Path, optional
            Also write it there (a ``.onnx`` file, atomically).
        overwrite : bool
            Replace an existing file at ``path``.

        Returns
        -------
        onnx.ModelProto
        """
        from .onnx_io import module_to_onnx, save_onnx

        return save_onnx(module_to_onnx(self.pruned(k)), path, overwrite=overwrite)

    def module(self, k):
        """Module ``k``, to predict with or to compose with others (:func:`fastdecomp.compose`)."""
        self.index(k)
        return Module(self, int(k))

    def predict_proba(self, x, *, classes=None, batch_size=256, logits=False, backend=None, n_jobs=None):
        """Outputs ``[N, len(classes), 2]`` of several modules, sharing work.

        Modules run together through :meth:`Network.forward_many`: each layer
        is computed once for every group of modules whose masks agree up to
        it. Each module's output is bit-identical to the module run alone.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        classes : sequence of int, optional
            Which modules (default: all, in :attr:`classes` order).
        batch_size : int
        logits : bool
            The channeled output layer's values instead of probabilities.
        backend : str or device, optional
            Where to run (:func:`fastdecomp.backends.get`).
        n_jobs : int, optional
            Threads on the CPU.

        Returns
        -------
        numpy.ndarray
            float32; ``[..., 0]`` concerned, ``[..., 1]`` unconcerned.
        """
        device = backends.get(backend)
        if classes is not None and (isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__")):
            raise InputError(f"classes must be a list of the set's classes, got {classes!r}")
        ks = self.classes if classes is None else [self.classes[self.index(k)] for k in classes]
        variants = [(self.masks(k, names="network"), self.head(k)) for k in ks]
        keys = {}
        for k in ks:
            for name, digest in self._module_keys(k).items():
                keys.setdefault(name, []).append(digest)
        source = self._source(x)
        out = np.empty((len(source), len(ks), 2), dtype=np.float32)

        def run(batch):
            positions, xb, _ = batch
            outputs = np.stack(self.network.forward_many(xb, variants, keys=keys, logits=logits, backend=device),
                               axis=1)
            check_finite(outputs, positions)
            out[positions] = outputs

        for _ in device.run_batches(run, source.batches(batch_size), n_jobs):
            pass
        return out

    def _module_keys(self, k):
        if k not in self._key_cache:
            keys = self.network.variant_keys([(self.masks(k, names="network"), self.head(k))])
            self._key_cache[k] = {name: digests[0] for name, digests in keys.items()}
        return self._key_cache[k]

    def updated(self, k, x, *, batch_size=256, mode="add", backend=None):
        """Module ``k`` updated for new company (continuous learning, docs/method.md section 6).

        Parameters
        ----------
        k : int
        x : numpy.ndarray or DataSource
            Images of the classes the module will now be composed with (their
            labels are not used).
        batch_size : int
        mode : {"add", "remove"}
            ``"add"`` (the default) re-applies tangling identification with
            ``x``: every node active for one of them is brought back, so the
            channeled unconcerned output sees them. ``"remove"`` removes the
            nodes active for one of them and for none of the module's
            concerned inputs. Backtracking is applied again either way.
        backend : str or device, optional
            Where the pass over ``x`` runs (:func:`fastdecomp.backends.get`).

        Returns
        -------
        ModuleSet
            A copy in which only module ``k`` changed; use ``.module(k)``.
        """
        if mode not in UPDATE_MODES:
            raise InputError(f"mode must be 'add' or 'remove', got {mode!r}")
        if mode == "remove" and self._concerned_bits is None:
            raise InputError("this module set has no record of its concern identification (it was "
                             "saved by an older fastdecomp); decompose again to update with mode='remove'")
        i = self.index(k)
        base_keep = {name: keep.copy() for name, keep in self._base_keep.items()}
        for name, active in self._activity(x, batch_size, backends.get(backend)).items():
            if mode == "add":
                base_keep[name][i] |= active
            else:
                concerned = np.unpackbits(self._concerned_bits[name][i], count=active.size).astype(bool)
                base_keep[name][i] &= ~(active & ~concerned.reshape(active.shape))
        info = dict(self.info, updated=dict(self.info.get("updated", {}), **{str(int(k)): mode}))
        return assemble(self.network, self.classes, self.options, base_keep, self.samples(), info,
                        self._concerned_bits)

    def _activity(self, x, batch_size, device):
        """Mask-point name -> bool of its shape: active for some image of ``x`` (gathered on ``device``)."""
        with device.compute():
            active = {name: device.xp.zeros(keep.shape[1:], dtype=bool) for name, keep in self._base_keep.items()}
        for positions, _, values, _ in self.network.iter_mask_values(self._source(x), mask_at=self.options.mask_at,
                                                                     batch_size=batch_size, backend=device):
            for name, v in values.items():
                check_finite(v, positions, name, backend=device)
                with device.compute():
                    active[name] |= (v > 0).any(axis=0)
        return {name: device.to_host(a) for name, a in active.items()}

    def _source(self, x, y=None):
        return as_input_source(x, self.network.input_shape, y)


@dataclass(frozen=True)
class Module:
    """One module: the set it belongs to and its class there.

    A binary classifier: ``predict`` says whether an input is of the
    module's class, ``predict_proba`` gives [P(concerned), P(unconcerned)].

    Parameters
    ----------
    modules : ModuleSet
    k : int
        The module's class.
    """

    modules: ModuleSet
    k: int

    def predict_proba(self, x, *, batch_size=256, logits=False, backend=None):
        """``[N, 2]``: P(concerned), P(unconcerned) by fastdecomp's engine (or the logits).

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        logits : bool
            The channeled output layer's values before the softmax.
        backend : str or device, optional
        """
        return self.modules.predict_proba(x, classes=[self.k], batch_size=batch_size, logits=logits,
                                          backend=backend)[:, 0]

    def decision_function(self, x, *, batch_size=256, backend=None):
        """``[N]``: logit(concerned) - logit(unconcerned).

        It ranks modules as P(concerned) does, and still separates them where
        float32 rounds P to 1.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        backend : str or device, optional
        """
        logits = self.predict_proba(x, batch_size=batch_size, logits=True, backend=backend)
        return logits[:, 0] - logits[:, 1]

    def predict(self, x, *, batch_size=256, backend=None):
        """``[N]`` bool: the module's label for each input (True: of its class).

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        backend : str or device, optional
        """
        return self.predict_proba(x, batch_size=batch_size, backend=backend).argmax(axis=1) == 0
