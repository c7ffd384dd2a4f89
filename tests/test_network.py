"""Keras import and the Numba forward engine against TensorFlow."""

from types import MappingProxyType

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import zoo
from fastdecomp.errors import InputError, ModelFileError, UnsupportedLayerError

from conftest import small_sequential


def randomize_batchnorm(model, seed=0):
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.2, n))


def assert_engine_matches_keras(model, x, batch_size=3):
    network = fd.from_keras(model)
    expected = model.predict(x, verbose=0)
    got = network.predict_proba(x, batch_size=batch_size)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    return network


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
@pytest.mark.parametrize("depth", [20, 32, 56])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_resnet_family_matches_keras(depth, input_shape, batchnorm):
    model = zoo.resnet_v1(depth, input_shape, 10, batchnorm=batchnorm, seed=depth)
    if batchnorm:
        randomize_batchnorm(model, depth)
    x = np.random.default_rng(depth).random((4,) + input_shape, dtype=np.float32)
    network = assert_engine_matches_keras(model, x)
    assert len(network.mask_points("conv")) == depth + 1  # 6n+3 convolutions (n = (depth-2)/6)
    assert not any(layer.kind == "batchnorm" for layer in network.layers)


def test_sequential_cnn_matches_keras():
    model = small_sequential()
    x = np.random.default_rng(0).random((9, 12, 12, 2), dtype=np.float32)
    network = assert_engine_matches_keras(model, x, batch_size=4)
    assert [l.name for l in network.mask_points("conv")] == ["c1", "c2", "hidden"]
    assert [l.name for l in network.mask_points("relu")] == ["c1/relu", "r2", "hidden/relu"]
    assert network.keras_name_of("c1/relu") == "c1"


def test_same_padding_pooling_and_strides_match_keras():
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((11, 13, 3)),
        layers.Conv2D(5, (3, 2), strides=(2, 3), padding="same", use_bias=False),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.MaxPooling2D(3, strides=2, padding="same"),
        layers.Conv2D(4, 1, activation="linear"),
        layers.AveragePooling2D(2, padding="same"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3), layers.Activation("softmax"),
    ])
    randomize_batchnorm(model)
    x = np.random.default_rng(5).normal(size=(6, 11, 13, 3)).astype(np.float32)
    assert_engine_matches_keras(model, x)


def test_batch_size_does_not_change_values(resnet_case):
    model, x, _ = resnet_case
    network = fd.from_keras(model)
    reference = np.concatenate([network.forward(x[i:i + 1], logits=True) for i in range(len(x))])
    for batch_size in (5, 48):
        batched = np.concatenate([network.forward(x[i:i + batch_size], logits=True)
                                  for i in range(0, len(x), batch_size)])
        np.testing.assert_array_equal(batched, reference)


def test_mask_point_values_stream_batch_by_batch(resnet_case):
    model, x, y = resnet_case
    network = fd.from_keras(model)
    expected = keras_mask_point_values(model, x)
    batches = list(network.iter_mask_values(x, y, mask_at="relu", batch_size=16))
    assert [len(p) for p, *_ in batches] == [16, 16, 16]
    for positions, labels, values, probs in batches:
        np.testing.assert_array_equal(labels, y[positions])
        assert set(values) == {l.name for l in network.mask_points("relu")}
        for name, v in values.items():
            np.testing.assert_allclose(v, expected[name][positions], atol=1e-5)


def test_epilogue_fusion_changes_no_value(resnet_case, monkeypatch):
    """Convolutions that add their residual and apply the ReLU in their epilogue give the
    unfused layers' values bit for bit, at the output and at every observed mask point."""
    model, x, _ = resnet_case
    network = fd.from_keras(model)
    blocks = sum(layer.kind == "add" for layer in network.layers)
    plan = fd.engine.plan_fusions(network, frozenset(), frozenset(), False)
    residuals, rectified = plan.residuals, plan.rectified
    assert len(residuals) == blocks and {add for add, _ in residuals.values()} <= set(rectified)
    observed = frozenset(l.name for l in network.mask_points("conv"))
    plan = fd.engine.plan_fusions(network, observed, frozenset(), False)
    assert (dict(plan.residuals), dict(plan.rectified)) == ({}, {})

    def run():
        seen = {}
        logits = network.forward(x, logits=True)
        probs = network.forward(x, observe=lambda layer, v: seen.__setitem__(layer.name, v.copy()),
                                mask_at="relu")
        return logits, probs, seen

    fused = run()
    unfused = fd.engine.FusionPlan(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))
    monkeypatch.setattr(fd.Network, "fusion_plan", lambda self, observed, masked, bits: unfused)
    plain = run()
    np.testing.assert_array_equal(fused[0], plain[0])
    np.testing.assert_array_equal(fused[1], plain[1])
    for name, values in plain[2].items():
        np.testing.assert_array_equal(fused[2][name], values)


def test_callers_input_is_never_overwritten():
    """A residual whose shortcut is the model's input: the epilogue must not add into the caller's array."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 4))
    conv = layers.Conv2D(4, 3, padding="same")(layers.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    out = layers.ReLU()(layers.Add()([conv, inputs]))
    out = layers.Dense(3, activation="softmax")(layers.Flatten()(out))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(2).normal(size=(5, 8, 8, 4)).astype(np.float32)
    before = x.copy()
    network = assert_engine_matches_keras(model, x)
    assert fd.engine.plan_fusions(network, frozenset(), frozenset(), False).residuals  # the fusion does apply here
    network.forward(x)
    np.testing.assert_array_equal(x, before)


def keras_mask_point_values(model, x):
    """The ReLU outputs of a zoo ResNet computed by Keras itself."""
    import keras

    names = [l.name for l in model.layers if isinstance(l, keras.layers.ReLU)]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    return dict(zip(names, probe.predict(x, verbose=0)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_files_load(tmp_path, resnet_case, suffix):
    model, x, _ = resnet_case
    path = tmp_path / f"model{suffix}"
    model.save(path)
    np.testing.assert_allclose(fd.from_keras(path).predict_proba(x), model.predict(x, verbose=0), atol=1e-4)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        fd.from_keras(tmp_path / "nope.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelFileError, match="could not read"):
        fd.from_keras(bad)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="ONNX"):
        fd.from_keras(other)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match=".keras or .h5"):
        fd.from_keras(other)


def _model_with(layer, input_shape=(8, 8, 2)):
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layer(inputs)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


@pytest.mark.parametrize("make_layer, message", [
    (lambda L: L.Conv2D(2, 3, activation="tanh", name="tanhconv"), "tanhconv.*tanh"),
    (lambda L: L.SeparableConv2D(2, 3, activation="swish", name="sw"), "'sw' \\(SeparableConv2D\\).*exactly 0"),
    (lambda L: L.LeakyReLU(name="leaky"), "'leaky' \\(LeakyReLU\\).*negative region"),
    (lambda L: L.ReLU(negative_slope=0.1, name="leaky"), "leaky.*negative_slope"),  # ReLU(max_value=6) is supported
    (lambda L: L.LayerNormalization(name="ln"), "'ln' \\(LayerNormalization\\).*statistics.*exactly 0"),
    (lambda L: L.UpSampling2D(interpolation="bilinear", name="bil"), "bil.*nearest"),
    (lambda L: L.Activation("gelu", name="smooth"), "'smooth' \\(Activation\\).*gelu.*exactly 0"),
])
def test_unsupported_layers_are_named(make_layer, message):
    from keras import layers

    with pytest.raises(UnsupportedLayerError, match=message):
        fd.from_keras(_model_with(make_layer(layers)))


def test_model_must_end_in_softmax_dense():
    import keras
    from keras import layers

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(layers.Conv2D(3, 3)(inputs)))  # no Dense at all
    with pytest.raises(UnsupportedLayerError, match="softmax"):
        fd.from_keras(model)  # (a Dense output without softmax is logits: its softmax is implied)


def test_batchnorm_anywhere_folds_or_becomes_an_affine_layer():
    """At the input, after a ReLU and after a Dense layer (folded there), as Keras computes it."""
    import keras
    from keras import layers

    from conftest import randomise_biases, randomise_normalisation

    inputs = keras.Input((4, 4, 2))
    x = layers.BatchNormalization(name="bn_input")(inputs)
    shared = layers.Conv2D(2, 1, name="shared")(x)
    x = layers.Add()([shared, layers.BatchNormalization(name="bn_shared")(shared)])  # the Add reads it unnormalised
    passed = layers.Dropout(0.5)(layers.Conv2D(2, 1, name="passed")(x))  # read by two, through an identity
    x = layers.Add()([passed, layers.BatchNormalization(name="bn_passed")(passed)])
    x = layers.Conv2D(3, 3, activation="relu", name="conv")(x)
    x = layers.BatchNormalization(name="bn_relu")(x)
    x = layers.Dense(5, name="hidden")(layers.Flatten()(x))
    x = layers.BatchNormalization(name="bn_dense")(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.ReLU()(x)))
    randomise_normalisation(model)
    randomise_biases(model)
    network = fd.from_keras(model)
    kinds = {layer.name: layer.kind for layer in network.layers}
    assert kinds["bn_input"] == kinds["bn_relu"] == kinds["bn_shared"] == kinds["bn_passed"] == "affine"
    assert "bn_dense" not in kinds
    x = np.random.default_rng(3).normal(size=(6, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-6)


def test_bad_inputs_are_refused(resnet_case):
    model, x, _ = resnet_case
    network = fd.from_keras(model)
    with pytest.raises(InputError, match="do not fit"):
        network.predict_proba(np.zeros((2, 9, 9, 1), np.float32))
    with pytest.raises(InputError, match="one image"):
        network.predict_proba(np.zeros((8, 8, 1), np.float32))
    with pytest.raises(InputError, match="numeric"):
        network.predict_proba(np.array([["a"]]))
    bad = x[:4].copy()
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        network.predict_proba(bad)


def test_import_needs_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, fastdecomp; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'cupy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("size, ci, co, kernel, stride, padding", [
    ((28, 28), 1, 16, 3, 1, "same"),    # one tile of 16 pixels per 28-wide row, with a short one of 12
    ((16, 16), 16, 32, 3, 2, "same"),   # asymmetric padding of stride 2, two channel blocks per tile
    ((16, 16), 16, 32, 1, 2, "same"),   # the projection shortcut
    ((13, 11), 5, 6, 3, 1, "valid"),    # 2-float vectors, a prime row width
    ((12, 12), 2, 8, 3, 2, "valid"),    # unread last row and column
    ((9, 7), 64, 64, 2, 2, "same"),     # even kernel, padding only below and right
])
def test_direct_conv_matches_tensorflow_and_is_batch_invariant(size, ci, co, kernel, stride, padding):
    """The generated convolution kernel, over the tilings it chooses, against ``tf.nn.conv2d``."""
    import tensorflow as tf

    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(ci * co)
    x = rng.standard_normal((5,) + size + (ci,)).astype(np.float32)
    weights = rng.standard_normal((kernel, kernel, ci, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    expected = tf.nn.conv2d(x, weights, stride, padding.upper()).numpy() + bias
    oh, ow = expected.shape[1:3]
    pads = [0, 0] if padding == "valid" else [max((o - 1) * stride + kernel - s, 0) // 2 for o, s in zip((oh, ow), size)]
    out = np.empty_like(expected)
    cpu.conv2d_forward(x, weights, bias, stride, stride, pads[0], pads[1], out)
    np.testing.assert_allclose(out, expected, atol=1e-4 * np.sqrt(kernel * kernel * ci))
    alone = np.empty_like(out[:1])
    cpu.conv2d_forward(x[3:4], weights, bias, stride, stride, pads[0], pads[1], alone)
    np.testing.assert_array_equal(alone[0], out[3])


@pytest.mark.parametrize("size, ci, co, stride", [((28, 28), 1, 16, 1), ((9, 7), 4, 6, 2), ((8, 8), 16, 32, 1)])
def test_residual_epilogue_equals_add_then_relu(size, ci, co, stride):
    """conv + residual (+ ReLU) in the epilogue, in place or not, is the unfused sequence bit for bit."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(co)
    x = rng.standard_normal((4,) + size + (ci,)).astype(np.float32)
    weights = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    oh, ow = -(-size[0] // stride), -(-size[1] // stride)
    plain = np.empty((4, oh, ow, co), np.float32)
    cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, plain)
    shortcut = rng.standard_normal(plain.shape).astype(np.float32)
    for rectify in (False, True):
        expected = plain + shortcut
        if rectify:
            expected = np.maximum(expected, np.float32(0))
        fused = np.empty_like(plain)
        cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, fused, rectify, residual=shortcut)
        np.testing.assert_array_equal(fused, expected)
        in_place = shortcut.copy()
        cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, in_place, rectify, residual=in_place)
        np.testing.assert_array_equal(in_place, expected)
    with pytest.raises(ValueError, match="residual of shape"):
        cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, fused, residual=shortcut[:2])


def test_non_finite_weights_are_refused():
    model = small_sequential()
    kernel = model.get_layer("c2").kernel
    broken = kernel.numpy()
    broken[0, 0, 0, 0] = np.nan
    kernel.assign(broken)
    with pytest.raises(InputError, match="'c2'.*NaN or infinite kernel"):
        fd.from_keras(model)


def test_unbuilt_model_is_refused():
    import keras
    from keras import layers

    model = keras.Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2, activation="softmax")])
    with pytest.raises(InputError, match="not built"):
        fd.from_keras(model)


@pytest.mark.parametrize("size, ci, co, stride, rectify, residual", [
    ((9, 7), 3, 16, 1, False, False), ((9, 9), 4, 8, 2, True, False), ((8, 8), 16, 32, 1, True, True),
    ((5, 5), 3, 24, 1, False, True)])
def test_epilogue_packs_activity_bits(size, ci, co, stride, rectify, residual):
    """The convolution writes ``packbits(out > 0)`` beside its values, which it leaves unchanged."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(ci + co)
    x = rng.standard_normal((3,) + size + (ci,)).astype(np.float32)
    weights = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    shape = (3, -(-size[0] // stride), -(-size[1] // stride), co)
    shortcut = rng.standard_normal(shape).astype(np.float32) if residual else None
    expected, out = np.empty(shape, np.float32), np.empty(shape, np.float32)
    bits = np.zeros((3, int(np.prod(shape[1:])) // 8), np.uint8)
    cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, expected, rectify, shortcut)
    cpu.conv2d_forward(x, weights, bias, stride, stride, 1, 1, out, rectify, shortcut, activity=bits)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(bits, np.packbits(expected.reshape(3, -1) > 0, axis=1))
    with pytest.raises(ValueError, match="multiples of 8"):
        cpu.conv2d_forward(x, weights[..., :4], bias[:4], stride, stride, 1, 1,
                                   np.empty(shape[:3] + (4,), np.float32), activity=bits[:, :1])


def test_compiled_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    """The second compilation of a kernel loads it from disk; a corrupt or unwritable
    cache falls back to compiling, and the kernel computes the same values every way."""
    import llvmlite.binding as llvm

    from fastdecomp import config
    from fastdecomp.kernels import cpu, direct_conv

    optimised = []
    create = llvm.create_pass_builder
    monkeypatch.setattr(llvm, "create_pass_builder", lambda *a: optimised.append(1) or create(*a))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    weights = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)

    def convolve():
        direct_conv.compiled.cache_clear()
        out = np.empty((2, 6, 5, 8), np.float32)
        cpu.conv2d_forward(x, weights, bias, 1, 1, 1, 1, out, rectify=True)
        return out

    monkeypatch.setenv("FASTDECOMP_CACHE_DIR", str(tmp_path / "cache"))
    config._reset()
    expected = convolve()
    files = list((tmp_path / "cache").glob("*.o"))
    assert len(optimised) == 1 and len(files) == 1
    np.testing.assert_array_equal(convolve(), expected)
    assert len(optimised) == 1  # loaded, not compiled
    files[0].write_bytes(files[0].read_bytes()[:100])  # a truncated file
    np.testing.assert_array_equal(convolve(), expected)
    assert len(optimised) == 2
    np.testing.assert_array_equal(convolve(), expected)
    assert len(optimised) == 2  # the rewritten file is whole again
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("FASTDECOMP_CACHE_DIR", str(tmp_path / "not-a-directory" / "cache"))
    config._reset()
    with pytest.warns(UserWarning, match="is not used"):
        np.testing.assert_array_equal(convolve(), expected)
    assert len(optimised) == 3


@pytest.mark.parametrize("expression", ["plus_constant", "ops_add"])
def test_keras_operations_are_refused_not_read_as_layers(expression):
    """``x + 3.0`` and ``keras.ops.add(x, c)`` build an operation named Add: taking it for the layer drops c."""
    import keras
    from keras import layers

    inputs = keras.Input((6, 6, 1))
    x = layers.Conv2D(4, 3, padding="same", name="c")(inputs)
    x = x + 3.0 if expression == "plus_constant" else keras.ops.add(x, np.ones((6, 6, 4), np.float32))
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.Flatten()(x)))
    with pytest.raises(UnsupportedLayerError, match="a Keras operation"):
        fd.from_keras(model)


def test_the_kernel_cache_runs_only_code_this_user_compiled_for_that_key(tmp_path, monkeypatch):
    """A planted object file with a valid plain checksum, or two entries swapped, is compiled again;
    a cache folder other users can write is not used."""
    import hashlib

    from fastdecomp import config
    from fastdecomp.kernels import direct_conv, llvm_jit
    from fastdecomp.kernels import target as targets

    monkeypatch.setenv("FASTDECOMP_CACHE_DIR", str(tmp_path / "cache"))
    config._reset()
    shapes = [direct_conv.ConvShape(6, 6, 3, 3, 3, 1, 1, 1, 1, 6, 6, co) for co in (8, 16)]
    irs = [direct_conv.conv_ir(s, direct_conv.rule_tiling(s)) for s in shapes]
    codes = [llvm_jit.object_code(ir) for ir in irs]
    secret = tmp_path / "cache" / "secret.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    entries = sorted((tmp_path / "cache").glob("*.o"))
    assert len(entries) == 2
    first, second = (entry.read_bytes() for entry in entries)
    entries[0].write_bytes(second)  # swapped
    entries[1].write_bytes(first)
    assert [llvm_jit.object_code(ir) for ir in irs] == codes
    planted = b"\x7fELF planted code"
    for entry in entries:
        entry.write_bytes(hashlib.sha256(planted).digest() + planted)  # the old, unauthenticated format
    assert [llvm_jit.object_code(ir) for ir in irs] == codes
    assert all(planted not in entry.read_bytes() for entry in entries)

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("FASTDECOMP_CACHE_DIR", str(shared))
    config._reset()
    with pytest.warns(UserWarning, match="writable by other users"):
        assert llvm_jit.object_code(irs[0], targets.current()) == codes[0]
    assert list(shared.iterdir()) == []  # nothing read from it or written to it


def test_namesakes_subclasses_and_layouts_keras_computes_differently_are_refused():
    import keras
    from keras import layers

    class Dropout(keras.layers.Layer):  # a namesake that is not an identity
        def call(self, x):
            return x * 2.0

    class Dense(layers.Dense):  # a subclass with a call of its own
        def call(self, x):
            return super().call(x) * 3.0

    def relu(x):  # a function named like Keras' activation
        return keras.ops.abs(x)

    def model(middle, dense=layers.Dense, activation="softmax"):
        inputs = keras.Input((6, 6, 2))
        x = layers.Conv2D(4, 3, activation=activation if activation != "softmax" else None)(inputs)
        x = middle(x)
        return keras.Model(inputs, dense(3, activation="softmax")(layers.Flatten()(x)))

    cases = [(model(Dropout()), "not keras.layers.Dropout"), (model(lambda x: x, dense=Dense), "not keras.layers.Dense"),
             (model(lambda x: x, activation=relu), "not Keras' own 'relu'"),
             (model(layers.Flatten(data_format="channels_first")), "channels_first")]
    for built, message in cases:
        with pytest.raises(UnsupportedLayerError, match=message):
            fd.from_keras(built)


def test_a_constant_input_to_a_layer_is_refused():
    """``Add()([x, constant])``: Keras adds the constant, which the graph would drop."""
    import keras
    from keras import layers

    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, padding="same", name="c")(inputs)
    x = layers.Add(name="plus")([x, np.ones((1, 6, 6, 4), np.float32)])
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.Flatten()(x)))
    with pytest.raises(UnsupportedLayerError, match="'plus'.*constant"):
        fd.from_keras(model)


def test_preprocessing_layers_and_a_logits_output_import_as_keras_computes_them():
    """Rescaling and Normalization inside the model run as Keras runs them; a logits output gets its softmax."""
    import keras
    from keras import layers

    from conftest import balance_output_bias

    init = keras.initializers.HeNormal(seed=8)
    inputs = keras.Input((9, 9, 3))
    x = layers.Rescaling(1 / 255, offset=-0.5, name="rescale")(inputs)
    normalized = layers.Normalization(mean=[0.1, -0.2, 0.05], variance=[0.5, 2.0, 1.5], name="norm")(x)
    x = layers.Conv2D(8, 3, activation="relu", kernel_initializer=init, name="c")(normalized)
    logits = layers.Dense(4, kernel_initializer=init, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, logits)
    pixels = np.random.default_rng(3).integers(0, 256, (40, 9, 9, 3)).astype(np.float32)
    balance_output_bias(model, pixels)
    network = fd.from_keras(model)
    assert [l.kind for l in network.layers][:3] == ["input", "rescale", "normalize"]
    cpu = fd.backends.get("cpu")
    ours = pixels
    for name in ("rescale", "norm"):
        layer = network.by_name[name]
        ours = layer.handler.forward(layer, [ours], backend=cpu)
    np.testing.assert_array_equal(ours, keras.Model(inputs, normalized).predict(pixels, verbose=0))  # bit for bit
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(pixels)))
    np.testing.assert_allclose(network.predict_proba(pixels), expected, atol=1e-6)
    np.testing.assert_array_equal(network.predict_proba(pixels, backend="emulated-cuda"), network.predict_proba(pixels))
    modules = fd.decompose(network, pixels, network.predict(pixels), concerned="all", progress=False)
    k = modules.classes[0]
    np.testing.assert_allclose(modules.to_keras(k).predict(pixels, verbose=0), modules.module(k).predict_proba(pixels),
                               atol=2e-6)


def test_a_one_unit_sigmoid_output_is_a_two_class_classifier():
    """Dense(1, "sigmoid"): class 1 has probability p, class 0 has 1 - p; inside the model it is refused."""
    import keras
    from keras import layers

    from conftest import balance_output_bias

    init = keras.initializers.HeNormal(seed=4)
    inputs = keras.Input((8, 8, 1))
    features = layers.GlobalAveragePooling2D()(layers.Conv2D(6, 3, activation="relu", kernel_initializer=init)(inputs))
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", kernel_initializer=init, name="p")(features))
    x = np.random.default_rng(5).random((30, 8, 8, 1), dtype=np.float32)
    balance_output_bias(model, x)
    network = fd.from_keras(model)
    p = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(network.predict_proba(x), np.stack([1 - p, p], axis=1), atol=1e-6)
    modules = fd.decompose(network, x, network.predict(x), concerned="all", progress=False)
    assert modules.classes == [0, 1]
    hidden = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.Dense(1, activation="sigmoid",
                                                                                 name="gate")(features)))
    with pytest.raises(UnsupportedLayerError, match="'gate'"):
        fd.from_keras(hidden)


@pytest.mark.parametrize("groups, multiplier, stride, dilation", [(1, 1, 1, 2), (2, 2, 2, 1), (6, 1, 1, 2), (3, 2, 1, 1)])
def test_grouped_convolution_sums_in_its_documented_order(groups, multiplier, stride, dilation):
    """The CPU kernel (the CUDA twin is held to it) against the sum its docstring states, term by
    term in float32: the group's channels, then rows, then columns, padding skipped, then the bias."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(groups)
    ci, co = 6, 6 // groups * multiplier * groups
    x = rng.standard_normal((2, 7, 6, ci)).astype(np.float32)
    kernel = rng.standard_normal((3, 2, ci // groups, co)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    out = np.empty((2, 4, 3, co), np.float32)
    cpu.grouped_conv2d_forward(x, kernel, bias, stride, stride, dilation, dilation, 1, 1, groups, out)
    expected = np.empty_like(out)
    for b, i, j, o in np.ndindex(*out.shape):
        acc = np.float32(0)
        first = o // (co // groups) * (ci // groups)
        for c in range(ci // groups):
            for dy in range(3):
                for dx in range(2):
                    y, xx = i * stride + dy * dilation - 1, j * stride + dx * dilation - 1
                    if 0 <= y < 7 and 0 <= xx < 6:
                        acc = np.float32(acc + np.float32(x[b, y, xx, first + c] * kernel[dy, dx, c, o]))
        expected[b, i, j, o] = np.float32(acc + bias[o])
    np.testing.assert_array_equal(out, expected)


def test_a_normalized_constant_channel_divides_by_keras_floor_not_by_zero():
    import keras
    from keras import layers

    inputs = keras.Input((5, 5, 2))
    normalized = layers.Normalization(mean=[0.2, 0.7], variance=[0.5, 0.0], name="norm")(inputs)
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(3, 3, activation="relu")(normalized))
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    images = np.random.default_rng(4).random((6, 5, 5, 2), dtype=np.float32)
    images[..., 1] = np.float32(0.7)  # a constant channel: variance 0, every value its mean
    network = fd.from_keras(model)
    layer = network.by_name["norm"]
    ours = layer.handler.forward(layer, [images], backend=fd.backends.get("cpu"))
    np.testing.assert_array_equal(ours, keras.Model(inputs, normalized).predict(images, verbose=0))
    assert np.isfinite(network.predict_proba(images)).all()
