"""Train the zoo models on Fashion-MNIST and write them to fastdecomp/models.

Usage::

    python bench/train_zoo.py --depth 20 --epochs 8
    python bench/train_zoo.py --depth 56 --epochs 5

Writes ``resnet{depth}-fmnist.keras`` and a ``.json`` beside it holding the
test accuracy, the epochs and the time it took. The paper's setting: no
BatchNormalization.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import keras

from fastdecomp import data, zoo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(zoo.MODELS_DIR))
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    x_train, y_train = train.read(np.arange(len(train))), train.labels
    x_test, y_test = test.read(np.arange(len(test))), test.labels

    model = zoo.resnet_v1(args.depth, (28, 28, 1), 10, batchnorm=False, seed=args.seed)
    steps = args.epochs * (len(x_train) // args.batch_size + 1)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(x_test, y_test), verbose=2)
    seconds = time.perf_counter() - start
    _, top1, top5 = model.evaluate(x_test, y_test, batch_size=256, verbose=0)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"resnet{args.depth}-fmnist"
    tmp = out / f".{name}.keras.tmp.keras"
    model.save(tmp)
    os.replace(tmp, out / f"{name}.keras")
    meta = {
        "dataset": "fashion-mnist", "depth": args.depth, "input_shape": [28, 28, 1],
        "num_classes": 10, "batchnorm": False, "epochs": args.epochs,
        "batch_size": args.batch_size, "optimizer": "adam, cosine decay from 1e-3",
        "seed": args.seed, "test_top1": round(float(top1), 4), "test_top5": round(float(top5), 4),
        "train_seconds": round(seconds, 1),
        "val_accuracy_per_epoch": [round(float(a), 4) for a in history.history["val_accuracy"]],
    }
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
