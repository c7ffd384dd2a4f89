"""The field's metrics (fastdecomp.metrics, fastdecomp.energy), each against a direct computation of its formula."""

import itertools

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import config, metrics
from fastdecomp.data import Subset
from fastdecomp.energy import EnergyMeter, co2e_lbs
from fastdecomp.errors import InputError


@pytest.fixture(scope="module")
def zoo_model():
    return fd.zoo.load("resnet20-fmnist")


@pytest.fixture(scope="module")
def trained(zoo_model):
    """The trained zoo ResNet-20 decomposed on 600 Fashion-MNIST images, and a thresholded set that drops channels."""
    train = fd.data.stratified_subset(fd.data.fashion_mnist("train"), 600, seed=1)
    paper = fd.decompose(zoo_model, train, progress=False)
    smaller = paper.thresholded(train, activity_threshold=0.1, tangling_threshold=0.1, channel_threshold=0.5)
    return paper, smaller


@pytest.fixture(scope="module")
def test_set():
    return fd.data.stratified_subset(fd.data.fashion_mnist("test"), 300, seed=2)


def test_pairwise_jaccard_by_popcount_equals_sets():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 203)) < 0.4
    masks[5] = False
    got = metrics.pairwise_jaccard(masks)
    for i, j in itertools.product(range(6), repeat=2):
        a, b = set(np.flatnonzero(masks[i])), set(np.flatnonzero(masks[j]))
        assert got[i, j] == (len(a & b) / len(a | b) if a | b else 1.0)
    split = {"p": masks[:, :70].reshape(6, 7, 10), "q": masks[:, 70:]}
    np.testing.assert_array_equal(metrics.pairwise_jaccard(split), got)


@pytest.mark.parametrize("unit", ["nodes", "kernels"])
def test_coupling_is_the_mean_jaccard_over_every_pair(trained, unit):
    modules = trained[1]
    if unit == "nodes":
        rows = [np.concatenate([m.ravel() for m in modules.masks(k).values()]) for k in modules.classes]
    else:
        rows = list(metrics.kernel_masks(modules))
    pairs = [(rows[i] & rows[j]).sum() / (rows[i] | rows[j]).sum() for i, j in itertools.combinations(range(len(rows)), 2)]
    assert metrics.coupling(modules, unit=unit)["mean"] == pytest.approx(np.mean(pairs), rel=1e-12)


def test_kernel_retention_counts_the_filters_of_the_exported_module(trained, zoo_model):
    import keras

    paper, smaller = trained
    k = 3
    sizes = metrics.sizes(smaller, k)
    krr = metrics.kernel_retention(smaller, k)
    assert krr["masked"] == sizes["kept_channels"] / sizes["channels"] < 1
    exported = smaller.to_keras(k)
    filters = sum(layer.filters for layer in exported.layers if isinstance(layer, keras.layers.Conv2D))
    assert krr["pruned"] == filters / sum(layer.filters for layer in zoo_model.layers
                                          if isinstance(layer, keras.layers.Conv2D))
    assert krr["masked"] <= krr["pruned"] <= 1


def test_parameter_fraction_before_and_after_pruning(trained):
    paper, smaller = trained
    network = smaller.network
    total = sum(w.size for layer in network.layers for w in layer.weights.values())
    for k in (0, 7):
        fraction = metrics.parameter_fraction(smaller, k)
        assert fraction["pruned"] == smaller.pruned(k).parameter_count() / total
        zeroed = smaller.pruned(k, drop_channels=False)
        kept = sum(int((w != 0).sum()) for layer in zeroed.layers
                   for w in zeroed.channeled(layer).weights.values())
        assert fraction["masked"] == pytest.approx(kept / total, abs=2e-4)  # a trained weight may be 0 itself
        assert fraction["pruned"] <= fraction["masked"] < metrics.parameter_fraction(paper, k)["masked"]
        assert fraction["compression_ratio"] == pytest.approx(1 / fraction["pruned"])


def test_flops_of_the_model_follow_its_keras_layers(trained, zoo_model):
    import keras

    paper, smaller = trained
    expected = 0
    for layer in zoo_model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, c_out = layer.output.shape[1:]
            kh, kw, c_in, _ = layer.kernel.shape
            expected += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            expected += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    counted = metrics.flops(paper, 0)
    assert counted["model"] == expected
    assert metrics.flops(smaller, 0)["module"] < counted["module"] <= expected


def test_overlap_counts_the_parameters_two_modules_share(trained):
    modules = trained[1]
    network = modules.network
    owned = []
    for k in modules.classes:
        masks = modules.masks(k, names="network")
        flags = []
        for layer in network.layers:
            if layer.name == network.output_dense:
                continue
            ones = {key: np.ones(w.shape) for key, w in layer.weights.items()}
            if layer.handler.prunes_channels:
                clone = type(layer).__new__(type(layer))
                clone.__dict__.update(layer.__dict__, weights=ones)
                layer.handler.zero_channels(clone, fd.pruning.dead_channels(network, layer, masks))
            flags += [w.ravel() > 0 for w in ones.values()]
        owned.append(np.concatenate(flags))
    total = sum(w.size for layer in network.layers for w in layer.weights.values())
    got = metrics.overlap(modules)
    for i, j in [(0, 1), (2, 9), (4, 4)]:
        assert got["pairwise"][i, j] == pytest.approx((owned[i] & owned[j]).sum() / total, rel=1e-12)


def test_cohesion_is_the_jaccard_of_activation_masks_within_a_class(trained, test_set):
    modules = trained[0]
    pairs = np.concatenate([np.flatnonzero(test_set.labels == k)[:2] for k in modules.classes])
    two_each = Subset(test_set, pairs)
    got = metrics.cohesion(modules, two_each, images_per_class=2)
    activity = []
    for _, _, values, _ in modules.network.iter_mask_values(two_each, mask_at=modules.options.mask_at):
        activity.append(np.concatenate([v.reshape(len(v), -1) > 0 for v in values.values()], axis=1))
    activity = np.concatenate(activity)
    for i, k in enumerate(modules.classes):
        a, b = activity[2 * i], activity[2 * i + 1]
        assert got["per_class"][k] == pytest.approx((a & b).sum() / (a | b).sum(), rel=1e-12)
    with pytest.raises(InputError, match="at least 2 images of each class"):
        metrics.cohesion(modules, Subset(test_set, pairs[::2]))


def test_per_class_scores_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 5, 200), rng.integers(0, 6, 200)
    predicted[predicted == 5] = 4
    ours = metrics.per_class_scores(labels, predicted, range(5))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(5),
                                                                     zero_division=0)
    for c in range(5):
        assert ours[c]["precision"] == pytest.approx(precision[c])
        assert ours[c]["recall"] == pytest.approx(recall[c])
        assert ours[c]["f1"] == pytest.approx(f1[c])
        assert ours[c]["support"] == support[c]


def test_reuse_accuracy_of_each_subset_is_that_compositions_accuracy(trained, test_set):
    modules = trained[0]
    reuse = metrics.reuse_accuracy(modules, test_set, k=3, subsets=4, seed=5)
    assert len(reuse["subsets"]) == 4 and len({tuple(s["classes"]) for s in reuse["subsets"]}) == 4
    for subset in reuse["subsets"][:2]:
        assert fd.compose((modules, subset["classes"])).evaluate(test_set)["top1"] == subset["top1"]
    assert reuse["min"] <= reuse["mean"] <= reuse["max"]
    every_pair = metrics.reuse_accuracy(modules, test_set, k=9, subsets=100)
    assert len(every_pair["subsets"]) == 10
    with pytest.raises(InputError, match="k must be an integer from 1 to 10"):
        metrics.reuse_accuracy(modules, test_set, k=11)


def test_latency_reports_times_of_a_module_and_a_composition(trained, test_set):
    modules = trained[0]
    images = test_set.read(np.arange(8))
    for target in (modules.module(1), fd.compose(modules)):
        timing = metrics.latency(target, images, batch_size=8, repeats=2)
        assert timing["batch_size"] == 8 and timing["single_image_ms"] > 0 and timing["images_per_second"] > 0
    with pytest.raises(InputError, match="repeats must be a positive integer"):
        metrics.latency(modules.module(1), images, repeats=0)


def test_a_test_set_without_the_modules_classes_is_refused(trained, test_set):
    modules = trained[0]
    without_3 = Subset(test_set, np.flatnonzero(test_set.labels != 3))
    with pytest.raises(InputError, match=r"no image of classes \[3\]"):
        metrics.reuse_accuracy(modules, without_3)
    with pytest.raises(InputError, match="needs labelled images"):
        metrics.cohesion(modules, test_set.read(np.arange(10)))


def _powercap(root, energy, wrap=2**32):
    package = root / "intel-rapl:0"
    package.mkdir(parents=True, exist_ok=True)
    (package / "energy_uj").write_text(f"{energy}\n")
    (package / "max_energy_range_uj").write_text(f"{wrap}\n")
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # a core subdomain: not counted again


def test_energy_is_read_from_rapl_across_a_wraparound(tmp_path):
    _powercap(tmp_path, 2**32 - 1_000_000)
    with EnergyMeter(tmp_path) as meter:
        _powercap(tmp_path, 4_000_000)
    assert meter.result["joules"] == pytest.approx(5.000001)
    assert meter.result["source"].startswith("RAPL")
    assert meter.result["co2e_lbs"] == pytest.approx(0.954 * 1.58 * 5.000001 / 3.6e6)


def test_energy_is_estimated_where_rapl_cannot_be_read(tmp_path):
    with config.using(watts_per_core=20.0), EnergyMeter(tmp_path / "absent") as meter:
        sum(i * i for i in range(200_000))
    assert meter.result["source"] == "estimated: CPU time x 20 W per core"
    assert meter.result["joules"] == pytest.approx(20.0 * meter.result["cpu_seconds"])
    assert co2e_lbs(3.6e6) == pytest.approx(0.954 * 1.58)


def test_decompose_records_its_energy(trained):
    energy = trained[0].info["energy"]
    assert energy["seconds"] > 0 and energy["joules"] > 0 and "source" in energy


def test_multiply_adds_of_every_weighted_kind_follow_keras():
    import keras

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = keras.layers.Conv2D(4, 1, groups=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    expected = 0
    for layer in model.layers:
        positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) == 4 else 1
        if isinstance(layer, keras.layers.SeparableConv2D):
            expected += positions * (layer.depthwise_kernel.numpy().size + layer.pointwise_kernel.numpy().size)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            expected += positions * layer.kernel.numpy().size
    network = fd.from_keras(model)
    assert sum(layer.handler.multiply_adds(layer) for layer in network.layers) == expected


def test_patching_the_faulty_models_module_scores_the_target_and_the_others(trained, test_set):
    strong = trained[0]
    train = fd.data.stratified_subset(fd.data.fashion_mnist("train"), 600, seed=1)
    weak = fd.decompose(fd.zoo.load("resnet20-fmnist-faulty"), train, concerned="all", progress=False)
    before = metrics.composition_scores(fd.compose(weak), test_set, target=7)
    patched = fd.compose(weak).replace(7, strong.module(7))
    after = metrics.composition_scores(patched, test_set, target=7)
    predicted = patched.predict(test_set)
    labels = test_set.labels
    assert after["target"]["recall"] == ((predicted == 7) & (labels == 7)).sum() / (labels == 7).sum()
    assert after["others_top1"] == (predicted[labels != 7] == labels[labels != 7]).mean()
    assert after["top1"] == patched.evaluate(test_set)["top1"]
    assert after["target"]["f1"] > before["target"]["f1"] + 0.3  # the faulty model hardly knows class 7
    with pytest.raises(InputError, match="target 11 is not a label"):
        metrics.composition_scores(patched, test_set, target=11)
