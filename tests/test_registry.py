"""A layer kind defined here, in the test file alone, goes through import, decompose, pruning and export.

If any fact about a kind lived outside its class (a list of kinds that pass
channels on, a kind compared by name in the engine or the importer), this
kind would be refused, run wrongly or stop pruning.
"""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import layers

from conftest import balance_output_bias, labelled_like_model


class Cropping2DKind(layers.LayerKind):
    """Keras ``Cropping2D``: drops rows and columns at the borders, channel by channel."""

    kind = "test-cropping"
    keras_classes = ("Cropping2D",)
    passes_channels = True
    config_keys = ("crops",)

    def from_keras(self, keras_layer, cfg, input_shapes, refuse):
        if cfg.get("data_format", "channels_last") != "channels_last":
            refuse("data_format='channels_first'; use channels_last")
        (top, bottom), (left, right) = cfg["cropping"]
        return {"crops": (top, bottom, left, right)}, {}, None

    def output_shape(self, config, weights, input_shapes):
        top, bottom, left, right = config["crops"]
        h, w, c = input_shapes[0]
        return (h - top - bottom, w - left - right, c)

    def forward(self, layer, inputs, reusable=None, *, backend):
        top, _, left, _ = layer.config["crops"]
        h, w, _ = layer.shape
        return backend.xp.ascontiguousarray(inputs[0][:, top:top + h, left:left + w, :])

    def dead_inputs(self, layer, dead_out, input_shapes, through_conv):
        top, _, left, _ = layer.config["crops"]
        h, w, _ = layer.shape
        dead_in = np.zeros((dead_out.shape[0],) + tuple(input_shapes[0]), dtype=bool)
        dead_in[:, top:top + h, left:left + w, :] = dead_out  # cropped positions feed no one, but stay
        return [dead_in]

    def to_keras(self, layer, name):
        from keras import layers as keras_layers

        top, bottom, left, right = layer.config["crops"]
        return keras_layers.Cropping2D(((top, bottom), (left, right)), name=name)


@pytest.fixture
def registry(monkeypatch):
    """The registry, changed for one test only."""
    monkeypatch.setattr(layers, "KINDS", dict(layers.KINDS))
    monkeypatch.setattr(layers, "KERAS_CLASSES", dict(layers.KERAS_CLASSES))
    monkeypatch.setattr(layers, "ONNX_OPS", dict(layers.ONNX_OPS))
    from fastdecomp import keras_io

    monkeypatch.setattr(keras_io, "KINDS", layers.KINDS)
    monkeypatch.setattr(keras_io, "KERAS_CLASSES", layers.KERAS_CLASSES)
    return layers


@pytest.fixture
def cropping_kind(registry):
    """This file's kind, in place of the library's own for ``Cropping2D`` (refused without ``replace=True``)."""
    with pytest.raises(fd.errors.InputError, match="registered already.*replace=True"):
        registry.register(Cropping2DKind)
    registry.register(Cropping2DKind, replace=True)
    return Cropping2DKind


def cropping_model():
    import keras
    from keras import layers as kl

    init = keras.initializers.HeNormal(seed=5)
    inputs = keras.Input((12, 12, 2))
    x = kl.Conv2D(8, 3, padding="same", kernel_initializer=init, bias_initializer="random_normal", name="c1")(inputs)
    x = kl.Cropping2D(((1, 2), (2, 1)), name="crop")(x)
    x = kl.ReLU(name="r1")(x)
    x = kl.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init,
                  bias_initializer="random_normal", name="c2")(x)
    x = kl.GlobalAveragePooling2D(name="gap")(x)
    outputs = kl.Dense(3, activation="softmax", kernel_initializer=init, name="output")(x)
    return keras.Model(inputs, outputs, name="cropping")


def test_a_kind_defined_outside_the_library_imports_decomposes_prunes_and_exports(cropping_kind):
    model = cropping_model()
    x = np.random.default_rng(3).random((60, 12, 12, 2), dtype=np.float32)
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    network = fd.from_keras(model)
    assert network.by_name["crop"].kind == "test-cropping"
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-5)

    modules = fd.decompose(network, x, y, mask_at="relu", backtrack="bi", delta=0.05, progress=False)
    k = modules.classes[0]
    masks = {name: mask.copy() for name, mask in modules.masks(k, names="network").items()}
    masks["r1"][..., [1, 6]] = False  # two channels removed everywhere after the crop
    pruned = fd.pruning.prune(network, masks, modules.head(k))
    kept = {l.name: l for l in pruned.layers}
    channels = int(masks["r1"].reshape(-1, 8).any(axis=0).sum())  # 6, or fewer where the module removed more
    assert channels <= 6
    assert kept["c1"].weights["kernel"].shape[-1] == channels  # dropped through the new kind, which passes them on
    assert kept["crop"].shape[-1] == channels and kept["c2"].weights["kernel"].shape[2] == channels
    full = network.forward(x, masks=masks, head=modules.head(k))
    np.testing.assert_allclose(pruned.predict_proba(x), full, atol=1e-6)
    exported = fd.keras_io.to_keras(pruned)
    np.testing.assert_allclose(exported.predict(x, verbose=0), full, atol=2e-6)
    assert exported.get_layer("crop").cropping == ((1, 2), (2, 1))


def test_without_a_kind_for_its_class_the_layer_is_refused_by_name(registry):
    del registry.KERAS_CLASSES["Cropping2D"]
    with pytest.raises(fd.UnsupportedLayerError, match="'crop' \\(Cropping2D\\)"):
        fd.from_keras(cropping_model())


class CountingReLUKind(layers.ReLUKind):
    """A ReLU that reads ONNX's ``Relu`` and counts the nodes it read (no Keras class)."""

    kind = "test-counting-relu"
    keras_classes = ()
    onnx_reads = ("Relu",)
    read = []

    def from_onnx(self, reader, node, name, attributes):
        CountingReLUKind.read.append(name)
        super().from_onnx(reader, node, name, attributes)


def test_an_onnx_operator_goes_to_the_kind_registered_for_it(registry):
    """The ONNX reader names no kind: a kind registered here for ``Relu`` reads every Relu node, and the
    network it builds computes what ONNX Runtime does."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from test_onnx import resnet18_style

    with pytest.raises(fd.errors.InputError, match=r"\['Relu'\] are registered already"):
        registry.register(CountingReLUKind)
    registry.register(CountingReLUKind, replace=True)
    CountingReLUKind.read.clear()
    model = resnet18_style()
    network = fd.from_onnx(model)
    relus = [node.name for node in model.graph.node if node.op_type == "Relu"]
    assert CountingReLUKind.read == relus and len(relus) > 2
    assert sum(layer.kind == CountingReLUKind.kind for layer in network.layers) == len(relus)
    x = np.random.default_rng(0).random((4,) + network.input_shape, dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(network.forward(x, logits=True), expected, rtol=1e-5, atol=1e-5)
