"""A decomposition split over shards: statistics per shard, merged in any grouping, give the modules of
one pass bit for bit."""

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.shards import gather_statistics, merge, modules_from_statistics

from test_invariants import assert_same_masks

DELTA = 0.05


def same_modules(a, b):
    assert a.classes == b.classes
    for k in a.classes:
        assert_same_masks(b, k, a.masks(k, names="network"), a.head(k), a.sample_indices(k))


@pytest.mark.parametrize("concerned", ["correct", "all"])
@pytest.mark.parametrize("mask_at", ["relu", "conv"])
def test_merged_shards_give_the_single_pass_modules(resnet_case, sequential_case, mask_at, concerned):
    rng = np.random.default_rng(0)
    for model, x, y in (resnet_case, sequential_case):
        network = fd.from_keras(model)
        options = dict(mask_at=mask_at, concerned=concerned, seed=3)
        whole = fd.decompose(network, x, y, backtrack="bi", delta=DELTA, progress=False, **options)
        parts = [gather_statistics(network, x, y, shard=(i, 7), batch_size=4, **options) for i in range(7)]
        assert len(x) % 7 and sorted(len(p.rows) for p in parts)[0] < sorted(len(p.rows) for p in parts)[-1]
        order = rng.permutation(7)
        merged = merge([parts[i] for i in order])
        same_modules(whole, modules_from_statistics(network, merged, y, backtrack="bi", delta=DELTA, **options))


def random_split_merge(parts, rng):
    """Merge in a random binary tree over a random order."""
    pool = [parts[i] for i in rng.permutation(len(parts))]
    while len(pool) > 1:
        i = rng.integers(len(pool) - 1)
        pool[i:i + 2] = [pool[i].merge(pool[i + 1])]
    return pool[0]


def test_the_merge_is_associative_and_commutative(resnet_case):
    model, x, y = resnet_case
    network = fd.from_keras(model)
    rng = np.random.default_rng(1)
    parts = [gather_statistics(network, x, y, shard=(i, 6)) for i in range(6)]
    reference = merge(parts)
    for _ in range(4):
        other = random_split_merge(parts, rng)
        np.testing.assert_array_equal(other.rows, reference.rows)
        np.testing.assert_array_equal(other.correct, reference.correct)
        for name in reference.statistics.shapes:
            np.testing.assert_array_equal(other.statistics.active[name], reference.statistics.active[name])
            np.testing.assert_array_equal(other.statistics.first_rank[name], reference.statistics.first_rank[name])
        np.testing.assert_array_equal(other.statistics.concerned_count, reference.statistics.concerned_count)


def test_a_missing_a_repeated_and_a_foreign_shard_are_refused(resnet_case):
    model, x, y = resnet_case
    network = fd.from_keras(model)
    parts = [gather_statistics(network, x, y, shard=(i, 3)) for i in range(3)]
    with pytest.raises(fd.errors.InputError, match="a shard was given twice"):
        merge(parts + parts[:1])
    with pytest.raises(fd.errors.InputError, match="a shard is missing"):
        modules_from_statistics(network, merge(parts[:2]), y)
    foreign = gather_statistics(network, x, y, shard=(2, 3), seed=9)
    with pytest.raises(fd.errors.InputError, match="fingerprints differ"):
        merge(parts[:2] + [foreign])
    relabelled = gather_statistics(network, x, np.roll(y, 1), shard=(2, 3))
    with pytest.raises(fd.errors.InputError, match="fingerprints differ"):
        merge(parts[:2] + [relabelled])
    with pytest.raises(fd.errors.InputError, match="another model, labels, classes or options"):
        modules_from_statistics(network, merge(parts), y, mask_at="conv")
    with pytest.raises(fd.errors.InputError, match="shard must be"):
        gather_statistics(network, x, y, shard=(3, 3))


def test_saved_statistics_load_checked_and_merge_from_the_command_line(files, resnet_case, tmp_path, capsys):
    from fastdecomp import cli
    from fastdecomp.shards import load_statistics, save_statistics

    model, x, y = resnet_case
    network = fd.from_keras(model)
    part = gather_statistics(network, x, y, shard=(1, 3))
    save_statistics(part, tmp_path / "part")
    loaded = load_statistics(tmp_path / "part")
    assert loaded.fingerprint == part.fingerprint
    np.testing.assert_array_equal(loaded.rows, part.rows)
    arrays = tmp_path / "part" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-20])
    with pytest.raises(fd.errors.ModelFileError, match="checksum"):
        load_statistics(tmp_path / "part")

    common = [str(files / "model.keras"), str(files / "data.npz"), "--mask-at", "conv", "--no-progress"]
    for i in range(3):
        assert cli.main(["stats", *common, "--shard", f"{i}/3", "-o", str(tmp_path / f"part{i}")]) == 0
    parts = [str(tmp_path / f"part{i}") for i in (2, 0, 1)]
    assert cli.main(["merge", *parts, "-o", str(tmp_path / "modules"), "--backtrack", "bi", "--delta", "0.05"]) == 0
    assert "from 3 shards" in capsys.readouterr().out
    whole = fd.decompose(network, x, y, mask_at="conv", backtrack="bi", delta=0.05, progress=False)
    same_modules(whole, fd.load(tmp_path / "modules"))
    assert cli.main(["merge", *parts[:2], "-o", str(tmp_path / "never")]) == 2
    assert "a shard is missing" in capsys.readouterr().err


def test_statistics_pickle_and_come_back_the_same(resnet_case):
    import pickle

    model, x, y = resnet_case
    part = gather_statistics(fd.from_keras(model), x, y, shard=(1, 3))
    stats = part.statistics
    again = pickle.loads(pickle.dumps(part)).statistics
    assert any((t != stats.never).any() for t in stats.first_rank.values())
    for name in stats.shapes:
        np.testing.assert_array_equal(again.active[name], stats.active[name])
        np.testing.assert_array_equal(again.first_rank[name], stats.first_rank[name])
        assert again.first_rank[name].dtype == stats.first_rank[name].dtype
    np.testing.assert_array_equal(again.concerned_count, stats.concerned_count)
    assert again.backend.name == "cpu" and len(again._locks) == len(stats.shapes)  # usable again


@pytest.mark.parametrize("counts", ["negative", "more than the images"])
def test_shard_counts_resealed_by_hand_are_refused(resnet_case, tmp_path, monkeypatch, counts):
    """The sums in a saved shard are not keyed: an edit with recomputed sums loads past them, so every count
    is checked for sign and against the shard's images (-1000 used to merge and change the modules)."""
    import fastdecomp.saving
    from fastdecomp.shards import load_statistics, save_statistics

    model, x, y = resnet_case
    part = gather_statistics(fd.from_keras(model), x, y, shard=(0, 2))
    save_statistics(part, tmp_path / "part")
    real = fastdecomp.saving._read_arrays

    def tampered(path, manifest):
        arrays = dict(real(path, manifest))
        changed = arrays["concerned_count"].copy()
        changed[1] = -1000 if counts == "negative" else len(part.rows) + 1
        arrays["concerned_count"] = changed
        return arrays

    monkeypatch.setattr(fastdecomp.saving, "_read_arrays", tampered)
    with pytest.raises(fd.errors.ModelFileError, match="concerned_count"):
        load_statistics(tmp_path / "part")
