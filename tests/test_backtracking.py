"""Backtracking where every rule bites: a model whose head removes, for each module, every channel outside
a rectangle of the last map, so MC-BI walks dead regions back through strided and padded convolutions,
asymmetric padding, pooling of each kind with a stride other than its size, a depthwise convolution, a
node read by two layers, Add, Concatenate, cropping, upsampling and Flatten, and their borders decide
every mask. Held to the oracle bit for bit, and to invariant 3 (what MC-BI removes changes no output)."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.backtrack import bln_removed_features, channel_head

from reference import reference_decompose
from test_invariants import assert_same_masks

DELTA = 0.05
CLASSES = 4


def feature_model(seed=11):
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=seed)
    conv = dict(kernel_initializer=init, bias_initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=seed))
    inputs = keras.Input((22, 22, 2))
    x = layers.Conv2D(4, 3, activation="relu", name="c0", **conv)(inputs)                 # 20x20
    x = layers.ZeroPadding2D(((2, 0), (1, 2)), name="pad")(x)                             # 22x23
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1", **conv)(x)  # 11x12, pads 0/1
    a = layers.Conv2D(6, 3, padding="same", activation="relu", name="c2a", **conv)(x)      # x read twice
    b = layers.Conv2D(6, 1, name="c2b", **conv)(x)
    x = layers.ReLU(name="r2")(layers.Add(name="add")([a, b]))
    x = layers.MaxPooling2D(3, strides=1, padding="same", name="max")(x)                  # 11x12
    x = layers.AveragePooling2D(3, strides=2, name="avg")(x)                               # 5x5
    x = layers.UpSampling2D(2, name="up")(x)                                               # 10x10
    d = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw", **{
        "depthwise_initializer": init, "bias_initializer": conv["bias_initializer"]})(x)
    e = layers.Conv2D(3, 1, activation="relu", name="c3", **conv)(x)
    x = layers.Concatenate(name="cat")([d, e])                                             # 10x10x9
    x = layers.Cropping2D(((1, 0), (0, 2)), name="crop")(x)                                # 9x8
    x = layers.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="c4", **conv)(x)  # 5x4, pads 1/1, 0/1
    outputs = layers.Dense(CLASSES, activation="softmax", name="output")(layers.Flatten(name="flat")(x))
    return keras.Model(inputs, outputs)


def crafted_head(model, seed=0):
    """Output weights that, for module k, remove every channel outside a rectangle R_k of the last map (at
    DELTA): removed features get +0.1 for the classes removing them and -1 for the others, kept ones the
    reverse. Every position is kept by some module, so each module's removal differs."""
    rng = np.random.default_rng(seed)
    h, w, c = model.get_layer("c4").output.shape[1:]
    removed = np.ones((CLASSES, h, w, c), dtype=bool)
    for k in range(CLASSES):
        top, left = rng.integers(0, h - 1), rng.integers(0, w - 1)
        removed[k, top:top + rng.integers(1, h - top + 1), left:left + rng.integers(1, w - left + 1)] = False
    removed[np.broadcast_to(removed.all(axis=0), removed.shape)] = False  # none removed by every module
    kernel = np.where(removed.reshape(CLASSES, -1).T, 0.1, -1.0).astype(np.float32)
    kernel += rng.normal(0, 0.01, kernel.shape).astype(np.float32)
    model.get_layer("output").set_weights([kernel, np.zeros(CLASSES, np.float32)])
    return removed


@pytest.fixture(scope="module")
def bites_case():
    model = feature_model()
    removed = crafted_head(model)
    x = np.random.default_rng(5).normal(0.3, 1.0, (24, 22, 22, 2)).astype(np.float32)
    y = np.arange(len(x)) % CLASSES
    return fd.from_keras(model), x, y, removed


def test_the_head_removes_a_region_per_module_and_mc_bi_walks_it_back(bites_case):
    network, x, y, removed = bites_case
    kernel, bias = network.by_name["output"].weights["kernel"], network.by_name["output"].weights["bias"]
    for k in range(CLASSES):
        np.testing.assert_array_equal(bln_removed_features(channel_head(kernel, bias, k)[0], DELTA),
                                      removed[k].reshape(-1))
    bln = fd.decompose(network, x, y, mask_at="relu", backtrack="bln", delta=DELTA, concerned="all",
                       progress=False)
    bi = fd.decompose(network, x, y, mask_at="relu", backtrack="bi", delta=DELTA, concerned="all",
                      progress=False)
    for name in ("c0/relu", "c1/relu", "r2", "dw/relu", "c3/relu"):  # regions reach every layer, and stop at borders
        removed_here = [~bi.masks(k, names="network")[name] & bln.masks(k, names="network")[name]
                        for k in range(CLASSES)]
        assert any(r.any() for r in removed_here), name
        assert not all(r.all() for r in removed_here), name


@pytest.mark.parametrize("mask_at", ["relu", "conv"])
@pytest.mark.parametrize("backtrack", ["bln", "bi"])
def test_masks_equal_the_oracle_where_backtracking_bites(bites_case, mask_at, backtrack):
    network, x, y, _ = bites_case
    fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack=backtrack, delta=DELTA, concerned="all",
                        seed=2, batch_size=7, progress=False)
    for k in range(CLASSES):
        expected = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack=backtrack, delta=DELTA,
                                       concerned="all", seed=2)
        assert_same_masks(fast, k, *expected)


@pytest.mark.parametrize("mask_at", ["relu", "conv"])
def test_what_mc_bi_removes_changes_no_output_where_it_bites(bites_case, mask_at):
    """Invariant 3, on many removed nodes."""
    network, x, y, _ = bites_case
    options = dict(mask_at=mask_at, delta=DELTA, concerned="all", progress=False)
    bln, bi = fd.decompose(network, x, y, backtrack="bln", **options), fd.decompose(network, x, y, backtrack="bi",
                                                                                  **options)
    more = 0
    for k in range(CLASSES):
        more += fd.metrics.sizes(bln, k)["kept_nodes"] - fd.metrics.sizes(bi, k)["kept_nodes"]
        np.testing.assert_array_equal(bi.module(k).predict_proba(x), bln.module(k).predict_proba(x))
    assert more > 100


@pytest.mark.parametrize("backtrack", ["bln", "bi"])
def test_a_hidden_dense_input_dies_only_when_every_edge_does(backtrack):
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=3)
    inputs = keras.Input((6, 6, 1))
    x = layers.Flatten()(layers.Conv2D(2, 3, activation="relu", kernel_initializer=init, name="c")(inputs))
    hidden = layers.Dense(6, activation="relu", kernel_initializer=init, name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="output")(hidden))
    kernel = np.full((6, 3), -1.0, np.float32)
    kernel[:, 0] = 0.1  # module 0 removes every hidden unit: the whole map behind it dies
    kernel[:3, 1], kernel[3:, 1] = 0.1, -1.0  # module 1 removes half of them: nothing behind them dies
    model.get_layer("output").set_weights([kernel, np.zeros(3, np.float32)])
    x = np.random.default_rng(1).random((12, 6, 6, 1), dtype=np.float32)
    y = np.arange(12) % 3
    network = fd.from_keras(model)
    fast = fd.decompose(network, x, y, mask_at="relu", backtrack=backtrack, delta=DELTA, concerned="all",
                        progress=False)
    for k in range(3):
        assert_same_masks(fast, k, *reference_decompose(network, x, y, k, mask_at="relu", backtrack=backtrack,
                                                        delta=DELTA, concerned="all"))
    assert not fast.masks(0, names="network")["c/relu"].any()
    assert fast.masks(1, names="network")["c/relu"].any()


def test_bln_removes_a_feature_at_exactly_delta():
    delta = 0.125  # exact in binary, so a weight can sit on the boundary
    kernel = np.array([[0.125, -0.125, -0.125, -0.125], [0.125, -0.0625, -0.125, -0.125],
                       [-0.125, 0.125, 0.125, 0.125], [-0.125, 0.0625, 0.125, 0.125]], np.float32)
    head = channel_head(kernel, np.zeros(4, np.float32), 0)[0]
    np.testing.assert_array_equal(bln_removed_features(head, delta), [True, False, False, False])
    np.testing.assert_array_equal(bln_removed_features(head, delta, rule="prose"), [False, False, True, False])
