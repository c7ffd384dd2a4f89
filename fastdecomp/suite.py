"""The benchmark-suite driver behind ``fastdecomp bench``: a grid of runs, one JSON line each, resumable.

Each run decomposes one model with one combination of options and reports
every metric (:func:`fastdecomp.report.build_report`). Its line carries a
``key`` naming the model, the data and the options; a suite started again
over the same file skips every run whose key is already there with status
``ok``, so an interrupted suite resumes where it stopped (a line cut short by
the interruption is dropped first). Runs that differ only in backtracking or
thresholds share one pass over the training data.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from .errors import FastDecompError, InputError
from .options import THRESHOLDS, DecompositionOptions

__all__ = ["run_suite", "read_runs", "grid_runs", "SUITE_SCHEMA", "SUITE_SCHEMA_VERSION"]

SUITE_SCHEMA = "fastdecomp.bench"
SUITE_SCHEMA_VERSION = 1
_AFTER_THE_PASS = ("backtrack", "delta", "bln_rule") + THRESHOLDS


def grid_runs(grid):
    """Every combination of the grid's values, as option dicts, in a stable order.

    Parameters
    ----------
    grid : dict
        Option name -> list of values (an option left out keeps its default).

    Returns
    -------
    list of dict
    """
    unknown = sorted(set(grid) - set(DecompositionOptions.names()))
    if unknown:
        raise InputError(f"unknown options {unknown} in the grid; the options are {DecompositionOptions.names()}")
    names = sorted(grid)
    runs = []
    for values in itertools.product(*(grid[name] for name in names)):
        options = dict(zip(names, values))
        DecompositionOptions(**options)  # every value checked before the first run
        runs.append(options)
    return runs


def read_runs(path):
    """The runs a suite file holds, without a last line cut short by an interruption.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of dict
    """
    path = Path(path)
    if not path.exists():
        return []
    runs = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number == len(lines):  # the last line, cut short
                continue
            raise InputError(f"{path} line {number} is not JSON; is this a 'fastdecomp bench' file?") from None
        if not isinstance(run, dict) or run.get("schema") != SUITE_SCHEMA:
            raise InputError(f"{path} line {number} is not a 'fastdecomp bench' run")
        if run.get("schema_version") != SUITE_SCHEMA_VERSION:
            raise InputError(f"{path} line {number} is of bench schema version {run.get('schema_version')!r}; "
                             f"this fastdecomp writes version {SUITE_SCHEMA_VERSION}: use another file")
        runs.append(run)
    return runs


def run_suite(models, train, test, grid, out, *, train_limit=None, test_limit=None, report=None, log=None):
    """Run every model with every combination of ``grid``, appending one JSON line per run to ``out``.

    Parameters
    ----------
    models : list of str
        Model files or ``zoo:NAME``.
    train, test : str
        Data specs (:func:`fastdecomp.data.open_data`).
    grid : dict
        Option name -> values.
    out : str or Path
        The JSON-lines file (created, or resumed).
    train_limit, test_limit : int, optional
    report : dict, optional
        Options of :func:`fastdecomp.report.build_report`.
    log : callable, optional
        Called with one line per run.

    Returns
    -------
    (int, int)
        Runs already in ``out``, and runs made now.
    """
    from . import data, zoo

    runs = grid_runs(grid)
    done = {run["key"] for run in read_runs(out) if run.get("status") == "ok"}
    _drop_cut_line(out)
    train_source, test_source = data.open_data(train, train_limit), data.open_data(test, test_limit)
    skipped = made = 0
    for spec in models:
        passes, model = {}, None
        for options in runs:
            key = json.dumps({"model": spec, "train": train, "train_limit": train_limit, "test": test,
                              "test_limit": test_limit, "options": DecompositionOptions(**options).to_dict()},
                             sort_keys=True)
            if key in done:
                skipped += 1
                continue
            try:
                model = zoo.open_model(spec) if model is None else model
                line = _one_run(model, options, passes, train_source, test_source, report or {})
            except (FastDecompError, OSError, ValueError) as exc:
                line = {"status": "error", "seconds": 0.0,
                        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
            _append(out, {"schema": SUITE_SCHEMA, "schema_version": SUITE_SCHEMA_VERSION, "key": key,
                          "model": spec, "options": options, **line})
            made += 1
            if log is not None:
                log(f"{spec} {options}: {line['status']}"
                    + (f", composed top-1 {line['report']['accuracy']['composed_top1']:.2%}"
                       if line["status"] == "ok" else f" ({line['error']})"))
    return skipped, made


def _one_run(model, options, passes, train, test, report_options):
    """Decompose (sharing the pass with runs that differ only after it), then report."""
    from .decompose import decompose

    started = time.perf_counter()
    full = DecompositionOptions(**options)
    pass_options = {name: value for name, value in full.to_dict().items() if name not in _AFTER_THE_PASS}
    pass_key = json.dumps(pass_options, sort_keys=True)
    if pass_key not in passes:
        passes.clear()  # one model's pass in memory at a time
        passes[pass_key] = [decompose(model, train, progress=False, backtrack=None, **pass_options), None]
    paper = passes[pass_key][0]
    if full.thresholded:
        if passes[pass_key][1] is None:
            passes[pass_key][1] = paper.activity_counts(train)
        paper = paper.thresholded(passes[pass_key][1], **{name: getattr(full, name) for name in THRESHOLDS})
    modules = paper.variant(full.backtrack, delta=full.delta, bln_rule=full.bln_rule)
    result = modules.report(test, **report_options)
    return {"status": "ok", "seconds": time.perf_counter() - started, "report": result}


def _append(path, record):
    """Append one line and make it durable before the next run starts."""
    with open(path, "ab") as handle:
        handle.write((json.dumps(record) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def _drop_cut_line(path):
    """Cut a last line left without its newline by an interruption, so the next line starts clean."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
