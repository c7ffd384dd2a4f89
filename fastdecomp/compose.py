"""Composing modules into new classifiers: reuse, replacement, removal.

A :class:`Composition` is an ordered list of modules, each from some
:class:`~fastdecomp.modules.ModuleSet` and each with the label it answers to in
the composed classifier. It predicts by voting (docs/method.md section 6): the
label of the module with the highest P(concerned | x).

- intra-dataset reuse: ``compose(modules.module(1), modules.module(7))``;
- inter-dataset reuse: modules of different models (same input shape) with
  their classes relabelled, ``compose(a.module(0), b.module(3), labels=[0, 1])``;
- replacement: ``composition.replace(label, other.module(k))``;
- removal: ``composition.remove(label)``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .data import Subset, as_input_source
from .errors import InputError
from .metrics import topk_accuracy
from .modules import Module, ModuleSet

__all__ = ["Composition", "compose"]


class Composition:
    """Modules voting as one classifier; see the module docstring.

    Parameters
    ----------
    refs : list of Module
    labels : list of int
        The composed classifier's label for each module, all different.
    """

    def __init__(self, refs, labels):
        refs, labels = list(refs), list(labels)
        if not all(isinstance(r, Module) for r in refs):
            raise InputError("a composition is made of modules: pass modules.module(k) for each")
        if not all(_label(label) for label in labels):
            raise InputError(f"labels must be integers, got {labels}")
        labels = [int(label) for label in labels]
        if not refs:
            raise InputError("a composition needs at least one module")
        if len(labels) != len(refs):
            raise InputError(f"{len(refs)} modules but {len(labels)} labels")
        if len(set(labels)) != len(labels):
            raise InputError(f"labels must all differ, got {labels}; relabel with labels=[...]")
        shapes = {tuple(r.modules.network.input_shape) for r in refs}
        if len(shapes) > 1:
            raise InputError(f"the modules take different input shapes {sorted(shapes)}; only modules "
                             "of models with the same input shape can be composed")
        self.refs, self.labels = refs, labels
        self.input_shape = shapes.pop()

    def __repr__(self):
        return f"Composition(labels={self.labels})"

    def __len__(self):
        return len(self.refs)

    def module_sets(self):
        """The distinct module sets the modules come from, in order of first appearance."""
        sets = []
        for r in self.refs:
            if not any(r.modules is s for s in sets):
                sets.append(r.modules)
        return sets

    def _position(self, label):
        if not _label(label) or int(label) not in self.labels:
            raise InputError(f"no module answers to label {label}; this composition has {self.labels}")
        return self.labels.index(int(label))

    def replace(self, label, ref):
        """A new composition with ``ref`` answering to ``label`` instead of the current module.

        Parameters
        ----------
        label : int
        ref : Module
        """
        i = self._position(label)
        return Composition(self.refs[:i] + [ref] + self.refs[i + 1:], self.labels)

    def remove(self, label):
        """A new composition without the module of ``label``."""
        i = self._position(label)
        return Composition(self.refs[:i] + self.refs[i + 1:], self.labels[:i] + self.labels[i + 1:])

    def _scores(self, x, batch_size, margin, backend):
        source = as_input_source(x, self.input_shape)
        scores = np.empty((len(source), len(self.refs)), dtype=np.float32)
        for modules in self.module_sets():
            columns = [j for j, r in enumerate(self.refs) if r.modules is modules]
            out = modules.predict_proba(source, classes=[self.refs[j].k for j in columns], batch_size=batch_size,
                                        logits=margin, backend=backend)
            scores[:, columns] = out[:, :, 0] - out[:, :, 1] if margin else out[:, :, 0]
        return scores

    def predict_proba(self, x, *, batch_size=256, backend=None):
        """Voting scores ``[N, len(labels)]``: column j is P(concerned | x) of module j.

        The modules of each module set run together, sharing every layer
        computed before their masks differ (:meth:`ModuleSet.predict_proba`).
        The rows are not normalised: each column is its own module's belief.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        backend : str or device, optional
        """
        return self._scores(x, batch_size, False, backend)

    def decision_function(self, x, *, batch_size=256, backend=None):
        """``[N, len(labels)]``: each module's logit margin, logit(concerned) - logit(unconcerned).

        Same ranking as :meth:`predict_proba`, without ties where float32
        saturates P at 1; :meth:`predict` votes with it.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        backend : str or device, optional
        """
        return self._scores(x, batch_size, True, backend)

    def predict(self, x, *, batch_size=256, backend=None):
        """The composed classifier's label for every image (the module with the highest margin).

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        batch_size : int
        backend : str or device, optional

        Returns
        -------
        numpy.ndarray
            int64 ``[N]``, values among :attr:`labels`.
        """
        scores = self.decision_function(x, batch_size=batch_size, backend=backend)
        return np.asarray(self.labels)[scores.argmax(axis=1)]

    def to_onnx(self, path=None, *, overwrite=False):
        """The composition as one ONNX model that runs every module and votes
        (:func:`fastdecomp.onnx_io.composition_to_onnx`): NHWC float32 ``images`` in;
        ``probabilities``, ``margins`` and ``labels`` out.

        Parameters
        ----------
        path : str or Path, optional
            Also write it there (a ``.onnx`` file, atomically).
        overwrite : bool
            Replace an existing file at ``path``.

        Returns
        -------
        onnx.ModelProto
        """
        from .onnx_io import composition_to_onnx, save_onnx

        return save_onnx(composition_to_onnx(self), path, overwrite=overwrite)

    def evaluate(self, x, y=None, *, batch_size=256, backend=None):
        """Top-1 and top-5 accuracy on the images whose label is one of the composition's.

        Where every module comes from one model, that model's accuracy on the
        same images is reported beside it.

        Parameters
        ----------
        x : numpy.ndarray or DataSource
        y : numpy.ndarray, optional
            Labels, with an array ``x``.
        batch_size : int
        backend : str or device, optional

        Returns
        -------
        dict
            ``top1``, ``top5``, ``num_images``; and ``model_top1``,
            ``model_top5`` for modules of one model.
        """
        source = as_input_source(x, self.input_shape, y)
        rows = np.flatnonzero(np.isin(source.labels, self.labels))
        if len(rows) == 0:
            raise InputError(f"no input has a label among {self.labels}")
        subset = Subset(source, rows)
        scores = self.decision_function(subset, batch_size=batch_size, backend=backend)
        labels = np.asarray(self.labels)
        result = {"top1": topk_accuracy(scores, subset.labels, labels, 1),
                  "top5": topk_accuracy(scores, subset.labels, labels, 5),
                  "num_images": int(len(rows))}
        networks = {id(r.modules.network): r.modules.network for r in self.refs}
        if len(networks) == 1 and all(label == r.k for label, r in zip(self.labels, self.refs)):
            network = networks.popitem()[1]
            probs = network.predict_proba(subset, batch_size=batch_size, backend=backend)
            every_class = np.arange(network.num_classes)
            result["model_top1"] = topk_accuracy(probs, subset.labels, every_class, 1)
            result["model_top5"] = topk_accuracy(probs, subset.labels, every_class, 5)
        return result


def compose(*parts, labels=None):
    """Build a :class:`Composition` from modules.

    Parameters
    ----------
    *parts : Module, ModuleSet, or (ModuleSet, classes)
        Modules in order; a whole set contributes all its modules.
    labels : list of int, optional
        The composed label of each module (default: each module's own class).

    Returns
    -------
    Composition
    """
    refs = []
    for part in parts:
        if isinstance(part, Module):
            refs.append(part)
        elif isinstance(part, ModuleSet):
            refs += [part.module(k) for k in part.classes]
        elif isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], ModuleSet) \
                and hasattr(part[1], "__iter__") and not isinstance(part[1], str):
            refs += [part[0].module(k) for k in part[1]]
        else:
            raise InputError(f"cannot compose a {type(part).__name__}: pass modules.module(k), a "
                             "ModuleSet, or (ModuleSet, [classes])")
    return Composition(refs, labels if labels is not None else [r.k for r in refs])


def _label(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
