"""The statistics pass on a real Dask cluster (a LocalCluster of two worker processes): the modules are
those of one process, bit for bit, even when a worker is killed mid-shard."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp.errors import BackendError, InputError

from test_shards import DELTA, same_modules

distributed = pytest.importorskip("distributed", reason="needs pip install 'fastdecomp[dist]'")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory, resnet_case):
    """The ResNet case's images as .npy files the workers open themselves."""
    _, x, y = resnet_case
    folder = tmp_path_factory.mktemp("cluster")
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return fd.data.from_npy(folder / "x.npy", folder / "y.npy")


@pytest.mark.parametrize("concerned", ["correct", "all"])
@pytest.mark.parametrize("mask_at", ["relu", "conv"])
def test_the_cluster_gives_the_single_process_modules(client, resnet_case, resnet_files, mask_at, concerned):
    network = fd.from_keras(resnet_case[0])
    options = dict(mask_at=mask_at, concerned=concerned, backtrack="bi", delta=DELTA, seed=3, progress=False)
    whole = fd.decompose(network, resnet_files, **options)
    assert len(resnet_files) % 5
    on_cluster = fd.decompose(network, resnet_files, backend="dask", client=client, shards=5, batch_size=4,
                              **options)
    same_modules(whole, on_cluster)


def test_a_worker_killed_mid_shard_has_its_shard_run_again_with_the_same_result(client):
    source = fd.data.open_data("fashion-mnist:test", limit=1200)
    network = fd.from_keras(fd.zoo.load("resnet20-fmnist"))
    options = dict(mask_at="relu", backtrack="bi", delta=DELTA, seed=1, progress=False)
    whole = fd.decompose(network, source, **options)
    killed = []

    def kill_one_running_shard():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for address, keys in client.processing().items():
                running = client.run(_executing, workers=[address]).get(address, [])
                if any(key.startswith("fastdecomp-shard") for key in running):
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed.append((address, running))
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_running_shard)
    killer.start()
    on_cluster = fd.decompose(network, source, backend="dask", client=client, shards=4, batch_size=32, **options)
    killer.join()
    assert killed, "no shard was seen running, so none was killed"
    same_modules(whole, on_cluster)
    client.wait_for_workers(2, timeout=60)


def _executing(dask_worker):
    return [str(task.key) for task in dask_worker.state.executing]


def test_an_in_memory_array_is_refused_with_the_fix(client, resnet_case):
    model, x, y = resnet_case
    with pytest.raises(InputError, match="opens the data on every worker.*from_npy"):
        fd.decompose(model, x, y, backend="dask", client=client, progress=False)


def test_workers_that_cannot_read_the_data_are_named_before_any_work(client, resnet_case, tmp_path):
    _, x, y = resnet_case
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    source = fd.data.from_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    os.rename(tmp_path / "x.npy", tmp_path / "moved.npy")  # the client holds it open; the workers cannot
    with pytest.raises(BackendError, match=r"worker tcp://.* cannot open the data: .*x\.npy"):
        fd.decompose(resnet_case[0], source, backend="dask", client=client, progress=False)


def test_workers_without_fastdecomp_are_refused_with_the_fix(resnet_files, resnet_case, tmp_path):
    hide = tmp_path / "hide_fastdecomp.py"
    hide.write_text("import sys\nsys.modules['fastdecomp'] = None  # as on a worker where it is not installed\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50, preload=[str(hide)]) as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(BackendError, match="cannot run fastdecomp.*install fastdecomp"):
            fd.decompose(resnet_case[0], resnet_files, backend="dask", client=client, progress=False)


def test_without_a_client_or_without_dask_the_error_says_what_to_do(resnet_case, resnet_files, monkeypatch):
    def no_client():
        raise ValueError("No clients found")  # what get_client says in a process that made none

    monkeypatch.setattr(distributed, "get_client", no_client)
    with pytest.raises(BackendError, match="no Dask client.*client="):
        fd.decompose(resnet_case[0], resnet_files, backend="dask", progress=False)
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    with pytest.raises(BackendError, match=r"pip install 'fastdecomp\[dist\]'"):
        fd.decompose(resnet_case[0], resnet_files, backend="dask", progress=False)


def test_shards_and_client_are_checked(client, resnet_case, resnet_files):
    with pytest.raises(InputError, match="shards must be"):
        fd.decompose(resnet_case[0], resnet_files, backend="dask", client=client, shards=0, progress=False)
    with pytest.raises(InputError, match="client must be a distributed.Client"):
        fd.decompose(resnet_case[0], resnet_files, backend="dask", client="tcp://localhost:8786", progress=False)
    with pytest.raises(InputError, match="for backend='dask'"):
        fd.decompose(resnet_case[0], resnet_files, shards=2, progress=False)


def test_the_command_line_decomposes_on_a_scheduler(client, files, tmp_path, capsys):
    from fastdecomp.cli import main

    common = [str(files / "model.keras"), str(files / "data.npz"), "--backtrack", "bi", "--delta", str(DELTA),
              "--seed", "2", "--no-progress"]
    assert main(["decompose", *common, "-o", str(tmp_path / "here")]) == 0
    assert main(["decompose", *common, "-o", str(tmp_path / "there"), "--scheduler", client.scheduler.address,
                 "--shards", "5"]) == 0
    same_modules(fd.load_modules(tmp_path / "here"), fd.load_modules(tmp_path / "there"))
    assert main(["decompose", *common, "-o", str(tmp_path / "x"), "--shards", "5"]) == 2
    assert "--shards is for --scheduler" in capsys.readouterr().err


def test_workers_that_open_other_data_are_refused_before_any_work(client, resnet_case, resnet_files, tmp_path):
    _, x, y = resnet_case
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.roll(y, 1))  # other labels under the same images
    elsewhere = fd.data.from_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    source = fd.data.from_npy(resnet_files.description.arguments[0], resnet_files.description.arguments[1])
    source.description = elsewhere.description  # as when a worker's copy of the files differs from the client's
    with pytest.raises(BackendError, match=r"worker tcp://.* opens other data .* give every worker the same files"):
        fd.decompose(resnet_case[0], source, backend="dask", client=client, progress=False)


def test_data_changed_after_opening_is_seen_before_any_work(client, resnet_case, resnet_files):
    source = fd.data.from_npy(*resnet_files.description.arguments[:2])
    source.scale = 3.0  # the workers would open the files as described, unscaled
    with pytest.raises(BackendError, match="opens other data.*change data only through the function"):
        fd.decompose(resnet_case[0], source, backend="dask", client=client, progress=False)


def test_a_failed_pass_leaves_nothing_behind_and_a_fixed_one_runs(client, resnet_case, tmp_path):
    model, x, y = resnet_case
    bad = x.copy()
    bad[7, 0, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", bad)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(InputError, match=r"images \[7\].*NaN or inf"):
        fd.decompose(model, fd.data.from_npy(tmp_path / "x.npy", tmp_path / "y.npy"), backend="dask", client=client,
                     shards=3, progress=False)
    assert not [key for key in client.who_has() if "fastdecomp" in str(key)]
    np.save(tmp_path / "x.npy", x)
    source = fd.data.from_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    options = dict(backtrack="bi", delta=DELTA, progress=False)
    same_modules(fd.decompose(model, source, **options),
                 fd.decompose(model, source, backend="dask", client=client, shards=3, **options))
