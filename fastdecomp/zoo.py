"""The paper's model family, and trained models shipped with fastdecomp.

:func:`resnet_v1` builds ResNet v1 for CIFAR-sized inputs (He et al. 2016,
section 4.2): a 3x3 convolution with 16 filters, then three stages of ``n``
residual blocks with 16, 32 and 64 filters, 1x1 projection shortcuts where a
stage downsamples, global average pooling and a softmax Dense layer. Depth
``6n + 2`` gives ResNet-20/32/56 for n = 3/5/9, with 21/33/57 convolutions.

:func:`load` returns a trained model committed under ``fastdecomp/models``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError, ModelFileError

__all__ = ["resnet_v1", "small_cnn", "load", "available", "MODELS_DIR"]

MODELS_DIR = Path(__file__).resolve().parent / "models"


def resnet_v1(depth, input_shape, num_classes, batchnorm=False, seed=None):
    """Build an untrained ResNet v1 (CIFAR variant) in Keras.

    Parameters
    ----------
    depth : int
        ``6n + 2``: 20, 32, 56, ...
    input_shape : tuple of int
        ``(height, width, channels)``, e.g. ``(28, 28, 1)`` or ``(64, 64, 3)``.
    num_classes : int
    batchnorm : bool
        Put BatchNormalization after every convolution (the paper trains
        without it).
    seed : int, optional
        Seed of the weight initialisers.

    Returns
    -------
    keras.Model
        A functional model with named layers: ``stage{s}_block{b}_conv{1,2}``,
        ``..._relu{1,2}``, ``..._add``, ``..._shortcut``.
    """
    import keras
    from keras import layers

    if depth < 8 or (depth - 2) % 6:
        raise InputError(f"depth must be 6n + 2 (20, 32, 56, ...), got {depth}")
    blocks = (depth - 2) // 6
    init_seed = [0 if seed is None else int(seed)]

    def initializer():
        init_seed[0] += 1
        return keras.initializers.HeNormal(seed=None if seed is None else init_seed[0])

    def conv(x, filters, kernel, strides, name):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same",
                          kernel_initializer=initializer(), name=name)(x)
        if batchnorm:
            x = layers.BatchNormalization(name=name + "_bn")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = conv(inputs, 16, 3, 1, "conv0")
    x = layers.ReLU(name="relu0")(x)
    filters = 16
    for stage in range(3):
        for block in range(blocks):
            prefix = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv(x, filters, 3, strides, prefix + "_conv1")
            y = layers.ReLU(name=prefix + "_relu1")(y)
            y = conv(y, filters, 3, 1, prefix + "_conv2")
            shortcut = x
            if strides != 1:
                shortcut = conv(x, filters, 1, strides, prefix + "_shortcut")
            x = layers.Add(name=prefix + "_add")([y, shortcut])
            x = layers.ReLU(name=prefix + "_relu2")(x)
        filters *= 2
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax",
                           kernel_initializer=initializer(), name="output")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_v1")


def small_cnn(input_shape, num_classes, seed=None):
    """Build an untrained small CNN: two 3x3 convolution + max-pooling stages and a hidden Dense layer.

    A model that trains in a minute on a CPU, for "train a small new model
    and take its module" (the paper's motivating example).

    Parameters
    ----------
    input_shape : tuple of int
    num_classes : int
    seed : int, optional
        Seed of the initial weights.

    Returns
    -------
    keras.Model
        Sequential: ``conv1`` (16) ``pool1`` ``conv2`` (32) ``pool2`` ``flatten``
        ``hidden`` (64, ReLU) ``output`` (softmax).
    """
    import keras
    from keras import layers

    init = (lambda k: keras.initializers.HeNormal(seed=None if seed is None else int(seed) + k))
    return keras.Sequential([
        keras.Input(tuple(input_shape), name="input"),
        layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(2), name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", kernel_initializer=init(3), name="hidden"),
        layers.Dense(num_classes, activation="softmax", kernel_initializer=init(4), name="output"),
    ], name="small_cnn")


def available():
    """Names of the trained models shipped with fastdecomp, with their metadata.

    Returns
    -------
    dict
        ``name -> metadata`` (dataset, depth, test accuracy, epochs, ...).
    """
    out = {}
    for meta in sorted(MODELS_DIR.glob("*.json")):
        out[meta.stem] = json.loads(meta.read_text())
    return out


def load(name):
    """Load a trained model shipped with fastdecomp.

    Parameters
    ----------
    name : str
        ``"resnet20-fmnist"``, ``"resnet56-fmnist"``, ``"resnet20-mnist"``,
        ``"resnet20-fmnist-faulty"``, ``"smallcnn-fmnist"`` (see :func:`available`).

    Returns
    -------
    keras.Model
    """
    known = available()
    if name not in known:  # only the shipped names: never a path out of the zoo
        listed = ", ".join(sorted(known)) or "none (train them with bench/train_zoo.py)"
        raise ModelFileError(f"no zoo model named {name!r}; available: {listed}")
    from .keras_io import load_keras_model

    return load_keras_model(MODELS_DIR / f"{name}.keras")


def open_model(spec):
    """A model from a command-line style spec: ``zoo:NAME``, a ``.onnx`` file, or a ``.keras``/``.h5`` file.

    Parameters
    ----------
    spec : str

    Returns
    -------
    keras.Model or Network
    """
    if spec.startswith("zoo:"):
        return load(spec[4:])
    if spec.endswith(".onnx"):
        from .onnx_io import from_onnx

        return from_onnx(spec)
    from .keras_io import load_keras_model

    return load_keras_model(spec)
