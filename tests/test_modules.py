"""ModuleSet: composition, metrics, pruning, storage, and decompose's input checks."""

import json

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.errors import InputError, ModelFileError


@pytest.fixture(scope="module")
def modules(resnet_case):
    model, x, y = resnet_case
    return fd.decompose(model, x, y, mask_at="conv", backtrack="bi", delta=0.05, batch_size=16, progress=False)


def test_masks_are_keyed_by_keras_names(modules, sequential_case):
    assert set(modules.masks(0)) == {l.name for l in modules.network.mask_points("conv")}
    model, x, y = sequential_case
    relu = fd.decompose(model, x, y, mask_at="relu", backtrack=None, progress=False)
    assert set(relu.masks(0)) == {"c1", "r2", "hidden"}
    assert relu.masks(0)["c1"].shape == (10, 10, 4) and relu.masks(0)["c1"].dtype == bool
    conv = fd.decompose(model, x, y, mask_at="conv", backtrack=None, progress=False)
    assert set(conv.masks(0)) == {"c1", "c2", "hidden"}  # every Conv2D and hidden Dense, not the output layer


def test_samples_are_balanced_and_sized_like_the_concerned_set(modules, resnet_case):
    _, _, y = resnet_case
    for k in modules.classes:
        concerned, unconcerned = modules.sample_indices(k)
        assert (y[concerned] == k).all() and (y[unconcerned] != k).all()
        assert len(unconcerned) == min(max(len(concerned), 3), (y != k).sum())
        taken = np.bincount(y[unconcerned], minlength=4)
        available = np.bincount(y, minlength=4)
        others = [c for c in range(4) if c != k]
        # balanced: a class gets fewer than another only when it has run out
        for a in others:
            for b in others:
                assert taken[a] >= taken[b] - 1 or taken[a] == available[a]


def test_composed_prediction_and_evaluation(modules, resnet_case):
    _, x, y = resnet_case
    scores = fd.compose(modules).predict_proba(x)
    assert scores.shape == (len(x), 4)
    keras_scores = np.stack([modules.to_keras(k).predict(x, verbose=0)[:, 0] for k in modules.classes], axis=1)
    np.testing.assert_allclose(scores, keras_scores, atol=1e-5)
    result = fd.compose(modules).evaluate(x, y)
    assert set(result) == {"top1", "top5", "model_top1", "model_top5", "num_images"}
    assert 0 <= result["top1"] <= 1 and result["top5"] == 1.0  # 4 classes: top-5 covers all
    assert result["top1"] == pytest.approx(np.mean(scores.argmax(axis=1) == y))


def test_voting_breaks_float32_saturation_with_margins(modules, resnet_case, monkeypatch):
    """Where P(concerned) rounds to 1 for several modules, the logit margin still ranks them."""
    _, x, y = resnet_case
    margins = fd.compose(modules).decision_function(x)
    probs = 1 / (1 + np.exp(-margins.astype(np.float64)))
    np.testing.assert_allclose(probs, fd.compose(modules).predict_proba(x), atol=1e-5)
    original_head = type(modules).head

    def scaled_head(self, k):  # heads of modules 0 and 1 scaled up until P saturates at 1
        kernel, bias = original_head(self, k)
        return (kernel * 1e3, bias) if k in (0, 1) else (kernel, bias)

    monkeypatch.setattr(type(modules), "head", scaled_head)
    saturated = fd.compose(modules)
    assert (saturated.predict_proba(x)[:, :2] == 1.0).any()
    labels = saturated.predict(x)
    m = saturated.decision_function(x)
    np.testing.assert_array_equal(labels, np.array(modules.classes)[m.argmax(axis=1)])


def test_jaccard_and_sizes(modules):
    for k in modules.classes:
        nodes = fd.metrics.jaccard(modules, k)
        weights = fd.metrics.jaccard(modules, k, "weights")
        size = fd.metrics.sizes(modules, k)
        assert 0 < nodes <= 1 and 0 < weights <= 1
        assert nodes == pytest.approx(size["kept_nodes"] / size["nodes"])
        assert size["kept_channels"] <= size["channels"]
        assert size["parameters"] <= size["model_parameters"]
    with pytest.raises(InputError, match="kind"):
        fd.metrics.jaccard(modules, 0, "edges")


def test_physical_pruning_drops_dead_channels(resnet_case):
    """A channel removed everywhere is deleted from its conv and from the next conv's input."""
    model, x, y = resnet_case
    modules = fd.decompose(model, x, y, mask_at="conv", backtrack=None, progress=False)
    k = 0
    masks = {name: mask.copy() for name, mask in modules.masks(k, names="network").items()}  # the set's own are read-only
    masks["stage1_block1_conv1"][..., [2, 5]] = False  # remove two channels at every position
    pruned = fd.pruning.prune(modules.network, masks, modules.head(k))
    layers = {l.name: l for l in pruned.layers}
    original = {l.name: l for l in modules.network.layers}
    kept = np.setdiff1d(np.arange(16), np.flatnonzero(~masks["stage1_block1_conv1"].reshape(-1, 16).any(0)))
    np.testing.assert_array_equal(layers["stage1_block1_conv1"].weights["kernel"],
                                  original["stage1_block1_conv1"].weights["kernel"][..., kept])
    np.testing.assert_array_equal(layers["stage1_block1_conv2"].weights["kernel"],
                                  original["stage1_block1_conv2"].weights["kernel"][:, :, kept, :])
    full = fd.network.Network(modules.network.layers).forward(x, masks=masks, head=modules.head(k))
    np.testing.assert_allclose(pruned.predict_proba(x), full, atol=1e-6)
    keras_model = fd.keras_io.to_keras(pruned)
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), full, atol=2e-6)
    assert keras_model.get_layer("stage1_block1_conv1").kernel.shape[-1] == len(kept)


def test_variants_share_one_pass(resnet_case):
    model, x, y = resnet_case
    base = fd.decompose(model, x, y, backtrack=None, delta=0.05, progress=False)
    direct = fd.decompose(model, x, y, backtrack="bi", delta=0.05, progress=False)
    derived = base.variant("bi")
    for k in base.classes:
        for name, mask in direct.masks(k, names="network").items():
            np.testing.assert_array_equal(derived.masks(k, names="network")[name], mask)


def test_save_and_load_roundtrip(modules, resnet_case, tmp_path):
    _, x, _ = resnet_case
    path = fd.save(modules, tmp_path / "mods")
    loaded = fd.load_modules(path)
    assert loaded.classes == modules.classes and loaded.options == modules.options
    for k in modules.classes:
        for name, mask in modules.masks(k).items():
            np.testing.assert_array_equal(loaded.masks(k)[name], mask)
        np.testing.assert_array_equal(loaded.sample_indices(k)[1], modules.sample_indices(k)[1])
    np.testing.assert_array_equal(loaded.module(1).predict_proba(x), modules.module(1).predict_proba(x))
    with pytest.raises(FileExistsError):
        fd.save(modules, path)
    fd.save(modules, path, overwrite=True)


def test_damaged_saves_are_refused(modules, tmp_path):
    path = fd.save(modules, tmp_path / "mods")
    arrays = path / "arrays.npz"
    content = arrays.read_bytes()
    arrays.write_bytes(content[: len(content) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        fd.load_modules(path)
    arrays.write_bytes(content)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="version 99"):
        fd.load_modules(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        fd.load_modules(path)
    with pytest.raises(ModelFileError, match="not a saved module set"):
        fd.load_modules(tmp_path)


def test_failed_save_leaves_nothing(modules, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        fd.save(modules, tmp_path / "mods")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"mask_at": "dense"}, "mask_at"),
    ({"backtrack": "all"}, "backtrack"),
    ({"bln_rule": "maybe"}, "bln_rule"),
    ({"concerned": "some"}, "concerned"),
    ({"classes": [0, 9]}, r"classes \[9\]"),
    ({"classes": []}, "non-empty"),
    ({"delta": -1}, "delta"),
    ({"ti_ratio": float("nan")}, "ti_ratio"),
    ({"batch_size": 0}, "batch_size"),
    ({"backend": "tpu"}, "backend"),
])
def test_bad_options_fail_before_work(resnet_case, kwargs, message):
    model, x, y = resnet_case
    with pytest.raises(InputError, match=message):
        fd.decompose(model, x, y, progress=False, **kwargs)


def test_bad_data_is_refused(resnet_case):
    model, x, y = resnet_case
    with pytest.raises(InputError, match="labels go up to 7"):
        fd.decompose(model, x, np.where(y == 0, 7, y), progress=False)
    with pytest.raises(InputError, match="model takes"):
        fd.decompose(model, np.zeros((4, 9, 9, 1), np.float32), np.arange(4), progress=False)
    with pytest.raises(InputError, match=r"classes \[3\] have no inputs"):
        fd.decompose(model, x, np.where(y == 3, 0, y), progress=False)
    with pytest.raises(InputError, match="correctly classified"):
        fd.decompose(model, x, (y + 1) % 4, progress=False)


def test_model_without_softmax_dense_is_refused():
    import keras
    from keras import layers

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, layers.Dense(3, activation="sigmoid")(layers.Flatten()(inputs)))
    with pytest.raises(fd.UnsupportedLayerError, match="sigmoid"):
        fd.decompose(model, np.zeros((3, 4, 4, 1), np.float32), np.arange(3), progress=False)


@pytest.mark.parametrize("field, value, message", [
    ("classes", "0123", "manifest.classes should be a list"),
    ("graph", [{"name": "x"}], r"manifest.graph\[0\] has no 'kind'"),
    ("options", {"mask_at": "relu"}, "inconsistent.*options must have exactly the keys"),
    ("masks", [{"layer": 3, "shape": [1]}], r"manifest.masks\[0\].layer should be str"),
])
def test_a_manifest_field_of_the_wrong_shape_is_refused_by_name(modules, tmp_path, field, value, message):
    path = fd.save(modules, tmp_path / "mods")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        fd.load_modules(path)
    manifest["checksum"] = fd.saving.manifest_checksum(manifest)  # a crafted file, sealed again
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=message):
        fd.load_modules(path)


def reseal(path, arrays=None, **changes):
    """Rewrite a saved module set with ``arrays`` and manifest ``changes``, its checksums recomputed."""
    manifest = json.loads((path / "manifest.json").read_text())
    if arrays is not None:
        np.savez(path / "arrays.npz", **arrays)
        manifest["sha256"]["arrays.npz"] = fd.saving._sha256(path / "arrays.npz")
    manifest.update(changes)
    manifest["checksum"] = fd.saving.manifest_checksum(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_crafted_saves_with_valid_checksums_are_refused_before_any_kernel_runs(modules, tmp_path):
    """Shapes, strides, classes and indices that do not fit are caught by the loader, naming them."""
    original = fd.save(modules, tmp_path / "original")
    with np.load(original / "arrays.npz") as npz:
        arrays = dict(npz)
    manifest = json.loads((original / "manifest.json").read_text())
    conv = next(i for i, g in enumerate(manifest["graph"]) if g["kind"] == "conv2d")
    dense = next(i for i, g in enumerate(manifest["graph"]) if g["name"] == manifest["graph"][-1]["inputs"][0])
    graph_with = lambda i, **fields: [dict(g, **fields) if j == i else g for j, g in enumerate(manifest["graph"])]
    config = manifest["graph"][conv]["config"]
    cases = [
        ({f"w{conv}_kernel": np.zeros((3, 3, 1, 4096), np.float32)}, {}, "kernel|bias"),
        ({f"w{dense}_kernel": np.zeros((8, 200000), np.float32)}, {}, "kernel"),
        ({f"w{conv}_kernel": np.zeros((3, 3, 2, 16), np.float32)}, {}, "kernel"),
        ({f"w{conv}_kernel": arrays[f"w{conv}_kernel"].astype(np.float64)}, {}, "float32"),
        ({}, {"graph": graph_with(conv, shape=[16, 16, 4096])}, "shape"),
        ({}, {"graph": graph_with(conv, config=dict(config, strides=[0, 1]))}, "strides"),
        ({}, {"graph": graph_with(conv, config=dict(config, pads=[-40, 0, 0, 0]))}, "pads"),
        ({}, {"classes": [-1, 1, 2, 3]}, "classes"),
        ({}, {"classes": [0, 0, 2, 3]}, "classes"),
        ({}, {"masks": []}, "mask points"),
        ({"concerned0": np.array([10 ** 9])}, {}, "concerned0"),
        ({"mask0": arrays["mask0"][:, :3]}, {}, "mask0"),
    ]
    for number, (changed_arrays, changed_manifest, message) in enumerate(cases):
        path = tmp_path / f"case{number}"
        fd.save(modules, path)
        reseal(path, dict(arrays, **changed_arrays) if changed_arrays else None, **changed_manifest)
        with pytest.raises(ModelFileError, match=message):
            fd.load_modules(path)


def test_values_that_overflow_are_an_error_naming_images_and_layer(resnet_case):
    model, x, y = resnet_case
    huge = x.copy()
    huge[5] = 3e38  # finite pixels, infinite activations
    with pytest.raises(InputError, match=r"images \[5\] overflow to NaN or inf from layer '.*' on"):
        fd.decompose(model, huge, y, progress=False)


def test_modules_that_never_saw_another_class_are_warned_about(resnet_case):
    model, x, y = resnet_case
    rows = y == 1
    with pytest.warns(UserWarning, match=r"classes \[1\] saw no input"):
        fd.decompose(model, x[rows], y[rows], classes=[1], progress=False)
