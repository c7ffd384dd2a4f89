"""ONNX out: modules and compositions run in ONNX Runtime as they run in the engine."""

import numpy as np
import pytest

import fastdecomp as fd
from conftest import balance_output_bias, labelled_like_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DELTA = 0.05


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})


@pytest.fixture(scope="module")
def kinds_modules():
    from test_architectures import kinds_model

    model = kinds_model()
    x = np.random.default_rng(3).normal(size=(36, 8, 8, 3)).astype(np.float32) * 2
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    return fd.decompose(fd.from_keras(model), x, y, backtrack="bi", delta=DELTA, seed=5, progress=False), x


def test_every_kind_exports_and_onnx_runtime_agrees(kinds_modules):
    modules, x = kinds_modules
    network = modules.network
    exported = fd.onnx_io.network_to_onnx(network)
    onnx.checker.check_model(exported)
    assert {layer.kind for layer in network.layers} >= {"grouped_conv2d", "separable_conv2d", "concat", "crop",
                                                          "upsample", "gmp", "affine", "rescale", "scaled_add"}
    np.testing.assert_allclose(run(exported, x)[0], network.predict_proba(x), atol=1e-6)


def test_a_pruned_module_exports_and_agrees_with_the_engine(kinds_modules, tmp_path):
    modules, x = kinds_modules
    k = modules.classes[0]
    pruned = modules.pruned(k)
    full = sum(w.size for layer in modules.network.layers for w in layer.weights.values())
    assert sum(w.size for layer in pruned.layers for w in layer.weights.values()) < full  # channels were dropped
    path = tmp_path / "module.onnx"
    modules.to_onnx(k, path)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded)
    assert [o.name for o in loaded.graph.output] == ["probabilities"]
    np.testing.assert_allclose(run(loaded, x)[0], modules.module(k).predict_proba(x), atol=1e-6)


def test_a_composition_exports_as_one_graph_that_shares_and_votes(kinds_modules, tmp_path):
    modules, x = kinds_modules
    composition = fd.compose(modules)
    model = composition.to_onnx(tmp_path / "composition.onnx")
    probabilities, margins, labels = run(model, x)
    np.testing.assert_allclose(probabilities, composition.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(margins, composition.decision_function(x), atol=1e-5)
    np.testing.assert_array_equal(labels, composition.predict(x))
    def convolutions(graph):
        return sum(node.op_type == "Conv" for node in graph.node)

    alone = [convolutions(fd.onnx_io.module_to_onnx(modules.pruned(k, drop_channels=False)).graph)
             for k in modules.classes]
    assert convolutions(model.graph) == sum(alone) - 2 * (len(alone) - 1)  # c1 and dil, before any mask, shared


def test_a_composition_of_two_models_and_relabelled_modules(kinds_modules, resnet_case):
    modules, x = kinds_modules
    from test_architectures import kinds_model

    other_model = kinds_model(seed=2)
    balance_output_bias(other_model, x)
    other = fd.decompose(other_model, x, labelled_like_model(other_model, x), delta=DELTA, seed=5, progress=False)
    composition = fd.compose(modules.module(0), other.module(1), labels=[7, 3])
    probabilities, _, labels = run(composition.to_onnx(), x)
    np.testing.assert_allclose(probabilities, composition.predict_proba(x), atol=1e-6)
    np.testing.assert_array_equal(labels, composition.predict(x))
    assert set(labels) <= {7, 3}


def test_exports_refuse_to_overwrite_and_write_whole_files(kinds_modules, tmp_path):
    modules, _ = kinds_modules
    path = tmp_path / "module.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(fd.errors.OutputExistsError, match="overwrite=True"):
        modules.to_onnx(modules.classes[0], path)
    assert path.read_bytes() == b"keep me"
    with pytest.raises(fd.errors.InputError, match=".onnx"):
        modules.to_onnx(modules.classes[0], tmp_path / "module.txt")
    modules.to_onnx(modules.classes[0], path, overwrite=True)
    onnx.checker.check_model(onnx.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["module.onnx"]  # no temporary file left


def test_import_needs_no_onnx():
    import subprocess
    import sys

    code = ("import sys, fastdecomp; bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- ONNX in: graphs as torch.onnx.export writes them


class TorchStyleGraph:
    """An ONNX graph built node by node the way ``torch.onnx.export`` writes torchvision models:
    NCHW, Conv (no bias) + BatchNormalization + Relu or Clip(0, 6), symmetric pads, Flatten + Gemm."""

    def __init__(self, channels, size, seed):
        from onnx import TensorProto, helper

        self.helper, self.rng, self.nodes, self.initializers, self.count = helper, np.random.default_rng(seed), [], [], 0
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])

    def name(self, op):
        self.count += 1
        return f"/{op}_{self.count}"

    def const(self, array, dtype=np.float32):
        from onnx import numpy_helper

        name = f"w{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op, inputs, **attributes):
        out = self.name(op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def conv(self, x, ci, co, k, stride=1, pad=0, groups=1):
        w = self.rng.normal(0, np.sqrt(2 / (k * k * ci / groups)), (co, ci // groups, k, k))
        return self.node("Conv", [x, self.const(w)], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=groups, dilations=[1, 1])

    def bn(self, x, c):
        params = [self.rng.uniform(0.6, 1.4, c), self.rng.normal(0, 0.3, c), self.rng.normal(0, 0.3, c),
                  self.rng.uniform(0.4, 1.6, c)]
        return self.node("BatchNormalization", [x, *map(self.const, params)], epsilon=1e-5)

    def relu(self, x, cap=None):
        if cap is None:
            return self.node("Relu", [x])
        return self.node("Clip", [x, self.const(np.float32(0)), self.const(np.float32(cap))])

    def gemm(self, x, fin, fout, matmul=False):
        weights, bias = self.rng.normal(0, np.sqrt(1 / fin), (fout, fin)), self.rng.normal(0, 0.1, fout)
        if matmul:  # as a traced x @ W.T + b exports
            return self.node("Add", [self.node("MatMul", [x, self.const(weights.T)]), self.const(bias)])
        return self.node("Gemm", [x, self.const(weights), self.const(bias)], transB=1)

    def model(self, out, classes):
        from onnx import TensorProto

        output = self.helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])
        graph = self.helper.make_graph(self.nodes, "torch_style", [self.input], [output], self.initializers)
        return self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", 17)])


def resnet18_style(seed=0, width=8, classes=10):
    """torchvision's resnet18 layout, narrower and shorter: 7x7/2 stem, 3x3/2 max pooling with pads 1,
    basic blocks with a 1x1/2 projection, global pooling, Flatten, Gemm."""
    g = TorchStyleGraph(3, 32, seed)
    x = g.node("MaxPool", [g.relu(g.bn(g.conv("input", 3, width, 7, 2, 3), width))], kernel_shape=[3, 3],
               strides=[2, 2], pads=[1, 1, 1, 1])
    for ci, co, stride in ((width, width, 1), (width, 2 * width, 2)):
        y = g.bn(g.conv(g.relu(g.bn(g.conv(x, ci, co, 3, stride, 1), co)), co, co, 3, 1, 1), co)
        shortcut = x if stride == 1 else g.bn(g.conv(x, ci, co, 1, stride, 0), co)
        x = g.relu(g.node("Add", [y, shortcut]))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    return g.model(g.gemm(x, 2 * width, classes), classes)


def vgg16_bn_style(seed=1, width=8, classes=10):
    """torchvision's vgg16_bn pattern: Conv+BN+ReLU pairs, 2x2 max pooling, Flatten of a map, then a
    classifier of MatMul+Add, ReLU, Dropout and Gemm (its rows in ONNX's channel-first order)."""
    g = TorchStyleGraph(3, 32, seed)
    x, ci = "input", 3
    for co in (width, 2 * width):
        for _ in range(2):
            x, ci = g.relu(g.bn(g.conv(x, ci, co, 3, 1, 1), co)), co
        x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], axis=1)
    x = g.node("Dropout", [g.relu(g.gemm(x, ci * 8 * 8, 32, matmul=True))])
    return g.model(g.gemm(x, 32, classes), classes)


def mobilenet_v2_style(seed=2, width=8, classes=10):
    """torchvision's mobilenet_v2 pattern: Clip(0, 6), inverted residuals (1x1 expand, 3x3 depthwise,
    1x1 linear projection, Add), a global pooling head with Dropout and Gemm."""
    g = TorchStyleGraph(3, 32, seed)
    x = g.relu(g.bn(g.conv("input", 3, width, 3, 2, 1), width), 6)
    for stride, residual in ((1, True), (2, False), (1, True)):
        hidden = 3 * width
        y = g.relu(g.bn(g.conv(x, width, hidden, 1), hidden), 6)
        y = g.relu(g.bn(g.conv(y, hidden, hidden, 3, stride, 1, groups=hidden), hidden), 6)
        y = g.bn(g.conv(y, hidden, width, 1), width)
        x = g.node("Add", [x, y]) if residual else y
    x = g.relu(g.bn(g.conv(x, width, 4 * width, 1), 4 * width), 6)
    x = g.node("Dropout", [g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)])
    return g.model(g.gemm(x, 4 * width, classes), classes)


TORCH_STYLE = [resnet18_style, vgg16_bn_style, mobilenet_v2_style]


@pytest.mark.parametrize("build", TORCH_STYLE)
def test_torch_style_graphs_import_decompose_and_export(build, tmp_path):
    model = build()
    onnx.checker.check_model(model)
    images = np.random.default_rng(4).normal(size=(30, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": images})[0]
    network = fd.from_onnx(model)
    x = images.transpose(0, 2, 3, 1)
    logits = network.forward(x, logits=True)
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.testing.assert_array_equal(fd.load(path).forward(x, logits=True), logits)
    predicted = network.predict(x)
    y = predicted.copy()
    y[::6] = (y[::6] + 1) % 10
    classes = sorted(set(predicted[predicted == y].tolist()))
    modules = fd.decompose(str(path), x, y, classes=classes, backtrack="bi", delta=DELTA, progress=False)
    k = modules.classes[0]
    np.testing.assert_allclose(run(modules.to_onnx(k), x)[0], modules.module(k).predict_proba(x), atol=1e-6)


def test_a_flattened_map_reaches_the_dense_layer_in_onnx_order():
    network = fd.from_onnx(vgg16_bn_style())
    kinds = [layer.kind for layer in network.layers]
    assert "flatten" in kinds and kinds.count("dense") == 2  # MatMul + Add is one Dense layer
    assert any(layer.config.get("padding") == "explicit" for layer in fd.from_onnx(resnet18_style()).layers)


def test_bad_onnx_files_and_graphs_are_refused_by_name(tmp_path):
    from onnx import helper

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(resnet18_style().SerializeToString()[:500])
    with pytest.raises(fd.errors.ModelFileError, match="could not read"):
        fd.from_onnx(truncated)
    with pytest.raises(fd.errors.ModelFileError, match="does not exist"):
        fd.from_onnx(tmp_path / "missing.onnx")
    old = resnet18_style()
    old.opset_import[0].version = 11
    with pytest.raises(fd.errors.ModelFileError, match="opset 11.*13 to 21"):
        fd.from_onnx(old)
    g = TorchStyleGraph(3, 32, 0)
    x = g.node("Sigmoid", [g.conv("input", 3, 4, 3)])
    with pytest.raises(fd.errors.UnsupportedLayerError, match="Sigmoid_2.*Sigmoid.*exactly 0"):
        fd.from_onnx(g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), 4, 2), 2))
    g = TorchStyleGraph(3, 32, 0)
    x = g.node("Tanh", [g.node("Sigmoid", [g.node("Sigmoid", [g.conv("input", 3, 4, 3)])])])
    with pytest.raises(fd.errors.UnsupportedLayerError, match=r"2 operators .* nodes '/Sigmoid_2', '/Sigmoid_3' "
                                                              r"\(Sigmoid\); '/Tanh_4' \(Tanh\)"):
        fd.from_onnx(g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), 4, 2), 2))
    g = TorchStyleGraph(3, 32, 0)
    with pytest.raises(fd.errors.UnsupportedLayerError, match="must end in a Dense.*Gemm.*GlobalAveragePool"):
        fd.from_onnx(g.model(g.node("GlobalAveragePool", [g.conv("input", 3, 4, 3)]), 4))
    g = TorchStyleGraph(3, 32, 0)
    g.input = helper.make_tensor_value_info("input", 1, ["N", 3, "H", "W"])
    x = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("input", 3, 4, 3)])], axis=1)
    with pytest.raises(fd.errors.UnsupportedLayerError, match="one size"):
        fd.from_onnx(g.model(g.gemm(x, 4, 2), 2))


@pytest.mark.parametrize("include_pad, ceil", [(0, 0), (1, 0), (0, 1)])
def test_average_pooling_as_pytorch_counts_it(include_pad, ceil):
    """AveragePool with pads, counting the padding or not, and ceil_mode; Clip bounds as Constant nodes."""
    from onnx import helper, numpy_helper

    g = TorchStyleGraph(3, 32, 5)
    x = g.conv("input", 3, 4, 3, 1, 1)
    bounds = []
    for value in (0.0, 6.0):
        bounds.append(g.name("Constant"))
        g.nodes.append(helper.make_node("Constant", [], [bounds[-1]],
                                        value=numpy_helper.from_array(np.array(value, np.float32))))
    x = g.node("Clip", [x, *bounds])
    x = g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=include_pad, ceil_mode=ceil)
    model = g.model(g.gemm(g.node("Flatten", [x], axis=1), 4 * (17 if ceil else 16) ** 2, 3), 3)
    images = np.random.default_rng(6).normal(size=(4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": images})[0]
    network = fd.from_onnx(model)
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True), expected,
                               rtol=1e-5, atol=1e-5)


def test_one_network_in_both_forms_gives_the_same_masks(resnet_case):
    """The zoo ResNet imported from Keras, and the same weights as an NCHW ONNX graph (as PyTorch would
    write it: this library's export with the NHWC transpose taken off), decompose to the same masks."""
    from onnx import helper

    model, x, y = resnet_case
    network = fd.from_keras(model)
    exported = fd.onnx_io.network_to_onnx(network)
    transpose = exported.graph.node[0]
    assert transpose.op_type == "Transpose"
    h, w, c = network.input_shape
    del exported.graph.node[0]
    exported.graph.input[0].CopyFrom(helper.make_tensor_value_info(transpose.output[0], 1, ["N", c, h, w]))
    twin = fd.from_onnx(exported)
    assert [layer.kind for layer in twin.layers] == [layer.kind for layer in network.layers]
    for mask_at in ("relu", "conv"):
        options = dict(mask_at=mask_at, backtrack="bi", delta=DELTA, seed=5, progress=False)
        keras_side, onnx_side = fd.decompose(network, x, y, **options), fd.decompose(twin, x, y, **options)
        for k in keras_side.classes:
            ours, theirs = keras_side.masks(k, names="network"), onnx_side.masks(k, names="network")
            assert len(ours) == len(theirs)
            for a, b in zip(ours.values(), theirs.values()):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("opset", [13, 21])
def test_every_opset_from_13_to_21_imports(opset):
    model = mobilenet_v2_style()
    model.opset_import[0].version = opset
    onnx.checker.check_model(model)
    reference = fd.from_onnx(mobilenet_v2_style())
    x = np.random.default_rng(7).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(fd.from_onnx(model).forward(x), reference.forward(x))


def test_a_graph_with_two_inputs_is_refused():
    from onnx import TensorProto, helper

    g = TorchStyleGraph(3, 32, 0)
    x = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("input", 3, 4, 3)])], axis=1)
    model = g.model(g.gemm(x, 4, 2), 2)
    model.graph.input.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 3, 32, 32]))
    with pytest.raises(fd.errors.UnsupportedLayerError, match="2 inputs and 1 outputs"):
        fd.from_onnx(model)


@pytest.mark.parametrize("between", [None, "Identity"])
def test_a_batchnorm_of_a_convolution_read_twice_is_not_folded(between):
    """Nor when an Identity between them hides the convolution's other reader."""
    g = TorchStyleGraph(3, 32, 8)
    conv = g.conv("input", 3, 4, 3, 1, 1)
    normalised = g.bn(conv if between is None else g.node(between, [conv]), 4)
    x = g.relu(g.node("Add", [conv, normalised]))  # the Add reads the convolution unnormalised
    model = g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), 4, 3), 3)
    network = fd.from_onnx(model)
    assert "affine" in [layer.kind for layer in network.layers]
    images = np.random.default_rng(9).normal(size=(4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": images})[0]
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True), expected, atol=1e-5)


def test_a_crafted_graph_is_checked_layer_by_layer_as_it_is_read():
    g = TorchStyleGraph(3, 32, 8)
    wide, narrow = g.conv("input", 3, 4, 3, 1, 1), g.conv("input", 3, 4, 3, 2, 1)
    joined = g.node("Concat", [wide, narrow], axis=1)  # 32x32 beside 16x16
    x = g.relu(joined)
    model = g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), 8, 3), 3)
    with pytest.raises(fd.errors.UnsupportedLayerError, match=f"node '{joined}'.*"):
        fd.from_onnx(model)


def deep_chain(blocks, dense):
    """``blocks`` residual Conv+Add+ReLU blocks, or (``dense``) a DenseNet-style chain in which each block
    concatenates its input with a convolution of it: every Add or Concatenate joins two paths."""
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=2)
    bias = keras.initializers.RandomNormal(stddev=0.1, seed=2)
    inputs = keras.Input((5, 5, 2))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=init, bias_initializer=bias)(inputs)
    for _ in range(blocks):
        y = layers.Conv2D(2 if dense else 4, 1, kernel_initializer=init, bias_initializer=bias)(x)
        x = layers.Concatenate()([x, y]) if dense else layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax", kernel_initializer=init)(x))


@pytest.mark.parametrize("blocks, dense", [(60, False), (30, True)])
def test_export_of_deep_residual_and_dense_chains_is_linear_in_the_graph(blocks, dense, monkeypatch):
    """Each layer's memo key names its inputs' tensors, not their keys: nested keys doubled the work of
    hashing them at every Add or Concatenate (22 blocks took 36 s, 60 would take days)."""
    network = fd.from_keras(deep_chain(blocks, dense))
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 2)).astype(np.float32)
    keys = []
    real = fd.onnx_io._layers_to_onnx

    class Memo(dict):
        def __setitem__(self, key, value):
            assert all(isinstance(tensor, str) for tensor in key[1]), f"a nested key: {key}"  # fails at once
            keys.append(key)
            super().__setitem__(key, value)

    monkeypatch.setattr(fd.onnx_io, "_layers_to_onnx",
                        lambda *a, memo=None, **k: real(*a, memo=Memo() if memo is None else memo, **k))
    exported = fd.onnx_io.network_to_onnx(network)
    assert len(keys) == len(network.layers)  # one computation each: nothing shared or repeated in one network
    np.testing.assert_allclose(run(exported, x)[0], network.predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("op, keepdims, opset", [("ReduceMean", 0, 17), ("ReduceMean", 1, 17), ("ReduceMean", 0, 18),
                                                 ("ReduceMax", 1, 17), ("ReduceMax", 0, 18), ("ReduceSum", 0, 17)])
def test_a_reduction_over_the_spatial_axes_is_a_global_pooling(op, keepdims, opset):
    """PyTorch's default exporter writes ``AdaptiveAvgPool2d((1, 1))`` and ``x.mean((2, 3))`` as ReduceMean;
    axes are an attribute before opset 18 (ReduceSum: 13) and an input from it on."""
    g = TorchStyleGraph(3, 12, 4)
    x = g.relu(g.conv("input", 3, 6, 3, pad=1))
    axes_as_input = opset >= 18 or op == "ReduceSum"
    if axes_as_input:
        pooled = g.node(op, [x, g.const(np.array([-2, -1]), np.int64)], keepdims=keepdims)
    else:
        pooled = g.node(op, [x], axes=[2, 3], keepdims=keepdims)
    if keepdims:
        pooled = g.node("Flatten", [pooled], axis=1)
    model = g.model(g.gemm(pooled, 6, 4), 4)
    model.opset_import[0].version = opset
    network = fd.from_onnx(model)
    assert {layer.kind for layer in network.layers} >= {"gmp" if op == "ReduceMax" else "gap"}
    images = np.random.default_rng(5).normal(size=(8, 3, 12, 12)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": images})[0]
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True), expected, rtol=1e-5,
                               atol=1e-5)


def test_a_reduction_over_other_axes_is_refused_by_name():
    g = TorchStyleGraph(3, 12, 4)
    pooled = g.node("ReduceMean", [g.relu(g.conv("input", 3, 6, 3, pad=1))], axes=[1, 2, 3], keepdims=0)
    with pytest.raises(fd.errors.UnsupportedLayerError, match=r"ReduceMean.*axes \[1, 2, 3\].*spatial axes"):
        fd.from_onnx(g.model(g.gemm(g.node("Flatten", [pooled], axis=1), 1, 4), 4))


def asymmetric_pads_graph():
    """Convolutions and a max pooling with explicit pads no Keras padding names (symmetric on a stride 2,
    and asymmetric), then global pooling and a Gemm."""
    g = TorchStyleGraph(3, 11, 6)
    x = g.relu(g.bn(g.conv("input", 3, 8, 3, stride=2, pad=1), 8))  # pads 1 on every side at stride 2
    w = g.rng.normal(0, 0.4, (8, 8, 3, 3))
    x = g.node("Conv", [x, g.const(w), g.const(g.rng.normal(0, 0.2, 8))], kernel_shape=[3, 3],
               pads=[0, 2, 1, 0])  # top 0, left 2, bottom 1, right 0: ONNX writes begins, then ends
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # of negatives too
    dw = g.rng.normal(0, 0.4, (8, 1, 3, 3))
    x = g.node("Conv", [x, g.const(dw), g.const(g.rng.normal(0, 0.2, 8))], kernel_shape=[3, 3], group=8,
               pads=[1, 0, 1, 2])
    x = g.node("Flatten", [g.node("GlobalAveragePool", [g.relu(x)])], axis=1)
    return g.model(g.gemm(x, 8, 4), 4)


def test_explicit_pads_export_to_keras_as_a_padding_then_a_valid_window():
    """A module imported from ONNX exports to Keras: each explicit padding becomes ZeroPadding2D (or -inf
    before a max pooling) and a ``valid`` layer, and Keras agrees with the engine."""
    model = asymmetric_pads_graph()
    network = fd.from_onnx(model)
    explicit = [layer for layer in network.layers if layer.config.get("padding") == "explicit"]
    assert {layer.kind for layer in explicit} >= {"conv2d", "maxpool", "grouped_conv2d"}
    assert any(len(set(layer.config["pads"])) > 1 for layer in explicit)
    images = np.random.default_rng(2).normal(size=(30, 3, 11, 11)).astype(np.float32)
    x = images.transpose(0, 2, 3, 1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(network.forward(x, logits=True), session.run(None, {"input": images})[0], atol=1e-5)
    y = network.predict_proba(x).argmax(axis=1)
    modules = fd.decompose(network, x, y, classes=sorted(set(y.tolist())), concerned="all", backtrack="bi",
                           delta=0.05, progress=False)
    for k in modules.classes[:2]:
        keras_module = modules.to_keras(k)
        np.testing.assert_allclose(keras_module.predict(x, verbose=0), modules.module(k).predict_proba(x),
                                   rtol=1e-5, atol=1e-6)


def test_a_one_input_concat_is_the_identity():
    """PyTorch's DenseNet starts each block with ``torch.cat([x], 1)``: a Concat of one input."""
    g = TorchStyleGraph(3, 8, 1)
    x = g.node("Concat", [g.relu(g.conv("input", 3, 6, 3, pad=1))], axis=1)
    model = g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1), 6, 3), 3)
    network = fd.from_onnx(model)
    assert "concat" not in {layer.kind for layer in network.layers}
    images = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True),
                               session.run(None, {"input": images})[0], rtol=1e-5, atol=1e-6)


def test_an_onnx_classifier_ending_in_gemm_then_relu_takes_the_gemm_as_logits():
    g = TorchStyleGraph(3, 8, 2)
    x = g.node("Flatten", [g.node("GlobalAveragePool", [g.relu(g.conv("input", 3, 6, 3, pad=1))])], axis=1)
    logits = g.gemm(x, 6, 4)
    model = g.model(g.relu(logits), 4)
    with pytest.warns(fd.layers.LogitsHeadWarning, match="taken as the logits"):
        network = fd.from_onnx(model)
    images = np.random.default_rng(3).normal(size=(6, 3, 8, 8)).astype(np.float32)
    without_relu = g.model(logits, 4)
    without_relu.graph.node.pop()  # the Relu
    session = ort.InferenceSession(without_relu.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True),
                               session.run(None, {"input": images})[0], rtol=1e-5, atol=1e-6)


def test_a_conv_whose_kernel_shape_contradicts_its_weights_is_refused():
    g = TorchStyleGraph(3, 8, 2)
    w = g.rng.normal(0, 0.3, (6, 3, 3, 3))
    x = g.node("Conv", ["input", g.const(w)], kernel_shape=[5, 5], pads=[1, 1, 1, 1])
    model = g.model(g.gemm(g.node("Flatten", [g.node("GlobalAveragePool", [g.relu(x)])], axis=1), 6, 3), 3)
    with pytest.raises(fd.errors.UnsupportedLayerError, match=r"kernel_shape \(5, 5\) contradicts .*\(3, 3\)"):
        fd.from_onnx(model)


@pytest.mark.parametrize("pooling", ["GlobalAveragePool", "ReduceMean"])
def test_a_1x1_convolution_after_a_global_pooling_is_a_dense_layer(pooling):
    """Found in review: it failed with a raw ValueError (a 1x1 map is a vector here)."""
    g = TorchStyleGraph(3, 8, 5)
    x = g.relu(g.conv("input", 3, 6, 3, pad=1))
    pooled = g.node(pooling, [x], **({"axes": [2, 3], "keepdims": 1} if pooling == "ReduceMean" else {}))
    w, b = g.rng.normal(0, 0.4, (4, 6, 1, 1)), g.rng.normal(0, 0.1, 4)
    model = g.model(g.node("Flatten", [g.node("Conv", [pooled, g.const(w), g.const(b)], kernel_shape=[1, 1])],
                           axis=1), 4)
    network = fd.from_onnx(model)
    assert "dense" in {layer.kind for layer in network.layers}
    images = np.random.default_rng(2).normal(size=(5, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(network.forward(images.transpose(0, 2, 3, 1), logits=True),
                               session.run(None, {"input": images})[0], rtol=1e-5, atol=1e-6)
    g = TorchStyleGraph(3, 8, 5)
    pooled = g.node("GlobalAveragePool", [g.relu(g.conv("input", 3, 6, 3, pad=1))])
    bad = g.node("Conv", [pooled, g.const(g.rng.normal(0, 0.4, (4, 6, 3, 3)))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    with pytest.raises(fd.errors.UnsupportedLayerError, match="only a 1x1 one"):
        fd.from_onnx(g.model(g.node("Flatten", [bad], axis=1), 4))
