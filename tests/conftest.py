import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true",
                     help="fail, instead of skipping, the tests that need a CUDA device when none is there")
    parser.addoption("--gpu-spin", type=int, default=0, metavar="CYCLES",
                     help="before each upload, spin a kernel this many GPU clock cycles on the NULL stream and "
                          "on the upload's stream (FASTDECOMP_GPU_SPIN), so a missing stream wait gives a wrong "
                          "result every time")


def pytest_configure(config):
    if config.getoption("--gpu-spin"):
        os.environ["FASTDECOMP_GPU_SPIN"] = str(config.getoption("--gpu-spin"))


def cuda_available():
    from fastdecomp.errors import BackendError
    from fastdecomp import backends

    try:
        return backends.get("cuda") is not None
    except BackendError:
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run wherever a CUDA device is reachable, and are skipped elsewhere."""
    if config.getoption("--gpu") or not any("gpu" in item.keywords for item in items) or cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (CuPy, a driver and a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def balance_output_bias(model, x):
    """Set the output bias so that a random model predicts every class about equally."""
    import keras

    dense = model.get_layer("output") if any(l.name == "output" for l in model.layers) else model.layers[-1]
    features = keras.Model(model.inputs, dense.input).predict(x, verbose=0)
    kernel, bias = dense.get_weights()
    logits = features @ kernel
    dense.set_weights([kernel, -np.median(logits, axis=0)])


def labelled_like_model(model, x, flip_every=6, seed=0):
    """Labels equal to the model's predictions, with every ``flip_every``-th one changed."""
    y = model.predict(x, verbose=0).argmax(axis=1)
    rng = np.random.default_rng(seed)
    num_classes = model.output_shape[-1]
    flip = np.arange(0, len(y), flip_every)
    y[flip] = (y[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
    return y


def small_resnet(seed=3):
    from fastdecomp import zoo

    return zoo.resnet_v1(8, (8, 8, 1), 4, seed=seed)


def small_sequential(seed=4):
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential([
        keras.Input((12, 12, 2)),
        layers.Conv2D(4, 3, padding="valid", activation="relu", kernel_initializer=init, name="c1"),
        layers.MaxPooling2D(2, name="mp"),
        layers.Conv2D(6, 3, strides=2, padding="same", kernel_initializer=init, name="c2"),
        layers.ReLU(name="r2"),
        layers.ZeroPadding2D(1, name="zp"),
        layers.AveragePooling2D(2, strides=1, name="ap"),
        layers.Flatten(name="flat"),
        layers.Dense(8, activation="relu", kernel_initializer=init, name="hidden"),
        layers.Dropout(0.3, name="drop"),
        layers.Dense(3, activation="softmax", kernel_initializer=init, name="output"),
    ], name="small_sequential")


@pytest.fixture(scope="session")
def resnet_case():
    """A ResNet-8 on 8x8x1 with 4 classes, balanced random weights, and 48 labelled images."""
    model = small_resnet()
    x = np.random.default_rng(1).random((48, 8, 8, 1), dtype=np.float32)
    balance_output_bias(model, x)
    return model, x, labelled_like_model(model, x)


@pytest.fixture(scope="session")
def sequential_case():
    """A Sequential CNN with valid/same padding, stride 2, pooling, zero padding and hidden Dense."""
    model = small_sequential()
    x = np.random.default_rng(2).random((40, 12, 12, 2), dtype=np.float32)
    balance_output_bias(model, x)
    return model, x, labelled_like_model(model, x, flip_every=5)


@pytest.fixture(autouse=True)
def _settings_read_afresh():
    """Settings a test changed through the environment are forgotten after it."""
    yield
    from fastdecomp import config

    config._reset()


def randomise_normalisation(model, seed=0):
    """Give every BatchNormalization of ``model`` random statistics, scales and offsets (a model built
    with ``weights=None`` or untrained has mean 0 and variance 1, which hides every folding bug)."""
    import keras

    rng = np.random.default_rng(seed)
    draw = {"gamma": lambda n: rng.uniform(0.6, 1.4, n), "beta": lambda n: rng.normal(0, 0.3, n),
            "moving_mean": lambda n: rng.normal(0, 0.3, n), "moving_variance": lambda n: rng.uniform(0.4, 1.6, n)}
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.weights:
                name = variable.path.split("/")[-1]
                variable.assign(draw[name](variable.shape).astype(np.float32))


def randomise_biases(model, seed=0, scale=0.2):
    """Nonzero biases everywhere (an untrained model's are all 0, which hides every bias bug)."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        bias = getattr(layer, "bias", None)
        if bias is not None and hasattr(bias, "assign"):
            bias.assign(rng.normal(0, scale, bias.shape).astype(np.float32))


def _all_layers(model):
    for layer in model.layers:
        yield from (_all_layers(layer) if hasattr(layer, "layers") else [layer])


@pytest.fixture(scope="session")
def files(tmp_path_factory, resnet_case):
    """The ResNet case as a model file and a data file, as the command line takes them."""
    model, x, y = resnet_case
    folder = tmp_path_factory.mktemp("cli")
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x=x, y=y)
    return folder
