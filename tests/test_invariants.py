"""The exactness invariants of docs/method.md section 9, against the literal reference in reference.py."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.data import ArraySource

from reference import mask_point_values, mask_points as reference_mask_points, reference_decompose

VARIANTS = [None, "bln", "bi"]
PLACEMENTS = ["conv", "relu"]
DELTA = 0.05  # random test weights are small; the paper's 0.5 would remove nothing


@pytest.fixture(scope="module", params=["resnet", "sequential"])
def case(request, resnet_case, sequential_case):
    model, x, y = resnet_case if request.param == "resnet" else sequential_case
    return fd.from_keras(model), x, y


@pytest.fixture(scope="module")
def reference_masks(case):
    """Reference masks of every module for every variant and placement, computed once."""
    network, x, y = case
    cache = {}

    def get(k, backtrack, mask_at, bln_rule="algorithm"):
        key = (k, backtrack, mask_at, bln_rule)
        if key not in cache:
            cache[key] = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack=backtrack,
                                             delta=DELTA, bln_rule=bln_rule, seed=5)
        return cache[key]
    return get


def assert_same_masks(fast, k, expected_keep, expected_head, expected_samples):
    got = fast.masks(k, names="network")
    assert set(got) == set(expected_keep)
    for name, mask in expected_keep.items():
        np.testing.assert_array_equal(got[name], mask, err_msg=f"module {k}, mask point {name}")
    kernel, bias = fast.head(k)
    np.testing.assert_array_equal(kernel, expected_head[0])
    np.testing.assert_array_equal(bias, expected_head[1])
    concerned, unconcerned = fast.sample_indices(k)
    np.testing.assert_array_equal(concerned, expected_samples[0])
    np.testing.assert_array_equal(unconcerned, expected_samples[1])


@pytest.mark.parametrize("mask_at", PLACEMENTS)
@pytest.mark.parametrize("backtrack", VARIANTS)
def test_streamed_masks_equal_reference_for_any_batch_size(case, reference_masks, backtrack, mask_at):
    network, x, y = case
    for batch_size in (1, 7, len(x)):
        fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack=backtrack, delta=DELTA,
                            batch_size=batch_size, seed=5, progress=False)
        for k in fast.classes:
            assert_same_masks(fast, k, *reference_masks(k, backtrack, mask_at))


def test_prose_rule_equals_reference(case, reference_masks):
    network, x, y = case
    fast = fd.decompose(network, x, y, mask_at="conv", backtrack="bi", bln_rule="prose", delta=DELTA,
                        seed=5, batch_size=16, progress=False)
    for k in fast.classes:
        assert_same_masks(fast, k, *reference_masks(k, "bi", "conv", "prose"))


def test_backtracking_removes_something(case):
    """Guard: the variants must differ on these models, or the tests above prove little."""
    network, x, y = case
    kept = {}
    for backtrack in VARIANTS:
        fast = fd.decompose(network, x, y, backtrack=backtrack, delta=DELTA, seed=5, progress=False)
        kept[backtrack] = sum(fd.metrics.sizes(fast, k)["kept_nodes"] for k in fast.classes)
    assert kept[None] > kept["bln"] >= kept["bi"]


class ShuffledBatches(ArraySource):
    """A source that delivers its batches in a seeded random order."""

    def batches(self, batch_size, indices=None):
        batches = list(super().batches(batch_size, indices))
        for i in np.random.default_rng(9).permutation(len(batches)):
            yield batches[i]


def test_masks_do_not_depend_on_batch_order(case):
    network, x, y = case
    plain = fd.decompose(network, x, y, backtrack="bi", delta=DELTA, batch_size=5, seed=5, progress=False)
    shuffled = fd.decompose(network, ShuffledBatches(x, y), backtrack="bi", delta=DELTA, batch_size=5,
                            seed=5, progress=False)
    for k in plain.classes:
        for name, mask in plain.masks(k, names="network").items():
            np.testing.assert_array_equal(shuffled.masks(k, names="network")[name], mask)


def test_concern_identification_alone_ignores_input_order(case):
    network, x, y = case
    order = np.random.default_rng(3).permutation(len(x))
    a = fd.decompose(network, x, y, backtrack=None, ti_ratio=0, batch_size=8, progress=False)
    b = fd.decompose(network, x[order], y[order], backtrack=None, ti_ratio=0, batch_size=8, progress=False)
    for k in a.classes:
        for name, mask in a.masks(k, names="network").items():
            np.testing.assert_array_equal(b.masks(k, names="network")[name], mask)


def test_ci_module_reproduces_model_outputs_on_concerned_inputs(case):
    """Invariant 2: with relu mask points, CI alone changes no output on X_k."""
    network, x, y = case
    fast = fd.decompose(network, x, y, mask_at="relu", backtrack=None, ti_ratio=0, progress=False)
    for k in fast.classes:
        concerned, _ = fast.sample_indices(k)
        assert len(concerned) > 0
        module = network.forward(x[concerned], masks=fast.masks(k, names="network"), logits=True)
        model = network.forward(x[concerned], logits=True)
        np.testing.assert_array_equal(module, model)
        # and the masks are not trivially all-kept
    assert any(not m.all() for k in fast.classes for m in fast.masks(k, names="network").values())


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_bi_removals_change_no_module_output(case, mask_at):
    """Invariant 3: nodes MC-BI finds dead change no output of the CI+TI+MC-BLN module."""
    network, x, y = case
    bln = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bln", delta=DELTA, progress=False)
    bi = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bi", delta=DELTA, progress=False)
    more_removed = 0
    for k in bln.classes:
        more_removed += fd.metrics.sizes(bln, k)["kept_nodes"] - fd.metrics.sizes(bi, k)["kept_nodes"]
        np.testing.assert_array_equal(bi.module(k).predict_proba(x), bln.module(k).predict_proba(x))
    assert more_removed >= 0


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_keras_export_matches_engine(case, mask_at):
    """Invariant 4: the exported, physically pruned Keras module equals the engine's module."""
    network, x, y = case
    fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bi", delta=DELTA, progress=False)
    for k in fast.classes:
        keras_model = fast.to_keras(k)
        assert keras_model.output_shape == (None, 2)
        np.testing.assert_allclose(keras_model.predict(x, verbose=0), fast.module(k).predict_proba(x),
                                   atol=2e-6, rtol=1e-5)


def test_reference_observes_every_mask_point(case):
    network, x, _ = case
    for mask_at in PLACEMENTS:
        values, probs = mask_point_values(network, x[0], mask_at)
        assert set(values) == {p.name for p in reference_mask_points(network, mask_at)}
        assert probs.shape == (network.num_classes,)


@pytest.mark.parametrize("mask_at", PLACEMENTS)
def test_all_inputs_concerned_equals_reference(case, mask_at):
    """concerned='all' folds statistics in during the forward pass; same masks as the oracle."""
    network, x, y = case
    fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bln", delta=DELTA, concerned="all",
                        batch_size=5, seed=3, progress=False, n_jobs=2)
    for k in fast.classes:
        expected = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack="bln", delta=DELTA,
                                       concerned="all", seed=3)
        assert_same_masks(fast, k, *expected)


def test_activity_kernel_matches_numpy():
    """The fused statistics kernel against packbits/minimum, with a node count not a multiple of 8."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(9)
    values = rng.standard_normal((12, 21)).astype(np.float32)
    concerned = rng.integers(-1, 3, 12)
    tangle = rng.integers(-1, 3, 12)
    rank = np.where(tangle >= 0, rng.integers(0, 6, 12), -1)
    active = np.zeros((3, 3), np.uint8)
    first_rank = np.full((3, 24), 6, np.uint8)
    packed = np.zeros((12, 3), np.uint8)
    cpu.accumulate_activity(values, concerned, tangle, rank, active, first_rank, packed)
    bits = np.packbits(values > 0, axis=1)
    np.testing.assert_array_equal(packed, bits)
    for c in range(3):
        expected = np.bitwise_or.reduce(bits[concerned == c], axis=0) if (concerned == c).any() else 0
        np.testing.assert_array_equal(active[c], expected)
        ranks = np.where(values[tangle == c] > 0, rank[tangle == c][:, None], 6)
        np.testing.assert_array_equal(first_rank[c, :21], ranks.min(axis=0, initial=6))
    assert (first_rank[:, 21:] == 6).all()


def test_packed_activity_kernel_matches_the_value_kernel():
    """Statistics folded from the epilogue's packed bits equal those folded from the values."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(10)
    values = rng.standard_normal((12, 40)).astype(np.float32)
    concerned, tangle = rng.integers(-1, 3, 12), rng.integers(-1, 3, 12)
    rank = np.where(tangle >= 0, rng.integers(0, 6, 12), -1)
    from_values = [rng.integers(0, 256, (3, 5)).astype(np.uint8), np.full((3, 40), 6, np.uint16)]
    from_bits = [array.copy() for array in from_values]
    cpu.accumulate_activity(values, concerned, tangle, rank, *from_values, np.zeros((0, 0), np.uint8))
    cpu.accumulate_packed_activity(np.packbits(values > 0, axis=1), concerned, tangle, rank, *from_bits)
    for got, expected in zip(from_bits, from_values):
        np.testing.assert_array_equal(got, expected)
    assert (from_bits[1] < 6).any()


def test_epilogue_bits_feed_the_statistics(case, monkeypatch):
    """The decomposition reads the convolution epilogue's bits (not the values) wherever it can,
    and its masks are those of a decomposition that reads the values everywhere."""
    from fastdecomp import statistics

    network, x, y = case
    source = ArraySource(x, y)
    used = []
    original = statistics.ActivityStatistics.update

    def recording(self, name, values, *roles, packed=False, bits=None):
        used.append(bits is not None)
        return original(self, name, values, *roles, packed=packed, bits=bits)

    monkeypatch.setattr(statistics.ActivityStatistics, "update", recording)
    with_bits = fd.decompose(network, source, mask_at="relu", batch_size=7, progress=False, n_jobs=2)
    if any(layer.kind == "conv2d" and layer.shape[-1] % 8 == 0 for layer in network.layers):
        assert sum(used) > len(used) // 2  # the ResNet: every mask point but the dense layer's
    else:
        assert not any(used)  # the small CNN's 4 and 6 channels leave no whole bytes of bits
    monkeypatch.setattr(fd.backends.CpuDevice, "writes_activity_bits", False)
    used.clear()
    from_values = fd.decompose(network, source, mask_at="relu", batch_size=7, progress=False, n_jobs=2)
    assert not any(used)
    for k in with_bits.classes:
        for name, mask in from_values.masks(k, names="network").items():
            np.testing.assert_array_equal(with_bits.masks(k, names="network")[name], mask)


@pytest.mark.parametrize("regime", ["round-robin", "sparse", "with-zeros", "own-class"])
def test_tangling_keep_equals_its_definition(regime):
    """keep[m, node] |= any over c of first_rank[c, node] < counts[m, c], whatever the counts look like."""
    from fastdecomp.kernels import cpu

    rng = np.random.default_rng(len(regime))
    classes, modules, nodes = 40, 70, 300
    first_rank = rng.integers(0, 5, (classes, nodes)).astype(np.uint16)
    owners = rng.integers(0, classes, modules)
    if regime == "round-robin":  # as sampling.tangling_counts deals them: a level, some one more
        counts = 1 + (rng.random((modules, classes)) < 0.2)
        counts[np.arange(modules), owners] = 0
    elif regime == "sparse":
        counts = np.zeros((modules, classes), np.int64)
        for k in range(modules):
            counts[k, rng.choice(classes, 3, replace=False)] = rng.integers(1, 4, 3)
    elif regime == "with-zeros":
        counts = rng.integers(0, 3, (modules, classes))
    else:
        counts = rng.integers(1, 4, (modules, classes))
    counts = counts.astype(np.int64)
    kept = rng.random((modules, nodes)) < 0.3
    expected = kept | (first_rank[None, :, :] < counts[:, :, None]).any(axis=1)
    cpu.tangling_keep(first_rank, counts, kept)
    np.testing.assert_array_equal(kept, expected)


def relu6_model(seed=6):
    """ReLU6 both ways (a layer and an inline activation), and layers that are identities at inference."""
    import keras
    from keras import layers

    init = keras.initializers.HeNormal(seed=seed)
    bias = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    inputs = keras.Input((10, 10, 2))
    x = layers.RandomFlip(name="flip")(inputs)
    x = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, bias_initializer=bias, name="c1")(x)
    x = layers.ReLU(max_value=0.6, name="r1")(x)  # a low cap, so that the random activations reach it
    x = layers.Identity(name="same")(x)
    x = layers.Conv2D(8, 3, strides=2, activation="relu6", kernel_initializer=init, bias_initializer=bias,
                      name="c2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", kernel_initializer=init, name="output")(x)
    return keras.Model(inputs, outputs, name="relu6")


def test_capped_relus_and_inference_identities_hold_the_invariants():
    from conftest import balance_output_bias, labelled_like_model

    model = relu6_model()
    x = np.random.default_rng(9).normal(size=(36, 10, 10, 2)).astype(np.float32) * 3
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    network = fd.from_keras(model)
    assert [l.kind for l in network.layers].count("relu") == 2 and "flip" not in network.by_name
    np.testing.assert_allclose(network.predict_proba(x), model.predict(x, verbose=0), atol=1e-5)
    capped = []
    network.forward(x, observe=lambda layer, v: capped.append((v == 0.6).any()), mask_at="relu")
    assert capped[0], "the cap must be reached, or the test proves little"
    for mask_at in PLACEMENTS:
        for backtrack in VARIANTS:
            fast = fd.decompose(network, x, y, mask_at=mask_at, backtrack=backtrack, delta=DELTA, seed=5,
                                progress=False)
            for k in fast.classes:
                expected = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack=backtrack, delta=DELTA,
                                               seed=5)
                assert_same_masks(fast, k, *expected)
    k = fast.classes[0]
    engine = fast.module(k).predict_proba(x)
    np.testing.assert_allclose(fast.to_keras(k).predict(x, verbose=0), engine, atol=2e-6)


def test_a_capped_rectifier_fused_into_the_epilogue_changes_no_value():
    model = relu6_model()
    network = fd.from_keras(model)
    plan = fd.engine.plan_fusions(network, frozenset(), frozenset(), False)
    assert set(plan.rectified.values()) == {0.6, 6.0}  # both caps run in their convolution's epilogue
    x = np.random.default_rng(9).normal(size=(12, 10, 10, 2)).astype(np.float32) * 3
    unfused = network.forward(x, observe=lambda layer, v: None, mask_at="relu")
    np.testing.assert_array_equal(network.forward(x), unfused)
    np.testing.assert_allclose(unfused, model.predict(x, verbose=0), atol=1e-6)
