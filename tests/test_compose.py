"""Composition: intra- and inter-dataset reuse, replacement, removal, module update."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.errors import InputError, ModelFileError

from conftest import balance_output_bias, labelled_like_model, small_resnet


@pytest.fixture(scope="module")
def two_sets(resnet_case):
    """Modules of two different models with the same input shape."""
    model, x, y = resnet_case
    first = fd.decompose(model, x, y, backtrack="bln", delta=0.05, progress=False)
    other = small_resnet(seed=11)
    balance_output_bias(other, x)
    second = fd.decompose(other, x, labelled_like_model(other, x), backtrack="bln", delta=0.05, progress=False)
    return first, second, x, y


def keras_margins(modules, k, x):
    """logit(concerned) - logit(unconcerned) of module k run as its exported Keras model."""
    import keras

    model = modules.to_keras(k)
    values = np.asarray(keras.Model(model.inputs[0], model.layers[-1].input)(x, training=False))
    return values[:, 0] - values[:, 1]


def test_whole_set_composition_equals_module_set(two_sets):
    first, _, x, y = two_sets
    composition = fd.compose(first)
    np.testing.assert_array_equal(composition.predict_proba(x), first.predict_proba(x)[:, :, 0])
    scores = first.predict_proba(x, logits=True)
    margins = scores[:, :, 0] - scores[:, :, 1]
    assert composition.evaluate(x, y)["top1"] == np.mean(np.array(first.classes)[margins.argmax(axis=1)] == y)


def test_intra_dataset_reuse_votes_among_chosen_classes(two_sets):
    first, _, x, y = two_sets
    pair = fd.compose(first.module(1), first.module(3))
    assert pair.labels == [1, 3]
    scores = pair.predict_proba(x)
    np.testing.assert_array_equal(scores, first.predict_proba(x)[:, [1, 3], 0])
    margins = pair.decision_function(x)
    np.testing.assert_array_equal(np.argsort(margins, axis=1), np.argsort(scores, axis=1))  # same ranking
    np.testing.assert_array_equal(pair.predict(x), np.array([1, 3])[margins.argmax(axis=1)])
    keras = np.stack([keras_margins(first, k, x) for k in (1, 3)], axis=1)
    np.testing.assert_allclose(margins, keras, rtol=1e-4, atol=1e-4)
    result = pair.evaluate(x, y)
    assert result["num_images"] == np.isin(y, [1, 3]).sum() and result["top5"] == 1.0


def test_inter_dataset_reuse_relabels(two_sets):
    first, second, x, _ = two_sets
    mixed = fd.compose(first.module(0), second.module(0), labels=[0, 1])
    np.testing.assert_array_equal(mixed.predict_proba(x)[:, 1], second.predict_proba(x)[:, 0, 0])
    with pytest.raises(InputError, match="labels must all differ"):
        fd.compose(first.module(0), second.module(0))


def test_replace_and_remove(two_sets):
    first, second, x, _ = two_sets
    composition = fd.compose(first)
    replaced = composition.replace(2, second.module(2))
    np.testing.assert_array_equal(replaced.predict_proba(x)[:, 2], second.predict_proba(x)[:, 2, 0])
    np.testing.assert_array_equal(replaced.predict_proba(x)[:, [0, 1, 3]], first.predict_proba(x)[:, [0, 1, 3], 0])
    removed = composition.remove(2)
    assert removed.labels == [0, 1, 3]
    with pytest.raises(InputError, match="no module answers to label 9"):
        composition.remove(9)


def test_different_input_shapes_are_refused(two_sets, sequential_case):
    first, _, _, _ = two_sets
    model, x, y = sequential_case
    other = fd.decompose(model, x, y, progress=False)
    with pytest.raises(InputError, match="different input shapes"):
        fd.compose(first.module(0), other.module(0), labels=[0, 1])


def test_module_update_brings_back_nodes_of_new_classes(two_sets):
    first, second, x, y = two_sets
    fresh = np.random.default_rng(7).random((12, 8, 8, 1), dtype=np.float32)
    updated = first.updated(0, fresh)
    network = first.network
    for name, mask in updated.masks(0, names="network").items():
        before = first.masks(0, names="network")[name]
        assert (mask >= before).all()
    for other in (1, 2, 3):  # the other modules did not change
        for name, mask in updated.masks(other, names="network").items():
            np.testing.assert_array_equal(mask, first.masks(other, names="network")[name])
    active = {}
    network.forward(fresh, observe=lambda layer, v: active.__setitem__(layer.name, (v > 0).any(0)),
                    mask_at=first.options.mask_at)
    dead_after_backtracking = {n: ~m for n, m in updated.variant(None).masks(0, names="network").items()}
    for name, a in active.items():
        assert not (a & dead_after_backtracking[name]).any()


def test_module_update_remove_drops_nodes_only_new_classes_use(two_sets, tmp_path):
    """mode='remove': nodes active for the new images and for no concerned input leave module 0."""
    first, _, x, _ = two_sets
    fresh = np.random.default_rng(8).random((12, 8, 8, 1), dtype=np.float32)
    network, mask_at = first.network, first.options.mask_at
    new, concerned = {}, {}
    network.forward(fresh, observe=lambda layer, v: new.__setitem__(layer.name, (v > 0).any(0)), mask_at=mask_at)
    inputs = x[first.sample_indices(0)[0]]
    network.forward(inputs, observe=lambda layer, v: concerned.__setitem__(layer.name, (v > 0).any(0)),
                    mask_at=mask_at)
    reloaded = fd.load_modules(fd.save(first, tmp_path / "m"))
    for modules in (first, reloaded):
        updated = modules.updated(0, fresh, mode="remove").variant(None)
        removed_somewhere = False
        for name, mask in updated.masks(0, names="network").items():
            before = first.variant(None).masks(0, names="network")[name]
            expected = before & ~(new[name] & ~concerned[name])
            np.testing.assert_array_equal(mask, expected)
            removed_somewhere |= bool((before & ~expected).any())
        assert removed_somewhere, "the test images should make the update remove something"
    with pytest.raises(InputError, match="mode must be"):
        first.updated(0, fresh, mode="retrain")


def test_save_and_load(two_sets, tmp_path):
    first, second, x, _ = two_sets
    mixed = fd.compose(first.module(0), second.module(0), first.module(2), labels=[5, 6, 7])
    fd.save(mixed, tmp_path / "c")
    loaded = fd.load_composition(tmp_path / "c")
    assert loaded.labels == [5, 6, 7]
    np.testing.assert_allclose(loaded.predict_proba(x), mixed.predict_proba(x), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["composition.json", "set0", "set1"]
    (tmp_path / "c" / "composition.json").write_text("{}")
    with pytest.raises(ModelFileError):
        fd.load_composition(tmp_path / "c")


def test_compose_refuses_other_things():
    with pytest.raises(InputError, match="cannot compose"):
        fd.compose("module 3")


@pytest.mark.parametrize("backend", ["cpu", "emulated-cuda"])
def test_modules_run_together_equal_modules_run_alone(two_sets, backend):
    """forward_many shares layers while masks agree; every module's output stays bit-identical."""
    first, second, x, _ = two_sets
    together = first.predict_proba(x, batch_size=5, logits=True, backend=backend)
    for j, k in enumerate(first.classes):
        np.testing.assert_array_equal(together[:, j], first.module(k).predict_proba(x, batch_size=5, logits=True))
    mixed = fd.compose(first.module(0), second.module(1), first.module(2), labels=[0, 1, 2])
    scores = mixed.decision_function(x, backend=backend)
    for j, ref in enumerate(mixed.refs):
        np.testing.assert_array_equal(scores[:, j], ref.decision_function(x))


def test_forward_many_shares_layers_until_masks_differ(two_sets, monkeypatch):
    """Identical modules cost one pass; a module differing only at the head shares every other layer."""
    first, _, x, _ = two_sets
    network = first.network
    calls = []
    from fastdecomp import layers

    original = layers.Conv2DKind.forward

    def counting(self, layer, inputs, reusable=None, **options):
        calls.append(layer.name)
        return original(self, layer, inputs, reusable, **options)

    monkeypatch.setattr(layers.Conv2DKind, "forward", counting)
    masks, head = first.masks(0, names="network"), first.head(0)
    convs = sum(layer.kind == "conv2d" for layer in network.layers)
    outs = network.forward_many(x, [(masks, head)] * 3, logits=True)
    assert len(calls) == convs
    assert all(np.array_equal(o, outs[0]) for o in outs)
    calls.clear()
    network.forward_many(x, [(masks, head), (masks, first.head(1))], logits=True)
    assert len(calls) == convs


def test_a_composition_refuses_module_sets_swapped_after_saving(two_sets, tmp_path):
    import shutil

    first, second, _, _ = two_sets
    path = fd.save(fd.compose(first.module(0), second.module(1), labels=[0, 1]), tmp_path / "c")
    shutil.rmtree(path / "set1")
    shutil.copytree(path / "set0", path / "set1")  # a valid module set, but not the one saved
    with pytest.raises(ModelFileError, match="not the one the composition was saved with"):
        fd.load_composition(path)
