"""Export of deep residual and dense networks to ONNX and to Keras: seconds per model.

Usage::

    python bench/bench_export.py

For keras.applications ResNet152 and DenseNet169 (random weights, 64x64x3, 200 classes), and for a module
of each (class 0, its masks from a 32-image decomposition with ``concerned="all"``): the seconds of
``network_to_onnx``, ``to_onnx`` of the module, and ``to_keras`` of the module. Before #33 the ONNX export
of these never finished (a memo key nested through every input). Writes ``bench/results/export.md``.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    import keras
    import numpy as np

    import fastdecomp as fd

    rows = []
    for name, build in [("ResNet152", keras.applications.ResNet152), ("DenseNet169", keras.applications.DenseNet169)]:
        model = build(weights=None, input_shape=(64, 64, 3), classes=200)
        network = fd.from_keras(model)
        x = np.random.default_rng(0).random((32, 64, 64, 3), dtype=np.float32)
        y = np.arange(32) % 4
        modules = fd.decompose(network, x, y, classes=[0, 1, 2, 3], concerned="all", batch_size=16, progress=False)
        row = (name, len(network.layers), seconds(lambda: fd.onnx_io.network_to_onnx(network)),
               seconds(lambda: modules.to_onnx(0)), seconds(lambda: modules.to_keras(0)))
        rows.append(row)
        print(f"{name}: {row[1]} layers; network to ONNX {row[2]:.1f} s, module to ONNX {row[3]:.1f} s, "
              f"module to Keras {row[4]:.1f} s", flush=True)
    lines = ["# Export of deep networks", "", "`python bench/bench_export.py` (random weights, 64x64x3, 200 "
             "classes; the module is class 0 of a 4-module decomposition of 32 images).", "",
             "| model | layers | network to ONNX (s) | module to ONNX (s) | module to Keras (s) |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {count} | {a:.1f} | {b:.1f} | {c:.1f} |" for n, count, a, b, c in rows]
    (RESULTS / "export.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
