"""Composing modules into new classifiers: reuse, replacement, removal.

A :class:`Composition` is an ordered list of modules, each from some
:class:`~fastdecomp.modules.ModuleSet` and each with the label it answers to in
the composed classifier. It predicts by voting (ALGORITHM.md section 6): the
label of the module with the highest P(concerned | x).

- intra-dataset reuse: ``compose(modules.module(1), modules.module(7))``;
- inter-dataset reuse: modules of different models (same input shape) with
  their classes relabelled, ``compose(a.module(0), b.module(3), labels=[0, 1])``;
- replacement: ``composition.replace(label, other.module(k))``;
- removal: ``composition.remove(label)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Subset, as_input_source
from .errors import InputError, ModelFileError
from .storage import atomic_directory

__all__ = ["ModuleRef", "Composition", "compose", "load_composition"]


@dataclass(frozen=True)
class ModuleRef:
    """One module: the set it belongs to and its class there."""

    modules: object  # ModuleSet
    k: int

    def predict(self, x, batch_size=256, engine="keras", margin=False):
        """P(concerned | x) of this module, shape ``[N]`` (or the logit margin, see below).

        ``margin=True`` gives ``logit(concerned) - logit(unconcerned)``: it ranks
        modules exactly as P does, and still separates them where float32
        rounds P to 1.
        """
        if engine == "fastdecomp":
            if margin:
                logits = self.modules.module_predict(self.k, x, batch_size, logits=True)
                return logits[:, 0] - logits[:, 1]
            return self.modules.module_predict(self.k, x, batch_size)[:, 0]
        return self.modules.keras_predict(self.k, x, batch_size, margin=margin)


class Composition:
    """Modules voting as one classifier; see the module docstring.

    Parameters
    ----------
    refs : list of ModuleRef
    labels : list of int
        The composed classifier's label for each module, all different.
    """

    def __init__(self, refs, labels):
        refs, labels = list(refs), [int(label) for label in labels]
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

    def _position(self, label):
        if int(label) not in self.labels:
            raise InputError(f"no module answers to label {label}; this composition has {self.labels}")
        return self.labels.index(int(label))

    def replace(self, label, ref):
        """A new composition with ``ref`` answering to ``label`` instead of the current module."""
        i = self._position(label)
        return Composition(self.refs[:i] + [ref] + self.refs[i + 1:], self.labels)

    def remove(self, label):
        """A new composition without the module of ``label``."""
        i = self._position(label)
        return Composition(self.refs[:i] + self.refs[i + 1:], self.labels[:i] + self.labels[i + 1:])

    def predict(self, x, batch_size=256, engine="keras", margin=False, backend="cpu"):
        """Voting scores ``[N, len(labels)]``: column j is P(concerned | x) of module j.

        ``margin=True`` gives each module's logit margin instead (same ranking,
        no ties where float32 saturates P at 1); voting uses it. With
        ``engine="fastdecomp"`` the modules of each module set run together,
        sharing every layer computed before their masks differ
        (:meth:`ModuleSet.modules_predict`), on ``backend``.
        """
        source = as_input_source(x, self.input_shape)
        if engine != "fastdecomp":
            return np.stack([r.predict(source, batch_size, engine, margin) for r in self.refs], axis=1)
        scores = np.empty((len(source), len(self.refs)), dtype=np.float32)
        sets = []
        for r in self.refs:
            if not any(r.modules is s for s in sets):
                sets.append(r.modules)
        for modules in sets:
            columns = [j for j, r in enumerate(self.refs) if r.modules is modules]
            out = modules.modules_predict([self.refs[j].k for j in columns], source, batch_size,
                                          logits=margin, backend=backend)
            scores[:, columns] = out[:, :, 0] - out[:, :, 1] if margin else out[:, :, 0]
        return scores

    def predict_labels(self, x, batch_size=256, engine="keras", backend="cpu"):
        """The composed classifier's label for every image (argmax of P, ties broken by the margin)."""
        scores = self.predict(x, batch_size, engine, margin=True, backend=backend)
        return np.asarray(self.labels)[scores.argmax(axis=1)]

    def evaluate(self, x, y=None, batch_size=256, engine="keras", backend="cpu"):
        """Top-1 and top-5 accuracy on the images whose label is one of the composition's.

        Returns
        -------
        dict
            ``top1``, ``top5``, ``num_images``.
        """
        source = as_input_source(x, self.input_shape, y)
        rows = np.flatnonzero(np.isin(source.labels, self.labels))
        if len(rows) == 0:
            raise InputError(f"no input has a label among {self.labels}")
        subset = Subset(source, rows)
        scores = self.predict(subset, batch_size, engine, margin=True, backend=backend)
        labels = np.asarray(self.labels)
        return {"top1": topk_accuracy(scores, subset.labels, labels, 1),
                "top5": topk_accuracy(scores, subset.labels, labels, 5),
                "num_images": int(len(rows))}

    def save(self, path, overwrite=False):
        """Save to a directory: each distinct module set once, and which modules vote for which label."""
        path = Path(path)
        with atomic_directory(path, overwrite) as tmp:
            sets = []
            for r in self.refs:
                if not any(r.modules is s for s in sets):
                    sets.append(r.modules)
            for i, modules in enumerate(sets):
                modules.save(tmp / f"set{i}")
            entries = [{"set": next(i for i, s in enumerate(sets) if s is r.modules), "class": int(r.k),
                        "label": label} for r, label in zip(self.refs, self.labels)]
            (tmp / "composition.json").write_text(json.dumps(
                {"format": "fastdecomp-composition", "version": 1, "sets": len(sets), "entries": entries},
                indent=1))
        return path


def compose(*parts, labels=None):
    """Build a :class:`Composition` from modules.

    Parameters
    ----------
    *parts : ModuleRef, ModuleSet, or (ModuleSet, classes)
        Modules in order; a whole set contributes all its modules.
    labels : list of int, optional
        The composed label of each module (default: each module's own class).

    Returns
    -------
    Composition
    """
    from .modules import ModuleSet

    refs = []
    for part in parts:
        if isinstance(part, ModuleRef):
            refs.append(part)
        elif isinstance(part, ModuleSet):
            refs += [part.module(k) for k in part.classes]
        elif isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], ModuleSet):
            refs += [part[0].module(k) for k in part[1]]
        else:
            raise InputError(f"cannot compose a {type(part).__name__}: pass modules.module(k), a "
                             "ModuleSet, or (ModuleSet, [classes])")
    return Composition(refs, labels if labels is not None else [r.k for r in refs])


def load_composition(path):
    """Load a :class:`Composition` saved with :meth:`Composition.save`."""
    from .modules import load_modules

    path = Path(path)
    manifest_path = path / "composition.json"
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a saved composition (no composition.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != "fastdecomp-composition" or manifest.get("version") != 1:
            raise ModelFileError(f"{path}: not a composition of a version this fastdecomp reads")
        sets = [load_modules(path / f"set{i}") for i in range(manifest["sets"])]
        entries = manifest["entries"]
        return Composition([sets[e["set"]].module(e["class"]) for e in entries], [e["label"] for e in entries])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ModelFileError(f"{manifest_path} is corrupt ({type(exc).__name__}: {exc})") from exc


def topk_accuracy(scores, labels, classes, k):
    """Share of rows whose label is among the ``k`` best-scored ``classes``."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((np.asarray(classes)[top] == np.asarray(labels)[:, None]).any(axis=1).mean())
