"""Composed inference of every module of the zoo ResNet-20 three ways, in one run.

Usage::

    python bench/bench_onnx.py            # 2000 Fashion-MNIST test images
    python bench/bench_onnx.py --quick    # 500

- the composition exported to ONNX (:meth:`Composition.to_onnx`: one graph,
  modules sharing nodes until their masks differ) run by ONNX Runtime;
- fastdecomp's engine (:meth:`Composition.predict_proba`, through
  ``forward_many``);
- TensorFlow running the 10 modules exported to Keras one after another.

Every runner is run once before timing; then interleaved, best of 3. Prints
images/s, time ratios, and the largest difference from the engine. Writes
``bench/results/onnx.md``.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import onnxruntime as ort

    import fastdecomp as fd
    from bench_engine import interleaved

    test = fd.data.fashion_mnist("test")
    count = 500 if args.quick else 2000
    x = test.read(np.arange(count))
    train = fd.data.stratified_subset(fd.data.fashion_mnist("train"), 3000)
    modules = fd.decompose(fd.zoo.load("resnet20-fmnist"), train, progress=False)
    composition = fd.compose(modules)
    session = ort.InferenceSession(composition.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    keras_modules = [modules.to_keras(k) for k in modules.classes]

    def onnx_runtime():
        return np.concatenate([session.run(["probabilities"], {"images": x[i:i + 256]})[0]
                               for i in range(0, len(x), 256)])

    def tensorflow():
        return np.stack([m.predict(x, batch_size=256, verbose=0)[:, 0] for m in keras_modules], axis=1)

    runs = {"engine": lambda: composition.predict_proba(x), "onnxruntime": onnx_runtime, "tensorflow": tensorflow}
    outputs = {name: run() for name, run in runs.items()}
    best = interleaved(runs, 3)
    lines = ["# Composed inference: 10 modules of the zoo ResNet-20", "",
             f"`python bench/bench_onnx.py{' --quick' if args.quick else ''}`, {count} Fashion-MNIST test images, "
             f"{os.cpu_count()} cores, best of 3, interleaved. Ratios are times against the engine's.", "",
             "| runner | images/s | time / engine | max abs diff from the engine |", "|---|---|---|---|"]
    for name in runs:
        diff = float(np.abs(outputs[name] - outputs["engine"]).max())
        lines.append(f"| {name} | {count / best[name]:.0f} | {best[name] / best['engine']:.2f}x | {diff:.1e} |")
    onnx_labels = session.run(["labels"], {"images": x})[0]
    labels_agree = float((composition.predict(x) == onnx_labels).mean())
    lines += ["", f"ONNX labels equal the engine's on {labels_agree:.1%} of the images."]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
