"""Machine-readable results (fastdecomp.report), the HTML page in a real browser, and the suite driver."""

import json
import os
import stat
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import cli, metrics
from fastdecomp.report import (ReportError, check_report, read_report, schema_fields, write_html,
                               write_report)
from fastdecomp.suite import read_runs, run_suite

DOCS = Path(__file__).resolve().parent.parent / "docs" / "report.md"
THRESHOLDS = [(0.0, 0.0, None), (0.1, 0.1, 0.5)]


@pytest.fixture(scope="module")
def decomposed():
    train = fd.data.open_data("fashion-mnist:train", 500)
    test = fd.data.open_data("fashion-mnist:test", 250)
    return fd.decompose(fd.zoo.load("resnet20-fmnist"), train, progress=False), train, test


@pytest.fixture(scope="module")
def report(decomposed):
    modules, train, test = decomposed
    return modules.report(test, train=train, thresholds=THRESHOLDS, reuse_subsets=5, cohesion_images=4)


def test_the_report_holds_to_its_schema_and_to_the_metrics(report, decomposed):
    modules, train, test = decomposed
    check_report(report)
    scores = fd.compose(modules).evaluate(test)
    assert report["accuracy"]["composed_top1"] == scores["top1"]
    assert report["accuracy"]["model_top1"] == scores["model_top1"]
    assert report["modules"][3]["krr_pruned"] == metrics.kernel_retention(modules, 3)["pruned"]
    assert report["modules"][3]["flops"] == metrics.flops(modules, 3)["module"]
    assert report["independence"]["coupling_nodes"] == metrics.coupling(modules)["mean"]
    assert report["options"] == modules.options.to_dict() and report["classes"] == modules.classes
    recall = [r["composed_recall"] for r in report["accuracy"]["per_class"]]
    support = [r["support"] for r in report["accuracy"]["per_class"]]
    assert np.dot(recall, support) / sum(support) == pytest.approx(scores["top1"])
    paper_point, smaller_point = report["size_accuracy"]
    assert paper_point["composed_top1"] == scores["top1"]
    assert smaller_point["parameter_fraction_pruned"] < paper_point["parameter_fraction_pruned"]
    assert report["environment"]["packages"]["numpy"] == np.__version__


def test_every_schema_field_is_documented():
    text = DOCS.read_text()
    missing = [path for path in schema_fields() if f"`{path}`" not in text]
    assert not missing, f"docs/report.md does not document {missing}"


def test_a_report_is_written_atomically_and_read_back_checked(report, tmp_path):
    path = tmp_path / "report.json"
    write_report(report, path)
    assert read_report(path) == report
    other = dict(report, schema_version=2)
    path.write_text(json.dumps(other))
    with pytest.raises(ReportError, match="schema version 2; this fastdecomp reads version 1"):
        read_report(path)
    broken = json.loads(json.dumps(report))
    del broken["accuracy"]["per_class"][0]["composed_f1"]
    with pytest.raises(ReportError, match=r"accuracy.per_class\[0\]: missing \['composed_f1'\]"):
        write_report(broken, path)
    broken["accuracy"]["per_class"][0]["composed_f1"] = "high"
    with pytest.raises(ReportError, match="composed_f1 should be number"):
        check_report(broken)
    path.write_bytes(b'{"schema": "fastdecomp.rep')
    with pytest.raises(ReportError, match="is not a JSON report"):
        read_report(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def _browser():
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium (.ci/setup installs Debian's chromium-headless-shell)")


def test_the_html_page_renders_in_a_headless_browser(report, tmp_path):
    from PIL import Image

    pngs = write_html(report, tmp_path / "report.html", figures=tmp_path / "figures")
    assert set(pngs) == {"accuracy", "module_size", "coupling", "size_accuracy"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in pngs)
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page), "the page must not need the network"
    browser = [_browser(), "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(browser + ["--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert dom.count("data:image/png;base64,") == 4 and "Pairwise coupling" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(browser + ["--window-size=1000,3000", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=1) < 30).sum()  # matplotlib's first colour: bars drawn
    heat = ((pixels[:, 0] > 150) & (pixels[:, 1] > 150) & (pixels[:, 2] < 100)).sum()  # viridis' yellow
    assert blue > 2000 and heat > 2000, "the figures did not render"


def test_the_command_line_writes_the_report_and_the_page(decomposed, tmp_path, capsys):
    modules = decomposed[0]
    fd.save(modules, tmp_path / "modules")
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    assert cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "--limit", "250", "-o", str(out),
                     "--html", str(page), "--train", "fashion-mnist:train", "--train-limit", "500",
                     "--thresholds", "0,0.1:0.1:0.5", "--reuse-subsets", "5", "--cohesion-images", "4"]) == 0
    written = read_report(out)
    assert len(written["size_accuracy"]) == 2 and page.exists()
    assert cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "modules"), "fashion-mnist:test", "--limit", "250", "--json",
                     "--reuse-subsets", "5", "--cohesion-images", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    check_report(printed)
    assert printed["accuracy"] == written["accuracy"]


def test_bad_report_inputs_are_refused_with_one_line(decomposed, tmp_path, capsys):
    modules, train, test = decomposed
    fd.save(modules, tmp_path / "modules")
    digits = tmp_path / "digits.npz"
    np.savez(digits, x=test.read(np.arange(40)), y=np.repeat([0, 1], 20))
    assert cli.main(["report", str(tmp_path / "modules"), str(digits), "-o", str(tmp_path / "r.json")]) == 2
    assert "no image of classes [2, 3, 4, 5, 6, 7, 8, 9]" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "-o", str(tmp_path / "r.json"),
                     "--thresholds", "0.1"]) == 2
    assert "--thresholds needs --train" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "--limit", "100",
                     "-o", str(tmp_path / "r.json"), "--train", "fashion-mnist:train", "--train-limit", "400",
                     "--thresholds", "0.1"]) == 2
    assert "decomposed from 500 images" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "link.json")
    same = tmp_path / "same"
    import fastdecomp.saving

    real_load = fastdecomp.saving.load_modules
    fastdecomp.saving.load_modules = lambda *a, **k: pytest.fail("work began before the outputs were checked")
    try:
        for out, extra, said in [(tmp_path / "fifo", [], "is a FIFO"), (tmp_path / "link.json", [], "symbolic link"),
                                 (same, ["--html", str(same)], "both")]:
            assert cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "-o", str(out),
                             "--overwrite", *extra]) == 2, out
            assert said in capsys.readouterr().err
    finally:
        fastdecomp.saving.load_modules = real_load
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and os.path.islink(tmp_path / "link.json")
    assert not same.exists() and not (tmp_path / "elsewhere.json").exists()
    with pytest.raises(SystemExit):
        cli.main(["report", str(tmp_path / "modules"), "fashion-mnist:test", "-o", "x", "--thresholds", "a:b"])


def test_the_suite_writes_a_line_per_run_and_resumes_after_an_interruption(tmp_path, decomposed):
    out = tmp_path / "runs.jsonl"
    grid = {"backtrack": ["bln", "bi"], "activity_threshold": [0.0, 0.1]}
    options = dict(train_limit=500, test_limit=250, report={"reuse_subsets": 3, "cohesion_images": 2})
    assert run_suite(["zoo:resnet20-fmnist", "missing.keras"], "fashion-mnist:train", "fashion-mnist:test", grid,
                     out, **options) == (0, 8)
    runs = read_runs(out)
    assert [r["status"] for r in runs] == ["ok"] * 4 + ["error"] * 4
    assert "missing.keras" in runs[4]["error"]
    direct = fd.decompose(fd.zoo.load("resnet20-fmnist"),
                          fd.data.open_data("fashion-mnist:train", 500), backtrack="bi", activity_threshold=0.1,
                          progress=False)
    shared = next(r for r in runs if r["options"] == {"activity_threshold": 0.1, "backtrack": "bi"})
    assert shared["report"]["modules"][2]["kept_nodes"] == pytest.approx(metrics.jaccard(direct, 2), abs=0)
    assert shared["report"]["accuracy"]["composed_top1"] == fd.compose(direct).evaluate(
        fd.data.open_data("fashion-mnist:test", 250))["top1"]
    cut = out.read_bytes()
    out.write_bytes(cut[:cut.rfind(b"\n", 0, len(cut) - 1) + 1] + b'{"schema": "fastdecomp.be')
    assert run_suite(["zoo:resnet20-fmnist"], "fashion-mnist:train", "fashion-mnist:test", grid, out,
                     **options) == (4, 0)
    assert len(read_runs(out)) == 7 and out.read_bytes().endswith(b"\n")
    with pytest.raises(fd.InputError, match="unknown options"):
        run_suite(["zoo:resnet20-fmnist"], "fashion-mnist:train", "fashion-mnist:test", {"treshold": [1]}, out)
    with pytest.raises(fd.InputError, match="activity_threshold must be a fraction"):
        run_suite(["zoo:resnet20-fmnist"], "fashion-mnist:train", "fashion-mnist:test",
                  {"activity_threshold": [2]}, out)


def test_a_set_of_one_module_reports_too(decomposed):
    _, train, test = decomposed
    one = fd.decompose(fd.zoo.load("resnet20-fmnist"), train, classes=[3], progress=False)
    report = one.report(test, cohesion_images=2)
    assert report["classes"] == [3] and report["reuse"]["k"] == 1 and report["independence"]["coupling_nodes"] == 0
    assert report["accuracy"]["composed_top1"] == 1.0  # one module votes for its class on its class's images
