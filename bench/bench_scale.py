"""Tiny-ImageNet-shaped scale run: ResNet-56 on 64x64x3, 200 classes, 200 modules.

Usage::

    python bench/bench_scale.py --images 1000

    python bench/bench_scale.py --curve 500,2000,8000   # one process per size; writes bench/results/scale.md

Synthetic, seeded images (no Tiny-ImageNet here) and an untrained ResNet-56
(random weights, so every class's images are taken as concerned:
``concerned="all"``). Prints the time of decomposing all 200 modules, of the
statistics pass alone, of fastdecomp's and TensorFlow's predict over the same
images (streamed in chunks, so memory does not grow with the images), all
interleaved and best of ``--repeats`` (this machine's speed drifts), their
ratios, and peak memory: NumPy's (tracemalloc) and the process's resident set
right after the decomposition (it includes TensorFlow and Keras, loaded to
build the model).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
import resource
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each, best taken")
    parser.add_argument("--curve", help="comma-separated image counts, one process each")
    parser.add_argument("--json", action="store_true", help="print one JSON line of results")
    args = parser.parse_args()
    if args.curve:
        return curve([int(n) for n in args.curve.split(",")], args.repeats)
    model = fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    network = fd.from_keras(model)
    source = fd.data.SyntheticTinyImageNet(args.images, seed=1)
    classes = sorted(set(source.labels.tolist()))
    network.predict(fd.data.Subset(source, np.arange(8)))

    model.predict(source.read(np.arange(64)), verbose=0)
    decompose_runs, engine_runs, tf_runs = [], [], []
    for repeat in range(args.repeats):  # interleaved, best of each: this machine's speed drifts
        if repeat == 0:
            tracemalloc.start()
        start = time.perf_counter()
        modules = fd.decompose(network, source, classes=classes, concerned="all", backtrack="bi", progress=False)
        decompose_runs.append((time.perf_counter() - start, modules.info["statistics_seconds"]))
        if repeat == 0:
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        del modules
        start = time.perf_counter()
        network.predict(source)
        engine_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _, xb, _ in source.batches(2048):
            model.predict(xb, batch_size=128, verbose=0)
        tf_runs.append(time.perf_counter() - start)
    (decompose_s, statistics_s), engine_s, tf_s = min(decompose_runs), min(engine_runs), min(tf_runs)
    if args.json:
        print(json.dumps({"images": len(source), "modules": len(classes), "decompose_s": decompose_s,
                          "statistics_s": statistics_s, "engine_s": engine_s, "tf_s": tf_s,
                          "peak_numpy_mb": peak_mb, "rss_mb": rss_mb}))
        return
    print(f"{len(classes)} modules from {len(source)} images: decompose {decompose_s:.1f} s "
          f"(statistics pass {statistics_s:.1f} s); engine predict {engine_s:.1f} s; "
          f"TensorFlow predict {tf_s:.1f} s")
    print(f"decompose / TF predict {decompose_s / tf_s:.2f}x; decompose / engine predict "
          f"{decompose_s / engine_s:.2f}x; peak NumPy memory {peak_mb:.0f} MB; "
          f"max RSS after decomposing {rss_mb:.0f} MB")


def curve(sizes, repeats):
    rows = []
    for n in sizes:
        result = subprocess.run([sys.executable, __file__, "--images", str(n), "--repeats", str(repeats), "--json"],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{n} images: decompose {r['decompose_s']:.1f} s, TF {r['tf_s']:.1f} s, "
              f"ratio {r['decompose_s'] / r['tf_s']:.2f}x, NumPy peak {r['peak_numpy_mb']:.0f} MB, "
              f"RSS {r['rss_mb']:.0f} MB", flush=True)
    results = Path(__file__).resolve().parent / "results"
    lines = ["# 200 modules of a ResNet-56 on 64x64x3 (synthetic Tiny-ImageNet-shaped data)\n",
             "| images | decompose s | statistics pass s | engine predict s | TF predict s | decompose / TF | "
             "pass / TF | peak NumPy MB | RSS after decomposing MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['decompose_s']:.1f} | {r['statistics_s']:.1f} | {r['engine_s']:.1f} | "
                     f"{r['tf_s']:.1f} | {r['decompose_s'] / r['tf_s']:.2f}x | {r['statistics_s'] / r['tf_s']:.2f}x | "
                     f"{r['peak_numpy_mb']:.0f} | {r['rss_mb']:.0f} |")
    lines.append(f"\n`python bench/bench_scale.py --curve {','.join(map(str, sizes))}` on {os.cpu_count()} cores, "
                 "one process per row; decomposition, engine predict and TensorFlow predict interleaved, best of "
                 f"{repeats} each (peak memory from the first decomposition).")
    (results / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
