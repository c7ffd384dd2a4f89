"""Module size as a choice (fastdecomp.thresholds): activity counts and thresholded masks, against the oracle."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import config
from fastdecomp.errors import InputError

from reference import reference_decompose
from test_invariants import assert_same_masks

DELTA = 0.05


@pytest.fixture(scope="module", params=["resnet", "sequential"])
def case(request, resnet_case, sequential_case):
    model, x, y = resnet_case if request.param == "resnet" else sequential_case
    return fd.from_keras(model), x, y


def kept(modules):
    return sum(int(m.sum()) for m in modules.base_masks.values())


@pytest.mark.parametrize("mask_at", ["conv", "relu"])
@pytest.mark.parametrize("level", ["node", "channel"])
def test_thresholds_of_zero_give_the_papers_masks_bit_for_bit(case, mask_at, level):
    network, x, y = case
    paper = fd.decompose(network, x, y, mask_at=mask_at, delta=DELTA, seed=5, progress=False)
    same = paper.thresholded(paper.activity_counts(x, y, level=level))
    for name, mask in paper.base_masks.items():
        np.testing.assert_array_equal(same.base_masks[name], mask, err_msg=name)
    for k in paper.classes:
        for name, mask in paper.masks(k).items():
            np.testing.assert_array_equal(same.masks(k)[name], mask)


SETTINGS = [  # activity, tangling, channel, count level
    (0.3, 0.0, None, "node"), (0.0, 0.3, None, "node"), (0.2, 0.15, 0.5, "node"),
    (0.25, 0.1, None, "channel"), (0.1, 0.3, 0.6, "channel"),
]


@pytest.mark.parametrize("mask_at", ["conv", "relu"])
@pytest.mark.parametrize("activity,tangling,channel,level", SETTINGS)
def test_thresholded_masks_equal_the_oracle(case, mask_at, activity, tangling, channel, level):
    network, x, y = case
    paper = fd.decompose(network, x, y, mask_at=mask_at, backtrack="bln", delta=DELTA, seed=5, progress=False)
    counts = paper.activity_counts(x, y, level=level, batch_size=7)
    fast = paper.thresholded(counts, activity_threshold=activity, tangling_threshold=tangling,
                             channel_threshold=channel)
    assert kept(fast) < kept(paper), "the fixture must make the thresholds remove something"
    for k in fast.classes:
        expected = reference_decompose(network, x, y, k, mask_at=mask_at, backtrack="bln", delta=DELTA, seed=5,
                                       activity_threshold=activity, tangling_threshold=tangling,
                                       channel_threshold=channel, count_level=level)
        assert_same_masks(fast, k, *expected)


def test_decompose_with_thresholds_counts_in_a_second_pass_and_says_at_which_level(resnet_case):
    model, x, y = resnet_case
    network = fd.from_keras(model)
    paper = fd.decompose(network, x, y, delta=DELTA, progress=False)
    direct = fd.decompose(network, x, y, delta=DELTA, activity_threshold=0.2, tangling_threshold=0.1,
                          progress=False)
    by_hand = paper.thresholded(x, y, activity_threshold=0.2, tangling_threshold=0.1)
    assert direct.options.activity_threshold == 0.2 and direct.info["activity_counts"] == "node"
    for name, mask in by_hand.base_masks.items():
        np.testing.assert_array_equal(direct.base_masks[name], mask)
    with config.using(activity_count_bytes=64):
        small = fd.decompose(network, x, y, delta=DELTA, activity_threshold=0.2, progress=False)
    assert small.info["activity_counts"] == "channel"


def test_higher_thresholds_keep_subsets_and_variants_keep_them(resnet_case):
    model, x, y = resnet_case
    paper = fd.decompose(fd.from_keras(model), x, y, delta=DELTA, progress=False)
    counts = paper.activity_counts(x, y)
    previous = paper
    for threshold in (0.1, 0.3, 0.6):
        smaller = paper.thresholded(counts, activity_threshold=threshold, tangling_threshold=threshold)
        for name, mask in smaller.base_masks.items():
            assert not (mask & ~previous.base_masks[name]).any()
        previous = smaller
    variant = previous.variant("bi")
    assert variant.options.activity_threshold == 0.6
    for name, mask in variant.base_masks.items():
        np.testing.assert_array_equal(mask, previous.base_masks[name])


def test_a_channel_threshold_lets_pruning_drop_channels(resnet_case):
    model, x, y = resnet_case
    paper = fd.decompose(fd.from_keras(model), x, y, delta=DELTA, progress=False)
    whole = paper.thresholded(x, y, channel_threshold=0.9)
    k = paper.classes[0]
    for name, mask in whole.masks(k, names="network").items():
        if mask.ndim == 3:
            per_channel = mask.reshape(-1, mask.shape[-1])
            assert (per_channel.all(axis=0) | ~per_channel.any(axis=0)).all(), name
    assert fd.metrics.sizes(whole, k)["parameters"] < fd.metrics.sizes(paper, k)["parameters"]


def test_thresholded_modules_save_and_load_with_their_options(resnet_case, tmp_path):
    model, x, y = resnet_case
    modules = fd.decompose(fd.from_keras(model), x, y, delta=DELTA, activity_threshold=0.3, channel_threshold=0.5,
                           progress=False)
    fd.save(modules, tmp_path / "m")
    loaded = fd.load_modules(tmp_path / "m")
    assert loaded.options == modules.options
    for name, mask in modules.base_masks.items():
        np.testing.assert_array_equal(loaded.base_masks[name], mask)
    with pytest.raises(InputError, match=r"threshold the set decompose\(\) returned"):
        loaded.thresholded(x, y, activity_threshold=0.1)


def test_options_saved_before_thresholds_existed_read_as_the_papers():
    old = {k: v for k, v in fd.DecompositionOptions().to_dict().items() if "threshold" not in k}
    assert fd.DecompositionOptions.from_dict(old) == fd.DecompositionOptions()


@pytest.mark.parametrize("bad,match", [
    (dict(activity_threshold=1.0), "activity_threshold must be a fraction"),
    (dict(tangling_threshold=-0.1), "tangling_threshold must be a fraction"),
    (dict(activity_threshold=float("nan")), "activity_threshold"),
    (dict(channel_threshold=0.0), "channel_threshold must be None"),
    (dict(channel_threshold=True), "channel_threshold"),
])
def test_thresholds_outside_their_range_are_refused(resnet_case, bad, match):
    model, x, y = resnet_case
    with pytest.raises(InputError, match=match):
        fd.decompose(model, x, y, progress=False, **bad)


def test_counting_on_other_data_or_reusing_other_modules_counts_is_refused(resnet_case):
    model, x, y = resnet_case
    network = fd.from_keras(model)
    modules = fd.decompose(network, x, y, delta=DELTA, progress=False)
    with pytest.raises(InputError, match="decomposed from 48 images"):
        modules.activity_counts(x[:40], y[:40])
    with pytest.raises(InputError, match="labels differ"):
        modules.activity_counts(x, np.roll(y, 1))
    with pytest.raises(InputError, match="needs the data's labels"):
        modules.activity_counts(x)
    with pytest.raises(InputError, match="level must be one of"):
        modules.activity_counts(x, y, level="layer")
    others = fd.decompose(network, x, y, delta=DELTA, classes=[0, 1], progress=False)
    with pytest.raises(InputError, match="taken for other modules"):
        modules.thresholded(others.activity_counts(x, y), activity_threshold=0.1)
