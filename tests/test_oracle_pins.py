"""What the oracle (tests/reference.py) shares with the fast path, pinned to an independent computation:
the forward pass it reads its values from, to Keras at every mask point."""

import numpy as np
import pytest

import fastdecomp as fd

from test_backtracking import crafted_head, feature_model


def keras_values(model, names, x):
    import keras

    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in names])
    values = probe.predict(x, verbose=0)
    return dict(zip(names, values if len(names) > 1 else [values]))


def engine_values(network, x, mask_at):
    seen = {}
    network.forward(x, observe=lambda layer, v: seen.__setitem__(layer.name, np.array(v)), mask_at=mask_at)
    return seen


@pytest.fixture(scope="module", params=["resnet", "sequential", "bites"])
def keras_case(request, resnet_case, sequential_case):
    if request.param == "bites":
        model = feature_model()
        crafted_head(model)
        return model, np.random.default_rng(5).normal(0.3, 1.0, (6, 22, 22, 2)).astype(np.float32)
    model, x, _ = resnet_case if request.param == "resnet" else sequential_case
    return model, x[:6]


def test_the_forward_pass_the_oracle_reads_equals_keras_at_every_relu_mask_point(keras_case):
    model, x = keras_case
    network = fd.from_keras(model)
    points = network.mask_points("relu")
    assert points
    seen = engine_values(network, x, "relu")
    expected = keras_values(model, sorted({p.keras_name for p in points}), x)
    for point in points:
        np.testing.assert_allclose(seen[point.name], expected[point.keras_name], atol=2e-5, rtol=1e-5,
                                   err_msg=point.name)


def test_the_forward_pass_equals_keras_at_every_conv_mask_point_keras_exposes(keras_case):
    """Convolutions without an inline activation: Keras' output is the pre-activation value."""
    model, x = keras_case
    network = fd.from_keras(model)
    linear = [p for p in network.mask_points("conv") if p.name == p.keras_name
              and getattr(model.get_layer(p.keras_name), "activation", None).__name__ == "linear"]
    if not linear:
        pytest.skip("every convolution of this model has its activation inline")
    seen = engine_values(network, x, "conv")
    expected = keras_values(model, [p.keras_name for p in linear], x)
    for point in linear:
        np.testing.assert_allclose(seen[point.name], expected[point.name], atol=2e-5, rtol=1e-5, err_msg=point.name)
