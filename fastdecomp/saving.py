"""Module sets and compositions on disk: one manifest format, checked before anything is trusted.

A saved module set is a directory with ``manifest.json`` (the graph, the
options, the mask shapes, the SHA-256 of the arrays) and ``arrays.npz`` (the
weights, bit-packed masks and sample indices). A composition is a directory
with ``composition.json`` and one such directory per module set it draws on.
Directories are written beside their final place and renamed into it when
complete (:func:`fastdecomp.storage.atomic_directory`). :func:`read_manifest`
is the one reader: it checks the format, the version and every field's type
before a loader uses any of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .compose import Composition
from .errors import FastDecompError, ModelFileError
from .layers import KINDS, Layer
from .modules import ModuleSet, assemble
from .network import Network
from .options import DecompositionOptions
from .storage import atomic_directory

__all__ = ["save", "load", "load_modules", "load_composition", "read_manifest", "FORMATS"]

MODULES, COMPOSITION = "fastdecomp-modules", "fastdecomp-composition"
FORMATS = {MODULES: ("manifest.json", 1), COMPOSITION: ("composition.json", 1)}


def save(obj, path, *, overwrite=False):
    """Save a :class:`ModuleSet` or a :class:`Composition` to a directory.

    Parameters
    ----------
    obj : ModuleSet or Composition
    path : str or Path
    overwrite : bool
        Replace ``path`` if it exists (else :class:`FileExistsError`).

    Returns
    -------
    Path
        ``path``; a failed save leaves nothing there.
    """
    path = Path(path)
    if isinstance(obj, ModuleSet):
        writer = _write_modules
    elif isinstance(obj, Composition):
        writer = _write_composition
    else:
        raise ModelFileError(f"cannot save a {type(obj).__name__}: pass a ModuleSet or a Composition")
    with atomic_directory(path, overwrite) as tmp:
        writer(obj, tmp)
    return path


def load(path):
    """Load whatever :func:`save` wrote at ``path``: a :class:`ModuleSet` or a :class:`Composition`.

    Parameters
    ----------
    path : str or Path
    """
    path = Path(path)
    if (path / FORMATS[COMPOSITION][0]).is_file():
        return load_composition(path)
    return load_modules(path)


def _write_modules(modules, folder):
    arrays, graph = {}, []
    for i, layer in enumerate(modules.network.layers):
        graph.append({"name": layer.name, "kind": layer.kind, "inputs": layer.inputs,
                      "shape": list(layer.shape), "keras_name": layer.keras_name,
                      "config": _jsonable(layer.config), "weights": sorted(layer.weights)})
        for key, w in layer.weights.items():
            arrays[f"w{i}_{key}"] = w
    masks_meta = []
    for j, (name, keep) in enumerate(modules.base_masks.items()):
        arrays[f"mask{j}"] = np.packbits(keep.reshape(len(modules.classes), -1), axis=1)
        if modules.concerned_bits is not None:
            arrays[f"concerned_mask{j}"] = modules.concerned_bits[name]
        masks_meta.append({"layer": name, "shape": list(keep.shape[1:])})
    concerned, unconcerned = modules.samples()
    for i in range(len(modules.classes)):
        arrays[f"concerned{i}"] = concerned[i]
        arrays[f"unconcerned{i}"] = unconcerned[i]
    np.savez(folder / "arrays.npz", **arrays)
    manifest = {
        "format": MODULES, "version": FORMATS[MODULES][1],
        "network_name": modules.network.name, "graph": graph, "masks": masks_meta,
        "classes": modules.classes, "options": modules.options.to_dict(), "info": _jsonable(modules.info),
        "sha256": {"arrays.npz": _sha256(folder / "arrays.npz")},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _write_composition(composition, folder):
    sets = composition.module_sets()
    for i, modules in enumerate(sets):
        (folder / f"set{i}").mkdir()
        _write_modules(modules, folder / f"set{i}")
    entries = [{"set": next(i for i, s in enumerate(sets) if s is r.modules), "class": int(r.k),
                "label": label} for r, label in zip(composition.refs, composition.labels)]
    (folder / "composition.json").write_text(json.dumps(
        {"format": COMPOSITION, "version": FORMATS[COMPOSITION][1], "sets": len(sets), "entries": entries},
        indent=1))


def read_manifest(path, kind):
    """The manifest of a saved ``kind`` at ``path``, its fields checked.

    Parameters
    ----------
    path : Path
        The saved directory.
    kind : {"fastdecomp-modules", "fastdecomp-composition"}

    Returns
    -------
    dict

    Raises
    ------
    ModelFileError
        Missing, unreadable, of another format or version, or with a field
        of the wrong type; the message names the file and the field.
    """
    name, version = FORMATS[kind]
    what = "module set" if kind == MODULES else "composition"
    manifest_path = Path(path) / name
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a saved {what} (no {name})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{manifest_path} is corrupt ({exc}); save the {what} again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != kind:
        raise ModelFileError(f"{path} is not a fastdecomp {what} (its {name} is corrupt or of another kind)")
    if manifest.get("version") != version:
        raise ModelFileError(f"{path} has format version {manifest.get('version')}; this fastdecomp "
                             f"reads version {version}. Save it again with this version")
    _check_fields(manifest, _SCHEMAS[kind], manifest_path)
    return manifest


_LAYER = {"name": str, "kind": str, "inputs": [str], "shape": [int], "keras_name": str, "config": dict,
          "weights": [str]}
_SCHEMAS = {
    MODULES: {"network_name": str, "graph": [_LAYER], "masks": [{"layer": str, "shape": [int]}],
              "classes": [int], "options": dict, "info": dict, "sha256": {"arrays.npz": str}},
    COMPOSITION: {"sets": int, "entries": [{"set": int, "class": int, "label": int}]},
}


def _check_fields(value, schema, where, field="manifest"):
    """Raise ModelFileError unless ``value`` has the shape of ``schema`` (types, lists, dicts)."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise ModelFileError(f"{where}: {field} should be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _check_fields(item, schema[0], where, f"{field}[{i}]")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ModelFileError(f"{where}: {field} should be an object, got {type(value).__name__}")
        for key, sub in schema.items():
            if key not in value:
                raise ModelFileError(f"{where}: {field} has no {key!r}; the file is corrupt, save it again")
            _check_fields(value[key], sub, where, f"{field}.{key}")
    elif not isinstance(value, schema) or (schema is int and isinstance(value, bool)):
        raise ModelFileError(f"{where}: {field} should be {schema.__name__}, got {value!r:.60}")


def load_modules(path):
    """Load a :class:`ModuleSet` saved with :func:`save`.

    Parameters
    ----------
    path : str or Path

    Raises
    ------
    ModelFileError
        If the directory is missing, truncated, tampered with or of another version.
    """
    path = Path(path)
    manifest = read_manifest(path, MODULES)
    arrays = _read_arrays(path, manifest)
    try:
        network = Network(_layers(manifest, arrays), name=manifest["network_name"])
        options = DecompositionOptions.from_dict(manifest["options"])
        m = len(manifest["classes"])
        keep, concerned_bits = _masks(manifest, arrays, m)
        samples = ([arrays[f"concerned{i}"] for i in range(m)], [arrays[f"unconcerned{i}"] for i in range(m)])
        return assemble(network, manifest["classes"], options, keep, samples, manifest["info"],
                        concerned_bits or None)
    except (KeyError, ValueError, TypeError, IndexError, FastDecompError) as exc:
        raise ModelFileError(f"{path} is inconsistent ({type(exc).__name__}: {exc}); save the modules again") \
            from exc


def _read_arrays(path, manifest):
    arrays_path = path / "arrays.npz"
    if not arrays_path.is_file():
        raise ModelFileError(f"{arrays_path} is missing")
    if _sha256(arrays_path) != manifest["sha256"]["arrays.npz"]:
        raise ModelFileError(f"{arrays_path} does not match its checksum: the file is truncated "
                             "or was changed after saving")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"{arrays_path} cannot be read ({exc}); save the modules again") from exc


def _layers(manifest, arrays):
    layers = []
    for i, g in enumerate(manifest["graph"]):
        if g["kind"] not in KINDS:
            raise ValueError(f"layer {g['name']!r} has kind {g['kind']!r}, which this fastdecomp does not know")
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in g["config"].items()}
        weights = {key: arrays[f"w{i}_{key}"] for key in g["weights"]}
        layers.append(Layer(g["name"], g["kind"], list(g["inputs"]), tuple(g["shape"]), config, weights,
                            g["keras_name"]))
    return layers


def _masks(manifest, arrays, m):
    keep, concerned_bits = {}, {}
    for j, meta in enumerate(manifest["masks"]):
        shape = tuple(meta["shape"])
        bits = np.unpackbits(arrays[f"mask{j}"], axis=1, count=int(np.prod(shape)))
        keep[meta["layer"]] = bits.astype(bool).reshape((m,) + shape)
        if f"concerned_mask{j}" in arrays:
            concerned_bits[meta["layer"]] = arrays[f"concerned_mask{j}"]
    return keep, concerned_bits


def load_composition(path):
    """Load a :class:`Composition` saved with :func:`save`.

    Parameters
    ----------
    path : str or Path

    Raises
    ------
    ModelFileError
        If the directory or one of its module sets is missing, corrupt or inconsistent.
    """
    path = Path(path)
    manifest = read_manifest(path, COMPOSITION)
    entries = manifest["entries"]
    if not 0 < manifest["sets"] <= len(entries) or any(not 0 <= e["set"] < manifest["sets"] for e in entries):
        raise ModelFileError(f"{path / 'composition.json'} refers to module sets it does not have; save it again")
    sets = [load_modules(path / f"set{i}") for i in range(manifest["sets"])]
    try:
        return Composition([sets[e["set"]].module(e["class"]) for e in entries], [e["label"] for e in entries])
    except (IndexError, FastDecompError) as exc:
        raise ModelFileError(f"{path / 'composition.json'} is inconsistent ({exc}); save it again") from exc


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
