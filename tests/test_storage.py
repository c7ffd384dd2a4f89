"""Saves are atomic, replace only saves, and never destroy what they should not."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import storage


@pytest.fixture(scope="module")
def modules(resnet_case):
    model, x, y = resnet_case
    return fd.decompose(model, x, y, backtrack="bln", delta=0.05, progress=False)


def test_the_current_directory_and_foreign_folders_are_never_replaced(modules, tmp_path, monkeypatch):
    data = tmp_path / "work"
    data.mkdir()
    (data / "train.npy").write_bytes(b"precious")
    monkeypatch.chdir(data)
    with pytest.raises(FileExistsError, match="current directory"):
        fd.save(modules, ".", overwrite=True)
    with pytest.raises(FileExistsError, match="current directory"):
        fd.save(modules, tmp_path, overwrite=True)
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"cat")
    with pytest.raises(FileExistsError, match="not a folder this kind of save wrote"):
        fd.save(modules, unrelated, overwrite=True)
    assert (data / "train.npy").read_bytes() == b"precious" and (unrelated / "cat.jpg").read_bytes() == b"cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "work"]


def test_a_folder_created_during_the_save_is_not_replaced(modules, tmp_path, monkeypatch):
    target = tmp_path / "mods"
    original = fd.saving._write_modules

    def racing(obj, folder):
        original(obj, folder)
        target.mkdir()
        (target / "theirs.txt").write_text("someone else's")

    monkeypatch.setattr(fd.saving, "_write_modules", racing)
    with pytest.raises(FileExistsError):
        fd.save(modules, target)
    assert (target / "theirs.txt").read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["mods"]  # no temporary folder left


def test_saves_respect_the_umask(modules, tmp_path):
    previous = os.umask(0o027)
    try:
        path = fd.save(modules, tmp_path / "mods")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o750


SAVER = """
import sys, fastdecomp as fd
modules = fd.load_modules(sys.argv[1])
print("ready", flush=True)
while True:
    fd.save(modules, sys.argv[2], overwrite=True)
"""


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_save_whole(modules, tmp_path):
    source = fd.save(modules, tmp_path / "source")
    target = fd.save(modules, tmp_path / "target")
    rng = np.random.default_rng(0)
    for _ in range(8):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(source), str(target)], stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        loaded = fd.load_modules(target)  # complete, whichever it is
        assert loaded.classes == modules.classes
    fd.save(modules, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "target"]  # leftovers cleaned up


def test_two_writers_of_one_new_path_do_not_both_succeed(modules, tmp_path):
    source = fd.save(modules, tmp_path / "source")
    code = "import sys, fastdecomp as fd; fd.save(fd.load_modules(sys.argv[1]), sys.argv[2])"
    runs = [subprocess.Popen([sys.executable, "-c", code, str(source), str(tmp_path / "new")],
                             stderr=subprocess.PIPE) for _ in range(2)]
    outcomes = sorted(run.wait() for run in runs)
    assert outcomes[0] == 0 and outcomes[1] != 0
    assert b"OutputExistsError" in b"".join(run.stderr.read() for run in runs)
    fd.load_modules(tmp_path / "new")


def test_atomic_directory_swaps_whole_folders(tmp_path):
    path = tmp_path / "out"
    with storage.atomic_directory(path) as tmp:
        (tmp / "a").write_text("1")
    with storage.atomic_directory(path, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in path.iterdir()] == ["b"]
    with pytest.raises(RuntimeError):
        with storage.atomic_directory(path, overwrite=True) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("disk full")
    assert [p.name for p in path.iterdir()] == ["b"] and len(list(tmp_path.iterdir())) == 1


def test_only_a_save_with_nothing_else_in_it_is_replaced(modules, tmp_path, monkeypatch):
    """A save folder where the user also put the model or the data is not replaced (the CLI's -o --overwrite)."""
    from fastdecomp import cli

    path = fd.save(modules, tmp_path / "out")
    (path / "x.npy").write_bytes(b"the training data")
    with pytest.raises(fd.OutputExistsError, match="not a folder this kind of save wrote"):
        fd.save(modules, path, overwrite=True)
    assert cli.main(["decompose", "model.keras", str(path / "x.npy") + ",y.npy", "-o", str(path), "--overwrite"]) == 2
    assert (path / "x.npy").read_bytes() == b"the training data"
    with pytest.raises(fd.InputError, match="overwrite must be True or False"):
        fd.save(modules, path, overwrite="no")


def test_overflowing_inputs_are_named_wherever_modules_run(modules, resnet_case):
    _, x, _ = resnet_case
    huge = x.copy()
    huge[3] = 3e38
    for run in (lambda: fd.compose(modules).predict(huge), lambda: modules.network.predict_proba(huge),
                lambda: modules.updated(0, huge)):
        with pytest.raises(fd.InputError, match=r"images \[3\] overflow"):
            run()


def test_a_replacing_save_whose_last_rename_fails_keeps_the_old_save(modules, resnet_case, tmp_path, monkeypatch):
    """The old save is never deleted before the new one is in place: a failure at the last step leaves it."""
    fd.save(modules, tmp_path / "m")
    model, x, y = resnet_case
    newer = fd.decompose(model, x, y, classes=[0, 1], progress=False)

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "rename", refuse)  # only an exchange of the folders can still succeed
    try:
        fd.save(newer, tmp_path / "m", overwrite=True)
        saved = newer
    except fd.SaveError:
        saved = modules
    monkeypatch.undo()
    assert fd.load_modules(tmp_path / "m").classes == saved.classes


def test_a_file_output_replaces_only_a_regular_file_and_gets_the_umasks_mode(tmp_path):
    import stat

    from fastdecomp.errors import OutputExistsError
    from fastdecomp.storage import atomic_file

    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "target", tmp_path / "link")
    (tmp_path / "folder").mkdir()
    for name, what in (("fifo", "a FIFO"), ("link", "a symbolic link"), ("folder", "a directory")):
        with pytest.raises(OutputExistsError, match=what):
            atomic_file(tmp_path / name, b"data")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and not (tmp_path / "target").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link"]  # no temporary left
    old = os.umask(0o027)
    try:
        atomic_file(tmp_path / "out.bin", b"data")
        atomic_file(tmp_path / "out.bin", b"again")  # a regular file is replaced
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").read_bytes() == b"again"
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o640


PLANTED_INDEX = """
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
with open(sys.argv[2], "wb") as f:
    pickle.dump(Payload(), f)
"""

USE_A_NUMBA_KERNEL = """
import numpy as np
from fastdecomp.kernels import cpu
out = np.empty((2, 3), np.float32)
cpu.dense_forward(np.ones((2, 4), np.float32), np.ones((4, 3), np.float32), np.zeros(3, np.float32), out)
assert (out == 4).all()
"""


@pytest.mark.parametrize("where", ["package", "shared folder"])
def test_a_planted_numba_cache_index_is_never_unpickled(where, tmp_path):
    """Numba unpickles its cache index. A ``__pycache__`` beside the package (or any folder others can write)
    may hold a planted one: fastdecomp keeps Numba's cache in its own private folder, and with a folder
    others can write it caches nothing on disk, so the payload never runs."""
    import stat

    from fastdecomp.kernels import cpu

    function = cpu._dense_forward.py_func
    index = f"cpu.{function.__qualname__}-{function.__code__.co_firstlineno}.py{sys.version_info[0]}{sys.version_info[1]}.nbi"
    package_cache = Path(cpu.__file__).parent / "__pycache__"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTDECOMP_NUMBA_CACHE")}
    if where == "package":
        env["FASTDECOMP_CACHE_DIR"] = str(tmp_path / "cache")
        planted = package_cache / index
    else:  # the user's cache folder is writable by others: nothing of it is read
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        env["FASTDECOMP_CACHE_DIR"] = str(shared)
        planted = shared / "numba" / index
        planted.parent.mkdir()
    marker = tmp_path / "the-payload-ran"
    backup = planted.read_bytes() if planted.exists() else None
    made = not planted.parent.exists()
    planted.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no __pycache__ yet
    try:
        subprocess.run([sys.executable, "-c", PLANTED_INDEX, str(marker), str(planted)], check=True)
        run = subprocess.run([sys.executable, "-W", "ignore", "-c", USE_A_NUMBA_KERNEL], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert not marker.exists(), "Numba unpickled the planted cache index"
    finally:
        if backup is None:
            planted.unlink(missing_ok=True)
        else:
            planted.write_bytes(backup)
        if made and not any(planted.parent.iterdir()):
            planted.parent.rmdir()
