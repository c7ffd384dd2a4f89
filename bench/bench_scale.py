"""Tiny-ImageNet-shaped scale run: ResNet-56 on 64x64x3, 200 classes, 200 modules.

Usage::

    python bench/bench_scale.py --images 1000

Synthetic, seeded images (no Tiny-ImageNet here) and an untrained ResNet-56
(random weights, so every class's images are taken as concerned:
``concerned="all"``). Prints the time of decomposing all 200 modules, of the
statistics pass alone, of fastdecomp's and TensorFlow's predict over the same
images, their ratios, and peak memory.
"""

import argparse
import os
import resource
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="predict passes of each, best taken")
    args = parser.parse_args()
    model = fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    network = fd.from_keras(model)
    source = fd.data.SyntheticTinyImageNet(args.images, seed=1)
    classes = sorted(set(source.labels.tolist()))
    network.predict(fd.data.Subset(source, np.arange(8)))

    tracemalloc.start()
    start = time.perf_counter()
    modules = fd.decompose(network, source, classes=classes, concerned="all", backtrack="bi", progress=False)
    decompose_s = time.perf_counter() - start
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    x = source.read(np.arange(len(source)))
    model.predict(x[:64], verbose=0)
    engine_runs, tf_runs = [], []
    for _ in range(args.repeats):  # interleaved, best of each: this machine's speed drifts
        start = time.perf_counter()
        network.predict(source)
        engine_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.predict(x, batch_size=128, verbose=0)
        tf_runs.append(time.perf_counter() - start)
    engine_s, tf_s = min(engine_runs), min(tf_runs)
    print(f"{len(modules)} modules from {len(source)} images: decompose {decompose_s:.1f} s "
          f"(statistics pass {modules.info['statistics_seconds']:.1f} s); engine predict {engine_s:.1f} s; "
          f"TensorFlow predict {tf_s:.1f} s")
    print(f"decompose / TF predict {decompose_s / tf_s:.2f}x; decompose / engine predict "
          f"{decompose_s / engine_s:.2f}x; peak NumPy memory {peak_mb:.0f} MB; "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
