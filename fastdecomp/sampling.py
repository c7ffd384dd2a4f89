"""The tangling-identification sample: which unconcerned inputs each module sees.

docs/method.md section 2: U_k is balanced over the other classes, about
``ti_ratio * |X_k|`` inputs, at least ``floor(|X_k| / (C - 1))`` per class and
at least one. fastdecomp draws it as follows, deterministically from ``seed``:

1. every class c gets one seeded random order of its inputs (its *ranks*);
2. module k takes ``m[k, c]`` inputs from class c, dealt round-robin over the
   other classes (in a seeded order of module k, skipping classes that have
   run out) until it holds ``max(round(ti_ratio * |X_k|), 1)``, and at least
   one from every class (:func:`tangling_counts`);
3. U_k is the first ``m[k, c]`` inputs of every other class's order.

Because every module reads a prefix of the same per-class order, one streamed
pass can record, per class and node, the smallest rank at which the node was
active, and every module's TI statistics follow from it exactly.
"""

import numpy as np

__all__ = ["class_ranks", "tangling_counts", "max_tangling_counts"]


def class_ranks(labels, num_classes, seed):
    """Rank of every input within its class's seeded random order.

    Parameters
    ----------
    labels : array_like of int
        ``[N]`` class labels.
    num_classes : int
    seed : int

    Returns
    -------
    numpy.ndarray
        int64 ``[N]``; ``ranks[i]`` is the position of input i in the order of
        class ``labels[i]``.
    """
    labels = np.asarray(labels)
    ranks = np.empty(len(labels), dtype=np.int64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([seed, 7, c]).permutation(len(members))
        ranks[members[order]] = np.arange(len(members))
    return ranks


def tangling_counts(k, concerned_size, class_sizes, ti_ratio, seed):
    """How many inputs of each class module ``k``'s unconcerned sample takes.

    Round-robin over the other classes in a seeded order of module k, one
    input per class per round, skipping classes that have run out, until the
    sample holds ``max(round(ti_ratio * concerned_size), 1)`` inputs; every
    class that has inputs gets at least one.

    Parameters
    ----------
    k : int
        The module's class.
    concerned_size : int
        ``|X_k|``.
    class_sizes : array_like of int
        Inputs available per class, ``[C]``.
    ti_ratio : float
        Target ``|U_k| / |X_k|``; 0 turns tangling identification off.
    seed : int

    Returns
    -------
    numpy.ndarray
        int64 ``[C]``, zero at ``k``.
    """
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    counts = np.zeros(len(class_sizes), dtype=np.int64)
    others = np.array([c for c in range(len(class_sizes)) if c != k and class_sizes[c] > 0], dtype=np.int64)
    if len(others) == 0 or ti_ratio == 0:
        return counts
    order = np.random.default_rng([seed, 11, k]).permutation(others)
    target = max(int(round(ti_ratio * concerned_size)), 1)
    available = int(class_sizes[others].sum())
    target = min(max(target, len(others)), available)
    full_rounds = 0
    while True:  # whole rounds first: every class below the level gets the level
        level = full_rounds + 1
        cost = int(np.minimum(class_sizes[others], level).sum())
        if cost > target:
            break
        full_rounds = level
        if cost == available:
            break
    counts[others] = np.minimum(class_sizes[others], full_rounds)
    left = target - int(counts.sum())
    for c in order:  # then one more, in the seeded order, to classes that still have inputs
        if left == 0:
            break
        if counts[c] < class_sizes[c]:
            counts[c] += 1
            left -= 1
    return counts


def max_tangling_counts(class_sizes, ti_ratio, seed, modules):
    """Upper bound, per class, of what any module in ``modules`` takes from it.

    ``tangling_counts`` is non-decreasing in ``concerned_size``, so the bound
    uses ``|X_k| <= class_sizes[k]``; it is known before the pass.

    Parameters
    ----------
    class_sizes : numpy.ndarray
        ``[C]`` inputs per class.
    ti_ratio : float
    seed : int
    modules : sequence of int
        The classes modules are built for.

    Returns
    -------
    numpy.ndarray
        int64 ``[C]``.
    """
    bound = np.zeros(len(class_sizes), dtype=np.int64)
    for k in modules:
        bound = np.maximum(bound, tangling_counts(k, class_sizes[k], class_sizes, ti_ratio, seed))
    return bound
