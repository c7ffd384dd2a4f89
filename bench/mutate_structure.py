"""Plant one bug at a time in the restructured and hardened code, run the tests that should catch it, restore the file.

Prints one table row per bug for ``bench/results/mutations.md``; ``python bench/mutate_structure.py
architectures`` runs the bugs of the real-world Keras models instead (#14), ``onnx`` those of ONNX in
and out (#15).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = [
    ("ReLU does not pass channels on", "fastdecomp/layers.py",
     '    fuses_as = "rectify"\n    passes_channels = True', '    fuses_as = "rectify"\n    passes_channels = False',
     "tests/test_modules.py -k pruning"),
    ("pruning looks one reader ahead only", "fastdecomp/pruning.py",
     "    while len(network.readers[name]) == 1", "    while not chain and len(network.readers[name]) == 1",
     "tests/test_registry.py"),
    ("fusion skips an observed or masked value", "fastdecomp/engine.py",
     "if len(readers) == 1 and layer.name not in untouched and", "if len(readers) == 1 and",
     "tests/test_invariants.py tests/test_network.py -k 'fusion or reference or observed'"),
    ("an unknown backend name runs on the CPU", "fastdecomp/backends.py",
     '    if backend not in BACKENDS:\n        raise InputError(f"backend must be one of {names()}, got {backend!r}")',
     '    if backend not in BACKENDS:\n        return _CPU',
     "tests/test_api.py -k backend"),
    ("Composition ignores backend=", "fastdecomp/compose.py",
     "logits=margin, backend=backend)", "logits=margin, backend=None)",
     "tests/test_api.py -k backend"),
    ("FASTDECOMP_BACKEND read but not checked", "fastdecomp/backends.py",
     "        if backend not in BACKENDS:\n            raise ConfigError", "        if False:\n            raise ConfigError",
     "tests/test_api.py -k 'environment'"),
    ("options: delta not checked", "fastdecomp/options.py",
     "        if not _finite(self.delta) or self.delta < 0:",
     "        if False:", "tests/test_modules.py -k bad_options tests/test_api.py -k options"),
    ("a manifest's fields are not checked", "fastdecomp/saving.py",
     "    _check_fields(manifest, _SCHEMAS[kind], manifest_path)\n", "",
     "tests/test_modules.py -k manifest"),
    ("the output Dense layer is a mask point", "fastdecomp/network.py",
     "if mask_at in l.handler.mask_placements and l.name != self.output_dense]",
     "if mask_at in l.handler.mask_placements]", "tests/test_modules.py -k keyed"),
    ("device kernels bound under other names", "fastdecomp/kernels/gpu.py",
     "            setattr(self, name, partial(globals()[name], device=device))",
     "            setattr(self, name + '_', partial(globals()[name], device=device))",
     "tests/test_gpu_kernels.py -k 'same_kernels or equals_cpu'"),
    ("variant keeps the old backtracking", "fastdecomp/modules.py",
     'changes = {"backtrack": backtrack}', 'changes = {}', "tests/test_modules.py -k variants"),
    # robustness (#13)
    ("the manifest's own checksum not compared", "fastdecomp/saving.py",
     'if manifest.get("checksum") != manifest_checksum(manifest):', "if False:",
     "tests/test_modules.py -k wrong_shape"),
    ("a layer's weights not checked against its kind", "fastdecomp/saving.py",
     "        layer.handler.check(layer, [shapes[src] for src in layer.inputs])\n", "",
     "tests/test_modules.py -k crafted"),
    ("saved masks not checked against the mask points", "fastdecomp/saving.py",
     "    if listed != [p.name for p in points]:", "    if False:", "tests/test_modules.py -k crafted"),
    ("a save replaces the old folder by delete-then-rename", "fastdecomp/storage.py",
     "    if os.path.lexists(path):\n        if not _renameat2(tmp, path, _RENAME_EXCHANGE):",
     "    if os.path.lexists(path):\n        shutil.rmtree(path)\n        os.rename(tmp, path)\n        return\n"
     "        if not _renameat2(tmp, path, _RENAME_EXCHANGE):", "tests/test_storage.py -k killed"),
    ("overwrite replaces a foreign folder", "fastdecomp/storage.py",
     "(replaceable is not None and not replaceable(path))", "False", "tests/test_storage.py -k foreign"),
    ("the kernel cache trusts a plain checksum", "fastdecomp/kernels/trusted_cache.py",
     "    return data if hmac.compare_digest(stored[:_DIGEST], _mac(key, data, secret_bytes)) else None",
     "    return data", "tests/test_network.py -k kernel_cache"),
    ("dense_forward runs unchecked", "fastdecomp/kernels/cpu.py",
     "    checks.dense_forward(x, kernel, bias, out)\n", "", "tests/test_gpu_kernels.py -k 'refuse and cpu'"),
    ("a scale multiplies the caller's array in place", "fastdecomp/data.py",
     "            x = x * np.float32(self.scale)", "            x *= np.float32(self.scale)",
     "tests/test_data.py -k never_changes"),
    ("Keras operations read as layers", "fastdecomp/keras_io.py",
     "    if not isinstance(op, keras.layers.Layer):", "    if False:", "tests/test_network.py -k operations"),
    ("the CLI checks the output after the pass", "fastdecomp/cli.py",
     "    _check_output(args.out, args.overwrite)\n    model = _load_model(args.model)",
     "    model = _load_model(args.model)", "tests/test_cli.py -k before_any_work"),
]
ARCHITECTURES = [  # real-world Keras models (#14)
    ("a grouped convolution's dead rule ignores its groups", "fastdecomp/layers.py",
     'groups=layer.config["groups"],', "groups=1,", "tests/test_architectures.py -k reference"),
    ("the dead-input window ignores dilation", "fastdecomp/layers.py",
     '*c.get("dilation", (1, 1)))', "1, 1)", "tests/test_architectures.py -k 'reference or dilated'"),
    ("a concatenation hands dead nodes to the wrong input", "fastdecomp/layers.py",
     "        return np.split(dead_out, ends, axis=-1)\n", "        return np.split(dead_out, ends, axis=-1)[::-1]\n",
     "tests/test_architectures.py -k reference"),
    ("cropped-away nodes stay alive", "fastdecomp/layers.py",
     "        dead_in = np.ones((dead_out.shape[0],)", "        dead_in = np.zeros((dead_out.shape[0],)",
     "tests/test_architectures.py -k reference"),
    ("an upsampled node dies when one copy does", "fastdecomp/layers.py",
     ".all(axis=(2, 4))]", ".any(axis=(2, 4))]", "tests/test_architectures.py -k reference"),
    ("the CPU grouped convolution reads the wrong group", "fastdecomp/kernels/cpu.py",
     "        first[o] = (o // group_co) * group_ci", "        first[o] = (o % groups) * group_ci",
     "tests/test_gpu_kernels.py -k grouped"),
    ("the CUDA dead-input window ignores dilation", "fastdecomp/kernels/cuda/backward.cu",
     "int num_y = h + pad_top - dy * dilation_h;", "int num_y = h + pad_top - dy;",
     "tests/test_gpu_kernels.py -k window_dead"),
    ("GlobalMaxPooling2D averages", "fastdecomp/layers.py",
     "backend.kernels.pool2d_forward(x, h, w, 1, 1, 0, 0, True, out)",
     "backend.kernels.pool2d_forward(x, h, w, 1, 1, 0, 0, False, out)", "tests/test_architectures.py -k keras"),
    ("a BatchNormalization folds into a layer read elsewhere too", "fastdecomp/keras_io.py",
     "readers = sum(self.readers.get(n, 0) for n in passing_on) - (len(passing_on) - 1)",
     "readers = 1", "tests/test_network.py -k batchnorm"),
    ("a separable convolution drops input channels without their multiplier", "fastdecomp/layers.py",
     '        middle = np.repeat(keep, layer.config["depth_multiplier"])', "        middle = keep",
     "tests/test_architectures.py -k pruning"),
    ("a Dense(1) logit is read as one class", "fastdecomp/layers.py",
     "        if layer.shape == (1,):", "        if False:", "tests/test_architectures.py -k tutorials"),
    ("nested models' clashing names kept", "fastdecomp/keras_io.py",
     '        name = op.name if op.name not in taken else f"{model.name}/{op.name}"', "        name = op.name",
     "tests/test_architectures.py -k clashing"),
    ("the epilogue drops the ReLU6 cap", "fastdecomp/kernels/cpu.py",
     "                      None if cap is None else float(np.float32(cap)))", "                      None)",
     "tests/test_invariants.py -k capped"),
    ("a namesake of a registered class is read", "fastdecomp/keras_io.py",
     "    if defined is not type(op):", "    if defined is None:", "tests/test_network.py -k namesake"),
]
ONNX = [  # ONNX in and out (#15)
    ("a flattened map's rows kept in ONNX order", "fastdecomp/onnx_io.py",
     "kernel if order is None else kernel[order]", "kernel", "tests/test_onnx.py -k torch_style"),
    ("ceil_mode ignored", "fastdecomp/onnx_io.py",
     "ceil=bool(a.get(\"ceil_mode\", 0))", "ceil=False", "tests/test_onnx.py -k average"),
    ("an average that counts padding read as one that does not", "fastdecomp/onnx_io.py",
     'if kind == "avgpool" and a.get("count_include_pad", 0) and any(config["pads"]):', "if False:",
     "tests/test_onnx.py -k average"),
    ("a composition shares nodes whose masks differ", "fastdecomp/onnx_io.py",
     "tuple(keys[s] for s in layer.inputs), _digest(mask),", "tuple(keys[s] for s in layer.inputs), None,",
     "tests/test_onnx.py -k composition"),
    ("a BatchNormalization folds into a convolution read twice", "fastdecomp/onnx_io.py",
     "self.readers.get(node.input[0], 0) == 1 and", "", "tests/test_onnx.py -k 'torch_style or read_twice'"),
    ("pruning drops a layer's last channel", "fastdecomp/pruning.py",
     "    keep[0] |= not keep.any()", "    pass", "tests/test_onnx.py tests/test_architectures.py -k 'pruned or every_channel'"),
]
GROUPS = {"architectures": ARCHITECTURES, "onnx": ONNX}
selected = GROUPS.get(sys.argv[1], MUTANTS) if sys.argv[1:] else MUTANTS
if sys.argv[2:]:  # one bug, by the start of its description
    selected = [m for m in selected if m[0].startswith(sys.argv[2])]
rows = []
for what, path, old, new, tests in selected:
    file = ROOT / path
    text = file.read_text()
    assert text.count(old) == 1, (what, old)
    file.write_text(text.replace(old, new))
    try:
        run = subprocess.run(f"{ROOT}/.venv/bin/python -m pytest -q -x -p no:cacheprovider {tests}", shell=True,
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        file.write_text(text)
    failed = [l.split(" ")[1] for l in run.stdout.splitlines() if l.startswith("FAILED")]
    signal = -run.returncode if run.returncode < 0 else run.returncode - 128 if run.returncode > 128 else None
    died = f"the test process died (signal {signal}): {tests}" if signal else None  # the shell reports 128 + it
    rows.append((what, path, failed[0] if failed else died or "**survives**", tests))
    print(rows[-1], flush=True)
print("\n".join(f"| {w} | `{p}` | {f} |" for w, p, f, t in rows))
