"""The README's reuse example runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading):
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_reuse_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlxtend")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("### Reuse, replace, remove, update"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.count("'top1'") == 4
    assert "[0, 1, 2, 3, 4, 5, 7, 8, 9]" in printed
    assert (tmp_path / "composition" / "composition.json").is_file()


def test_metrics_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("### Metrics, reports and module size"), "README.md", "exec"), {})
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.html").is_file()
    assert "'masked'" in capsys.readouterr().out
