"""The model zoo: the ResNet v1 family and the committed trained models."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import zoo
from fastdecomp.errors import InputError, ModelFileError


@pytest.mark.parametrize("depth, convs", [(20, 21), (32, 33), (56, 57)])
def test_resnet_v1_has_the_papers_shape(depth, convs):
    import keras

    model = zoo.resnet_v1(depth, (32, 32, 3), 10)
    conv_layers = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(conv_layers) == convs
    assert sorted({l.filters for l in conv_layers}) == [16, 32, 64]
    assert sum(l.kernel_size == (1, 1) for l in conv_layers) == 2  # projection shortcuts
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert model.output_shape == (None, 10)


def test_resnet_v1_rejects_bad_depth():
    with pytest.raises(InputError, match="6n \\+ 2"):
        zoo.resnet_v1(21, (32, 32, 3), 10)


def test_trained_resnet20_is_shipped_and_accurate():
    meta = zoo.available()["resnet20-fmnist"]
    assert meta["test_top1"] >= 0.90 and meta["batchnorm"] is False
    network = fd.from_keras(zoo.load("resnet20-fmnist"))
    test = fd.data.stratified_subset(fd.data.fashion_mnist("test"), 1000)
    accuracy = np.mean(network.predict_proba(test).argmax(axis=1) == test.labels)
    assert accuracy >= 0.88  # 1,000 of the 10,000 test images


def test_unknown_zoo_model():
    with pytest.raises(ModelFileError, match="resnet20-fmnist"):
        zoo.load("vgg16-imagenet")
