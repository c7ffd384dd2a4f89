"""Tiny-ImageNet-shaped scale run: ResNet-56 on 64x64x3, 200 classes, 200 modules.

Usage::

    python bench/bench_scale.py --images 1000

    python bench/bench_scale.py --curve 500,2000,8000   # one process per size; writes bench/results/scale.md

    python bench/bench_scale.py --memory 100000   # decomposition only; writes bench/results/memory.md

Synthetic, seeded images (no Tiny-ImageNet here) and an untrained ResNet-56
(random weights, so every class's images are taken as concerned:
``concerned="all"``). Prints the time of decomposing all 200 modules, of the
statistics pass alone, of fastdecomp's, ONNX Runtime's (a graph built from
the same weights, :mod:`onnx_baseline`) and TensorFlow's predict over the same
images (streamed in chunks, so memory does not grow with the images), all
interleaved and best of ``--repeats`` (this machine's speed drifts), their
ratios, and peak memory: NumPy's (tracemalloc) and the process's resident set
right after the decomposition (it includes TensorFlow and Keras, loaded to
build the model).

``--memory N`` decomposes N images once, without the predict baselines, and
samples the resident set every second, to show that memory does not grow
with the number of images.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each, best taken")
    parser.add_argument("--curve", help="comma-separated image counts, one process each")
    parser.add_argument("--targets", default="native,haswell",
                        help="FASTDECOMP_TARGET_CPU values the curve is run under, one process each")
    parser.add_argument("--json", action="store_true", help="print one JSON line of results")
    parser.add_argument("--memory", type=int, metavar="N", help="decompose N images once, sampling memory")
    args = parser.parse_args()
    if args.curve:
        return curve([int(n) for n in args.curve.split(",")], args.repeats, args.targets.split(","))
    if args.memory:
        return memory_run(args.memory)
    model = fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    network = fd.from_keras(model)
    source = fd.data.SyntheticTinyImageNet(args.images, seed=1)
    classes = sorted(set(source.labels.tolist()))
    network.predict_proba(fd.data.Subset(source, np.arange(8)))

    model.predict(source.read(np.arange(64)), verbose=0)
    from machine import header
    from onnx_baseline import OnnxRuntimePredictor

    runtime = OnnxRuntimePredictor(network)
    runtime.predict(source.read(np.arange(64)))
    if not args.json:
        print(header(), flush=True)

    def tf_predict():
        start = time.perf_counter()
        for _, xb, _ in source.batches(2048):
            model.predict(xb, batch_size=128, verbose=0)
        return time.perf_counter() - start

    def ort_predict():
        start = time.perf_counter()
        for _, xb, _ in source.batches(2048):
            runtime.predict(xb, 128)
        return time.perf_counter() - start

    # Interleaved: TF, then (decompose, engine, TF) per repeat, so every decomposition has a TF run
    # just before and just after it; this machine's speed drifts by tens of percent within minutes.
    decompose_runs, engine_runs, tf_runs, ort_runs = [], [], [tf_predict()], []
    for repeat in range(args.repeats):
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
        network.predict_proba(source)
        engine_runs.append(time.perf_counter() - start)
        ort_runs.append(ort_predict())
        tf_runs.append(tf_predict())
    paired = [d / ((tf_runs[i] + tf_runs[i + 1]) / 2) for i, (d, _) in enumerate(decompose_runs)]
    paired_ratio = float(np.median(paired[1:] if len(paired) > 2 else paired))  # the first ran under tracemalloc
    (decompose_s, statistics_s), engine_s, tf_s = min(decompose_runs), min(engine_runs), min(tf_runs)
    ort_s = min(ort_runs)
    if args.json:
        print(json.dumps({"images": len(source), "modules": len(classes), "decompose_s": decompose_s,
                          "statistics_s": statistics_s, "engine_s": engine_s, "tf_s": tf_s, "ort_s": ort_s,
                          "target": os.environ.get("FASTDECOMP_TARGET_CPU", "native"),
                          "paired_ratio": paired_ratio, "peak_numpy_mb": peak_mb, "rss_mb": rss_mb}))
        return
    print(f"{len(classes)} modules from {len(source)} images: decompose {decompose_s:.1f} s "
          f"(statistics pass {statistics_s:.1f} s); engine predict {engine_s:.1f} s; "
          f"ONNX Runtime predict {ort_s:.1f} s; TensorFlow predict {tf_s:.1f} s")
    print(f"decompose / ORT predict: {decompose_s / ort_s:.2f}x; engine / ORT predict: {engine_s / ort_s:.2f}x")
    print(f"decompose / TF predict: {decompose_s / tf_s:.2f}x best of each, {paired_ratio:.2f}x median of "
          f"each decomposition against the TF runs around it; decompose / engine predict "
          f"{decompose_s / engine_s:.2f}x; peak NumPy memory {peak_mb:.0f} MB; "
          f"max RSS after decomposing {rss_mb:.0f} MB")


def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(images):
    """Decompose ``images`` synthetic images once; resident memory sampled every second."""
    model = fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    network = fd.from_keras(model)
    source = fd.data.SyntheticTinyImageNet(images, seed=1)
    classes = sorted(set(source.labels.tolist()))
    samples, done = [], threading.Event()
    started = time.perf_counter()

    def sample():
        while not done.wait(1.0):
            samples.append((time.perf_counter() - started, resident_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    modules = fd.decompose(network, source, classes=classes, concerned="all", backtrack="bi", progress=False)
    peak_numpy = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pass_seconds = modules.info["statistics_seconds"]
    quartiles = [next(rss for t, rss in samples if t >= q * pass_seconds) for q in (0.25, 0.5, 0.75, 0.99)]
    print(f"{len(classes)} modules from {images} images: {seconds:.0f} s ({images / seconds:.0f} img/s); "
          f"peak NumPy {peak_numpy:.0f} MB; max RSS {peak_rss:.0f} MB; RSS at 25/50/75/99% of the pass "
          + " / ".join(f"{rss:.0f}" for rss in quartiles) + " MB")
    results = Path(__file__).resolve().parent / "results"
    (results / "memory.md").write_text(
        f"# Memory of one decomposition: ResNet-56, 64x64x3, 200 modules, {images:,} images\n\n"
        "| images | seconds | img/s | peak NumPy MB | max RSS MB | RSS at 25% / 50% / 75% / 99% of the pass MB |\n"
        "|---|---|---|---|---|---|\n"
        f"| {images} | {seconds:.0f} | {images / seconds:.0f} | {peak_numpy:.0f} | {peak_rss:.0f} | "
        + " / ".join(f"{rss:.0f}" for rss in quartiles) + " |\n\n"
        f"`python bench/bench_scale.py --memory {images}` on {os.cpu_count()} cores; RSS includes TensorFlow "
        "and Keras (loaded to build the model), NumPy peak from tracemalloc.\n")


def curve(sizes, repeats, targets):
    rows = []
    for target, n in [(target, n) for target in targets for n in sizes]:
        env = {**os.environ, "FASTDECOMP_TARGET_CPU": target}
        if target == "haswell":
            env["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # TensorFlow held to AVX2 too (ONNX Runtime has no such switch)
        result = subprocess.run([sys.executable, __file__, "--images", str(n), "--repeats", str(repeats), "--json"],
                                capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{target}, {n} images: decompose {r['decompose_s']:.1f} s, ORT {r['ort_s']:.1f} s, TF {r['tf_s']:.1f} s, "
              f"decompose/ORT {r['decompose_s'] / r['ort_s']:.2f}x, "
              f"ratio {r['decompose_s'] / r['tf_s']:.2f}x (paired {r['paired_ratio']:.2f}x), NumPy peak {r['peak_numpy_mb']:.0f} MB, "
              f"RSS {r['rss_mb']:.0f} MB", flush=True)
    results = Path(__file__).resolve().parent / "results"
    lines = ["# 200 modules of a ResNet-56 on 64x64x3 (synthetic Tiny-ImageNet-shaped data)\n",
             "| target | images | decompose s | statistics pass s | engine predict s | ORT predict s | TF predict s | "
             "decompose / ORT | decompose / TF | decompose / TF, paired | pass / TF | peak NumPy MB | "
             "RSS after decomposing MB |",
             "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['target']} | {r['images']} | {r['decompose_s']:.1f} | {r['statistics_s']:.1f} | "
                     f"{r['engine_s']:.1f} | {r['ort_s']:.1f} | {r['tf_s']:.1f} | {r['decompose_s'] / r['ort_s']:.2f}x | "
                     f"{r['decompose_s'] / r['tf_s']:.2f}x | {r['paired_ratio']:.2f}x | {r['statistics_s'] / r['tf_s']:.2f}x | "
                     f"{r['peak_numpy_mb']:.0f} | {r['rss_mb']:.0f} |")
    lines.append(f"\n`python bench/bench_scale.py --curve {','.join(map(str, sizes))} --targets {','.join(targets)}` "
                 f"on {os.cpu_count()} cores, "
                 "one process per row; decomposition, engine predict and TensorFlow predict interleaved, best of "
                 f"{repeats} each (peak memory from the first decomposition). 'Paired': the median over repeats "
                 "of each decomposition's time over the mean of the TensorFlow runs just before and after it "
                 "(the first decomposition, traced by tracemalloc, left out when there are 3 or more).")
    (results / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
