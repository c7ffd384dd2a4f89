"""Pruning and the metrics held to values computed by hand, on a model with non-zero biases whose head
removes whole channels (so pruning and channel counts have something to do)."""

import numpy as np
import pytest

import fastdecomp as fd

DELTA = 0.05
REMOVED = {0: [0, 2, 5], 1: [1, 3], 2: []}  # the last convolution's channels each module's head removes


@pytest.fixture(scope="module")
def gap_case():
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=7)
    bias = keras.initializers.RandomNormal(0.05, 0.2, seed=8)
    inputs = keras.Input((9, 9, 2))
    x = layers.Conv2D(6, 3, activation="relu", kernel_initializer=init, bias_initializer=bias, name="c1")(inputs)
    x = layers.Conv2D(8, 3, activation="relu", kernel_initializer=init, bias_initializer=bias, name="c2")(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="output")(
        layers.GlobalAveragePooling2D(name="gap")(x)))
    c1_kernel, c1_bias = model.get_layer("c1").get_weights()
    c1_bias[3] = -50.0  # never active: concern identification removes the channel, and pruning drops it
    model.get_layer("c1").set_weights([c1_kernel, c1_bias])
    kernel = np.full((8, 3), -1.0, np.float32)
    for k, channels in REMOVED.items():
        kernel[channels, k] = 0.1
    kernel += np.random.default_rng(0).normal(0, 0.01, kernel.shape).astype(np.float32)
    model.get_layer("output").set_weights([kernel, np.zeros(3, np.float32)])
    x = np.random.default_rng(2).normal(0.2, 1.0, (30, 9, 9, 2)).astype(np.float32)
    return fd.from_keras(model), x, np.arange(30) % 3


def masked_channels(network, masks, name, channels):
    """``masks`` with some channels of a mask point removed at every position."""
    masks = {n: m.copy() for n, m in masks.items()}
    masks[name][..., channels] = False
    return masks


@pytest.mark.parametrize("mask_at, point", [("relu", "c1/relu"), ("conv", "c1")])
def test_a_pruned_module_equals_the_masked_one_on_every_output(gap_case, mask_at, point):
    network, x, y = gap_case
    modules = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bi", delta=DELTA, concerned="all",
                           progress=False)
    bias = network.by_name["c1"].weights["bias"]
    positive = list(np.flatnonzero(bias > 0)[:2])
    assert positive, "the fixture needs positive biases, or a kept bias would pass unseen"
    masks = masked_channels(network, modules.masks(0, names="network"), point, positive)
    head = modules.head(0)
    expected = network.forward(x, masks=masks, head=head)
    for drop in (False, True):
        pruned = fd.pruning.prune(network, masks, head, drop_channels=drop)
        np.testing.assert_allclose(pruned.predict_proba(x), expected, atol=1e-6, rtol=0)
        c1 = next(layer for layer in pruned.layers if layer.name == "c1")
        dead = positive + [3]  # channel 3 never activates: concern identification removed it already
        if drop:
            assert c1.weights["bias"].shape == (6 - len(dead),)
        else:
            assert (c1.weights["bias"][dead] == 0).all() and (c1.weights["kernel"][..., dead] == 0).all()
            kept = np.setdiff1d(np.arange(6), dead)
            np.testing.assert_array_equal(c1.weights["bias"][kept], bias[kept])


def test_sizes_count_what_the_masks_keep(gap_case):
    network, x, y = gap_case
    modules = fd.decompose(network, x, y, mask_at="conv", backtrack="bln", delta=DELTA, concerned="all",
                           progress=False)
    for k, removed in REMOVED.items():
        masks = modules.masks(k, names="network")
        kept_c2 = 8 - len(removed)
        assert not masks["c2"][..., removed].any() and masks["c2"].reshape(-1, 8).any(axis=0).sum() == kept_c2
        kept_c1 = int(masks["c1"].reshape(-1, 6).any(axis=0).sum())
        assert kept_c1 == 5 and not masks["c1"][..., 3].any()
        got = fd.metrics.sizes(modules, k)
        assert got["kept_nodes"] == int(masks["c1"].sum() + masks["c2"].sum())
        assert got["nodes"] == 7 * 7 * 6 + 5 * 5 * 8
        assert got["channels"] == 14 and got["kept_channels"] == kept_c1 + kept_c2
        # c1's dead channels are dropped (and c2's inputs with them); c2's stay, zeroed: the global pooling and
        # the head after it do not drop channels
        assert got["parameters"] == (3 * 3 * 2 * kept_c1 + kept_c1) + (3 * 3 * kept_c1 * 8 + 8) + (8 * 2 + 2)
        assert got["model_parameters"] == (3 * 3 * 2 * 6 + 6) + (3 * 3 * 6 * 8 + 8) + (8 * 3 + 3)


def test_both_jaccard_indices_equal_their_definitions(gap_case):
    network, x, y = gap_case
    modules = fd.decompose(network, x, y, mask_at="conv", backtrack="bln", delta=DELTA, concerned="all",
                           progress=False)
    for k, removed in REMOVED.items():
        masks = modules.masks(k)
        assert fd.metrics.jaccard(modules, k) == pytest.approx(
            sum(int(m.sum()) for m in masks.values()) / (7 * 7 * 6 + 5 * 5 * 8))
        # the authors' definition: value sets of the model's weights and of the module's (removed channels
        # zeroed, the head channeled), intersection over union
        model = {float(v) for layer in network.layers for w in layer.weights.values() for v in w.ravel()}
        c1 = {key: w.copy() for key, w in network.by_name["c1"].weights.items()}
        c1["kernel"][..., 3], c1["bias"][3] = 0.0, 0.0  # the channel concern identification removed
        c2 = {key: w.copy() for key, w in network.by_name["c2"].weights.items()}
        c2["kernel"][..., removed], c2["bias"][removed] = 0.0, 0.0
        head_kernel, head_bias = modules.head(k)
        module = {float(v) for w in (*c1.values(), *c2.values(), head_kernel, head_bias) for v in w.ravel()}
        expected = len(model & module) / len(model | module)
        assert fd.metrics.jaccard(modules, k, "weights") == pytest.approx(expected, rel=1e-12)
