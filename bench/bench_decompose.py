"""Decomposition on real data: accuracy of the composed modules, cost against TensorFlow.

Usage::

    python bench/bench_decompose.py                          # zoo ResNet-20 and ResNet-56
    python bench/bench_decompose.py --models resnet20-fmnist --train-images 6000

For every zoo model and mask placement it decomposes once (one streamed pass
for all classes), derives the three variants of the paper (CI+TI+MC, MC-BLN,
MC-BLN+MC-BI) and MC-BLN's "prose" rule, at the paper's delta 0.5 and at 0.1, composes all modules by voting and
reports model vs composed top-1/top-5 on Fashion-MNIST's test images, the
Jaccard indices, the wall time of decomposing all modules divided by
TensorFlow's predict time over the same images, and peak memory. Writes
``bench/results/decompose.md``.
"""

import argparse
import hashlib
import os
import resource
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import zoo

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [("CI+TI+MC", None, "algorithm", 0.5),
            ("+MC-BLN", "bln", "algorithm", 0.5), ("+MC-BLN (prose rule)", "bln", "prose", 0.5),
            ("+MC-BLN+MC-BI", "bi", "algorithm", 0.5),
            ("+MC-BLN, delta 0.1", "bln", "algorithm", 0.1), ("+MC-BLN (prose), delta 0.1", "bln", "prose", 0.1),
            ("+MC-BLN+MC-BI, delta 0.1", "bi", "algorithm", 0.1)]
PAPER = "the paper's average loss with MC-BLN: 1.77 top-1, 0.85 top-5 points"


def fingerprint(modules):
    """A digest of every module's masks and head: variants that remove nothing share it."""
    h = hashlib.sha256()
    for k in modules.classes:
        for mask in modules.masks(k, names="network").values():
            h.update(np.packbits(mask).tobytes())
        h.update(modules.head(k)[0].tobytes())
    return h.hexdigest()


def tf_predict_seconds(model, source, batch_size):
    x = source.read(np.arange(len(source)))
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20-fmnist,resnet56-fmnist")
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--test-images", type=int, default=3000)
    parser.add_argument("--mask-at", default="conv,relu")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    train = fd.data.open_data("fashion-mnist:train", args.train_images)
    test = fd.data.open_data("fashion-mnist:test", args.test_images)
    lines = []
    for name in args.models.split(","):
        if name not in zoo.available():
            print(f"skipping {name}: not in the zoo (train it with bench/train_zoo.py)")
            continue
        model = zoo.load(name)
        network = fd.from_keras(model)
        network.predict_proba(train.read(np.arange(8)), batch_size=8)  # compile outside the timed region
        tf_seconds = tf_predict_seconds(model, train, args.batch_size)
        lines.append(f"\n## {name}: {len(train)} training images, {len(test)} test images\n")
        lines.append(f"TensorFlow predict over the training images: {tf_seconds:.1f} s\n")
        lines.append("| mask at | variant | model top-1/top-5 | composed top-1/top-5 | loss top-1/top-5 (points) "
                     "| nodes kept | JI (weights*) | decompose s | / TF predict | peak MB (NumPy) | max RSS MB |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for mask_at in args.mask_at.split(","):
            tracemalloc.start()
            start = time.perf_counter()
            base = fd.decompose(network, train, mask_at=mask_at, backtrack=None,
                                batch_size=args.batch_size, progress=False)
            seconds = time.perf_counter() - start
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            scored = {}
            for label, backtrack, rule, delta in VARIANTS:
                start = time.perf_counter()
                modules = base.variant(backtrack, delta=delta, bln_rule=rule)
                variant_seconds = seconds + time.perf_counter() - start
                key = fingerprint(modules)
                if key not in scored:  # identical modules score identically
                    scored[key] = fd.compose(modules).evaluate(test, batch_size=args.batch_size)
                s = scored[key]
                kept = np.mean([fd.metrics.jaccard(modules, k) for k in modules.classes])
                ji = np.mean([fd.metrics.jaccard(modules, k, "weights") for k in modules.classes])
                row = (f"| {mask_at} | {label} | {s['model_top1']:.2%} / {s['model_top5']:.2%} | "
                       f"{s['top1']:.2%} / {s['top5']:.2%} | "
                       f"{100 * (s['model_top1'] - s['top1']):.2f} / {100 * (s['model_top5'] - s['top5']):.2f} | "
                       f"{kept:.1%} | {ji:.3f} | {variant_seconds:.1f} | {variant_seconds / tf_seconds:.2f}x | "
                       f"{peak_mb:.0f} | {rss_mb:.0f} |")
                print(name, row, flush=True)
                lines.append(row)
    lines.append(f"\n\\* Jaccard index by the authors' scripts' definition (value sets of kept weights). {PAPER}.")
    lines.append(f"\nMade by `python bench/bench_decompose.py --train-images {args.train_images} "
                 f"--test-images {args.test_images}` on {os.cpu_count()} cores.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decompose.md").write_text("# Decomposition on Fashion-MNIST\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
