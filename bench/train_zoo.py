"""Train the zoo models and write them to fastdecomp/models.

Usage::

    python bench/train_zoo.py --depth 20 --epochs 8                     # resnet20-fmnist
    python bench/train_zoo.py --depth 56 --epochs 4                     # resnet56-fmnist
    python bench/train_zoo.py --dataset mnist --depth 20 --epochs 12    # resnet20-mnist
    python bench/train_zoo.py --arch small-cnn --epochs 3               # smallcnn-fmnist
    python bench/train_zoo.py --depth 20 --epochs 4 --train-images 20000 \\
        --faulty-class 7 --faulty-into 5 --faulty-share 0.85            # resnet20-fmnist-faulty

Writes ``<name>.keras`` and a ``.json`` beside it holding the test accuracy
(overall and per class), the epochs and the time it took. The paper's
setting: no BatchNormalization. ``--faulty-class k`` induces a faulty class:
that share of class k's training labels is changed to ``--faulty-into``, so
the model rarely predicts k (the paper's motivating example).
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import keras

from fastdecomp import data, zoo

DATASETS = {"fashion-mnist": ("fmnist", data.fashion_mnist), "mnist": ("mnist", data.mnist)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    parser.add_argument("--arch", choices=["resnet", "small-cnn"], default="resnet")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=None, help="stratified subset of the training set")
    parser.add_argument("--faulty-class", type=int, default=None)
    parser.add_argument("--faulty-into", type=int, default=None)
    parser.add_argument("--faulty-share", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", default=str(zoo.MODELS_DIR))
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    tag, load = DATASETS[args.dataset]
    train = data.stratified_subset(load("train"), args.train_images, args.seed)
    test = load("test")
    x_train, y_train = train.read(np.arange(len(train))), train.labels.copy()
    x_test, y_test = test.read(np.arange(len(test))), test.labels

    if args.faulty_class is not None:
        members = np.flatnonzero(y_train == args.faulty_class)
        flipped = np.random.default_rng(args.seed).choice(
            members, int(round(args.faulty_share * len(members))), replace=False)
        y_train[flipped] = args.faulty_into

    if args.arch == "resnet":
        model = zoo.resnet_v1(args.depth, (28, 28, 1), 10, batchnorm=False, seed=args.seed)
        name = f"resnet{args.depth}-{tag}"
    else:
        model = zoo.small_cnn((28, 28, 1), 10, seed=args.seed)
        name = f"smallcnn-{tag}"
    if args.faulty_class is not None:
        name += "-faulty"
    name = args.name or name
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
    predicted = model.predict(x_test, batch_size=256, verbose=0).argmax(axis=1)
    per_class = [round(float((predicted[y_test == c] == c).mean()), 4) for c in range(10)]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, out / f"{name}.keras")
    meta = {
        "dataset": args.dataset, "architecture": args.arch,
        "depth": args.depth if args.arch == "resnet" else None, "input_shape": [28, 28, 1],
        "num_classes": 10, "batchnorm": False, "epochs": args.epochs, "train_images": len(x_train),
        "batch_size": args.batch_size, "optimizer": "adam, cosine decay from 1e-3",
        "seed": args.seed, "test_top1": round(float(top1), 4), "test_top5": round(float(top5), 4),
        "test_top1_per_class": per_class, "train_seconds": round(seconds, 1),
        "val_accuracy_per_epoch": [round(float(a), 4) for a in history.history["val_accuracy"]],
    }
    if args.faulty_class is not None:
        meta["faulty"] = {"class": args.faulty_class, "labels_changed_into": args.faulty_into,
                          "share": args.faulty_share}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
