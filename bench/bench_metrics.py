"""The metrics at the scale users run them: 200 modules of a ResNet-56 on 64x64x3 images.

Usage::

    python bench/bench_metrics.py                  # 2000 training, 400 test images (2 per class)
    python bench/bench_metrics.py --images 1000

Decomposes a seeded ResNet-56 (200 classes) on synthetic Tiny-ImageNet-shaped
data, then times every metric over all 200 modules: coupling over the 19,900
pairs by popcount, against the per-pair loop of the research scripts (MODA's,
timed on a sample of pairs and extrapolated), overlap, KRR, parameter
fraction and FLOPs of every pruned module, the activity counts (per node or
per channel, as they fit) and the whole report. Writes
``bench/results/metrics.md``.
"""

import argparse
import itertools
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import metrics

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn):
    started = time.perf_counter()
    result = fn()
    print(f"{time.perf_counter() - started:8.2f} s", flush=True)
    return result, time.perf_counter() - started


def pair_loop_seconds(modules, pairs):
    """The research scripts' way: one pair at a time, masks flattened per module, boolean ops per pair."""
    flat = [np.concatenate([m.ravel() for m in modules.masks(k, names="network").values()]) for k in modules.classes]
    sample = list(itertools.islice(itertools.combinations(range(len(flat)), 2), pairs))
    started = time.perf_counter()
    for i, j in sample:
        _ = np.logical_and(flat[i], flat[j]).sum() / np.logical_or(flat[i], flat[j]).sum()
    per_pair = (time.perf_counter() - started) / len(sample)
    return per_pair * len(flat) * (len(flat) - 1) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=400)
    args = parser.parse_args()
    model = fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    train = fd.data.SyntheticTinyImageNet(args.images, seed=1)
    pool = fd.data.SyntheticTinyImageNet(8 * args.test_images, seed=2)
    each = args.test_images // 200
    test = fd.data.Subset(pool, np.sort(np.concatenate([np.flatnonzero(pool.labels == c)[:each] for c in range(200)])))
    rows = []
    modules, seconds = timed(lambda: fd.decompose(model, train, concerned="all", progress=False))
    nodes = sum(int(np.prod(m.shape[1:])) for m in modules.base_masks.values())
    rows.append(("decompose (one pass, 200 modules)", seconds, f"{nodes:,} nodes per module"))
    coupling, seconds = timed(lambda: metrics.coupling(modules))
    rows.append(("coupling, nodes, 19,900 pairs (popcount)", seconds, f"mean {coupling['mean']:.4f}"))
    loop = pair_loop_seconds(modules, 200)
    rows.append(("coupling, nodes, per-pair loop (extrapolated from 200 pairs)", loop,
                 f"{loop / rows[-1][1]:.0f}x the popcount"))
    result, seconds = timed(lambda: metrics.coupling(modules, unit="kernels"))
    rows.append(("coupling, kernels", seconds, f"mean {result['mean']:.4f}"))
    result, seconds = timed(lambda: metrics.overlap(modules))
    rows.append(("overlap, 19,900 pairs", seconds, f"mean {result['mean']:.4f}"))
    result, seconds = timed(lambda: [(metrics.kernel_retention(modules, k), metrics.parameter_fraction(modules, k),
                                      metrics.flops(modules, k)) for k in modules.classes])
    rows.append(("KRR, parameter fraction, FLOPs of 200 pruned modules", seconds,
                 f"mean KRR {np.mean([r[0]['pruned'] for r in result]):.3f}"))
    counts, seconds = timed(lambda: modules.activity_counts(train))
    rows.append(("activity counts (second pass)", seconds, f"counted per {counts.level}"))
    smaller, seconds = timed(lambda: modules.thresholded(counts, activity_threshold=0.1, tangling_threshold=0.1))
    rows.append(("thresholded modules from the counts", seconds, ""))
    report, seconds = timed(lambda: modules.report(test, reuse_subsets=20, cohesion_images=each))
    rows.append((f"the whole report ({args.test_images} test images)", seconds,
                 f"coupling {report['independence']['coupling_nodes']:.4f}, cohesion "
                 f"{report['independence']['cohesion']:.4f}"))
    from machine import header

    lines = ["# The metrics at scale: 200 modules of a ResNet-56 on 64x64x3", "",
             f"`python bench/bench_metrics.py --images {args.images} --test-images {args.test_images}` "
             "(seeded random weights, synthetic Tiny-ImageNet-shaped data, concerned='all'). " + header(), "",
             "| step | seconds | note |", "|---|---|---|"]
    lines += [f"| {what} | {seconds:.2f} | {note} |" for what, seconds, note in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "metrics.md").write_text(text)


if __name__ == "__main__":
    main()
