"""Real-world Keras architectures: the layer kinds of mobile, dense and inception networks, nested
models, the Keras and TensorFlow tutorials' classifiers and keras.applications, each against Keras
and, where it is small enough, against the literal oracle."""

import numpy as np
import pytest

import fastdecomp as fd
from conftest import balance_output_bias, labelled_like_model, randomise_biases, randomise_normalisation
from reference import reference_decompose
from test_invariants import DELTA, PLACEMENTS, VARIANTS, assert_same_masks

NEW_KINDS = {"affine", "rescale", "grouped_conv2d", "separable_conv2d", "concat", "crop", "upsample", "gmp",
             "scaled_add"}


def kinds_model(seed=1):
    """Every kind a mobile, dense or inception network adds, with random biases and statistics.

    Two branches meet in a concatenation. The output layer is planted so that
    MC-BLN removes, per module, a whole branch (0 and 1) or part of one (2 and
    3), and MC-BI has dead nodes to carry back through every kind.
    """
    import keras
    from keras import layers
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    init = keras.initializers.HeNormal(seed=seed)
    conv = dict(kernel_initializer=init, bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=seed))
    separable = dict(depthwise_initializer=init, pointwise_initializer=init, bias_initializer=conv["bias_initializer"])
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(0.5, offset=-0.25, name="scale")(inputs)
    x = layers.BatchNormalization(name="bn_in")(x)  # at the input: an affine layer
    a = layers.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu", name="dil", **conv)(x)
    x = layers.Conv2D(8, 3, padding="same", name="c1", **conv)(x)
    x = layers.BatchNormalization(name="bn1")(x)  # folded into c1
    x = layers.ReLU(6.0, name="r1")(x)
    x = layers.BatchNormalization(name="bn_after_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw",
                               depthwise_initializer=init, bias_initializer=conv["bias_initializer"])(x)
    x = layers.BatchNormalization(name="bn_dw")(x)  # folded into the depthwise convolution
    x = layers.ReLU(name="r_dw")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", dilation_rate=2, activation="relu", name="sep", **separable)(x)
    x = layers.SeparableConv2D(8, 3, strides=2, padding="same", depth_multiplier=2, name="sep2", **separable)(x)
    x = layers.BatchNormalization(name="bn_sep2")(x)
    x = layers.ReLU(name="r_sep2")(x)
    x = layers.UpSampling2D(2, name="up")(x)
    g = layers.Conv2D(8, 3, padding="same", groups=4, activation="relu", name="grp", **conv)(x)
    g = CustomScaleLayer(0.3, name="residual")([x, g])  # Inception-ResNet's scaled residual sum
    c = layers.Concatenate(name="cat")([g, a])
    c = layers.Cropping2D(((1, 0), (0, 2)), name="crop")(c)
    v = layers.GlobalMaxPooling2D(name="gmp")(layers.MaxPooling2D(2, name="pool")(c))
    outputs = layers.Dense(4, activation="softmax", name="output")(v)
    model = keras.Model(inputs, outputs, name="kinds")
    randomise_normalisation(model, seed)
    kernel = np.random.default_rng(seed).normal(0, 0.02, (16, 4))
    for rows, classes in ((range(0, 2), (0, 2)), (range(2, 8), (0,)), (range(8, 9), (1, 3)), (range(9, 16), (1,))):
        for row in rows:
            kernel[row] = [0.5 if k in classes else -0.5 for k in range(4)]
    model.get_layer("output").set_weights([kernel.astype(np.float32), np.zeros(4, np.float32)])
    return model


@pytest.fixture(scope="module")
def kinds_case():
    model = kinds_model()
    x = np.random.default_rng(3).normal(size=(36, 8, 8, 3)).astype(np.float32) * 2
    balance_output_bias(model, x)
    return model, fd.from_keras(model), x, labelled_like_model(model, x)


def test_the_fixture_has_every_new_kind_and_folds_where_exact(kinds_case):
    _, network, _, _ = kinds_case
    kinds = {layer.name: layer.kind for layer in network.layers}
    assert NEW_KINDS <= set(kinds.values())
    assert {"bn1", "bn_dw", "bn_sep2"}.isdisjoint(kinds)  # folded
    assert kinds["bn_in"] == kinds["bn_after_relu"] == "affine"
    assert kinds["dil"] == kinds["grp"] == kinds["dw"] == "grouped_conv2d"


def test_engine_matches_keras(kinds_case):
    model, network, x, _ = kinds_case
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_masks_equal_the_reference(kinds_case, mask_at):
    _, network, x, y = kinds_case
    for backtrack in VARIANTS:
        fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack=backtrack, delta=DELTA, batch_size=7, seed=5,
                            progress=False)
        for k in fast.classes:
            expected = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack=backtrack, delta=DELTA,
                                           seed=5)
            assert_same_masks(fast, k, *expected)


def test_bi_removes_nodes_behind_the_new_kinds_and_changes_no_output(kinds_case):
    _, network, x, y = kinds_case
    bln = fd.decompose(network, x, y, backtrack="bln", delta=DELTA, seed=5, progress=False)
    bi = bln.variant("bi")
    removed = {(k, name): int((bln.masks(k, names="network")[name] & ~bi.masks(k, names="network")[name]).sum())
               for k in bi.classes for name in ("r1", "r_dw", "sep/relu", "r_sep2", "dil/relu")}
    for name in ("r1", "r_dw", "sep/relu", "r_sep2"):  # behind up, grp, sep2, sep, dw, the affine layer
        assert removed[0, name], f"MC-BI must reach {name} in module 0: {removed}"
    assert not bi.masks(1, names="network")["dil/relu"].any() and not removed[1, "r1"]  # the other branch only
    assert 0 < removed[2, "r_sep2"] < removed[0, "r_sep2"]  # one group of grp: two channels
    for k in bi.classes:
        np.testing.assert_allclose(bi.module(k).predict_proba(x), bln.module(k).predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_export_and_physical_pruning_agree_with_the_engine(kinds_case, mask_at):
    _, network, x, y = kinds_case
    modules = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bi", delta=DELTA, seed=5, progress=False)
    k = modules.classes[1]
    masks = {name: mask.copy() for name, mask in modules.masks(k, names="network").items()}
    owner = "sep/relu" if mask_at == "relu" else "sep"
    masks[owner][..., [1, 4]] = False  # two channels removed everywhere: dropped from sep and from sep2's input
    masked = network.forward(x, masks=masks, head=modules.head(k))
    pruned = fd.pruning.prune(network, masks, modules.head(k))
    layers = {layer.name: layer for layer in pruned.layers}
    kept = int(masks[owner].reshape(-1, 8).any(axis=0).sum())
    assert layers["sep"].weights["kernel"].shape[-1] == kept <= 6
    assert layers["sep2"].weights["depthwise"].shape[-1] == 2 * kept  # its depth_multiplier is 2
    assert layers["sep2"].weights["kernel"].shape[2] == layers["sep2"].weights["depthwise"].shape[-1]
    np.testing.assert_allclose(pruned.predict_proba(x), masked, atol=1e-6)
    np.testing.assert_allclose(fd.keras_io.to_keras(pruned).predict(x, verbose=0), masked, atol=2e-6)
    np.testing.assert_allclose(modules.to_keras(k).predict(x, verbose=0), modules.module(k).predict_proba(x),
                               atol=2e-6)


def test_a_saved_module_set_with_the_new_kinds_loads(kinds_case, tmp_path):
    _, network, x, y = kinds_case
    modules = fd.decompose(network, x, y, backtrack="bi", delta=DELTA, seed=5, progress=False)
    fd.save(modules, tmp_path / "set")
    loaded = fd.load(tmp_path / "set")
    np.testing.assert_array_equal(loaded.predict_proba(x), modules.predict_proba(x))


def dilated_model():
    """A dilated depthwise convolution read by a Flatten head, planted so that MC-BLN removes the
    features of every even row (module 0) and of every even column (module 1): dead nodes that vary
    across positions, which only a window that skips rows and columns carries back correctly."""
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=3)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", activation="relu", kernel_initializer=init,
                      bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=3), name="c1")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="relu", depthwise_initializer=init,
                               bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=4), name="dwd")(x)
    outputs = layers.Dense(4, activation="softmax", name="output")(layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, outputs, name="dilated")
    kernel = np.random.default_rng(3).normal(0, 0.02, (6, 6, 3, 4))
    kernel[0::2, :, :, :] = [0.5, -0.5, -0.5, -0.5]
    kernel[:, 0::2, :, :] = [-0.5, 0.5, -0.5, -0.5]
    kernel[0::2, 0::2, :, :] = [0.5, 0.5, -0.5, -0.5]
    model.get_layer("output").set_weights([kernel.reshape(-1, 4).astype(np.float32), np.zeros(4, np.float32)])
    return model


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_a_dilated_window_carries_dead_rows_back_as_it_reads_them(mask_at):
    model = dilated_model()
    x = np.random.default_rng(8).normal(size=(30, 6, 6, 2)).astype(np.float32)
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    network = fd.from_keras(model)
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-6)
    fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bi", delta=DELTA, seed=5, progress=False)
    for k in fast.classes:
        assert_same_masks(fast, k, *reference_decompose(network, x, y, k, mask_at=mask_at, backtrack="bi",
                                                        delta=DELTA, seed=5))
    if mask_at == "relu":
        kept = fast.masks(0, names="network")["c1/relu"]
        assert not kept[0::2].any() and kept[1::2].any()  # even rows read only even rows through the window


# ---------------------------------------------------------------- nested models and output heads


def small_base(name, seed=2):
    import keras
    from keras import layers

    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    return keras.Model(inputs, x, name=name)


def test_nested_models_are_flattened_into_one_graph():
    """The transfer-learning shape, with the tutorials' augmentation Sequential in front."""
    import keras
    from keras import layers

    base = small_base("base")
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1),
                                layers.RandomZoom(0.1)], name="augment")
    model = keras.Sequential([keras.Input((12, 12, 3)), augment, base, layers.GlobalAveragePooling2D(),
                              layers.Dense(3, activation="softmax", name="output")])
    randomise_normalisation(model)
    randomise_biases(model)
    x = np.random.default_rng(4).normal(size=(10, 12, 12, 3)).astype(np.float32)
    network = fd.from_keras(model)
    assert [layer.kind for layer in network.layers] == ["input", "conv2d", "relu", "maxpool", "gap", "dense",
                                                        "softmax"]
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-6)


def test_a_softmax_wrapped_around_a_logits_model_and_clashing_names():
    import keras
    from keras import layers

    inputs = keras.Input((12, 12, 3))
    first, second = small_base("first", 1), small_base("second", 2)  # both have layers named conv, bn, relu
    merged = layers.Add(name="merge")([first(inputs), second(inputs)])
    logits = layers.Dense(4, name="logits")(layers.Flatten(name="flat")(merged))
    model = keras.Sequential([keras.Model(inputs, logits, name="inner"), layers.Softmax(name="probabilities")])
    randomise_normalisation(model)
    randomise_biases(model)
    x = np.random.default_rng(5).normal(size=(10, 12, 12, 3)).astype(np.float32)
    network = fd.from_keras(model)
    names = {layer.name for layer in network.layers}
    assert {"conv", "second/conv"} <= names
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-6)


# ---------------------------------------------------------------- the tutorials


def mnist_convnet():
    """keras.io/examples/vision/mnist_convnet."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def tensorflow_tutorial(size=32, classes=5):
    """tensorflow.org/tutorials/images/classification, its final model (at a smaller size)."""
    import keras
    from keras import layers

    augmentation = keras.Sequential([keras.Input((size, size, 3)), layers.RandomFlip("horizontal"),
                                     layers.RandomRotation(0.1), layers.RandomZoom(0.1)])
    return keras.Sequential([
        keras.Input((size, size, 3)),
        augmentation,
        layers.Rescaling(1. / 255),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(classes, name="outputs"),
    ])


def from_scratch(size=32, widths=(16, 32, 48), last=64):
    """keras.io/examples/vision/image_classification_from_scratch (narrower): Rescaling, SeparableConv2D,
    residual blocks and a ``Dense(1)`` logit for two classes."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(size, size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for width in widths:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(width, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    x = layers.SeparableConv2D(last, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    return keras.Model(inputs, layers.Dense(1, activation=None)(x))


def keras_probabilities(model, x):
    """What the model's outputs mean as class probabilities (a softmax, logits, or one logit)."""
    out = model.predict(x, verbose=0).astype(np.float64)
    if out.shape[1] == 1:
        p = 1 / (1 + np.exp(-out))
        return np.concatenate([1 - p, p], axis=1)
    if np.allclose(out.sum(axis=1), 1, atol=1e-5) and (out >= 0).all():
        return out
    e = np.exp(out - out.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def assert_imports_decomposes_and_exports(model, x, scale=255.0):
    network = fd.from_keras(model)
    expected = keras_probabilities(model, x)
    np.testing.assert_allclose(network.predict_proba(x), expected, atol=1e-4)
    predicted = network.predict(x)
    y = predicted.copy()
    y[::5] = (y[::5] + 1) % expected.shape[1]
    recognised = sorted(set(y[y == predicted].tolist()))
    modules = fd.decompose(network, x, y, classes=recognised, backtrack="bi", delta=DELTA, seed=5, progress=False)
    k = modules.classes[0]
    np.testing.assert_allclose(modules.to_keras(k).predict(x, verbose=0), modules.module(k).predict_proba(x),
                               atol=1e-5)
    return network, modules


@pytest.mark.parametrize("build, shape", [(mnist_convnet, (28, 28, 1)), (tensorflow_tutorial, (32, 32, 3)),
                                          (from_scratch, (32, 32, 3))])
def test_the_tutorials_import_decompose_and_export(build, shape):
    model = build()
    randomise_normalisation(model)
    randomise_biases(model, scale=0.05)
    x = np.random.default_rng(6).uniform(0, 255, size=(24,) + shape).astype(np.float32)
    if shape[-1] == 1:
        x /= 255.0
    balance_output_bias(model, x)
    network, _ = assert_imports_decomposes_and_exports(model, x)
    if build is from_scratch:
        assert network.num_classes == 2


# ---------------------------------------------------------------- keras.applications


def test_mobilenet_v2_imports_decomposes_prunes_and_exports():
    import keras

    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    randomise_normalisation(model)
    x = np.random.default_rng(7).uniform(-1, 1, size=(30, 32, 32, 3)).astype(np.float32)
    balance_output_bias(model, x)
    network, modules = assert_imports_decomposes_and_exports(model, x)
    k = modules.classes[0]
    masked = network.forward(x, masks=modules.masks(k, names="network"), head=modules.head(k))
    np.testing.assert_allclose(fd.pruning.prune(network, modules.masks(k, names="network"),
                                                modules.head(k)).predict_proba(x), masked, atol=1e-6)


# ---------------------------------------------------------------- refusals


def test_a_variable_size_input_is_refused_with_the_fix():
    import keras
    from keras import layers

    inputs = keras.Input((None, None, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="variable-size.*input_shape"):
        fd.from_keras(model)


def test_a_reshape_that_only_flattens_is_a_flatten_and_any_other_is_refused():
    import keras
    from keras import layers

    inputs = keras.Input((4, 4, 2))
    x = layers.Conv2D(3, 3, activation="relu")(inputs)
    ok = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.Reshape((12,))(x)))
    assert "flatten" in [layer.kind for layer in fd.from_keras(ok).layers]
    bad = layers.Flatten()(layers.Reshape((2, 6), name="fold")(x))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="'fold'.*flattens"):
        fd.from_keras(keras.Model(inputs, layers.Dense(2, activation="softmax")(bad)))


def test_a_reshape_of_a_vector_into_a_map_is_refused_not_passed_through():
    import keras
    from keras import layers

    inputs = keras.Input((4, 4, 2))
    vector = layers.Dense(64, activation="relu")(layers.Flatten()(inputs))
    as_map = layers.Reshape((4, 4, 4), name="unfold")(vector)
    x = layers.Concatenate()([as_map, layers.Conv2D(2, 1)(inputs)])
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="'unfold'.*flattens"):
        fd.from_keras(model)
    kept = layers.Reshape((1, 1, 64))(vector)
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.Reshape((-1,))(kept)))
    assert [layer.kind for layer in fd.from_keras(model).layers].count("flatten") == 1  # the reshapes pass it on


def test_a_squeeze_and_excitation_gate_is_refused_with_the_reason():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    gate = layers.Dense(4, activation="relu")(layers.GlobalAveragePooling2D(keepdims=True)(x))
    x = layers.Multiply(name="excite")([x, gate])
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="'excite' \\(Multiply\\).*gate.*exactly 0"):
        fd.from_keras(model)


def test_a_model_called_twice_is_refused_by_name():
    import keras
    from keras import layers

    inner_input = keras.Input((8, 8, 3))
    shared = keras.Model(inner_input, layers.Conv2D(4, 3, padding="same", activation="relu")(inner_input),
                         name="shared_base")
    inputs = keras.Input((8, 8, 3))
    x = layers.Add()([shared(inputs), shared(inputs)])
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.Flatten()(x)))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="'shared_base'.*more than once"):
        fd.from_keras(model)


def test_a_layer_whose_every_channel_is_removed_keeps_one_zeroed_channel(kinds_case):
    """Module 0 removes the whole first branch: pruning leaves one zeroed channel (no framework runs a
    layer of none), and Keras runs the module as the engine does."""
    _, network, x, y = kinds_case
    modules = fd.decompose(network, x, y, backtrack="bi", delta=DELTA, seed=5, progress=False)
    assert not modules.masks(0, names="network")["sep/relu"].any()
    pruned = {layer.name: layer for layer in modules.pruned(0).layers}
    assert pruned["sep"].weights["kernel"].shape[-1] == 1 and not pruned["sep"].weights["kernel"].any()
    np.testing.assert_allclose(modules.to_keras(0).predict(x, verbose=0), modules.module(0).predict_proba(x),
                               atol=2e-6)


@pytest.mark.parametrize("inline", [True, False])
def test_a_classifier_ending_in_a_relu_after_its_dense_layer_takes_the_dense_values_as_logits(inline):
    """Pretrained models ship with Dense(..., activation="relu") heads: the ReLU keeps the classes' order, so
    the Dense layer's values are the logits, with a warning; the network then decomposes as any other."""
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=3)
    inputs = keras.Input((6, 6, 2))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, activation="relu", kernel_initializer=init,
                                                      bias_initializer="random_normal")(inputs))
    logits = layers.Dense(4, kernel_initializer=init, bias_initializer="random_normal", name="head",
                          activation="relu" if inline else None)(x)
    model = keras.Model(inputs, logits if inline else layers.ReLU(name="head_relu")(logits))
    with pytest.warns(fd.layers.LogitsHeadWarning, match="taken as the logits"):
        network = fd.from_keras(model)
    images = np.random.default_rng(0).normal(size=(40, 6, 6, 2)).astype(np.float32)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    features = keras.Model(inputs, head.input).predict(images, verbose=0)
    np.testing.assert_allclose(network.forward(images, logits=True), features @ kernel + bias, rtol=1e-5, atol=1e-5)
    y = network.predict_proba(images).argmax(axis=1)
    modules = fd.decompose(network, images, y, classes=sorted(set(y.tolist())), concerned="all", progress=False)
    assert len(modules) == len(set(y.tolist()))
