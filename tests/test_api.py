"""The public API's conventions: one backend check everywhere, settings, options, predictions."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import fastdecomp as fd
from fastdecomp import backends, config
from fastdecomp.errors import BackendError, ConfigError, InputError


@pytest.fixture(scope="module")
def modules(resnet_case):
    model, x, y = resnet_case
    return fd.decompose(model, x, y, backtrack="bln", delta=0.05, progress=False)


def backend_takers(modules, x, y):
    """Every public callable that takes ``backend=``, as ``fn(backend)``."""
    network = modules.network
    return {
        "decompose": lambda b: fd.decompose(network, x, y, backend=b, progress=False),
        "Network.forward": lambda b: network.forward(x, backend=b),
        "Network.forward_many": lambda b: network.forward_many(x, [(None, None)], backend=b),
        "Network.predict_proba": lambda b: network.predict_proba(x, backend=b),
        "Network.predict": lambda b: network.predict(x, backend=b),
        "ModuleSet.predict_proba": lambda b: modules.predict_proba(x, backend=b),
        "Module.predict_proba": lambda b: modules.module(0).predict_proba(x, backend=b),
        "Module.decision_function": lambda b: modules.module(0).decision_function(x, backend=b),
        "Module.predict": lambda b: modules.module(0).predict(x, backend=b),
        "Composition.predict_proba": lambda b: fd.compose(modules).predict_proba(x, backend=b),
        "Composition.decision_function": lambda b: fd.compose(modules).decision_function(x, backend=b),
        "Composition.predict": lambda b: fd.compose(modules).predict(x, backend=b),
        "Composition.evaluate": lambda b: fd.compose(modules).evaluate(x, y, backend=b),
        "PrunedModule.predict_proba": lambda b: modules.pruned(0).predict_proba(x, backend=b),
    }


def test_every_backend_argument_is_checked_the_same_way(modules, resnet_case):
    _, x, y = resnet_case
    for name, call in backend_takers(modules, x, y).items():
        with pytest.raises(InputError, match=r"backend must be one of \('cpu', 'cuda', 'emulated-cuda', 'auto'\)"):
            call("tpu")
        call("cpu")  # and a known name works


def test_the_environment_picks_the_default_backend(modules, resnet_case, monkeypatch):
    _, x, _ = resnet_case
    expected = modules.predict_proba(x)
    launched = []
    device = backends.get("emulated-cuda")
    original = type(device).launch
    monkeypatch.setattr(type(device), "launch", lambda self, *a, **k: (launched.append(a[1]), original(self, *a, **k)))
    monkeypatch.setenv("FASTDECOMP_BACKEND", "emulated-cuda")
    config._reset()
    np.testing.assert_array_equal(modules.predict_proba(x), expected)
    assert "conv2d_forward" in launched  # it ran on the emulated device, and gave the CPU's bits
    monkeypatch.setenv("FASTDECOMP_BACKEND", "tpu")
    config._reset()
    with pytest.raises(ConfigError, match="FASTDECOMP_BACKEND='tpu'.*cpu"):
        modules.predict_proba(x)


def test_set_backend_and_using(resnet_case):
    assert backends.get().name == "cpu"
    with backends.using("emulated-cuda"):
        assert backends.get().name == "emulated-cuda"
    assert backends.get().name == "cpu"
    fd.set_backend("emulated-cuda")
    assert backends.get().name == "emulated-cuda"
    with pytest.raises(InputError, match="backend must be one of"):
        fd.set_backend("gpu0")
    assert backends.get().name == "emulated-cuda"


def test_a_missing_gpu_is_a_backend_error_that_says_what_to_install(monkeypatch):
    from conftest import cuda_available

    if cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendError, match=r"fastdecomp\[gpu\]|driver|no GPU"):
        backends.get("cuda")
    monkeypatch.setattr(backends, "_FELL_BACK", [])
    with pytest.warns(backends.BackendFallbackWarning, match="runs on the CPU"):
        assert backends.get("auto").name == "cpu"


def test_every_device_has_one_interface():
    for name in ("cpu", "emulated-cuda"):
        device = backends.get(name)
        for attribute in ("xp", "kernels", "asarray", "to_host", "weights", "compute", "run_batches",
                          "synchronize", "writes_activity_bits"):
            assert hasattr(device, attribute), f"{name} lacks {attribute}"


@pytest.mark.parametrize("variable, value, setting", [
    ("FASTDECOMP_JOBS", "abc", "jobs"),
    ("FASTDECOMP_JOBS", "-1", "jobs"),
    ("FASTDECOMP_TUNE", "maybe", "tune"),
    ("FASTDECOMP_BACKEND", "tpu", "backend"),
])
def test_bad_environment_values_name_their_variable(monkeypatch, resnet_case, variable, value, setting):
    model, x, _ = resnet_case
    monkeypatch.setenv(variable, value)
    config._reset()
    with pytest.raises(ConfigError, match=f"{variable}='{value}'"):
        backends.get() if setting == "backend" else config.get(setting)
    if setting != "tune":  # read on every pass (tuning reads its setting once per new layer shape)
        config._reset()
        with pytest.raises(ConfigError, match=f"{variable}='{value}'"):
            fd.from_keras(model).predict_proba(x)


def test_settings_have_one_home():
    assert set(config.DEFAULTS) == set(config.ENVIRONMENT) == {"jobs", "cache_dir", "target_cpu", "tune", "backend",
                                                                "fashion_mnist_dir", "cxx", "activity_count_bytes",
                                                                "watts_per_core", "gpu_spin"}
    with pytest.raises(ConfigError, match="unknown setting"):
        config.get("threads")
    with pytest.raises(ConfigError, match="n_jobs=-1"):
        config.jobs(-1)


def test_options_are_validated_once_and_frozen(modules):
    options = modules.options
    assert isinstance(options, fd.DecompositionOptions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.delta = 1.0
    with pytest.raises(InputError, match="backtrack must be one of"):
        modules.variant("all")
    with pytest.raises(InputError, match="delta"):
        modules.variant("bi", delta=-1)
    with pytest.raises(InputError, match="unknown options"):
        options.replace(treshold=2)
    assert fd.DecompositionOptions.from_dict(options.to_dict()) == options
    with pytest.raises(InputError, match="exactly the keys"):
        fd.DecompositionOptions.from_dict({**options.to_dict(), "extra": 1})
    with pytest.raises(InputError, match="seed"):
        fd.DecompositionOptions(seed=1.5)


def test_the_command_line_defaults_are_the_options_defaults():
    from fastdecomp.cli import build_parser

    args = build_parser().parse_args(["decompose", "m.keras", "data.npz", "-o", "out"])
    defaults = fd.DecompositionOptions()
    for name in defaults.names():
        value = getattr(args, name)
        assert (None if value == "none" else value) == getattr(defaults, name), name


def test_predict_gives_labels_and_predict_proba_scores(modules, resnet_case):
    _, x, _ = resnet_case
    network, composition, module = modules.network, fd.compose(modules), modules.module(2)
    probabilities = network.predict_proba(x)
    np.testing.assert_array_equal(network.predict(x), probabilities.argmax(axis=1))
    scores = composition.predict_proba(x)
    assert scores.shape == (len(x), len(modules)) and ((0 <= scores) & (scores <= 1)).all()
    assert set(composition.predict(x)) <= set(composition.labels)
    pair = module.predict_proba(x)
    np.testing.assert_allclose(pair.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(module.predict(x), pair[:, 0] >= pair[:, 1])
    np.testing.assert_array_equal(module.decision_function(x) > 0, pair[:, 0] > pair[:, 1])


def test_options_are_keyword_only(modules, resnet_case):
    model, x, y = resnet_case
    with pytest.raises(TypeError):
        fd.decompose(model, x, y, None, "relu")
    with pytest.raises(TypeError):
        modules.network.predict_proba(x, 16)
    with pytest.raises(TypeError):
        modules.masks(0, "network")


def test_importing_fastdecomp_needs_no_framework():
    code = ("import sys, fastdecomp; heavy = [m for m in ('tensorflow', 'keras', 'cupy', 'onnx', 'onnxruntime', "
            "'dask', 'distributed', 'torch') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hostile_arguments_get_fastdecomp_errors(modules, resnet_case, tmp_path):
    """Odd types and values anywhere in the public API are refused with a FastDecompError, not a raw one."""
    model, x, y = resnet_case
    network = modules.network
    attempts = [
        lambda: modules.masks(0.5), lambda: modules.masks(True), lambda: modules.head(1.5),
        lambda: modules.module(2.9), lambda: modules.predict_proba(x, classes=5),
        lambda: modules.predict_proba(x, classes=[0.5]), lambda: modules.updated(1.5, x),
        lambda: fd.set_backend(backends.get("cpu")), lambda: fd.set_backend(None),
        lambda: backends.register("x", None), lambda: fd.DecompositionOptions(delta=10 ** 400),
        lambda: fd.DecompositionOptions(ti_ratio=10 ** 400), lambda: fd.DecompositionOptions(mask_at=np.array([1])),
        lambda: fd.DecompositionOptions.from_dict({1: 2, "a": 3}),
        lambda: fd.decompose(network, x, y, batch_size="x", progress=False),
        lambda: fd.decompose(network, x, y, batch_size=None, progress=False),
        lambda: fd.decompose(network, x, y, classes=["a"], progress=False),
        lambda: fd.decompose(network, x, y, classes=5, progress=False),
        lambda: fd.compose(modules, labels=["a"] * 4), lambda: fd.compose(modules, labels=[1.5, 2, 3, 4]),
        lambda: fd.Composition([1], [0]), lambda: fd.compose(modules).replace(0, "x"),
        lambda: fd.compose((modules, 5)), lambda: fd.compose(modules).remove("a"),
        lambda: fd.load(None), lambda: fd.load(123), lambda: fd.save(network, tmp_path / "n"),
        lambda: fd.config.set("jobs", "abc"), lambda: fd.config.set("jobs", -1),
        lambda: fd.Network([]), lambda: fd.layers.register(type(fd.layers.KINDS["relu"])),
        lambda: modules.predict_proba(x, backend="emulated-cuda", n_jobs=-1),
    ]
    for attempt in attempts:
        with pytest.raises(fd.FastDecompError):
            attempt()
    with pytest.raises(TypeError):  # options are keyword-only
        fd.DecompositionOptions("conv")
