"""Machine-readable results: one versioned JSON report of a decomposition's metrics (docs/report.md).

:func:`build_report` (and :meth:`ModuleSet.report`, ``fastdecomp evaluate
--json``, ``fastdecomp report``) computes it; :func:`write_report` saves it
atomically and :func:`read_report` reads it back, refusing another schema or
version by name. :data:`SCHEMA` is the schema itself: every field, its type,
and what it holds; :func:`check_report` holds a report to it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys

import numpy as np

from . import metrics
from .data import Subset
from .errors import FastDecompError, InputError
from .storage import atomic_file

__all__ = ["build_report", "write_report", "write_html", "read_report", "check_report", "size_accuracy", "environment", "ReportError", "SCHEMA",
           "SCHEMA_NAME", "SCHEMA_VERSION", "schema_fields"]

SCHEMA_NAME = "fastdecomp.report"
SCHEMA_VERSION = 1
PACKAGES = ("numpy", "numba", "llvmlite", "tensorflow", "keras", "onnx", "onnxruntime", "cupy-cuda12x", "dask",
            "distributed", "matplotlib")


class ReportError(FastDecompError, ValueError):
    """A report file that is not a fastdecomp report of this schema version, or does not hold to it."""


_NUMBER, _COUNT, _TEXT, _MATRIX = "number", "integer", "string", "matrix"
SCHEMA = {
    "schema": (_TEXT, "always 'fastdecomp.report'"),
    "schema_version": (_COUNT, "1; a reader refuses another version"),
    "created": (_TEXT, "UTC time the report was made, ISO 8601"),
    "model": {
        "name": (_TEXT, "the model's name"),
        "fingerprint": (_TEXT, "SHA-256 of the model's layers and weights (after normalisation folding)"),
        "num_classes": (_COUNT, "classes of the model"),
        "parameters": (_COUNT, "parameters of the model"),
        "flops": (_COUNT, "FLOPs of one input through the model (2 x multiply-accumulates)"),
    },
    "options": ("object", "the DecompositionOptions, every field"),
    "seed": (_COUNT, "the decomposition's seed (options.seed)"),
    "metrics_seed": (_COUNT, "the seed of the metrics' samples (reuse subsets, cohesion images)"),
    "classes": (["integer"], "the class of each module"),
    "environment": {
        "fastdecomp": (_TEXT, "library version"),
        "python": (_TEXT, "Python version"),
        "packages": ("object", "dependency -> installed version, or null"),
        "machine": ("object", "platform, cpu model, cores, instruction sets, memory"),
    },
    "data": {
        "test_images": (_COUNT, "test images of the modules' classes scored"),
        "decomposition_images": ("integer|null", "images the modules were decomposed from"),
    },
    "accuracy": {
        "model_top1": (_NUMBER, "the model's top-1 on the test images"),
        "model_top5": (_NUMBER, "the model's top-5"),
        "composed_top1": (_NUMBER, "top-1 of every module composed by voting"),
        "composed_top5": (_NUMBER, "top-5 of the composition"),
        "per_class": ([{
            "class": (_COUNT, "the class"),
            "support": (_COUNT, "test images of the class"),
            "model_precision": (_NUMBER, "the model's precision on the class"),
            "model_recall": (_NUMBER, "the model's recall"),
            "model_f1": (_NUMBER, "the model's F1"),
            "composed_precision": (_NUMBER, "the composition's precision"),
            "composed_recall": (_NUMBER, "the composition's recall"),
            "composed_f1": (_NUMBER, "the composition's F1"),
        }], "one entry per module"),
    },
    "modules": ([{
        "class": (_COUNT, "the module's class"),
        "kept_nodes": (_NUMBER, "share of mask-point nodes kept"),
        "jaccard_weights": (_NUMBER, "the authors' Jaccard index (value sets of kept weights)"),
        "krr_masked": (_NUMBER, "kernel retention rate: kernels the masks keep somewhere"),
        "krr_pruned": (_NUMBER, "kernel retention rate of the physically pruned module"),
        "parameter_fraction_masked": (_NUMBER, "parameters not zeroed, over the model's"),
        "parameter_fraction_pruned": (_NUMBER, "parameters of the pruned module, over the model's"),
        "parameters": (_COUNT, "parameters of the pruned module"),
        "flops": (_COUNT, "FLOPs of one input through the pruned module"),
        "flops_fraction": (_NUMBER, "flops over the model's"),
    }], "one entry per module"),
    "summary": {
        "kept_nodes": (_NUMBER, "mean over modules"),
        "krr_masked": (_NUMBER, "mean over modules"),
        "krr_pruned": (_NUMBER, "mean over modules"),
        "parameter_fraction_masked": (_NUMBER, "mean over modules"),
        "parameter_fraction_pruned": (_NUMBER, "mean over modules"),
        "flops_fraction": (_NUMBER, "mean over modules"),
    },
    "independence": {
        "coupling_nodes": (_NUMBER, "mean pairwise Jaccard index of the node masks (MwT's coupling)"),
        "coupling_kernels": (_NUMBER, "the same over kernel masks"),
        "coupling_matrix": (_MATRIX, "[M, M] pairwise Jaccard index of the node masks"),
        "overlap": (_NUMBER, "mean pairwise share of the model's parameters two modules share (MODA)"),
        "overlap_matrix": (_MATRIX, "[M, M]; the diagonal is each module's own share"),
        "cohesion": (_NUMBER, "mean over classes of the mean pairwise Jaccard index of activation masks (MwT)"),
        "cohesion_per_class": ("object", "class -> cohesion"),
    },
    "reuse": {
        "k": (_COUNT, "classes per composition"),
        "mean": (_NUMBER, "mean top-1 over the sampled subsets"),
        "min": (_NUMBER, "the worst subset's top-1"),
        "max": (_NUMBER, "the best subset's top-1"),
        "subsets": ("list", "each subset: classes, top1, images"),
    },
    "cost": {
        "decomposition": ("object|null", "seconds, statistics_seconds, energy (joules, source, kwh, co2e_lbs)"),
        "latency_module": ("object", "one module: single_image_ms, batch_ms, images_per_second, batch_size"),
        "latency_composition": ("object", "every module composed, the same fields"),
    },
    "size_accuracy": ([{
        "activity_threshold": (_NUMBER, "the CI threshold"),
        "tangling_threshold": (_NUMBER, "the TI threshold"),
        "channel_threshold": ("number|null", "the channel threshold"),
        "krr_pruned": (_NUMBER, "mean kernel retention rate, pruned"),
        "parameter_fraction_pruned": (_NUMBER, "mean parameter fraction, pruned"),
        "composed_top1": (_NUMBER, "the composition's top-1"),
    }], "a point per threshold setting; empty without training data"),
}


def schema_fields(spec=SCHEMA, prefix=""):
    """Every field path of the schema (``accuracy.per_class[].f1``), for its documentation.

    Parameters
    ----------
    spec : dict
    prefix : str
    """
    for key, value in spec.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from schema_fields(value, path + ".")
        elif isinstance(value[0], list) and isinstance(value[0][0], dict):
            yield from schema_fields(value[0][0], path + "[].")


def check_report(report):
    """Raise :class:`ReportError` naming the first field of ``report`` that does not hold to :data:`SCHEMA`.

    Parameters
    ----------
    report : dict
    """
    if not isinstance(report, dict) or report.get("schema") != SCHEMA_NAME:
        raise ReportError(f"not a fastdecomp report (no 'schema': {SCHEMA_NAME!r})")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"this report is of schema version {report.get('schema_version')!r}; this fastdecomp "
                          f"reads version {SCHEMA_VERSION}: read it with the fastdecomp that wrote it")
    _check(report, SCHEMA, "")


def _check(value, spec, path):
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ReportError(f"report field {path or '(top)'} should be an object")
        missing, extra = sorted(set(spec) - set(value)), sorted(set(value) - set(spec))
        if missing or extra:
            raise ReportError(f"report object {path or '(top)'}: missing {missing}, unknown {extra}")
        for key, sub in spec.items():
            _check(value[key], sub, f"{path}.{key}" if path else key)
        return
    kind = spec[0]
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise ReportError(f"report field {path} should be a list")
        for i, item in enumerate(value):
            _check(item, kind[0] if isinstance(kind[0], dict) else (kind[0], ""), f"{path}[{i}]")
        return
    if not any(_is(value, one) for one in kind.split("|")):
        raise ReportError(f"report field {path} should be {kind}, got {type(value).__name__}")


def _is(value, kind):
    if kind == "null":
        return value is None
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "matrix":
        return isinstance(value, list) and all(isinstance(row, list) and len(row) == len(value) for row in value)
    return isinstance(value, {"string": str, "object": dict, "list": list, "boolean": bool}[kind])


def build_report(modules, test, y=None, *, train=None, thresholds=(), reuse_k=2, reuse_subsets=20,
                 cohesion_images=16, latency_batch=32, batch_size=256, backend=None, seed=0):
    """Every metric of ``modules`` on ``test``, as one report of :data:`SCHEMA`.

    Parameters
    ----------
    modules : ModuleSet
    test : numpy.ndarray or DataSource
        Labelled test images holding every class of the modules.
    y : numpy.ndarray, optional
        Labels, with an array ``test``.
    train : numpy.ndarray or DataSource, optional
        The data the modules were decomposed from (a labelled source): with
        ``thresholds``, the size-vs-accuracy points.
    thresholds : sequence of (float, float, float or None)
        ``(activity_threshold, tangling_threshold, channel_threshold)`` settings to sweep.
    reuse_k, reuse_subsets : int
        k-of-N reuse: classes per composition and subsets sampled.
    cohesion_images : int
        Test images per class for cohesion (at least 2).
    latency_batch : int
        Images per batch the latency is timed on (median of 3 runs).
    batch_size : int
    backend : str or device, optional
    seed : int
        Seed of the samples the metrics take (reuse subsets, cohesion images).

    Returns
    -------
    dict
    """
    source = metrics._labelled(modules, test, y)
    rows = np.flatnonzero(np.isin(source.labels, modules.classes))
    if thresholds and train is None:
        raise InputError("a size-accuracy sweep (thresholds=) needs train=, the data the modules were decomposed from")
    accuracy, margins = _accuracy(modules, source, rows, batch_size, backend)
    per_module = [_module_entry(modules, k) for k in modules.classes]
    coupling_nodes = metrics.coupling(modules)
    overlap = metrics.overlap(modules)
    cohesion = metrics.cohesion(modules, source, images_per_class=cohesion_images, batch_size=batch_size, seed=seed)
    reuse = metrics.reuse_from_margins(modules, margins, source.labels[rows], k=min(reuse_k, len(modules)),
                                       subsets=reuse_subsets, seed=seed)
    images = source.read(rows[:latency_batch])
    network = modules.network
    report = {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": network.name, "fingerprint": _model_fingerprint(network),
                  "num_classes": int(network.num_classes), "parameters": metrics._model_parameters(network),
                  "flops": metrics.flops(modules, modules.classes[0])["model"]},
        "options": modules.options.to_dict(), "seed": modules.options.seed, "metrics_seed": seed,
        "classes": list(modules.classes),
        "environment": environment(),
        "data": {"test_images": int(len(rows)), "decomposition_images": modules.info.get("num_images")},
        "accuracy": accuracy, "modules": per_module,
        "summary": {key: float(np.mean([m[key] for m in per_module])) for key in SCHEMA["summary"]},
        "independence": {"coupling_nodes": coupling_nodes["mean"],
                         "coupling_kernels": metrics.coupling(modules, unit="kernels")["mean"],
                         "coupling_matrix": coupling_nodes["pairwise"].tolist(), "overlap": overlap["mean"],
                         "overlap_matrix": overlap["pairwise"].tolist(), "cohesion": cohesion["mean"],
                         "cohesion_per_class": {str(k): v for k, v in cohesion["per_class"].items()}},
        "reuse": reuse,
        "cost": {"decomposition": _decomposition_cost(modules.info),
                 "latency_module": metrics.latency(modules.module(modules.classes[0]), images,
                                                   batch_size=latency_batch, repeats=3, backend=backend),
                 "latency_composition": metrics.latency(modules, images, batch_size=latency_batch, repeats=3,
                                                        backend=backend)},
        "size_accuracy": size_accuracy(modules, train, source, thresholds, batch_size, backend) if thresholds else [],
    }
    report = json.loads(json.dumps(report, default=_plain))
    check_report(report)
    return report


def size_accuracy(modules, train, test, thresholds, batch_size=256, backend=None):
    """Mean module size and composed top-1 at each threshold setting (counts taken once).

    Parameters
    ----------
    modules : ModuleSet
        Unthresholded.
    train : DataSource or numpy.ndarray
        The data the modules were decomposed from (labelled).
    test : DataSource
    thresholds : sequence of (float, float, float or None)
    batch_size : int
    backend : str or device, optional

    Returns
    -------
    list of dict
    """
    counts = modules.activity_counts(train, batch_size=batch_size)
    points = []
    for setting in thresholds:
        if len(setting) != 3:
            raise InputError(f"each threshold setting is (activity, tangling, channel or None), got {setting!r}")
        activity, tangling, channel = setting
        smaller = modules.thresholded(counts, activity_threshold=activity, tangling_threshold=tangling,
                                      channel_threshold=channel)
        sizes = [(metrics.kernel_retention(smaller, k)["pruned"], metrics.parameter_fraction(smaller, k)["pruned"])
                 for k in smaller.classes]
        rows = np.flatnonzero(np.isin(test.labels, smaller.classes))
        margins = metrics.composed_margins(smaller, Subset(test, rows), batch_size=batch_size, backend=backend)
        top1 = metrics.topk_accuracy(margins, test.labels[rows], smaller.classes, 1)
        points.append({"activity_threshold": activity, "tangling_threshold": tangling, "channel_threshold": channel,
                       "krr_pruned": float(np.mean([s[0] for s in sizes])),
                       "parameter_fraction_pruned": float(np.mean([s[1] for s in sizes])), "composed_top1": top1})
    return points


def write_report(report, path):
    """Write ``report`` as JSON to ``path``, atomically, after checking it against :data:`SCHEMA`.

    Parameters
    ----------
    report : dict
    path : str or Path
    """
    check_report(report)
    atomic_file(path, (json.dumps(report, indent=1) + "\n").encode())


def read_report(path):
    """Read a report, checked against :data:`SCHEMA` (another schema or version is named as such).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
    """
    try:
        with open(path, "rb") as handle:
            report = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not a JSON report ({exc})") from None
    try:
        check_report(report)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None
    return report


def environment():
    """The library, Python, dependency versions and the machine, as plain values."""
    from . import __version__

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"fastdecomp": __version__, "python": platform.python_version(), "packages": packages,
            "machine": _machine()}


def _machine():
    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"platform": platform.platform(), "architecture": platform.machine(), "cpu": model,
            "cores": os.cpu_count(), "instruction_sets": sorted(flags & {"avx2", "avx512f", "fma", "neon", "asimd",
                                                                          "sve", "avx512_fp16", "amx_tile"}),
            "memory_gb": memory, "byteorder": sys.byteorder}


def _accuracy(modules, source, rows, batch_size, backend):
    subset = Subset(source, rows)
    labels = subset.labels
    composed = metrics.composed_margins(modules, subset, batch_size=batch_size, backend=backend)
    model = modules.network.predict_proba(subset, batch_size=batch_size, backend=backend)
    classes = np.asarray(modules.classes)
    every = np.arange(modules.network.num_classes)
    composed_scores = metrics.per_class_scores(labels, classes[composed.argmax(axis=1)], modules.classes)
    model_scores = metrics.per_class_scores(labels, model.argmax(axis=1), modules.classes)
    per_class = [{"class": k, "support": composed_scores[k]["support"],
                  **{f"model_{key}": model_scores[k][key] for key in ("precision", "recall", "f1")},
                  **{f"composed_{key}": composed_scores[k][key] for key in ("precision", "recall", "f1")}}
                 for k in modules.classes]
    return {"model_top1": metrics.topk_accuracy(model, labels, every, 1),
            "model_top5": metrics.topk_accuracy(model, labels, every, 5),
            "composed_top1": metrics.topk_accuracy(composed, labels, classes, 1),
            "composed_top5": metrics.topk_accuracy(composed, labels, classes, 5), "per_class": per_class}, composed


def _module_entry(modules, k):
    sizes = metrics.sizes(modules, k)
    krr, fraction, flops = (metrics.kernel_retention(modules, k), metrics.parameter_fraction(modules, k),
                            metrics.flops(modules, k))
    return {"class": k, "kept_nodes": sizes["kept_nodes"] / sizes["nodes"],
            "jaccard_weights": metrics.jaccard(modules, k, "weights"),
            "krr_masked": krr["masked"], "krr_pruned": krr["pruned"],
            "parameter_fraction_masked": fraction["masked"], "parameter_fraction_pruned": fraction["pruned"],
            "parameters": sizes["parameters"], "flops": flops["module"], "flops_fraction": flops["fraction"]}


def _decomposition_cost(info):
    if "seconds" not in info:
        return None
    return {key: info[key] for key in ("seconds", "statistics_seconds", "energy") if key in info}


def _model_fingerprint(network):
    from .gathering import model_fingerprint

    return model_fingerprint(network)


def _plain(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_html(report, path, *, figures=None):
    """Write a report as one self-contained HTML page (figures inlined as PNG), atomically.

    The page shows accuracy model vs composed per class, module size per
    class, the pairwise coupling heatmap, the size-vs-accuracy curve and the
    timings; it needs no network to view. Needs matplotlib
    (``pip install 'fastdecomp[report]'``).

    Parameters
    ----------
    report : dict
        Of :data:`SCHEMA` (checked).
    path : str or Path
    figures : str or Path, optional
        Also save each figure there as a PNG, for papers.

    Returns
    -------
    dict
        Figure name -> PNG bytes.
    """
    check_report(report)
    pngs = {name: draw(report) for name, draw in _FIGURES.items() if draw(report, probe=True)}
    if figures is not None:
        for name, data in pngs.items():
            atomic_file(os.path.join(figures, f"{name}.png"), data)
    atomic_file(path, _page(report, pngs).encode())
    return pngs


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError("the HTML report draws its figures with matplotlib: pip install 'fastdecomp[report]'") \
            from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(figure):
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _accuracy_figure(report, probe=False):
    if probe:
        return True
    plt = _pyplot()
    rows = report["accuracy"]["per_class"]
    classes = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 3.2))
    axes.bar(classes - 0.2, [r["model_recall"] for r in rows], 0.4, label="model")
    axes.bar(classes + 0.2, [r["composed_recall"] for r in rows], 0.4, label="composed modules")
    axes.set(xlabel="class", ylabel="recall (per-class accuracy)", ylim=(0, 1.05),
             xticks=classes if len(rows) <= 40 else classes[::max(1, len(rows) // 20)])
    axes.set_xticklabels([str(r["class"]) for r in rows][::1 if len(rows) <= 40 else max(1, len(rows) // 20)])
    axes.legend(loc="lower right")
    return _png(figure)


def _size_figure(report, probe=False):
    if probe:
        return True
    plt = _pyplot()
    rows = report["modules"]
    classes = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 3.2))
    for offset, key, label in ((-0.27, "kept_nodes", "nodes kept"), (0, "krr_pruned", "kernels (KRR, pruned)"),
                               (0.27, "parameter_fraction_pruned", "parameters (pruned)")):
        axes.bar(classes + offset, [r[key] for r in rows], 0.27, label=label)
    axes.set(xlabel="module (class)", ylabel="share of the model", ylim=(0, 1.15))
    axes.legend(loc="upper right", ncols=3, fontsize="small")
    return _png(figure)


def _coupling_figure(report, probe=False):
    if probe:
        return len(report["classes"]) > 1
    plt = _pyplot()
    matrix = np.asarray(report["independence"]["coupling_matrix"])
    figure, axes = plt.subplots(figsize=(4.6, 3.8))
    image = axes.imshow(matrix, cmap="viridis", vmin=min(0.0, matrix.min()), vmax=1.0)
    figure.colorbar(image, ax=axes, label="Jaccard index of node masks")
    axes.set(title=f"coupling (mean {report['independence']['coupling_nodes']:.3f})", xlabel="module",
             ylabel="module")
    return _png(figure)


def _size_accuracy_figure(report, probe=False):
    if probe:
        return bool(report["size_accuracy"])
    plt = _pyplot()
    points = report["size_accuracy"]
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("krr_pruned", "kernel retention rate"), ("parameter_fraction_pruned", "parameter fraction")):
        axes.plot([p[key] for p in points], [100 * p["composed_top1"] for p in points], "o-", label=label)
    axes.axhline(100 * report["accuracy"]["model_top1"], color="grey", linestyle=":", label="model")
    axes.set(xlabel="module size (share of the model, pruned)", ylabel="composed top-1 (%)")
    axes.legend(fontsize="small")
    return _png(figure)


_FIGURES = {"accuracy": _accuracy_figure, "module_size": _size_figure, "coupling": _coupling_figure,
            "size_accuracy": _size_accuracy_figure}


def _page(report, pngs):
    import base64
    import html

    def table(rows):
        return "<table>" + "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
                                   for row in rows) + "</table>"

    accuracy, summary, independence = report["accuracy"], report["summary"], report["independence"]
    cost = report["cost"]
    facts = [("model", report["model"]["name"]), ("modules", len(report["classes"])),
             ("test images", report["data"]["test_images"]),
             ("model top-1 / top-5", f"{accuracy['model_top1']:.2%} / {accuracy['model_top5']:.2%}"),
             ("composed top-1 / top-5", f"{accuracy['composed_top1']:.2%} / {accuracy['composed_top5']:.2%}"),
             ("KRR (masked / pruned)", f"{summary['krr_masked']:.3f} / {summary['krr_pruned']:.3f}"),
             ("parameter fraction (pruned)", f"{summary['parameter_fraction_pruned']:.3f}"),
             ("coupling / overlap / cohesion", f"{independence['coupling_nodes']:.3f} / {independence['overlap']:.3f}"
                                               f" / {independence['cohesion']:.3f}"),
             (f"reuse, {report['reuse']['k']} of {len(report['classes'])}", f"{report['reuse']['mean']:.2%}")]
    timings = [("module, one image", f"{cost['latency_module']['single_image_ms']:.2f} ms"),
               ("composition, one image", f"{cost['latency_composition']['single_image_ms']:.2f} ms"),
               ("composition, images/s", f"{cost['latency_composition']['images_per_second']:.0f}")]
    if cost["decomposition"]:
        timings.append(("decomposition", f"{cost['decomposition']['seconds']:.1f} s"))
        energy = cost["decomposition"].get("energy")
        if energy:
            timings.append(("energy", f"{energy['joules']:.0f} J ({energy['source']}), "
                                      f"{energy['co2e_lbs']:.2e} lbs CO2e"))
    titles = {"accuracy": "Accuracy per class: model vs composed", "module_size": "Module size per class",
              "coupling": "Pairwise coupling", "size_accuracy": "Size vs accuracy"}
    images = "".join(f"<h2>{titles[name]}</h2><img id='{name}' alt='{titles[name]}' "
                     f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>" for name, data in pngs.items())
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fastdecomp report: "
            f"{html.escape(report['model']['name'])}</title><style>body{{font-family:sans-serif;max-width:60em;"
            f"margin:2em auto}}td{{padding:0 1em 0 0}}img{{max-width:100%}}</style></head><body>"
            f"<h1>fastdecomp report: {html.escape(report['model']['name'])}</h1>{table(facts)}"
            f"<h2>Timings</h2>{table(timings)}{images}"
            f"<p>Schema {SCHEMA_NAME} version {SCHEMA_VERSION}, {html.escape(report['created'])}, "
            f"fastdecomp {html.escape(report['environment']['fastdecomp'])}.</p></body></html>")
