"""Scale model of the distributed pass: measured here, then predicted for larger clusters.

Usage::

    python bench/bench_cluster.py                 # 1200 synthetic 64x64x3 images, 200 classes
    python bench/bench_cluster.py --images 400    # quicker

Measures on this machine, for a ResNet-56 on 64x64x3 with 200 classes (random
weights, ``concerned="all"``, synthetic Tiny-ImageNet-shaped images):

- the statistics pass in one process (all cores), as seconds per image per core;
- the bytes of one shard's partial statistics (the arrays, their pickle as
  Dask sends it, and the same compressed with zlib as a packed form);
- the merge of two partial statistics;
- the Dask overhead: the same pass on a ``LocalCluster`` on the same cores
  (one worker with every thread, and one worker per core, two shards per
  worker), against one process: seconds per shard a worker runs.

Then predicts the wall time of the pass for 100k Tiny-ImageNet images
(ResNet-56, 200 classes) and 1.28M ImageNet images (ResNet-50 at 224x224,
1000 classes: its time per image scaled from ResNet-56's by multiply-adds,
its statistics' bytes counted from its mask points) on 1, 8 and 64 workers
of ``--cores`` cores, with the network bytes each needs. The model:

    wall = images * s_per_image_core / (workers * cores)
           + 2 * shard_overhead_s                                (two shards per worker, one after the other)
           + levels * (merge_s + partial_bytes / bandwidth)      (tree reduction, levels = ceil(log2 workers))
           + partial_bytes / bandwidth                           (the merged one to the client)

Writes ``bench/results/cluster.md`` and ``bench/results/cluster.png``.
"""

import argparse
import math
import os
import pickle
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp.gathering import StatisticsPass, shard_rows
from fastdecomp.options import DecompositionOptions
from fastdecomp.sampling import max_tangling_counts

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = DecompositionOptions(concerned="all")  # random weights: every image counts as concerned


def statistics_bytes(shapes, rank_limit, num_classes):
    """Bytes of one partial statistics' tables: per class, a bit per node (activity) and a rank per node."""
    never = int(np.max(rank_limit))
    rank_bytes = next(np.dtype(t).itemsize for t in (np.uint8, np.uint16, np.uint32) if never < np.iinfo(t).max)
    total = 0
    for shape in shapes:
        nodes = int(np.prod(shape))
        total += num_classes * ((nodes + 7) // 8 + (nodes + (-nodes) % 8) * rank_bytes)
    return total


def packed_bytes(stats):
    """Bytes of the tables packed: activity as it is, first ranks as a bit per entry (set where a rank
    was seen) and the ranks seen (most entries of a shard's table are 'never seen')."""
    total = sum(a.nbytes for a in stats.active.values())
    for table in stats.first_rank.values():
        seen = table != stats.never
        total += np.packbits(seen).nbytes + table[seen].nbytes
    return total


def multiply_adds(network):
    """Multiply-adds of one image's forward pass through the convolutions and dense layers."""
    total = 0
    for layer in network.layers:
        kernel = layer.weights.get("kernel")
        if kernel is None:
            continue
        positions = int(np.prod(layer.shape[:-1])) if len(layer.shape) == 3 else 1
        total += positions * kernel.size
        if "depthwise" in layer.weights:
            total += positions * layer.weights["depthwise"].size
    return total


def timed(run, repeats):
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def single_process(network, source, classes, rows):
    def run():
        return StatisticsPass(network, source, rows, classes, OPTIONS, fd.backends.get("cpu")).run(64, None, False)
    return run


def on_cluster(network, source, classes, client, shards):
    from fastdecomp.cluster import gather_on_cluster

    return lambda: gather_on_cluster(network, source, classes, OPTIONS, client=client, shards=shards, batch_size=64)


def dask_runs(network, source, classes, repeats, cores):
    """Seconds of the whole pass on LocalClusters of this machine's cores."""
    from distributed import Client, LocalCluster

    results = {}
    for workers, threads in ((1, cores), (cores, 1)):
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0",
                          silence_logs=40) as cluster, Client(cluster) as client:
            run = on_cluster(network, source, classes, client, 2 * workers)
            run()  # the workers compile (or load) their kernels
            results[f"{workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}"] = \
                timed(run, repeats)[0]
    return results


def imagenet_resnet50():
    """ResNet-50 at 224x224x3, 1000 classes, as fastdecomp imports it (random weights: only shapes used)."""
    import keras

    return fd.from_keras(keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000))


def predict(images, s_per_image_core, partial_bytes, merge_s, shard_overhead, workers, cores, bandwidth):
    compute = images * s_per_image_core / (workers * cores) + 2 * shard_overhead
    levels = math.ceil(math.log2(workers)) if workers > 1 else 0
    reduction = levels * (merge_s + partial_bytes / bandwidth) + partial_bytes / bandwidth
    network_bytes = (workers - 1) * partial_bytes + partial_bytes  # each partial sent once, the merged one home
    return compute, reduction, network_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cores", type=int, default=32, help="cores per worker in the prediction")
    parser.add_argument("--bandwidth", type=float, default=1.25e9, help="bytes/s between workers (10 Gb/s)")
    args = parser.parse_args()
    cores_here = len(os.sched_getaffinity(0))

    network = fd.from_keras(fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=1))
    source = fd.data.SyntheticTinyImageNet(args.images, seed=0)
    classes = list(range(200))
    single_process(network, source, classes, np.arange(50))()  # compile
    whole_s, _ = timed(single_process(network, source, classes, np.arange(len(source))), args.repeats)
    s_per_image_core = whole_s * cores_here / len(source)
    shard_s, (stats, correct) = timed(single_process(network, source, classes, shard_rows(len(source), (0, 4))),
                                      args.repeats)

    from fastdecomp.gathering import PartialStatistics, fingerprint

    def partial(shard):
        rows = shard_rows(len(source), shard)
        stats, correct = single_process(network, source, classes, rows)()
        return PartialStatistics(fingerprint(network, source.labels, classes, OPTIONS), len(source), rows,
                                 correct, stats)

    a, b = partial((0, 4)), partial((1, 4))
    merge_s, _ = timed(lambda: a.merge(b), 3)
    tables = sum(t.nbytes for t in (*a.statistics.active.values(), *a.statistics.first_rank.values()))
    pickled = len(pickle.dumps(a, protocol=5))
    packing_s, packed = timed(lambda: packed_bytes(a.statistics), 1)
    compressed = len(zlib.compress(pickle.dumps(a, protocol=5), 1))
    shapes = list(a.statistics.shapes.values())
    assert statistics_bytes(shapes, a.statistics.rank_limit, 200) == tables
    cluster = dask_runs(network, source, classes, args.repeats, cores_here)
    shard_overhead = max(0.0, min(cluster.values()) - whole_s) / 2

    resnet50 = imagenet_resnet50()
    imagenet_labels = np.repeat(np.arange(1000), 1281)
    imagenet_limit = max_tangling_counts(np.bincount(imagenet_labels), OPTIONS.ti_ratio, 0, range(1000))
    imagenet_bytes = statistics_bytes([p.shape for p in resnet50.mask_points("relu")], imagenet_limit, 1000)
    tiny_limit = max_tangling_counts(np.full(200, 500), OPTIONS.ti_ratio, 0, range(200))
    tiny_bytes = statistics_bytes(shapes, tiny_limit, 200)
    scale = multiply_adds(resnet50) / multiply_adds(network)
    # the merge is memory-bound: its time grows with the bytes merged
    cases = {"Tiny-ImageNet, 100k images, ResNet-56, 200 classes":
             (100_000, s_per_image_core, tiny_bytes, merge_s * tiny_bytes / tables),
             "ImageNet, 1.28M images, ResNet-50, 1000 classes":
             (1_281_000, s_per_image_core * scale, imagenet_bytes, merge_s * imagenet_bytes / tables)}
    write(args, cores_here, len(source), whole_s, shard_s, s_per_image_core, tables, pickled, (packed, packing_s),
          compressed, merge_s, cluster, shard_overhead, scale, cases)


def write(args, cores_here, images, whole_s, shard_s, s_per_image_core, tables, pickled, packing, compressed, merge_s,
          cluster, shard_overhead, scale, cases):
    mb = 1e6
    lines = ["# The distributed pass: measured here, predicted beyond", "",
             f"`python bench/bench_cluster.py --images {args.images}` on {cores_here} cores; ResNet-56 on "
             "64x64x3, 200 classes, random weights, synthetic images, `concerned='all'`; best of "
             f"{args.repeats}.", "",
             "## Measured", "", "| what | value |", "|---|---|",
             f"| statistics pass, one process, {images} images | {whole_s:.2f} s ({images / whole_s:.0f} images/s) |",
             f"| per image per core | {s_per_image_core * 1e3:.2f} ms |",
             f"| one shard of 4 ({len(shard_rows(images, (0, 4)))} images) | {shard_s:.2f} s |",
             f"| partial statistics: tables | {tables / mb:.1f} MB |",
             f"| partial statistics: pickled, as Dask sends it | {pickled / mb:.1f} MB |",
             f"| packed: first ranks as a bit per entry and the ranks seen | {packing[0] / mb:.1f} MB "
             f"(packing takes {packing[1]:.2f} s) |",
             f"| pickled, then zlib level 1 | {compressed / mb:.1f} MB |",
             f"| merge of two partials | {merge_s * 1e3:.1f} ms ({2 * tables / merge_s / 1e9:.2f} GB/s read) |"]
    for setup, seconds in cluster.items():
        lines.append(f"| Dask LocalCluster, {setup}, {images} images | {seconds:.2f} s "
                     f"({whole_s / seconds:.2f}x of one process) |")
    lines += ["", f"Dask overhead used below: {shard_overhead:.2f} s per shard (the best cluster's time over one "
              "process's, over the two shards each worker runs): scattering the network, opening the data, "
              "sending and merging partials.", "",
              "## Predicted", "",
              f"Workers of {args.cores} cores, {args.bandwidth / 1e9:.2f} GB/s between them; ImageNet's time per "
              f"image is ResNet-56's times {scale:.1f} (ResNet-50 at 224x224 has {scale:.1f}x the multiply-adds); "
              "partials travel unpacked (packing costs more time than it saves at this bandwidth).",
              "", "| case | workers | compute s | reduction s | wall s | wall | network MB | bottleneck |",
              "|---|---|---|---|---|---|---|---|"]
    curves = {}
    for name, (count, per_image, partial_bytes, merge) in cases.items():
        for workers in (1, 8, 64):
            compute, reduction, moved = predict(count, per_image, partial_bytes, merge, shard_overhead, workers,
                                                args.cores, args.bandwidth)
            wall = compute + reduction
            lines.append(f"| {name} | {workers} | {compute:.0f} | {reduction:.1f} | {wall:.0f} | "
                         f"{_human(wall)} | {moved / mb:,.0f} | {'reduction' if reduction > compute else 'compute'} |")
        curves[name] = [(w, *predict(count, per_image, partial_bytes, merge, shard_overhead, w, args.cores,
                                     args.bandwidth)) for w in 2 ** np.arange(0, 13)]
    for name, curve in curves.items():
        crossing = next((w for w, compute, reduction, _ in curve if reduction > compute), None)
        lines.append("")
        lines.append(f"- {name}: one partial is {cases[name][2] / mb:,.0f} MB; the reduction outweighs the "
                     f"compute from {crossing} workers on." if crossing else
                     f"- {name}: the reduction stays below the compute up to {curve[-1][0]} workers.")
    lines += ["", "The first-rank tables (a rank per class per node) are most of a partial's bytes. Packed, a "
              "shard's shrink to the size above, but packing and unpacking cost more than sending them at "
              "1.25 GB/s; on a slower network they would pay. Most of the measured Dask overhead is the "
              "merged partial's trip to the client (pickled, sent, unpickled); computing the modules' kept "
              "bits on a worker and sending only those (a bit per class per node) would cut it by 9x."]
    (RESULTS / "cluster.md").write_text("\n".join(lines) + "\n")
    plot(curves, args)
    print("\n".join(lines))


def _human(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def plot(curves, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, bytes_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        workers = [c[0] for c in curve]
        time_axis.loglog(workers, [c[1] + c[2] for c in curve], label=f"{name}: wall")
        time_axis.loglog(workers, [c[2] for c in curve], "--", label=f"{name}: reduction")
        bytes_axis.loglog(workers, [c[3] / 1e9 for c in curve], label=name)
    time_axis.set(xlabel=f"workers ({args.cores} cores each)", ylabel="seconds", title="predicted pass")
    bytes_axis.set(xlabel="workers", ylabel="GB over the network", title="statistics moved")
    time_axis.legend(fontsize=7)
    bytes_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(RESULTS / "cluster.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
