"""Module size as a measured choice: composed top-1 against KRR and parameter fraction over a threshold sweep.

Usage::

    python bench/bench_size_accuracy.py                       # zoo ResNet-20 and ResNet-56 on Fashion-MNIST
    python bench/bench_size_accuracy.py --quick               # fewer images and settings

For each zoo model it decomposes once with the paper's options (mask at ReLU,
MC-BLN), counts per-module activity once, then for each setting of
``activity_threshold = tangling_threshold`` (node masks) and of
``channel_threshold`` (whole channels, at activity threshold 0.05) builds the
thresholded modules, prunes them and scores the composition on the test
images. It prints and writes ``bench/results/size_accuracy.md`` and
``size_accuracy.png``: top-1 loss against the mean kernel retention rate and
the mean parameter fraction of the pruned modules, next to the paper's
default and the points MwT (ICSE'24: 14.6% KRR at -1.13 top-1 points) and
SeaM (ICSE'23: 10.1% of the weights) publish for their own models and data.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import metrics
from fastdecomp.data import Subset

RESULTS = Path(__file__).resolve().parent / "results"
NODE_SWEEP = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
CHANNEL_SWEEP = [0.1, 0.25, 0.5, 0.75, 0.9]
PUBLISHED = [("MwT (ICSE'24), KRR", 0.146, -1.13), ("SeaM (ICSE'23), weights", 0.101, None)]


def sweep(name, train, test, settings, batch_size):
    model = fd.zoo.load(name)
    started = time.perf_counter()
    paper = fd.decompose(model, train, progress=False, batch_size=batch_size)
    decompose_seconds = time.perf_counter() - started
    started = time.perf_counter()
    counts = paper.activity_counts(train, batch_size=batch_size)
    count_seconds = time.perf_counter() - started
    rows = np.flatnonzero(np.isin(test.labels, paper.classes))
    points = []
    for activity, tangling, channel in settings:
        modules = paper.thresholded(counts, activity_threshold=activity, tangling_threshold=tangling,
                                    channel_threshold=channel)
        margins = metrics.composed_margins(modules, Subset(test, rows), batch_size=batch_size)
        top1 = metrics.topk_accuracy(margins, test.labels[rows], modules.classes, 1)
        retention = [metrics.kernel_retention(modules, k) for k in modules.classes]
        krr = np.mean([r["pruned"] for r in retention])
        krr_masked = np.mean([r["masked"] for r in retention])
        fraction = np.mean([metrics.parameter_fraction(modules, k)["pruned"] for k in modules.classes])
        kept = np.mean([metrics.jaccard(modules, k) for k in modules.classes])
        points.append({"activity": activity, "tangling": tangling, "channel": channel, "top1": top1,
                       "krr": float(krr), "krr_masked": float(krr_masked), "parameters": float(fraction),
                       "nodes": float(kept)})
        print(f"{name} a=t={activity:<5} c={channel}: top-1 {top1:.2%}, KRR {krr:.3f} (masked {krr_masked:.3f}), "
              f"params {fraction:.3f}, "
              f"nodes {kept:.3f}", flush=True)
    probabilities = paper.network.predict_proba(Subset(test, rows), batch_size=batch_size)
    model_top1 = metrics.topk_accuracy(probabilities, test.labels[rows], np.arange(paper.network.num_classes), 1)
    return {"model": name, "model_top1": model_top1, "points": points, "decompose_seconds": decompose_seconds,
            "count_seconds": count_seconds, "level": counts.level}


def write(results, args):
    lines = ["# Module size as a measured choice", "",
             f"`python bench/bench_size_accuracy.py{' --quick' if args.quick else ''}` "
             f"({args.train_images} training images, {args.test_images} test images, Fashion-MNIST; "
             "mask at ReLU, MC-BLN; sizes are means over the pruned modules).", "",
             "`a=t` is `activity_threshold = tangling_threshold` (node masks); `c` is `channel_threshold` "
             "(whole channels kept or removed, at a=t=0.05). The first row of each model is the paper's "
             "default. Published points of other methods are on their own models and data: "
             "MwT 14.6% KRR at -1.13 top-1 points, SeaM 10.1% of the weights.", ""]
    for result in results:
        lines += [f"## {result['model']} (model top-1 {result['model_top1']:.2%}; decomposition "
                  f"{result['decompose_seconds']:.1f} s, activity counts per {result['level']} "
                  f"{result['count_seconds']:.1f} s)", "",
                  "| a=t | c | composed top-1 | loss (points) | KRR (pruned) | KRR (masked) | parameters (pruned) "
                  "| nodes kept |", "|---|---|---|---|---|---|---|---|"]
        for p in result["points"]:
            lines.append(f"| {p['activity']} | {p['channel'] or '-'} | {p['top1']:.2%} | "
                         f"{100 * (result['model_top1'] - p['top1']):.2f} | {p['krr']:.3f} | {p['krr_masked']:.3f} | "
                         f"{p['parameters']:.3f} "
                         f"| {p['nodes']:.3f} |")
        lines.append("")
    (RESULTS / "size_accuracy.md").write_text("\n".join(lines))
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, key, label in ((axes[0], "krr", "kernel retention rate (pruned)"),
                             (axes[1], "parameters", "parameter fraction (pruned)")):
        for result in results:
            losses = [100 * (result["model_top1"] - p["top1"]) for p in result["points"]]
            sizes = [p[key] for p in result["points"]]
            axis.plot(sizes, losses, "o-", label=result["model"])
            axis.plot(sizes[0], losses[0], "k*", markersize=12)
        for name, size, loss in PUBLISHED:
            if (key == "krr") == ("KRR" in name):
                axis.axvline(size, color="grey", linestyle=":")
                axis.annotate(name + (f", {loss:+.2f}" if loss is not None else ""), (size, 0.5), rotation=90,
                              fontsize="small", color="grey")
        axis.set(xlabel=label, xlim=(0, 1.02))
        axis.invert_yaxis()
    axes[0].set_ylabel("top-1 loss, points (lower is better; star: the paper's default)")
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(RESULTS / "size_accuracy.png", dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20-fmnist,resnet56-fmnist")
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_images, args.test_images = 1000, 500
    train = fd.data.open_data("fashion-mnist:train", args.train_images)
    test = fd.data.open_data("fashion-mnist:test", args.test_images)
    node = NODE_SWEEP[::2] if args.quick else NODE_SWEEP
    settings = [(a, a, None) for a in node] + [(0.05, 0.05, c) for c in (CHANNEL_SWEEP[::2] if args.quick
                                                                         else CHANNEL_SWEEP)]
    results = [sweep(name, train, test, settings, args.batch_size) for name in args.models.split(",")]
    write(results, args)


if __name__ == "__main__":
    main()
