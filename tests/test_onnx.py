"""ONNX out: modules and compositions run in ONNX Runtime as they run in the engine."""

import numpy as np
import pytest

import fastdecomp as fd
from conftest import balance_output_bias, labelled_like_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DELTA = 0.05


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})


@pytest.fixture(scope="module")
def kinds_modules():
    from test_architectures import kinds_model

    model = kinds_model()
    x = np.random.default_rng(3).normal(size=(36, 8, 8, 3)).astype(np.float32) * 2
    balance_output_bias(model, x)
    y = labelled_like_model(model, x)
    return fd.decompose(fd.from_keras(model), x, y, backtrack="bi", delta=DELTA, seed=5, progress=False), x


def test_every_kind_exports_and_onnx_runtime_agrees(kinds_modules):
    modules, x = kinds_modules
    network = modules.network
    exported = fd.onnx_io.network_to_onnx(network)
    onnx.checker.check_model(exported)
    assert {layer.kind for layer in network.layers} >= {"grouped_conv2d", "separable_conv2d", "concat", "crop",
                                                          "upsample", "gmp", "affine", "rescale", "scaled_add"}
    np.testing.assert_allclose(run(exported, x)[0], network.predict_proba(x), atol=1e-6)


def test_a_pruned_module_exports_and_agrees_with_the_engine(kinds_modules, tmp_path):
    modules, x = kinds_modules
    k = modules.classes[0]
    pruned = modules.pruned(k)
    full = sum(w.size for layer in modules.network.layers for w in layer.weights.values())
    assert sum(w.size for layer in pruned.layers for w in layer.weights.values()) < full  # channels were dropped
    path = tmp_path / "module.onnx"
    modules.to_onnx(k, path)
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded)
    assert [o.name for o in loaded.graph.output] == ["probabilities"]
    np.testing.assert_allclose(run(loaded, x)[0], modules.module(k).predict_proba(x), atol=1e-6)


def test_a_composition_exports_as_one_graph_that_shares_and_votes(kinds_modules, tmp_path):
    modules, x = kinds_modules
    composition = fd.compose(modules)
    model = composition.to_onnx(tmp_path / "composition.onnx")
    probabilities, margins, labels = run(model, x)
    np.testing.assert_allclose(probabilities, composition.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(margins, composition.decision_function(x), atol=1e-5)
    np.testing.assert_array_equal(labels, composition.predict(x))
    def convolutions(graph):
        return sum(node.op_type == "Conv" for node in graph.node)

    alone = [convolutions(fd.onnx_io.module_to_onnx(modules.pruned(k, drop_channels=False)).graph)
             for k in modules.classes]
    assert convolutions(model.graph) == sum(alone) - 2 * (len(alone) - 1)  # c1 and dil, before any mask, shared


def test_a_composition_of_two_models_and_relabelled_modules(kinds_modules, resnet_case):
    modules, x = kinds_modules
    from test_architectures import kinds_model

    other_model = kinds_model(seed=2)
    balance_output_bias(other_model, x)
    other = fd.decompose(other_model, x, labelled_like_model(other_model, x), delta=DELTA, seed=5, progress=False)
    composition = fd.compose(modules.module(0), other.module(1), labels=[7, 3])
    probabilities, _, labels = run(composition.to_onnx(), x)
    np.testing.assert_allclose(probabilities, composition.predict_proba(x), atol=1e-6)
    np.testing.assert_array_equal(labels, composition.predict(x))
    assert set(labels) <= {7, 3}


def test_exports_refuse_to_overwrite_and_write_whole_files(kinds_modules, tmp_path):
    modules, _ = kinds_modules
    path = tmp_path / "module.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(fd.errors.OutputExistsError, match="overwrite=True"):
        modules.to_onnx(modules.classes[0], path)
    assert path.read_bytes() == b"keep me"
    with pytest.raises(fd.errors.InputError, match=".onnx"):
        modules.to_onnx(modules.classes[0], tmp_path / "module.txt")
    modules.to_onnx(modules.classes[0], path, overwrite=True)
    onnx.checker.check_model(onnx.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["module.onnx"]  # no temporary file left


def test_import_needs_no_onnx():
    import subprocess
    import sys

    code = ("import sys, fastdecomp; bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
