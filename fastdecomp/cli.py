"""The ``fastdecomp`` command: decompose, stats, merge, evaluate, report, bench, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import data
from .backtrack import BLN_RULES
from .errors import FastDecompError, InputError
from .layers import MASK_PLACEMENTS
from .options import CONCERNED, DecompositionOptions
from .storage import check_replaceable_file

DEFAULTS = DecompositionOptions()

MODEL_HELP = "a .keras/.h5 file, or zoo:NAME for a shipped model (zoo:resnet20-fmnist, zoo:resnet56-fmnist)"
DATA_HELP = ("fashion-mnist:train | fashion-mnist:test | synthetic:N | tiny-imagenet:FOLDER[:train|val] | "
             "FILE.npz (arrays x, y) | X.npy,Y.npy")


def _backtrack(value):
    return None if value in ("none", "None", "") else value


def _class_list(text):
    """``--classes 0,3,7`` as a list of ints (argparse reports anything else in one line)."""
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of class numbers, e.g. 0,3,7") \
            from None


def _check_output(path, overwrite):
    """Refuse, before any work, an output folder that could not be written or may not be replaced."""
    from .saving import is_save

    if os.path.lexists(path):
        if not overwrite:
            raise FastDecompError(f"{path} exists; pass --overwrite or choose another directory")
        if not is_save(path):
            raise FastDecompError(f"{path} exists and is not a fastdecomp save, so it is not replaced; "
                                  "choose another directory")
    name = os.path.basename(os.path.abspath(path))
    if "\0" in path or len(os.fsencode(name)) > 255:
        raise FastDecompError(f"{path!r} is not a name this file system takes; choose a shorter name")
    _check_writable_parent(path)


def _check_writable_parent(path):
    """Refuse ``path`` when the nearest existing folder above it is not writable."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FastDecompError(f"cannot write {path}: {parent} is not writable; choose another place")


def _load_model(spec):
    from . import zoo

    if spec.endswith(".onnx"):
        return zoo.open_model(spec)
    with _native_logs_silenced():  # TensorFlow's C++ start-up lines would bury the one-line error
        return zoo.open_model(spec)


@contextmanager
def _native_logs_silenced():
    """Send what native libraries write to file descriptor 2 to /dev/null meanwhile (Python errors still raise)."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastdecomp",
        description="Decompose a trained CNN classifier into one module per class "
                    "(Pan & Rajan, ICSE 2022), then compose, evaluate and reuse the modules.",
        epilog="Example: fastdecomp decompose zoo:resnet20-fmnist fashion-mnist:train -o modules/ "
               "--limit 6000 && fastdecomp evaluate modules/ fashion-mnist:test --limit 2000")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decompose", help="decompose a model into modules saved in a directory",
                       description="Run concern identification, tangling identification, channeling "
                                   "and backtracking for every class in one pass over DATA; save the "
                                   "modules to OUT.")
    d.add_argument("model", help=MODEL_HELP)
    d.add_argument("data", help="training images: " + DATA_HELP)
    d.add_argument("-o", "--out", required=True, help="directory to write the modules to")
    d.add_argument("--limit", type=int, help="use a stratified random subset of this many images")
    d.add_argument("--classes", type=_class_list,
                   help="comma-separated classes to build modules for (default: all)")
    d.add_argument("--mask-at", choices=MASK_PLACEMENTS, default=DEFAULTS.mask_at,
                   help="where nodes are observed and removed: relu outputs (default, exact on "
                        "concerned inputs) or conv outputs before activation (the paper's)")
    d.add_argument("--backtrack", choices=["none", "bln", "bi"], default=DEFAULTS.backtrack or "none",
                   help="none: CI+TI+MC; bln: + MC-BLN (default); bi: + MC-BLN + MC-BI")
    d.add_argument("--delta", type=float, default=DEFAULTS.delta,
                   help=f"MC-BLN threshold (default {DEFAULTS.delta}, the paper's)")
    d.add_argument("--bln-rule", choices=BLN_RULES, default=DEFAULTS.bln_rule,
                   help="reading of the paper's MC-BLN rule (default: its Algorithm 2)")
    d.add_argument("--ti-ratio", type=float, default=DEFAULTS.ti_ratio,
                   help="unconcerned sample size relative to the concerned set (0: no TI)")
    d.add_argument("--concerned", choices=CONCERNED, default=DEFAULTS.concerned,
                   help="concerned inputs: correctly classified ones (default) or all of the class")
    d.add_argument("--activity-threshold", type=float, default=DEFAULTS.activity_threshold,
                   help="keep a node active for at least this fraction of the concerned inputs (default 0: any, "
                        "the paper's); larger values make smaller modules, at a second pass over DATA")
    d.add_argument("--tangling-threshold", type=float, default=DEFAULTS.tangling_threshold,
                   help="the same for each module's unconcerned sample (default 0: any)")
    d.add_argument("--channel-threshold", type=float, default=DEFAULTS.channel_threshold,
                   help="keep a channel whole when this fraction of its positions is kept, else remove it "
                        "(default: node masks), so that pruning can drop it")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--seed", type=int, default=DEFAULTS.seed)
    d.add_argument("--backend", help="where the pass runs: cpu, auto, cuda (default: FASTDECOMP_BACKEND, else cpu)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the pass on this Dask cluster (e.g. tcp://host:8786); its workers open DATA "
                        "themselves, so it must be a path or name they can read (pip install 'fastdecomp[dist]')")
    d.add_argument("--shards", type=int, help="with --scheduler: shards of the data (default: two per worker)")
    d.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    st = sub.add_parser("stats", help="gather one shard's statistics (a batch-scheduler array job)",
                        description="Run the pass over shard I of N of DATA (contiguous ranges); save its "
                                    "statistics to OUT. 'fastdecomp merge' builds the modules from all shards.")
    st.add_argument("model", help=MODEL_HELP)
    st.add_argument("data", help="training images (all of them; the shard reads its own): " + DATA_HELP)
    st.add_argument("--shard", required=True, type=_shard, help="I/N: this shard (0 <= I < N)")
    st.add_argument("-o", "--out", required=True, help="directory to write the statistics to")
    for flag in ("--limit", "--classes", "--mask-at", "--ti-ratio", "--concerned", "--batch-size", "--seed",
                 "--backend", "--overwrite", "--no-progress"):
        st._add_action(next(a for a in d._actions if flag in a.option_strings))
    mg = sub.add_parser("merge", help="merge every shard's statistics and save the modules",
                        description="Merge the statistics 'fastdecomp stats' wrote (all shards, any order), "
                                    "then build and save the modules, as 'fastdecomp decompose' would.")
    mg.add_argument("parts", nargs="+", help="the shards' statistics directories")
    mg.add_argument("-o", "--out", required=True, help="directory to write the modules to")
    for flag in ("--backtrack", "--delta", "--bln-rule", "--overwrite"):
        mg._add_action(next(a for a in d._actions if flag in a.option_strings))

    e = sub.add_parser("evaluate", help="score composed modules against their model",
                       description="Compose the modules in MODULES by voting and print top-1/top-5 "
                                   "accuracy next to the model's, with each module's size and Jaccard index.")
    e.add_argument("modules", help="a directory written by 'fastdecomp decompose'")
    e.add_argument("data", help="test images: " + DATA_HELP)
    e.add_argument("--limit", type=int, help="use a stratified random subset of this many images")
    e.add_argument("--backend", help="where the modules run: cpu, auto, cuda (default: FASTDECOMP_BACKEND, else cpu)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true",
                   help="print the whole report (every metric, docs/report.md's schema) as JSON instead of a table")
    _report_arguments(e)

    r = sub.add_parser("report", help="write every metric of saved modules as a JSON report, and an HTML page",
                       description="Score the modules in MODULES on TEST: accuracy per class, module size (KRR, "
                                   "parameter fraction, FLOPs), coupling, cohesion, overlap, k-of-N reuse, latency "
                                   "and the decomposition's cost; write one versioned JSON report (docs/report.md), "
                                   "and with --html a self-contained page with its figures.")
    r.add_argument("modules", help="a directory written by 'fastdecomp decompose'")
    r.add_argument("data", help="test images: " + DATA_HELP)
    r.add_argument("-o", "--out", required=True, help="the JSON report to write")
    r.add_argument("--html", help="also write this HTML page (needs matplotlib: pip install 'fastdecomp[report]')")
    r.add_argument("--figures", help="also save the page's figures as PNGs in this directory")
    r.add_argument("--limit", type=int, help="use a stratified random subset of this many test images")
    r.add_argument("--backend", help="where the modules run: cpu, auto, cuda")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--overwrite", action="store_true", help="replace the output files if they exist")
    _report_arguments(r)
    r.add_argument("--train", help="the data the modules were decomposed from (as given to decompose), for the "
                                   "size-vs-accuracy points of --thresholds: " + DATA_HELP)
    r.add_argument("--train-limit", type=int, help="the --limit decompose was given")
    r.add_argument("--thresholds", type=_thresholds, default=(),
                   help="settings A[:T[:C]] to sweep, comma-separated: activity threshold A, tangling threshold "
                        "T (default A), channel threshold C (default none); e.g. 0,0.02,0.05,0.1:0.1:0.5")

    b = sub.add_parser("bench", help="run decomposition and every metric over a grid of models and options",
                       description="For each model and each combination of --grid options, decompose TRAIN "
                                   "and report on TEST; append one JSON line per run to OUT. Runs already in "
                                   "OUT are skipped, so an interrupted suite resumes where it stopped. Runs "
                                   "that differ only in backtracking or thresholds share one pass over TRAIN.")
    b.add_argument("--models", required=True, type=lambda t: t.split(","), help="comma-separated: " + MODEL_HELP)
    b.add_argument("--train", required=True, help="training images: " + DATA_HELP)
    b.add_argument("--test", required=True, help="test images: " + DATA_HELP)
    b.add_argument("--train-limit", type=int, help="a stratified subset of this many training images")
    b.add_argument("--test-limit", type=int, help="a stratified subset of this many test images")
    b.add_argument("--grid", action="append", default=[], type=_grid_axis, metavar="OPTION=V1,V2",
                   help="an option and the values to run (repeat for more): " + ", ".join(DEFAULTS.names()))
    b.add_argument("--out", required=True, help="the JSON-lines file to append to (created if missing)")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--backend", help="where passes run: cpu, auto, cuda")
    _report_arguments(b)

    m = sub.add_parser("demo", help="decompose the zoo ResNet-20 on Fashion-MNIST and print a table",
                       description="Decompose a zoo model on Fashion-MNIST with every variant and mask "
                                   "placement; print model vs composed top-1/top-5, Jaccard index and time.")
    m.add_argument("--model", default="resnet20-fmnist", help="zoo model name")
    m.add_argument("--train-images", type=int, default=6000, help="training images to decompose with")
    m.add_argument("--test-images", type=int, default=2000, help="test images to evaluate on")
    m.add_argument("--mask-at", default="conv,relu", help="comma-separated placements")
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--no-progress", action="store_true")
    return parser


def _report_arguments(parser):
    parser.add_argument("--reuse-k", type=int, default=2, help="classes per composition for k-of-N reuse (default 2)")
    parser.add_argument("--reuse-subsets", type=int, default=20, help="subsets sampled for k-of-N reuse (default 20)")
    parser.add_argument("--cohesion-images", type=int, default=16, help="test images per class for cohesion")
    parser.add_argument("--metrics-seed", type=int, default=0, help="seed of the metrics' samples")


def _report_options(args):
    return dict(reuse_k=args.reuse_k, reuse_subsets=args.reuse_subsets, cohesion_images=args.cohesion_images,
                seed=args.metrics_seed, batch_size=args.batch_size, backend=args.backend)


def _thresholds(text):
    settings = []
    for item in text.split(","):
        parts = item.split(":")
        try:
            if not 1 <= len(parts) <= 3:
                raise ValueError
            activity = float(parts[0])
            tangling = float(parts[1]) if len(parts) > 1 else activity
            channel = float(parts[2]) if len(parts) > 2 and parts[2] not in ("", "none") else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not A[:T[:C]] (e.g. 0.05 or 0.1:0.1:0.5)") from None
        settings.append((activity, tangling, channel))
    return settings


def _grid_axis(text):
    name, _, values = text.partition("=")
    if name.replace("-", "_") not in DEFAULTS.names() or not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not OPTION=V1,V2 with OPTION one of {DEFAULTS.names()}")
    return name.replace("-", "_"), [_option_value(v) for v in values.split(",")]


def _option_value(text):
    if text in ("none", "None"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_file_output(path, overwrite):
    """Refuse, before any work, an output file that exists (without --overwrite) or could not be written."""
    if path is None:
        return
    if os.path.isdir(path):
        raise FastDecompError(f"{path} is a directory; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise FastDecompError(f"{path} exists; pass --overwrite or choose another name")
    check_replaceable_file(path)
    _check_writable_parent(path)


def _shard(text):
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 3/10)") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text} is outside 0/{count}..{count - 1}/{count}")
    return index, count


def cmd_stats(args):
    from .shards import gather_statistics, save_statistics

    _check_output(args.out, args.overwrite)
    options = {"mask_at": args.mask_at, "ti_ratio": args.ti_ratio, "concerned": args.concerned, "seed": args.seed}
    part = gather_statistics(_load_model(args.model), data.open_data(args.data, args.limit), shard=args.shard,
                             classes=args.classes, batch_size=args.batch_size, backend=args.backend,
                             progress=not args.no_progress, **options)
    sources = {"model": args.model, "data": args.data, "limit": args.limit, "classes": args.classes,
               "options": options}
    save_statistics(part, args.out, overwrite=args.overwrite, sources=sources)
    print(f"shard {args.shard[0]}/{args.shard[1]}: {len(part.rows)} images' statistics written to {args.out}")
    return 0


def cmd_merge(args):
    from .saving import read_manifest, save, STATISTICS
    from .shards import load_statistics, merge, modules_from_statistics

    _check_output(args.out, args.overwrite)
    sources = read_manifest(Path(args.parts[0]), STATISTICS)["sources"]
    merged = merge(load_statistics(part) for part in args.parts)
    labels = data.open_data(sources["data"], sources["limit"]).labels
    modules = modules_from_statistics(_load_model(sources["model"]), merged, labels, classes=sources["classes"],
                                      backtrack=_backtrack(args.backtrack), delta=args.delta,
                                      bln_rule=args.bln_rule, **sources["options"])
    save(modules, args.out, overwrite=args.overwrite)
    print(f"{len(modules)} modules from {len(args.parts)} shards written to {args.out}")
    return 0


def cmd_decompose(args):
    from .decompose import decompose
    from .saving import save

    _check_output(args.out, args.overwrite)
    model = _load_model(args.model)
    source = data.open_data(args.data, args.limit)
    options = dict(classes=args.classes, mask_at=args.mask_at, backtrack=_backtrack(args.backtrack),
                   delta=args.delta, bln_rule=args.bln_rule, ti_ratio=args.ti_ratio, concerned=args.concerned,
                   activity_threshold=args.activity_threshold, tangling_threshold=args.tangling_threshold,
                   channel_threshold=args.channel_threshold, batch_size=args.batch_size, seed=args.seed,
                   progress=not args.no_progress)
    if args.scheduler is None:
        if args.shards is not None:
            raise InputError("--shards is for --scheduler")
        modules = decompose(model, source, backend=args.backend, **options)
    else:
        if args.backend is not None:
            raise InputError("--backend is for a pass on this machine; with --scheduler each worker runs on "
                             "its own FASTDECOMP_BACKEND (set it where the workers start)")
        from .cluster import connect

        with connect(args.scheduler) as client:
            modules = decompose(model, source, backend="dask", client=client, shards=args.shards, **options)
    save(modules, args.out, overwrite=args.overwrite)
    print(f"{len(modules)} modules written to {args.out} "
          f"({modules.info['num_images']} images, {modules.info['seconds']:.1f} s)")
    return 0


def cmd_evaluate(args):
    from .compose import compose
    from .metrics import jaccard, sizes
    from .saving import load_modules

    modules = load_modules(args.modules)
    source = data.open_data(args.data, args.limit)
    if args.json:
        print(json.dumps(modules.report(source, **_report_options(args)), indent=1))
        return 0
    scores = compose(modules).evaluate(source, batch_size=args.batch_size, backend=args.backend)
    print(f"{'module':>6} {'kept nodes':>10} {'JI nodes':>9} {'JI weights*':>11} {'params':>9}")
    for k in modules.classes:
        size = sizes(modules, k)
        print(f"{k:>6} {size['kept_nodes'] / size['nodes']:>10.1%} {jaccard(modules, k):>9.3f} "
              f"{jaccard(modules, k, 'weights'):>11.3f} {size['parameters']:>9,}")
    print("* the authors' definition: value sets of the kept weights")
    print(f"\nmodel    top-1 {scores['model_top1']:.2%}  top-5 {scores['model_top5']:.2%}")
    print(f"composed top-1 {scores['top1']:.2%}  top-5 {scores['top5']:.2%}  "
          f"({scores['num_images']} images)")
    return 0


def cmd_report(args):
    from .report import write_html, write_report
    from .saving import load_modules

    for path in (args.out, args.html):
        _check_file_output(path, args.overwrite)
    if args.html and os.path.realpath(args.html) == os.path.realpath(args.out):
        raise FastDecompError(f"-o and --html are both {args.out}: the page would replace the report; give two paths")
    if args.thresholds and args.train is None:
        raise InputError("--thresholds needs --train, the data the modules were decomposed from")
    if args.html:
        from .report import _pyplot

        _pyplot()  # matplotlib is there, before any work
    modules = load_modules(args.modules)
    source = data.open_data(args.data, args.limit)
    train = data.open_data(args.train, args.train_limit) if args.train else None
    report = modules.report(source, train=train, thresholds=args.thresholds, **_report_options(args))
    write_report(report, args.out)
    print(f"report of {len(modules)} modules on {report['data']['test_images']} images written to {args.out}")
    if args.html:
        write_html(report, args.html, figures=args.figures)
        print(f"page written to {args.html}")
    return 0


def cmd_bench(args):
    from .suite import run_suite

    done, ran = run_suite(args.models, args.train, args.test, dict(args.grid), args.out,
                          train_limit=args.train_limit, test_limit=args.test_limit, report=_report_options(args),
                          log=print)
    print(f"{ran} runs written to {args.out}, {done} already there")
    return 0


def cmd_demo(args):
    from . import zoo
    from .compose import compose
    from .decompose import decompose
    from .keras_io import from_keras
    from .metrics import jaccard

    meta = zoo.available().get(args.model, {})
    print(f"fastdecomp demo: {args.model} (test top-1 {meta.get('test_top1', float('nan')):.2%} as trained), "
          f"Fashion-MNIST, {args.train_images} training / {args.test_images} test images")
    network = from_keras(zoo.load(args.model))
    train = data.open_data("fashion-mnist:train", args.train_images)
    test = data.open_data("fashion-mnist:test", args.test_images)

    started = time.perf_counter()
    network.predict_proba(test, batch_size=args.batch_size)
    print(f"model through fastdecomp's engine: {len(test) / (time.perf_counter() - started):.0f} images/s")

    rows = []
    for mask_at in args.mask_at.split(","):
        started = time.perf_counter()
        base = decompose(network, train, mask_at=mask_at, backtrack=None, batch_size=args.batch_size,
                         progress=not args.no_progress)
        seconds = time.perf_counter() - started
        for backtrack in (None, "bln", "bi"):
            modules = base.variant(backtrack)
            scores = compose(modules).evaluate(test, batch_size=args.batch_size)
            ji = sum(jaccard(modules, k, "weights") for k in modules.classes) / len(modules)
            kept = sum(jaccard(modules, k) for k in modules.classes) / len(modules)
            rows.append((mask_at, {None: "CI+TI+MC", "bln": "+MC-BLN", "bi": "+MC-BLN+MC-BI"}[backtrack],
                         scores, kept, ji, seconds))
    print(f"\n{'mask at':8} {'variant':14} {'model top1/top5':>16} {'composed':>16} {'loss top1':>9} "
          f"{'kept':>6} {'JI*':>5} {'decompose s':>11}")
    for mask_at, name, s, kept, ji, seconds in rows:
        print(f"{mask_at:8} {name:14} {s['model_top1']:>7.2%}/{s['model_top5']:<8.2%} "
              f"{s['top1']:>7.2%}/{s['top5']:<8.2%} {100 * (s['model_top1'] - s['top1']):>8.2f}p "
              f"{kept:>6.1%} {ji:>5.2f} {seconds:>11.1f}")
    print("* Jaccard index by the authors' definition (value sets of kept weights); "
          "kept = share of nodes kept")
    return 0


def main(argv=None):
    """Entry point of the ``fastdecomp`` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handler = {"decompose": cmd_decompose, "stats": cmd_stats, "merge": cmd_merge, "evaluate": cmd_evaluate,
               "report": cmd_report, "bench": cmd_bench, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"fastdecomp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the command line shows one line; --debug the traceback
        if args.debug:
            raise
        known = isinstance(exc, (FastDecompError, OSError))
        what = "error" if known else f"unexpected error ({type(exc).__name__}; --debug shows where)"
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastdecomp {args.command}: {what}: {message}", file=sys.stderr)
        return 2 if known else 3


if __name__ == "__main__":
    sys.exit(main())
