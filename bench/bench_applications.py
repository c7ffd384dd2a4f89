"""Every ReLU-family keras.applications model through fastdecomp, as a new user would bring it.

Usage::

    python bench/bench_applications.py                  # every model; writes applications.md
    python bench/bench_applications.py ResNet50V2 MobileNet

Each model is built with ``weights=None``, a small input (the smallest each
accepts, at least 32 px) and 10 classes; its BatchNormalization statistics,
scales, offsets and biases are randomised (an untrained model's hide every
folding and bias bug), and its output bias balanced so that every class is
predicted. Then, on 24 random images:

- **import**: accepted, or the refusal's first words;
- **proba**: the largest difference from Keras' probabilities (target 1e-4);
- **logits**: the largest difference from Keras' logits (computed by Keras to
  the output layer's input, then its weights in float64) relative to the
  largest logit before the output bias (target 1e-5; the balancing bias is
  ours, and cancels the logits to near 0), and relative to the largest sum of
  the terms' magnitudes (the scale float32 rounding works at);
- **module**: the largest difference between ``to_keras`` of module 0
  (MC-BI) and the engine's module;
- **pruned**: the largest difference between the physically pruned module and
  the masked one, and the share of the weights pruning dropped;
- the import, decomposition (all recognised classes, one pass) and total times.

One process per model keeps memory flat. Writes ``bench/results/applications.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {  # name: input size
    "VGG16": 32, "VGG19": 32, "ResNet50": 32, "ResNet101": 32, "ResNet152": 32,
    "ResNet50V2": 32, "ResNet101V2": 32, "ResNet152V2": 32, "MobileNet": 32, "MobileNetV2": 32,
    "DenseNet121": 32, "DenseNet169": 32, "DenseNet201": 32, "InceptionV3": 75, "Xception": 71,
    "NASNetMobile": 32, "InceptionResNetV2": 75,
    # outside the method (non-ReLU activations, LayerNormalization, gates): refused by name
    "MobileNetV3Small": 32, "EfficientNetB0": 32, "ConvNeXtTiny": 32,
}
IMAGES = 24


def measure(name, size):
    """One model's row (run in a child process)."""
    import keras
    import numpy as np

    import fastdecomp as fd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import balance_output_bias, randomise_biases, randomise_normalisation

    keras.utils.set_random_seed(0)
    extra = {"include_preprocessing": False} if name.startswith(("MobileNetV3", "ConvNeXt")) else {}
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=10, **extra)
    randomise_normalisation(model)
    randomise_biases(model, scale=0.05)
    x = np.random.default_rng(1).uniform(-1, 1, (IMAGES, size, size, 3)).astype(np.float32)
    row = {"model": name, "input": size, "parameters": model.count_params()}
    try:
        balance_output_bias(model, x)
    except Exception as error:  # a model without a Dense head
        row["note"] = f"balance: {type(error).__name__}"
    start = time.perf_counter()
    try:
        network = fd.from_keras(model)
    except fd.errors.FastDecompError as error:
        row.update(imported=False, refusal=str(error).split(". fastdecomp decomposes")[0][:160])
        return row
    row.update(imported=True, import_s=time.perf_counter() - start)
    expected = model.predict(x, verbose=0)
    row["proba"] = float(np.abs(network.predict_proba(x) - expected).max())
    output = model.get_layer(network.by_name[network.output_dense].keras_name)
    features = keras.Model(model.inputs, output.input).predict(x, verbose=0).astype(np.float64).reshape(len(x), -1)
    kernel, bias = output.get_weights()[:2]
    kernel = kernel.reshape(features.shape[1], -1)
    keras_logits = features @ kernel + bias
    error = np.abs(network.forward(x, logits=True) - keras_logits).max()
    row["logits"] = float(error / np.abs(features @ kernel).max())
    row["logits_terms"] = float(error / (np.abs(features) @ np.abs(kernel) + np.abs(bias)).max())
    predicted = network.predict(x)
    start = time.perf_counter()
    modules = fd.decompose(network, x, predicted, classes=sorted(set(predicted.tolist())), backtrack="bi",
                           delta=0.05, progress=False)
    row["decompose_s"] = time.perf_counter() - start
    k = modules.classes[0]
    engine = modules.module(k).predict_proba(x)
    row["module"] = float(np.abs(modules.to_keras(k).predict(x, verbose=0) - engine).max())
    masks = modules.masks(k, names="network")
    masked = network.forward(x, masks=masks, head=modules.head(k))
    pruned = fd.pruning.prune(network, masks, modules.head(k))
    row["pruned"] = float(np.abs(pruned.predict_proba(x) - masked).max())
    before, after = (sum(w.size for layer in graph for w in layer.weights.values())
                     for graph in (network.layers, pruned.layers))
    row["dropped"] = 1 - after / before
    row["kinds"] = sorted({layer.kind for layer in network.layers})
    return row


def table(rows):
    lines = ["| model | input | params (M) | import | proba diff | logits diff / max logit | logits diff / max "
             "terms | to_keras diff | pruned diff | weights dropped | import s | decompose s |", "|" + "---|" * 12]
    for r in rows:
        if not r.get("imported"):
            lines.append(f"| {r['model']} | {r['input']} | {r.get('parameters', 0) / 1e6:.1f} | refused: "
                         f"{r.get('refusal', r.get('error', ''))} | | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['input']} | {r['parameters'] / 1e6:.1f} | yes | {r['proba']:.1e} | "
                     f"{r['logits']:.1e} | {r['logits_terms']:.1e} | {r['module']:.1e} | {r['pruned']:.1e} | {r['dropped']:.1%} | {r['import_s']:.1f} | "
                     f"{r['decompose_s']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="names of keras.applications models (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, MODELS[args.child])))
        return
    rows = []
    for name in args.models or MODELS:
        done = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
        try:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            rows.append({"model": name, "input": MODELS[name], "imported": False,
                         "error": (done.stderr.strip().splitlines() or ["crashed"])[-1][:160]})
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (f"# keras.applications through fastdecomp\n\n`python bench/bench_applications.py`, {IMAGES} random "
            "images, weights=None with randomised BatchNorm statistics and biases, 10 classes.\n\n" + table(rows) + "\n")
    if not args.models:
        (RESULTS / "applications.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
