"""The experiment runner regenerates its report from the committed zoo models (quick mode)."""

import subprocess
import sys
from pathlib import Path

import pytest

from fastdecomp import zoo

RUNNER = Path(__file__).resolve().parent / "run_experiments.py"
NEEDED = ("resnet20-fmnist", "resnet56-fmnist", "resnet20-mnist", "resnet20-fmnist-faulty", "smallcnn-fmnist")


@pytest.mark.slow
def test_runner_quick_mode_writes_every_table_and_plot(tmp_path):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    assert set(NEEDED) <= set(zoo.available()), "the zoo models must be committed"
    result = subprocess.run([sys.executable, str(RUNNER), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "experiments.md").read_text()
    for heading in ("## RQ1", "### Intra-dataset reuse", "### Inter-dataset reuse", "### Intra-dataset replacement",
                    "### Inter-dataset replacement", "## Motivating example", "## RQ3"):
        assert heading in report
    assert "nan" not in report.lower()
    plots = sorted(p.name for p in (tmp_path / "experiments").glob("*.png"))
    assert plots == ["motivating_example.png", "rq1.png", "rq2_inter_reuse.png", "rq2_intra_reuse.png",
                     "rq2_replacement.png", "rq3_co2e.png"]
    assert all((tmp_path / "experiments" / p).stat().st_size > 5000 for p in plots)
