"""Kernels fitted to the target CPU: named targets, refusals, tilings that fit the registers and
never change a value, and the tuning record."""

import json

import numpy as np
import pytest

from fastdecomp import config
from fastdecomp.errors import ConfigError, FastDecompError, TargetError
from fastdecomp.kernels import cpu, direct_conv, llvm_jit, target as targets, tuning

RESNET_SHAPES = [direct_conv.ConvShape(h, h, c, 3, 3, 1, 1, 1, 1, h, h, c) for h, c in ((64, 16), (32, 32), (16, 64))]


def use_target(monkeypatch, name):
    monkeypatch.setenv("FASTDECOMP_TARGET_CPU", name)
    config._reset()
    return targets.current()


def random_conv(rng, shape, images=3):
    x = rng.standard_normal((images, shape.in_h, shape.in_w, shape.in_channels)).astype(np.float32)
    kernel = rng.standard_normal((shape.kernel_h, shape.kernel_w, shape.in_channels,
                                  shape.out_channels)).astype(np.float32)
    bias = rng.standard_normal(shape.out_channels).astype(np.float32)
    return x, kernel, bias


def test_an_unknown_target_is_refused_with_the_valid_names(monkeypatch):
    monkeypatch.setenv("FASTDECOMP_TARGET_CPU", "pentium-9000")
    config._reset()
    with pytest.raises(TargetError, match="pentium-9000") as raised:
        targets.current()
    assert "haswell" in str(raised.value) and "native" in str(raised.value)
    x, kernel, bias = random_conv(np.random.default_rng(0), RESNET_SHAPES[0], 1)
    with pytest.raises(FastDecompError, match="pentium-9000"):
        cpu.conv2d_forward(x, kernel, bias, 1, 1, 1, 1, np.empty((1, 64, 64, 16), np.float32))


def test_code_the_host_cannot_execute_is_compiled_but_never_run(monkeypatch, resnet_case):
    """AArch64 code on this machine, and AVX-512 code on a host without AVX-512 (the host's
    features hidden), are refused before they run: a clear error, never SIGILL."""
    import fastdecomp as fd

    model, x, _ = resnet_case
    network = fd.from_keras(model)
    arm = use_target(monkeypatch, "neoverse-n1")
    assert not arm.runnable
    shape = RESNET_SHAPES[0]
    code = llvm_jit.object_code(direct_conv.conv_ir(shape, direct_conv.rule_tiling(shape, arm)), arm)
    assert code[:4] == b"\x7fELF" and int.from_bytes(code[18:20], "little") == 183  # EM_AARCH64
    with pytest.raises(TargetError, match="cannot execute"):
        network.predict_proba(x)
    monkeypatch.setattr(targets, "host_features",
                        lambda: frozenset(f for f in targets._host_feature_set() if not f.startswith("avx512")))
    targets.resolve.cache_clear()
    try:
        avx512 = use_target(monkeypatch, "skylake-avx512")
        assert not avx512.runnable and "avx512f" in avx512.missing
        with pytest.raises(TargetError, match="avx512f"):
            network.predict_proba(x)
    finally:
        targets.resolve.cache_clear()


@pytest.mark.parametrize("name", ["native", "skylake-avx512", "haswell", "x86-64-v2", "neoverse-n1"])
def test_every_candidate_tiling_fits_the_register_file(name):
    target = targets.resolve(name)
    for shape in RESNET_SHAPES + [direct_conv.ConvShape(7, 7, 64, 3, 3, 1, 1, 1, 1, 7, 7, 24)]:
        options = direct_conv.candidates(shape, target)
        assert options[0] == direct_conv.rule_tiling(shape, target)
        assert len(options) == len(set(options)) > 0
        for tiling in options:
            assert tiling.registers(target) <= target.isa.registers, (shape, tiling)
            assert shape.out_channels % (tiling.width * tiling.group) == 0
            assert tiling.pixels <= shape.out_w


def test_the_avx2_tile_does_not_spill():
    """AVX-512's 16-float, 16-accumulator tile on AVX2 needs 32 registers of 16 and spills
    (thousands of stack accesses); the AVX2 tiling keeps the tile in registers."""
    haswell = targets.resolve("haswell")
    shape = direct_conv.ConvShape(64, 64, 16, 3, 3, 1, 1, 1, 1, 64, 64, 16, rectify=True)

    def stack_accesses(tiling):
        return llvm_jit.assembly(direct_conv.conv_ir(shape, tiling), haswell).count("(%rsp)")

    assert stack_accesses(direct_conv.rule_tiling(shape, haswell)) < 300
    assert stack_accesses(direct_conv.Tiling(16, 1, 16)) > 1000


CASES = [  # (h, w, ci, kernel, stride, pads, co, epilogue)
    (9, 11, 3, 3, 1, (1, 1), 16, "relu"),
    (10, 10, 5, 3, 2, (0, 1), 32, "residual"),
    (7, 13, 4, 5, 1, (2, 2), 24, "activity"),
    (6, 6, 2, 1, 1, (0, 0), 8, "all"),
    (12, 9, 3, 3, 2, (1, 0), 12, "plain"),
]


@pytest.mark.parametrize("name", ["native", "haswell"])
@pytest.mark.parametrize("case", CASES)
def test_values_are_bit_identical_whatever_the_tiling(monkeypatch, name, case):
    h, w, ci, k, stride, (pt, pl), co, epilogue = case
    target = use_target(monkeypatch, name)
    oh, ow = (h + 2 * pt - k) // stride + 1, (w + 2 * pl - k) // stride + 1
    rng = np.random.default_rng(sum(case[:5]))
    x, kernel, bias = random_conv(rng, direct_conv.ConvShape(h, w, ci, k, k, stride, stride, pt, pl, oh, ow, co))
    residual = rng.standard_normal((3, oh, ow, co)).astype(np.float32)
    geometry = direct_conv.ConvShape(h, w, ci, k, k, stride, stride, pt, pl, oh, ow, co)
    options = direct_conv.candidates(geometry, target)
    options += [direct_conv.Tiling(options[0].width, 1, pixels) for pixels in (1, 3, ow)]  # beyond the candidates
    results = []
    for tiling in options:
        monkeypatch.setattr(tuning, "choose", lambda geometry, target, tiling=tiling: tiling)
        out = np.empty((3, oh, ow, co), np.float32)
        bits = np.empty((3, oh * ow * co // 8), np.uint8) if epilogue in ("activity", "all") else None
        cpu.conv2d_forward(x, kernel, bias, stride, stride, pt, pl, out,
                                   rectify=epilogue in ("relu", "all"),
                                   residual=residual if epilogue in ("residual", "all") else None, activity=bits)
        results.append((out.view(np.uint32), bits))
    for out, bits in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        if bits is not None:
            np.testing.assert_array_equal(bits, results[0][1])
            np.testing.assert_array_equal(bits, np.packbits(results[0][0].view(np.float32).reshape(3, -1) > 0,
                                                            axis=1))


@pytest.fixture
def tuning_sandbox(tmp_path, monkeypatch):
    """A fresh cache folder and no choices remembered; counts the shapes measured."""
    monkeypatch.setenv("FASTDECOMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FASTDECOMP_TUNE", "on")
    config._reset()
    tuning._reset()
    measured = []
    real = tuning.measure
    monkeypatch.setattr(tuning, "measure", lambda geometry, *a, **k: measured.append(geometry) or real(geometry, *a, **k))
    yield measured
    tuning._reset()


def convolve_once(seed=0):
    shape = direct_conv.ConvShape(10, 10, 8, 3, 3, 1, 1, 1, 1, 10, 10, 32)
    x, kernel, bias = random_conv(np.random.default_rng(seed), shape, 2)
    out = np.empty((2, 10, 10, 32), np.float32)
    cpu.conv2d_forward(x, kernel, bias, 1, 1, 1, 1, out)
    return shape, out


def test_a_shape_is_measured_once_per_machine_and_the_choice_recorded(tuning_sandbox):
    measured = tuning_sandbox
    shape, first = convolve_once()
    target = targets.current()
    assert measured == [shape]
    record = json.loads(tuning.record_path(target).read_text())
    assert record["target"] == tuning._record_key(target)
    choice = direct_conv.Tiling(*next(iter(record["choices"].values())))
    assert choice in direct_conv.candidates(shape, target)
    convolve_once()
    tuning._reset()  # a new process: the record is read, nothing measured
    _, again = convolve_once()
    assert measured == [shape]
    assert tuning.choose(shape, target) == choice
    np.testing.assert_array_equal(again, first)


def _rewrite(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _with_checksum(change):
    def apply(record):
        change(record)
        record["checksum"] = tuning._checksum(record["choices"])
    return apply


@pytest.mark.parametrize("damage", [
    lambda path: path.write_text(path.read_text()[:40]),
    lambda path: path.write_bytes(b"\x00\xff" * 50),
    lambda path: _rewrite(path, lambda r: r["choices"].update({k: [16, 1, 3] for k in r["choices"]})),
    lambda path: _rewrite(path, _with_checksum(lambda r: r.update(target=r["target"].replace("host=", "host=other")))),
    lambda path: _rewrite(path, _with_checksum(lambda r: r.update(generator=tuning.GENERATOR - 1))),
    lambda path: _rewrite(path, _with_checksum(lambda r: r["choices"].update({k: [8, 3, 5] for k in r["choices"]}))),
    lambda path: _rewrite(path, _with_checksum(lambda r: r["choices"].update({k: "16,1,3" for k in r["choices"]}))),
], ids=["truncated", "binary", "checksum", "other-cpu", "stale-generator", "not-a-candidate", "wrong-type"])
def test_a_corrupt_stale_or_foreign_record_is_measured_again(tuning_sandbox, damage):
    measured = tuning_sandbox
    _, expected = convolve_once()
    damage(tuning.record_path(targets.current()))
    tuning._reset()
    _, again = convolve_once()
    assert len(measured) == 2
    np.testing.assert_array_equal(again, expected)
    json.loads(tuning.record_path(targets.current()).read_text())  # rewritten whole


def test_tuning_off_takes_the_rule_and_measures_nothing(tuning_sandbox, monkeypatch):
    monkeypatch.setenv("FASTDECOMP_TUNE", "off")
    config._reset()
    shape, _ = convolve_once()
    assert tuning_sandbox == []
    assert tuning.choose(shape, targets.current()) == direct_conv.rule_tiling(shape)
    assert not tuning.record_path(targets.current()).exists()


@pytest.mark.parametrize("variable, value", [("FASTDECOMP_JOBS", "abc"), ("FASTDECOMP_JOBS", "-2"),
                                             ("FASTDECOMP_TUNE", "maybe")])
def test_a_bad_environment_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    config._reset()
    with pytest.raises(ConfigError, match=variable):
        config.get("jobs" if variable == "FASTDECOMP_JOBS" else "tune")


@pytest.mark.parametrize("n_jobs", [-1, 0, 1.5, "2"])
def test_a_bad_thread_count_is_refused(n_jobs, resnet_case):
    import fastdecomp as fd

    model, x, _ = resnet_case
    with pytest.raises(ConfigError, match="n_jobs"):
        fd.from_keras(model).predict_proba(x, n_jobs=n_jobs)


def test_conv2d_forward_under_a_target_it_cannot_run_refuses_before_compiling_to_run(monkeypatch):
    use_target(monkeypatch, "neoverse-n1")
    x, kernel, bias = random_conv(np.random.default_rng(0), RESNET_SHAPES[2], 1)
    with pytest.raises(TargetError, match="neoverse-n1"):
        cpu.conv2d_forward(x, kernel, bias, 1, 1, 1, 1, np.empty((1, 16, 16, 64), np.float32))


def _read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("change", [
    {"out": _read_only(np.empty((2, 8, 8, 16), np.float32))},
    {"out": np.empty((2, 8, 8, 16), np.float64)},
    {"out": np.empty((2, 8, 16, 16), np.float32)[:, :, ::2]},
    {"out": np.empty((3, 8, 8, 16), np.float32)},
    {"out": np.empty((2, 8, 8, 8), np.float32)},
    {"kernel": np.ones((3, 3, 4, 16), np.float32)},
    {"kernel": np.ones((3, 3, 8), np.float32)},
    {"bias": np.ones(17, np.float32)},
    {"stride_h": 0}, {"stride_w": 1.5}, {"pad_top": -1}, {"pad_left": 1.0}, {"stride_h": True},
    {"residual": np.ones((2, 8, 8, 8), np.float32)},
    {"activity": np.empty((2, 127), np.uint8)},
    {"activity": _read_only(np.empty((2, 8 * 8 * 16 // 8), np.uint8))},
], ids=lambda change: next(iter(change)))
def test_conv2d_forward_checks_its_arrays_before_touching_memory(change):
    arguments = {"x": np.ones((2, 8, 8, 8), np.float32), "kernel": np.ones((3, 3, 8, 16), np.float32),
                 "bias": np.ones(16, np.float32), "stride_h": 1, "stride_w": 1, "pad_top": 1, "pad_left": 1,
                 "out": np.empty((2, 8, 8, 16), np.float32)}
    arguments.update(change)
    with pytest.raises(FastDecompError):
        cpu.conv2d_forward(**arguments)


def test_threads_meeting_a_new_shape_together_tune_it_once_and_agree(tuning_sandbox):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda seed: convolve_once(0)[1], range(8)))
    assert len(tuning_sandbox) == 1
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_a_named_target_records_which_machine_timed_it(tuning_sandbox, monkeypatch):
    """A record of haswell timings is valid only for the host that measured them (a cache
    folder shared between machines must not hand one machine's timings to another)."""
    haswell = use_target(monkeypatch, "haswell")
    tuning._reset()
    convolve_once()
    record = json.loads(tuning.record_path(haswell).read_text())
    assert record["target"].startswith(haswell.key) and targets.resolve("native").key in record["target"]


def test_numba_kernels_are_generated_for_the_named_target():
    """In a fresh process with FASTDECOMP_TARGET_CPU=haswell, Numba compiles for Haswell (no
    AVX-512 registers), and a child started without a target returns to the host CPU."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np, numba.core.config as c; from fastdecomp.kernels import cpu; "
              "x = np.ones((4, 64), np.float32); out = np.empty((4, 32), np.float32); "
              "cpu.dense_forward(x, np.ones((64, 32), np.float32), np.zeros(32, np.float32), out); "
              "asm = cpu._dense_forward.overloads[cpu._dense_forward.signatures[0]].library.get_asm_str(); "
              "print(c.CPU_NAME, 'zmm' in asm)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "FASTDECOMP_"))}
    haswell = subprocess.run([sys.executable, "-c", script], env={**env, "FASTDECOMP_TARGET_CPU": "haswell",
                                                                   "NUMBA_CACHE_DIR": "/nonexistent-cache"},
                             capture_output=True, text=True, check=True).stdout.split()
    assert haswell == ["haswell", "False"]
    inherited = {**env, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "FASTDECOMP_NUMBA_CPU": "haswell"}
    native = subprocess.run([sys.executable, "-c", script], env=inherited, capture_output=True, text=True,
                            check=True).stdout.split()
    assert native[0] == "None"
