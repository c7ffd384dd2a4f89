"""Module sets and compositions on disk: one manifest format, checked before anything is trusted.

A saved module set is a directory with ``manifest.json`` (the graph, the
options, the mask shapes, the SHA-256 of the arrays) and ``arrays.npz`` (the
weights, bit-packed masks and sample indices). A composition is a directory
with ``composition.json`` and one such directory per module set it draws on.
Each manifest ends with a SHA-256 over itself, which holds the arrays' own,
so one checksum covers the manifest and the arrays together. Directories are
written beside their final place and swapped into it when complete
(:func:`fastdecomp.storage.atomic_directory`); only a fastdecomp save is ever
replaced.

Nothing read is trusted before it is checked. :func:`read_manifest` is the one
reader: it checks the format, the version, the checksum and every field's
type; the loaders then check every value against the others (each layer
against its kind's rules and its inputs, each weight's shape and dtype, the
masks against the network's mask points, classes and sample indices against
their ranges) before any kernel can see them. Anything off is a
:class:`ModelFileError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .compose import Composition
from .errors import FastDecompError, InputError, ModelFileError, SaveError
from .layers import KINDS, Layer
from .modules import ModuleSet, assemble
from .network import Network
from .options import DecompositionOptions
from .storage import atomic_directory

__all__ = ["save", "load", "load_modules", "load_composition", "read_manifest", "FORMATS"]

MODULES, COMPOSITION, STATISTICS = "fastdecomp-modules", "fastdecomp-composition", "fastdecomp-statistics"
FORMATS = {MODULES: ("manifest.json", 2), COMPOSITION: ("composition.json", 2), STATISTICS: ("manifest.json", 1)}


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
    path = _path(path)
    if isinstance(obj, ModuleSet):
        writer = _write_modules
    elif isinstance(obj, Composition):
        writer = _write_composition
    else:
        raise InputError(f"cannot save a {type(obj).__name__}: pass a ModuleSet or a Composition")
    try:
        with atomic_directory(path, overwrite, replaceable=is_save) as tmp:
            writer(obj, tmp)
    except OSError as exc:
        if isinstance(exc, FastDecompError):
            raise
        raise SaveError(f"cannot save to {path}: {exc.strerror or exc}; choose a folder you can write") from exc
    return path


def is_save(path):
    """Whether ``path`` is a folder :func:`save` wrote, holding nothing else (so replacing it loses nothing).

    Parameters
    ----------
    path : str or Path
    """
    path = Path(path)
    try:
        entries = {entry.name: entry for entry in path.iterdir()}
        if "composition.json" in entries:
            sets = {name for name in entries if name.startswith("set") and name[3:].isdigit()}
            return (set(entries) == {"composition.json"} | sets and _format(path / "composition.json") == COMPOSITION
                    and all(is_save(entries[name]) for name in sets))
        return set(entries) == {"manifest.json", "arrays.npz"} and _format(path / "manifest.json") == MODULES \
            and not any(entry.is_symlink() for entry in entries.values())
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _format(path):
    return json.loads(path.read_text()).get("format")


def manifest_checksum(manifest):
    """The SHA-256 a manifest carries: over every field but the checksum itself.

    Parameters
    ----------
    manifest : dict
    """
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(path, manifest):
    manifest["checksum"] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def load(path):
    """Load whatever :func:`save` wrote at ``path``: a :class:`ModuleSet` or a :class:`Composition`;
    or, for a ``.onnx`` file, the :class:`~fastdecomp.network.Network` it holds (:func:`fastdecomp.from_onnx`).

    Parameters
    ----------
    path : str or Path
    """
    if str(path).endswith(".onnx"):
        from .onnx_io import from_onnx

        return from_onnx(path)
    path = _path(path)
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
    _write_manifest(folder / "manifest.json", manifest)


def _write_composition(composition, folder):
    sets = composition.module_sets()
    for i, modules in enumerate(sets):
        (folder / f"set{i}").mkdir()
        _write_modules(modules, folder / f"set{i}")
    entries = [{"set": next(i for i, s in enumerate(sets) if s is r.modules), "class": int(r.k),
                "label": label} for r, label in zip(composition.refs, composition.labels)]
    sealed = [json.loads((folder / f"set{i}" / "manifest.json").read_text())["checksum"] for i in range(len(sets))]
    _write_manifest(folder / "composition.json",
                    {"format": COMPOSITION, "version": FORMATS[COMPOSITION][1], "sets": len(sets), "entries": entries,
                     "set_checksums": sealed})


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
    what = {MODULES: "module set", COMPOSITION: "composition", STATISTICS: "shard's statistics"}[kind]
    manifest_path = Path(path) / name
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a saved {what} (no {name})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, RecursionError, OSError) as exc:
        raise ModelFileError(f"{manifest_path} is corrupt ({type(exc).__name__}: {exc}); save the {what} again") \
            from exc
    if not isinstance(manifest, dict) or manifest.get("format") != kind:
        raise ModelFileError(f"{path} is not a fastdecomp {what} (its {name} is corrupt or of another kind)")
    if manifest.get("version") != version:
        raise ModelFileError(f"{path} has format version {manifest.get('version')!r}; this fastdecomp "
                             f"reads version {version}. Save it again with this version")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ModelFileError(f"{manifest_path} does not match its checksum: it was changed after saving, or "
                             f"is damaged; save the {what} again")
    _check_fields(manifest, _SCHEMAS[kind], manifest_path)
    return manifest


_LAYER = {"name": str, "kind": str, "inputs": [str], "shape": [int], "keras_name": str, "config": dict,
          "weights": [str]}
_SCHEMAS = {
    MODULES: {"network_name": str, "graph": [_LAYER], "masks": [{"layer": str, "shape": [int]}],
              "classes": [int], "options": dict, "info": {"num_images": int}, "sha256": {"arrays.npz": str}},
    COMPOSITION: {"sets": int, "entries": [{"set": int, "class": int, "label": int}], "set_checksums": [str]},
    STATISTICS: {"fingerprint": str, "num_images": int, "num_classes": int, "points": [{"name": str, "shape": [int]}],
                 "sources": dict, "sha256": {"arrays.npz": str}},
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
    """Load a :class:`ModuleSet` saved with :func:`save`, after checking every value in it.

    Parameters
    ----------
    path : str or Path

    Raises
    ------
    ModelFileError
        If the directory is missing, truncated, tampered with, inconsistent or
        of another version; the message names the file and the field.
    """
    path = _path(path)
    manifest = read_manifest(path, MODULES)
    arrays = _read_arrays(path, manifest)
    try:
        network = Network(_layers(manifest, arrays), name=manifest["network_name"])
        options = DecompositionOptions.from_dict(manifest["options"])
        classes = _classes(manifest, network)
        keep, concerned_bits = _masks(manifest, arrays, network, options, len(classes))
        samples = _samples(manifest, arrays, len(classes))
        return assemble(network, classes, options, keep, samples, manifest["info"], concerned_bits)
    except (KeyError, ValueError, TypeError, IndexError, OverflowError, FastDecompError) as exc:
        raise ModelFileError(f"{path / 'manifest.json'} is inconsistent with itself or with arrays.npz "
                             f"({type(exc).__name__}: {exc}); save the modules again") from exc


def _read_arrays(path, manifest):
    arrays_path = path / "arrays.npz"
    if not arrays_path.is_file():
        raise ModelFileError(f"{arrays_path} is missing")
    if _sha256(arrays_path) != manifest["sha256"]["arrays.npz"]:
        raise ModelFileError(f"{arrays_path} does not match its checksum: the file is truncated "
                             "or was changed after saving")
    try:
        with zipfile.ZipFile(arrays_path) as archive:
            return {info.filename[:-4]: _member(archive, info) for info in archive.infolist()
                    if info.filename.endswith(".npy")}
    except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{arrays_path} cannot be read ({exc}); save the modules again") from exc


def _member(archive, info):
    """One array of the archive, after checking that its header fits its bytes (no allocation on trust)."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
        raise ValueError(f"member {info.filename} is compressed; fastdecomp writes none")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
        if dtype.hasobject or fortran or int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
            raise ValueError(f"member {info.filename} claims {shape} {dtype}, more than its {info.file_size} bytes")
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _layers(manifest, arrays):
    """The graph's layers, each checked against its kind's rules and its inputs' shapes."""
    layers, shapes = [], {}
    for i, g in enumerate(manifest["graph"]):
        where = f"graph[{i}] ({g['name']!r})"
        if g["kind"] not in KINDS:
            raise ValueError(f"{where} has kind {g['kind']!r}, which this fastdecomp does not know")
        if g["name"] in shapes or any(src not in shapes for src in g["inputs"]):
            raise ValueError(f"{where}: a repeated name, or an input that is not an earlier layer")
        if not all(d >= 1 for d in g["shape"]):
            raise ValueError(f"{where}: shape {g['shape']} has a dimension below 1")
        weights = {key: _weight(arrays, f"w{i}_{key}", where) for key in g["weights"]}
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in g["config"].items()}
        if (KINDS[g["kind"]].input_count == (0, 0)) != (i == 0):
            raise ValueError(f"{where}: a graph has one input layer, first")
        layer = Layer(g["name"], g["kind"], list(g["inputs"]), tuple(g["shape"]), config, weights, g["keras_name"])
        layer.handler.check(layer, [shapes[src] for src in layer.inputs])
        shapes[layer.name] = layer.shape
        layers.append(layer)
    return layers


def _weight(arrays, key, where):
    w = arrays[key]
    if w.dtype != np.float32 or not np.isfinite(w).all():
        raise ValueError(f"{where}: weight {key} is {w.dtype}{'' if np.isfinite(w).all() else ' with NaN or inf'}"
                         f", not finite float32")
    return w


def _classes(manifest, network):
    classes = manifest["classes"]
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < network.num_classes for c in classes):
        raise ValueError(f"classes {classes} are not distinct classes of the model (0..{network.num_classes - 1})")
    return classes


def _masks(manifest, arrays, network, options, m):
    points = network.mask_points(options.mask_at)
    if len({p.keras_name for p in points}) != len(points):
        raise ValueError("two mask points come from one Keras layer (their keras_name repeats)")
    listed = [meta["layer"] for meta in manifest["masks"]]
    if listed != [p.name for p in points]:
        raise ValueError(f"masks are for {listed}, but the network's mask points at {options.mask_at!r} "
                         f"are {[p.name for p in points]}")
    keep, concerned_bits = {}, {}
    for j, (meta, point) in enumerate(zip(manifest["masks"], points)):
        nodes = int(np.prod(point.shape))
        if tuple(meta["shape"]) != tuple(point.shape):
            raise ValueError(f"masks[{j}] has shape {meta['shape']}, but {point.name!r} outputs {point.shape}")
        packed = (m, (nodes + 7) // 8)
        for key in (f"mask{j}", f"concerned_mask{j}"):
            if key in arrays and (arrays[key].dtype != np.uint8 or arrays[key].shape != packed):
                raise ValueError(f"array {key} is {arrays[key].dtype} {arrays[key].shape}, not uint8 {packed}")
        bits = np.unpackbits(arrays[f"mask{j}"], axis=1, count=nodes)
        keep[point.name] = bits.astype(bool).reshape((m,) + tuple(point.shape))
        if f"concerned_mask{j}" in arrays:
            concerned_bits[point.name] = arrays[f"concerned_mask{j}"]
    if concerned_bits and len(concerned_bits) != len(keep):
        raise ValueError("concern records exist for some mask points only")
    return keep, concerned_bits or None


def _samples(manifest, arrays, m):
    images = manifest["info"]["num_images"]
    samples = ([], [])
    for i in range(m):
        for side, key in enumerate((f"concerned{i}", f"unconcerned{i}")):
            indices = arrays[key]
            if indices.dtype != np.int64 or indices.ndim != 1 or ((indices < 0) | (indices >= images)).any():
                raise ValueError(f"array {key} is not int64 indices of the {images} decomposed images")
            samples[side].append(indices)
    return samples


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
    path = _path(path)
    manifest = read_manifest(path, COMPOSITION)
    entries = manifest["entries"]
    if not 0 < manifest["sets"] <= len(entries) or any(not 0 <= e["set"] < manifest["sets"] for e in entries):
        raise ModelFileError(f"{path / 'composition.json'} refers to module sets it does not have; save it again")
    if len(manifest["set_checksums"]) != manifest["sets"] or any(
            read_manifest(path / f"set{i}", MODULES)["checksum"] != sealed
            for i, sealed in enumerate(manifest["set_checksums"])):
        raise ModelFileError(f"{path}: a module set is not the one the composition was saved with; save it again")
    sets = [load_modules(path / f"set{i}") for i in range(manifest["sets"])]
    try:
        return Composition([sets[e["set"]].module(e["class"]) for e in entries], [e["label"] for e in entries])
    except (IndexError, FastDecompError) as exc:
        raise ModelFileError(f"{path / 'composition.json'} is inconsistent ({exc}); save it again") from exc


def _path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"a save's path must be a str or a Path, got {type(path).__name__}")
    return Path(path)


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
