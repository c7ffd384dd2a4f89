"""The fastdecomp command line."""

import subprocess
import sys

import numpy as np
import pytest

from fastdecomp import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, resnet_case):
    model, x, y = resnet_case
    folder = tmp_path_factory.mktemp("cli")
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x=x, y=y)
    return folder


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
