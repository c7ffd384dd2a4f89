"""Composed inference: every module on every image, against M x TensorFlow's predict.

Usage::

    python bench/bench_composed.py                  # ResNet-20 (10 modules) and ResNet-56 (200 modules)
    python bench/bench_composed.py --images 200

Voting needs every module's output on every image: up to M model passes per
image. Compared, on the same images: the modules one after another through
fastdecomp's engine; all modules of the set together (``ModuleSet.predict_proba``:
each layer computed once for every group of modules whose masks still agree);
the exported Keras modules one after another (``to_keras``); and M
times TensorFlow's predict of the original model, the cost a naive
composition would have. Writes ``bench/results/composed.md``.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd

RESULTS = Path(__file__).resolve().parent / "results"


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(name, model, train, x, keras_too, lines):
    modules = fd.decompose(model, train, classes=sorted(set(train.labels.tolist())),
                           concerned="all", progress=False)
    m = len(modules)
    first = modules.classes[0]
    modules.module(first).predict_proba(x[:8])
    model.predict(x[:64], verbose=0)
    alone = seconds(lambda: [modules.module(k).predict_proba(x) for k in modules.classes])
    together = seconds(lambda: modules.predict_proba(x))
    tf_once = min(seconds(lambda: model.predict(x, batch_size=256, verbose=0)) for _ in range(2))
    row = [name, str(len(x)), str(m), f"{alone:.1f}", f"{together:.1f}"]
    if keras_too:
        modules.to_keras(first).predict(x[:8], verbose=0)  # TensorFlow's start-up, outside the timing
        keras_s = seconds(lambda: [modules.to_keras(k).predict(x, batch_size=1024, verbose=0)
                                   for k in modules.classes])
        row.append(f"{keras_s:.1f}")
    else:
        row.append("-")
    row += [f"{m * tf_once:.1f}", f"{together / (m * tf_once):.2f}x", f"{together / alone:.2f}x"]
    lines.append("| " + " | ".join(row) + " |")
    print(lines[-1], flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    lines = ["# Composed inference: every module on every image\n",
             "| model | images | modules | engine, one module at a time s | engine, modules together s | "
             "Keras modules s (incl. building them) | M x TF predict s | together / (M x TF) | together / one at a time |",
             "|---|---|---|---|---|---|---|---|---|"]
    train = fd.data.stratified_subset(fd.data.fashion_mnist("train"), 4000, seed=2)
    test = fd.data.stratified_subset(fd.data.fashion_mnist("test"), args.images, seed=2)
    run("ResNet-20 (zoo), Fashion-MNIST", fd.zoo.load("resnet20-fmnist"), train, test.read(np.arange(len(test))),
        True, lines)
    synthetic = fd.data.SyntheticTinyImageNet(400, seed=1)
    x = fd.data.SyntheticTinyImageNet(max(8, args.images // 30), seed=7).read(np.arange(max(8, args.images // 30)))
    run("ResNet-56 64x64x3 (random weights)", fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1), synthetic, x,
        False, lines)
    lines.append(f"\n`python bench/bench_composed.py --images {args.images}` on {os.cpu_count()} cores. "
                 "Modules differ from the first mask point on (ReLU placement keeps ~99% of the nodes, but not "
                 "the same 1% in every module), so sharing saves little; the gain of running them together is "
                 "mostly one batch in cache for all modules.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "composed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
