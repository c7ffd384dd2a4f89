"""Data sources: arrays, memory-mapped files, Fashion-MNIST, Tiny-ImageNet folders, synthetic."""

import numpy as np
import pytest

from fastdecomp import data
from fastdecomp.errors import DatasetNotFoundError, InputError, ModelFileError


def test_array_source_batches_and_scaling():
    x = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    y = np.arange(10) % 3
    np.testing.assert_array_equal(data.ArraySource(x, y).read([5]), x[5:6, ..., None])  # as given, as Keras
    source = data.ArraySource(x, y, scale=1 / 255)
    assert source.sample_shape == (4, 4, 1)
    batches = list(source.batches(4))
    assert [len(p) for p, _, _ in batches] == [4, 4, 2]
    np.testing.assert_allclose(batches[1][1], x[4:8, ..., None] / 255, rtol=1e-6)
    np.testing.assert_array_equal(batches[2][2], y[8:])


def test_npy_files_are_memory_mapped(tmp_path):
    x = np.random.default_rng(0).random((20, 6, 6, 3), dtype=np.float32)
    y = np.arange(20) % 4
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    source = data.from_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert isinstance(source.x, np.memmap)
    np.testing.assert_array_equal(source.read([3, 1]), x[[3, 1]])


def test_npz_images_are_memory_mapped(tmp_path):
    x = np.random.default_rng(1).random((12, 5, 5, 1), dtype=np.float32)
    y = np.arange(12) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    source = data.from_npz(tmp_path / "d.npz")
    assert isinstance(source.x, np.memmap)
    np.testing.assert_array_equal(source.read(np.arange(12)), x)
    np.testing.assert_array_equal(source.labels, y)


def test_npz_errors(tmp_path):
    x = np.zeros((3, 2, 2, 1), np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.zeros(3))
    with pytest.raises(InputError, match="compressed"):
        data.from_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "k.npz", images=x, y=np.zeros(3))
    with pytest.raises(InputError, match="x_key"):
        data.from_npz(tmp_path / "k.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not a valid"):
        data.from_npz(tmp_path / "bad.npz")
    with pytest.raises(ModelFileError, match="no such file"):
        data.from_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize("labels, message", [
    (np.zeros(4), "4 labels"),
    (np.array([0, 1, -1, 0, 1]), ">= 0"),
    (np.array([0, 1, 0.5, 0, 1]), "whole class"),
    (np.eye(5, 3), "one-hot"),
    (np.array(["a"] * 5), "integers"),
])
def test_bad_labels(labels, message):
    with pytest.raises(InputError, match=message):
        data.ArraySource(np.zeros((5, 2, 2, 1), np.float32), labels)


def test_nan_images_are_refused():
    x = np.zeros((4, 2, 2, 1), np.float32)
    x[3, 1, 1, 0] = np.inf
    source = data.ArraySource(x, np.zeros(4))
    with pytest.raises(InputError, match=r"images \[3\].*NaN or inf"):
        list(source.batches(2))


def test_fashion_mnist():
    try:
        test = data.fashion_mnist("test")
    except DatasetNotFoundError:
        pytest.fail("Fashion-MNIST must be installed (apt-get install dataset-fashion-mnist)")
    assert len(test) == 10_000 and test.sample_shape == (28, 28, 1)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    x = test.read([0, 1])
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and x.max() > 0.5


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train", path=tmp_path)


def make_tiny_imagenet(root, wnids=("n01443537", "n01629819", "n01641577"), per_class=3, val=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                folder / f"{wnid}_{i}.JPEG", format="JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(val):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet_folder(tmp_path):
    make_tiny_imagenet(tmp_path)
    train = data.TinyImageNetFolder(tmp_path, "train")
    assert len(train) == 9 and train.sample_shape == (64, 64, 3)
    np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], 3))
    x = train.read([0, 8])
    assert x.shape == (2, 64, 64, 3) and x.dtype == np.float32 and x.max() <= 1
    val = data.TinyImageNetFolder(tmp_path, "val")
    np.testing.assert_array_equal(val.labels, [0, 1, 2, 0])
    assert val.read([1]).shape == (1, 64, 64, 3)  # greyscale converted to RGB
    assert len(data.open_data(f"tiny-imagenet:{tmp_path}:val")) == 4


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="wnids.txt"):
        data.TinyImageNetFolder(tmp_path)
    make_tiny_imagenet(tmp_path)
    (tmp_path / "train" / "n01443537" / "images" / "n01443537_1.JPEG").write_bytes(b"\xff\xd8broken")
    source = data.TinyImageNetFolder(tmp_path)
    with pytest.raises(ModelFileError, match="n01443537_1.JPEG.*corrupt"):
        source.read([1])
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\n")
    with pytest.raises(ModelFileError, match="wnid"):
        data.TinyImageNetFolder(tmp_path, "val")


def test_synthetic_tiny_imagenet_is_seeded():
    a = data.SyntheticTinyImageNet(50, seed=3)
    b = data.SyntheticTinyImageNet(50, seed=3)
    assert a.sample_shape == (64, 64, 3) and a.labels.max() < 200
    np.testing.assert_array_equal(a.read([4, 7]), b.read([4, 7]))
    np.testing.assert_array_equal(a.read([7]), a.read([4, 7])[1:])
    assert not np.array_equal(data.SyntheticTinyImageNet(50, seed=4).read([4]), a.read([4]))


def test_synthetic_images_are_the_same_read_on_threads_or_one_at_a_time():
    """Generated on several threads for a large read; each image is a function of (seed, index) alone."""
    source = data.SyntheticTinyImageNet(200, seed=5)
    rows = np.arange(199, -1, -3)
    many = source.read(rows)
    assert len(rows) > source.IMAGES_PER_THREAD
    one_by_one = np.concatenate([source.read([i]) for i in rows])
    np.testing.assert_array_equal(many, one_by_one)
    noise = np.random.default_rng([5, 2, int(rows[-1])]).random((64, 64, 3), dtype=np.float32)
    np.testing.assert_array_equal(many[-1], 0.6 * source._patterns[source.labels[rows[-1]]] + 0.4 * noise)


def test_read_ahead_hands_out_every_item_in_order_and_raises_where_the_reading_failed():
    import threading

    from fastdecomp.parallel import read_ahead

    readers = set()

    def items(fail_at=None):
        for i in range(10):
            readers.add(threading.current_thread().name)
            if i == fail_at:
                raise ValueError(f"item {i} is unreadable")
            yield i

    assert list(read_ahead(items(), depth=3)) == list(range(10))
    for depth in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="depth of 1 or more"):
            next(read_ahead(items(), depth=depth))
    assert readers == {"fastdecomp-read-ahead"}
    got = []
    with pytest.raises(ValueError, match="item 6 is unreadable"):
        for item in read_ahead(items(fail_at=6)):
            got.append(item)
    assert got == list(range(6))


def test_read_ahead_stops_its_thread_when_the_consumer_stops():
    import threading

    from fastdecomp.parallel import read_ahead

    drawn = []

    def endless():
        i = 0
        while True:
            drawn.append(i)
            yield i
            i += 1

    ahead = read_ahead(endless(), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert not any(t.name == "fastdecomp-read-ahead" for t in threading.enumerate())
    assert len(drawn) <= 3 + 2 + 1  # handed out, queued, and the one being put when told to stop


def test_stratified_subset_keeps_proportions():
    source = data.ArraySource(np.zeros((100, 2, 2, 1), np.float32), np.repeat([0, 1], [80, 20]))
    sub = data.stratified_subset(source, 10)
    np.testing.assert_array_equal(np.bincount(sub.labels), [8, 2])
    assert data.stratified_subset(source, None) is source


def test_open_data_errors():
    with pytest.raises(InputError, match="cannot read data"):
        data.open_data("imagenet")


def test_reading_never_changes_the_callers_arrays_or_files(tmp_path):
    """A scale is applied to a copy: neither an array nor a read/write memory-mapped .npy is written."""
    x = np.random.default_rng(1).random((6, 4, 4, 1), dtype=np.float32)
    before = x.copy()
    source = data.ArraySource(x, np.arange(6) % 2, scale=0.5)
    for _ in range(2):
        np.testing.assert_array_equal(source.read(np.arange(6)), before * np.float32(0.5))
    np.testing.assert_array_equal(x, before)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r+")
    data.ArraySource(mapped, np.arange(6) % 2, scale=0.5).read(np.arange(6))
    mapped.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), before)
    with pytest.raises(InputError, match="scale"):
        data.ArraySource(x, np.arange(6), scale=float("nan"))


def test_a_tiny_imagenet_folder_names_only_its_own_images(tmp_path):
    root = tmp_path / "tiny"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\nn02\nn01\n")
    with pytest.raises(ModelFileError, match="n01"):
        data.TinyImageNetFolder(root, "val")
    (root / "wnids.txt").write_text("n01\nn02\n")
    for escape in ("../../secret.JPEG", "/etc/passwd", ".."):
        (root / "val" / "val_annotations.txt").write_text(f"{escape}\tn01\t0\t0\t1\t1\n")
        with pytest.raises(ModelFileError, match="not a file name"):
            data.TinyImageNetFolder(root, "val")


def test_described_data_that_cannot_be_read_gets_a_fastdecomp_error(tmp_path):
    x = np.zeros((4, 3, 3, 1), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    content = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(content[: len(content) // 2])
    for spec, limit in [("synthetic:²", None), ("synthetic:100000000000000", None), (str(tmp_path / "t.npz"), None),
                        (str(tmp_path / "d.npz"), "5"), (5, None)]:
        with pytest.raises((InputError, ModelFileError)):
            data.open_data(spec, limit)
    with pytest.raises(InputError, match="index out of range"):
        data.Subset(data.ArraySource(x, np.arange(4)), [0, 1]).read([-1])


def test_a_tiny_imagenet_folder_reads_no_link_out_of_it_and_no_fifo(tmp_path):
    import os

    from PIL import Image

    root = tmp_path / "tiny"
    images = root / "train" / "n01" / "images"
    images.mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "a.JPEG")
    assert len(data.TinyImageNetFolder(root, "train")) == 1
    outside = tmp_path / "secret.JPEG"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(outside)
    (images / "b.JPEG").symlink_to(outside)
    with pytest.raises(ModelFileError, match="b.JPEG is not a regular file inside"):
        data.TinyImageNetFolder(root, "train")
    (images / "b.JPEG").unlink()
    os.mkfifo(images / "c.JPEG")
    with pytest.raises(ModelFileError, match="c.JPEG is not a regular file inside"):
        data.TinyImageNetFolder(root, "train")


def test_labels_too_large_for_int64_are_refused_as_they_are():
    """A uint64 label of 2**64 - 1 used to wrap around to -1 and be reported as such."""
    images = np.zeros((3, 4, 4, 1), np.float32)
    with pytest.raises(InputError, match="below 9223372036854775808, found 18446744073709551615"):
        data.ArraySource(images, np.array([0, 1, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(InputError, match="found 1e"):
        data.ArraySource(images, np.array([0, 1, 1e19]))
    assert data.ArraySource(images, np.array([0, 1, 2], dtype=np.uint64)).labels.dtype == np.int64
