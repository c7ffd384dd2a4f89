"""The fastdecomp command line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fastdecomp import cli


def test_decompose_then_evaluate(files, capsys):
    out = files / "modules"
    assert cli.main(["decompose", str(files / "model.keras"), str(files / "data.npz"), "-o", str(out),
                     "--backtrack", "bi", "--mask-at", "relu", "--delta", "0.05", "--no-progress"]) == 0
    assert (out / "manifest.json").is_file()
    assert cli.main(["evaluate", str(out), str(files / "data.npz")]) == 0
    printed = capsys.readouterr().out
    assert "4 modules written" in printed and "composed top-1" in printed


def test_errors_are_one_clear_line(files, capsys):
    assert cli.main(["decompose", str(files / "missing.keras"), str(files / "data.npz"),
                     "-o", str(files / "never"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (files / "never").exists()
    assert cli.main(["evaluate", str(files), str(files / "data.npz")]) == 2
    assert "not a saved module set" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "fastdecomp.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for word in ("decompose", "evaluate", "demo"):
        assert word in result.stdout


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_inputs_get_one_line_before_any_work(files, capsys, monkeypatch, tmp_path):
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the decomposition ran before the output was checked")

    monkeypatch.setattr(importlib.import_module("fastdecomp.decompose"), "decompose", never)
    model, data = str(files / "model.keras"), str(files / "data.npz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["decompose", model, data, "-o", str(locked / "out")], "not writable"),
        (["decompose", model, data, "-o", str(tmp_path), "--overwrite"], "not a fastdecomp save"),
        (["decompose", model, "synthetic:abc", "-o", str(tmp_path / "a")], "synthetic:abc"),
        (["decompose", model, "a.npy,b.npy,c.npy", "-o", str(tmp_path / "b")], "cannot read data"),
        (["decompose", "zoo:../../etc/passwd", data, "-o", str(tmp_path / "c")], "no zoo model named"),
    ]
    if os.geteuid() == 0:  # root writes anywhere
        cases = cases[1:]
    for argv, message in cases:
        assert cli.main(argv + ["--no-progress"]) == 2, argv
        assert message in one_line(capsys)


def test_unexpected_errors_are_one_line_unless_debugging(files, capsys, monkeypatch):
    import fastdecomp.saving

    def broken(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(fastdecomp.saving, "load_modules", broken)
    assert cli.main(["evaluate", str(files), str(files / "data.npz")]) == 3
    error = one_line(capsys)
    assert "ZeroDivisionError" in error and "--debug" in error
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "evaluate", str(files), str(files / "data.npz")])


def test_an_onnx_model_decomposes_from_the_command_line(files, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import resnet18_style

    import onnx

    model_path = tmp_path / "resnet.onnx"
    onnx.save(resnet18_style(), model_path)
    x = np.random.default_rng(3).normal(size=(40, 32, 32, 3)).astype(np.float32)
    import fastdecomp as fd

    y = fd.from_onnx(model_path).predict(x)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    present = ",".join(str(c) for c in sorted(set(y.tolist())))
    assert cli.main(["decompose", str(model_path), str(tmp_path / "data.npz"), "-o", str(tmp_path / "modules"),
                     "--classes", present, "--concerned", "all", "--no-progress"]) == 0
    assert "modules written" in capsys.readouterr().out
    loaded = fd.load(tmp_path / "modules")  # explicit pads saved, checked and loaded
    assert any(layer.config.get("padding") == "explicit" for layer in loaded.network.layers)
    assert loaded.predict_proba(x).shape == (40, len(loaded.classes), 2)
    truncated = tmp_path / "broken.onnx"
    truncated.write_bytes(model_path.read_bytes()[:300])
    assert cli.main(["decompose", str(truncated), str(tmp_path / "data.npz"), "-o", str(tmp_path / "never"),
                     "--no-progress"]) == 2
    assert "could not read the ONNX model" in one_line(capsys)


BASELINE = dict(mask_at="relu", backtrack="bi", delta=0.05, bln_rule="algorithm", ti_ratio=1.0,
                concerned="correct", seed=2)
OPTIONS = [("--mask-at", "conv", "mask_at", "conv"), ("--backtrack", "none", "backtrack", None),
           ("--delta", "0.02", "delta", 0.02), ("--bln-rule", "prose", "bln_rule", "prose"),
           ("--ti-ratio", "0.3", "ti_ratio", 0.3), ("--concerned", "all", "concerned", "all"),
           ("--seed", "7", "seed", 7), ("--classes", "0,2", "classes", [0, 2]), ("--limit", "30", None, None),
           ("--batch-size", "5", None, None), ("--activity-threshold", "0.3", "activity_threshold", 0.3),
           ("--tangling-threshold", "0.3", "tangling_threshold", 0.3),
           ("--channel-threshold", "0.5", "channel_threshold", 0.5)]


def _same(a, b):
    if a.classes != b.classes or any(set(a.masks(k)) != set(b.masks(k)) for k in a.classes):
        return False
    return all(np.array_equal(a.masks(k)[n], b.masks(k)[n]) for k in a.classes for n in a.masks(k)) and all(
        np.array_equal(x, y) for k in a.classes for x, y in zip(a.head(k) + a.sample_indices(k),
                                                               b.head(k) + b.sample_indices(k)))


@pytest.mark.parametrize("flag, value, option, library_value", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_every_decompose_option_reaches_the_library_and_changes_the_result(files, tmp_path, flag, value, option,
                                                                           library_value):
    import fastdecomp as fd

    model, data = str(files / "model.keras"), str(files / "data.npz")
    args = [model, data, "--no-progress", "--backtrack", "bi", "--delta", "0.05", "--seed", "2"]
    assert cli.main(["decompose", *args, flag, value, "-o", str(tmp_path / "out")]) == 0
    got = fd.load_modules(tmp_path / "out")
    source = fd.data.open_data(data, 30 if flag == "--limit" else None)
    expected = fd.decompose(model, source, progress=False, **{**BASELINE, **({option: library_value} if option
                                                                            else {})})
    assert _same(got, expected)
    baseline = fd.decompose(model, fd.data.open_data(data), progress=False, **BASELINE)
    assert _same(got, baseline) == (flag == "--batch-size"), f"{flag} {value} changed nothing"
