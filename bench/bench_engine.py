"""fastdecomp's forward engine against TensorFlow's predict, same model, same batches.

Usage::

    python bench/bench_engine.py            # ResNet-20 28x28x1 and ResNet-56 64x64x3
    python bench/bench_engine.py --quick    # fewer images

Prints images/s of both and the ratio (engine time / TensorFlow time), and
writes ``bench/results/engine.md``. Both run after a warm-up batch, so
compile and tracing costs are outside the timed region.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import zoo

RESULTS = Path(__file__).resolve().parent / "results"


def time_both(name, model, x, batch_size, repeats=3):
    network = fd.from_keras(model)
    network.predict(x[:batch_size], batch_size)
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    engine, tf = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        ours = network.predict(x, batch_size)
        engine.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = model.predict(x, batch_size=batch_size, verbose=0)
        tf.append(time.perf_counter() - start)
    error = float(np.abs(ours - theirs).max())
    row = {"model": name, "images": len(x), "batch": batch_size,
           "engine_ips": len(x) / min(engine), "tf_ips": len(x) / min(tf),
           "ratio": min(engine) / min(tf), "max_abs_diff": error}
    print(f"{name:28} engine {row['engine_ips']:7.0f} img/s   TensorFlow {row['tf_ips']:7.0f} img/s   "
          f"time ratio engine/TF {row['ratio']:.2f}   max |diff| {error:.1e}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    n20, n56 = (512, 128) if args.quick else (4096, 512)

    rows = []
    test = fd.data.fashion_mnist("test")
    x20 = test.read(np.arange(n20))
    rows.append(time_both("ResNet-20 28x28x1 (zoo)", zoo.load("resnet20-fmnist"), x20, args.batch_size))
    x56 = fd.data.SyntheticTinyImageNet(n56, seed=1).read(np.arange(n56))
    model56 = zoo.resnet_v1(56, (64, 64, 3), 200, seed=1)
    rows.append(time_both("ResNet-56 64x64x3, 200 cls", model56, x56, args.batch_size))

    RESULTS.mkdir(exist_ok=True)
    lines = ["| model | images | engine img/s | TF img/s | engine/TF time |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['images']} | {r['engine_ips']:.0f} | {r['tf_ips']:.0f} | {r['ratio']:.2f} |"
              for r in rows]
    (RESULTS / "engine.md").write_text(
        "# Forward engine vs TensorFlow predict\n\n" + "\n".join(lines) +
        f"\n\n`python bench/bench_engine.py{' --quick' if args.quick else ''}`, "
        f"batch {args.batch_size}, {os.cpu_count()} cores.\n")


if __name__ == "__main__":
    main()
