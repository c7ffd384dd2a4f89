"""Plant one bug at a time in the restructured and hardened code, run the tests that should catch it, restore the file.

Prints one table row per bug for ``bench/results/mutation.md``; ``python bench/mutate_structure.py
architectures`` runs the bugs of the real-world Keras models instead (#14), ``onnx`` those of ONNX in
and out (#15), ``method`` those of the method's rules, pruning, metrics, CLI and shards (#16, #19),
``twins`` one per CUDA kernel and CPU twin, ``kinds`` one per layer kind not covered elsewhere.
``python bench/mutate_structure.py all`` runs every group and prints the kill rate.
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
     "    if reader is not None and layer.name not in untouched and", "    if reader is not None and",
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
     "        if not _renameat2(tmp, path, _RENAME_EXCHANGE):", "tests/test_storage.py -k 'killed or last_rename'"),
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
    ("a BatchNormalization folds into a layer read elsewhere too", "fastdecomp/layers.py",
     "other_readers = sum(readers.get(name, 0) for name in passing_on) - len(passing_on)",
     "other_readers = 0", "tests/test_network.py -k batchnorm"),
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
    ("a BatchNormalization folds into a convolution read twice", "fastdecomp/layers.py",
     "return previous is last and other_readers == 0 and", "return previous is last and",
     "tests/test_onnx.py -k 'torch_style or read_twice'"),
    ("pruning drops a layer's last channel", "fastdecomp/pruning.py",
     "    keep[0] |= not keep.any()", "    pass", "tests/test_onnx.py tests/test_architectures.py -k 'pruned or every_channel'"),
]
METHOD = [  # every rule of the method, the pruning, the metrics and the CLI (#19)
    ("pooling dead-input rule uses the pool size as its stride", "fastdecomp/layers.py",
     'c["pool"][0], c["pool"][1],\n                                       c["strides"][0], c["strides"][1], c["pads"][0]',
     'c["pool"][0], c["pool"][1],\n                                       c["pool"][0], c["pool"][1], c["pads"][0]',
     "tests/test_backtracking.py"),
    ("ZeroPadding dead-input map ignores the offset", "fastdecomp/layers.py",
     "        return [dead_out[:, pt:pt + h, pl:pl + w, :]]", "        return [dead_out[:, :h, :w, :]]",
     "tests/test_backtracking.py"),
    ("MC-BI conv dead-input rule takes the bottom/right padding for the top/left", "fastdecomp/layers.py",
     '    dead_in = cpu.window_dead_inputs(group_dead, h, w, *window, *c["strides"], c["pads"][0], c["pads"][2],',
     '    dead_in = cpu.window_dead_inputs(group_dead, h, w, *window, *c["strides"], c["pads"][1], c["pads"][3],',
     "tests/test_backtracking.py"),
    ("pruning keeps the bias of a removed channel", "fastdecomp/layers.py",
     '        layer.weights["kernel"][..., dead] = 0.0\n        layer.weights["bias"][dead] = 0.0\n\n    def drop_channels',
     '        layer.weights["kernel"][..., dead] = 0.0\n\n    def drop_channels',
     "tests/test_values.py -k pruned"),
    ("weights Jaccard divides by |A|+|B|", "fastdecomp/metrics.py",
     "/ len(np.union1d(a, b)))", "/ (len(a) + len(b)))", "tests/test_values.py -k jaccard"),
    ("sizes() counts removed channels as kept", "fastdecomp/metrics.py",
     "            kept_channels += int((~dead_channels(network, layer, masks)).sum())",
     "            kept_channels += layer.shape[-1]", "tests/test_values.py -k sizes"),
    ("the CLI ignores --delta", "fastdecomp/cli.py",
     "    options = dict(classes=args.classes, mask_at=args.mask_at, backtrack=_backtrack(args.backtrack),\n"
     "                   delta=args.delta,",
     "    options = dict(classes=args.classes, mask_at=args.mask_at, backtrack=_backtrack(args.backtrack),\n"
     "                   delta=DEFAULTS.delta,", "tests/test_cli.py -k option_reaches"),
    ("ReLU mask points skip a ReLU with several readers", "fastdecomp/network.py",
     "if mask_at in l.handler.mask_placements and l.name != self.output_dense]",
     "if mask_at in l.handler.mask_placements and l.name != self.output_dense\n"
     "                and len(self.readers[l.name]) == 1]", "tests/test_invariants.py -k reference"),
    ("activity counts a zero as active", "fastdecomp/kernels/cpu.py",
     "                    if v[node] > 0:", "                    if v[node] >= 0:",
     "tests/test_invariants.py -k 'reference and relu'"),
    ("the CUDA activity kernel counts a zero as active", "fastdecomp/kernels/cuda/statistics.cu",
     "if (node < nodes && v[node] > 0.0f)", "if (node < nodes && v[node] >= 0.0f)",
     "tests/test_gpu_kernels.py -k accumulate"),
    ("BLN removes at -delta exclusive", "fastdecomp/backtrack.py",
     "        return (w_uc <= -delta) & (w_c >= delta)", "        return (w_uc < -delta) & (w_c >= delta)",
     "tests/test_backtracking.py -k exactly_delta"),
    ("the unconcerned head takes the sum of the other classes", "fastdecomp/backtrack.py",
     "    w = np.stack([kernel[:, k], kernel[:, others].mean(axis=1)], axis=1)",
     "    w = np.stack([kernel[:, k], kernel[:, others].sum(axis=1)], axis=1)",
     "tests/test_invariants.py -k 'reference and conv'"),
    ("a node read by several layers dies when one reader's copy does", "fastdecomp/backtrack.py",
     "            dead_out = dead_out & other", "            dead_out = dead_out | other",
     "tests/test_backtracking.py"),
    ("a hidden Dense input dies when any edge ends in a dead node", "fastdecomp/layers.py",
     "        dead_all = dead_out.all(axis=1)", "        dead_all = dead_out.any(axis=1)",
     "tests/test_backtracking.py"),
    ("the dead-input window ignores the row stride", "fastdecomp/kernels/cpu.py",
     "                    if num_y < 0 or num_y % stride_h:", "                    if num_y < 0:",
     "tests/test_backtracking.py"),
    ("the tangling sample is one short", "fastdecomp/sampling.py",
     "    target = max(int(round(ti_ratio * concerned_size)), 1)",
     "    target = max(int(round(ti_ratio * concerned_size)) - 1, 1)", "tests/test_invariants.py -k reference"),
    ("concerned='correct' takes every input of the class", "fastdecomp/decompose.py",
     '(correct if options.concerned == "correct" else True)', "True", "tests/test_invariants.py -k reference"),
    ("the first ranks merge by max", "fastdecomp/statistics.py",
     "np.minimum(r, other.first_rank[name])", "np.maximum(r, other.first_rank[name])",
     "tests/test_shards.py"),
    ("shards rank their images among their own", "fastdecomp/gathering.py",
     "        self.ranks = class_ranks(labels, num_classes, options.seed)[rows]",
     "        self.ranks = class_ranks(labels[rows], num_classes, options.seed)", "tests/test_shards.py -k single"),
    ("the fingerprint leaves out the labels", "fastdecomp/gathering.py",
     "    hasher.update(np.asarray(labels, dtype=np.int64).tobytes())\n", "", "tests/test_shards.py -k foreign"),
    ("a shard given twice is merged", "fastdecomp/gathering.py",
     "        if np.intersect1d(self.rows, other.rows).size:", "        if False:", "tests/test_shards.py -k repeated"),
    ("the tree merge drops an odd partial", "fastdecomp/cluster.py",
     "        futures = merged + futures[len(merged) * 2:]", "        futures = merged",
     "tests/test_cluster.py -k single_process"),
    ("workers' data not compared with the client's", "fastdecomp/cluster.py",
     "        if tuple(answer[1:]) != expected:", "        if False:", "tests/test_cluster.py -k 'other_data or after_opening'"),
    ("Reshape of a vector into a map passed through", "fastdecomp/layers.py",
     "        if len(input_shapes[0]) == 1 and self._keeps_vector(cfg, input_shapes[0][0]):",
     "        if len(input_shapes[0]) == 1:", "tests/test_architectures.py -k reshape"),
    ("an imported layer is not checked", "fastdecomp/layers.py",
     "        layer.shape = self.checked_output_shape(layer, input_shapes)",
     "        layer.shape = tuple(self.output_shape(config, weights, input_shapes))", "tests/test_onnx.py -k crafted"),
    ("the fold counts the readers of the last identity only", "fastdecomp/layers.py",
     "        passing_on = [name for name, target in aliases.items() if target == previous.name]",
     "        passing_on = [name for name, target in aliases.items() if target == previous.name][-1:]",
     "tests/test_onnx.py -k batchnorm"),
    ("grouped kernel runs outputs whose windows lie in the padding", "fastdecomp/kernels/checks.py",
     "    if outputs < 1 or pad >= span or (outputs - 1) * stride - pad >= size:", "    if outputs < 1:",
     "tests/test_gpu_kernels.py -k 'refuse and grouped'"),
]
TWINS = [  # one bug per CUDA kernel and per CPU kernel, each caught by its twin test (#19)
    ("the CUDA convolution drops its bias", "fastdecomp/kernels/cuda/forward.cu",
     "    float r = acc + bias[o];", "    float r = acc;", "tests/test_gpu_kernels.py -k conv2d_forward_twin"),
    ("the CUDA grouped convolution reads the wrong group", "fastdecomp/kernels/cuda/forward.cu",
     "    int first = (o / (co / groups)) * group_ci;", "    int first = (o % groups) * group_ci;",
     "tests/test_gpu_kernels.py -k grouped_conv2d_forward_twin"),
    ("the CUDA dense layer skips its first feature", "fastdecomp/kernels/cuda/forward.cu",
     "    for (long long i = 0; i < features; ++i)", "    for (long long i = 1; i < features; ++i)",
     "tests/test_gpu_kernels.py -k dense_forward_twin"),
    ("the CUDA average pooling counts padding", "fastdecomp/kernels/cuda/forward.cu",
     "    out[t] = is_max ? acc : acc / (float)count;", "    out[t] = is_max ? acc : acc / (float)(pool_h * pool_w);",
     "tests/test_gpu_kernels.py -k pool2d_forward_twin"),
    ("the CUDA global average skips the first row", "fastdecomp/kernels/cuda/forward.cu",
     "    for (int y = 0; y < h; ++y)\n        for (int xx = 0; xx < w; ++xx) acc",
     "    for (int y = 1; y < h; ++y)\n        for (int xx = 0; xx < w; ++xx) acc",
     "tests/test_gpu_kernels.py -k global_average_pool_forward_twin"),
    ("the CUDA concerned update skips class 0", "fastdecomp/kernels/cuda/statistics.cu",
     "        if (k >= 0) active[k * nbytes + byte] |= bits[b * nbytes + byte];",
     "        if (k > 0) active[k * nbytes + byte] |= bits[b * nbytes + byte];",
     "tests/test_gpu_kernels.py -k accumulate_concerned_twin"),
    ("the CUDA first ranks keep the largest", "fastdecomp/kernels/cuda/statistics.cu",
     "if ((bits & (128u >> bit)) && r < (long long)ranks[bit])", "if ((bits & (128u >> bit)) && r > (long long)ranks[bit])",
     "tests/test_gpu_kernels.py -k 'accumulate_packed_activity_twin or accumulate_activity_twin'"),
    ("the CUDA tangling reach misses the last rank", "fastdecomp/kernels/cuda/statistics.cu",
     "            if (r < most) set |=", "            if (r < most - 1) set |=", "tests/test_gpu_kernels.py -k tangling_keep_twin"),
    ("the CUDA dead-input window ignores the column stride", "fastdecomp/kernels/cuda/backward.cu",
     "            if (num_x < 0 || num_x % stride_w) continue;", "            if (num_x < 0) continue;",
     "tests/test_gpu_kernels.py -k window_dead_inputs_twin"),
    ("the CPU dense layer drops its bias", "fastdecomp/kernels/cpu.py",
     "            out[b, o] = acc[o] + bias[o]", "            out[b, o] = acc[o]", "tests/test_gpu_kernels.py -k dense_forward_twin"),
    ("the CPU average pooling counts padding", "fastdecomp/kernels/cpu.py",
     "                out[b, i, j, ch] = acc if is_max else acc / np.float32(count)",
     "                out[b, i, j, ch] = acc if is_max else acc / np.float32(pool_h * pool_w)",
     "tests/test_network.py -k 'same_padding_pooling'"),
    # the GPU backend's host code (#18), caught without a GPU
    ("dense_forward passes its unit count as int64", "fastdecomp/kernels/gpu.py",
     "np.int64(n), np.int64(f), np.int32(kernel.shape[1])]", "np.int64(n), np.int64(f), np.int64(kernel.shape[1])]",
     "tests/test_gpu_kernels.py -k dense_forward_twin"),
    ("tangling_keep passes keep transposed", "fastdecomp/kernels/gpu.py",
     "np.int64(nodes), keep.view(np.uint8)]", "np.int64(nodes), keep.T.view(np.uint8)]",
     "tests/test_gpu_kernels.py -k tangling_keep_twin"),
    ("a kernel wrapper allocates off the compute stream", "fastdecomp/kernels/gpu.py",
     "        with device.compute():\n            return kernel(*args, device=device, **kwargs)",
     "        return kernel(*args, device=device, **kwargs)", "tests/test_gpu_kernels.py -k window_dead_inputs_twin"),
    ("uploads go to the NULL stream", "fastdecomp/kernels/gpu.py",
     "        with self.compute():\n            self._spin()\n            return self.xp.ascontiguousarray",
     "        if True:\n            self._spin()\n            return self.xp.ascontiguousarray",
     "tests/test_gpu_host.py -k keep_stream_order"),
    ("compute reads a batch without waiting for its copy", "fastdecomp/kernels/gpu.py",
     "        self._compute.wait_event(copied)", "        pass", "tests/test_gpu_host.py -k keep_stream_order"),
    ("a batch's copy does not wait for compute", "fastdecomp/kernels/gpu.py",
     "            self._copy.wait_event(self._compute.record(self._event()))\n", "",
     "tests/test_gpu_host.py -k keep_stream_order"),
    ("the statistics tables are made on the NULL stream", "fastdecomp/statistics.py",
     "        with backend.compute():  # on the stream", "        if True:  # on the stream",
     "tests/test_gpu_host.py -k keep_stream_order"),
    ("CuPy's -ftz=true comes last", "fastdecomp/kernels/cuda_compile.py",
     '"--prec-sqrt=true")', '"--prec-sqrt=true", "-ftz=true")', "tests/test_gpu_host.py -k subnormals"),
    ("the GPU is not probed before use", "fastdecomp/kernels/gpu.py",
     "    _probe(device_id)\n", "", "tests/test_gpu_host.py -k before_any_data"),
    ("auto falls back to the CPU silently", "fastdecomp/backends.py",
     "            warnings.warn(", "            None and warnings.warn(", "tests/test_gpu_host.py -k says_so_once"),
]
KINDS_GROUP = [  # one bug per layer kind not yet covered (#19)
    ("a scaled residual scales the shortcut", "fastdecomp/layers.py",
     '        out = backend.xp.multiply(inputs[1], np.float32(layer.config["scale"]))\n        return backend.xp.add(inputs[0], out, out=out)',
     '        out = backend.xp.multiply(inputs[0], np.float32(layer.config["scale"]))\n        return backend.xp.add(inputs[1], out, out=out)',
     "tests/test_architectures.py -k keras"),
    ("Rescaling offsets before it scales", "fastdecomp/layers.py",
     "        out = backend.xp.multiply(inputs[0], a)\n        return backend.xp.add(out, b, out=out)",
     "        out = backend.xp.add(inputs[0], b)\n        return backend.xp.multiply(out, a, out=out)",
     "tests/test_network.py -k preprocessing"),
    ("Normalization forgets the variance's floor", "fastdecomp/layers.py",
     "        deviation = np.maximum(np.sqrt(np.asarray(keras_layer.variance, dtype=np.float32)), np.float32(1e-7))",
     "        deviation = np.sqrt(np.asarray(keras_layer.variance, dtype=np.float32))",
     "tests/test_network.py -k 'preprocessing or constant_channel'"),
    ("a global pooling's dead channel kills only its first position", "fastdecomp/layers.py",
     "        return [np.broadcast_to(dead_out[:, None, None, :], (dead_out.shape[0], h, w, c))]",
     "        dead_in = np.zeros((dead_out.shape[0], h, w, c), dtype=bool)\n"
     "        dead_in[:, 0, 0, :] = dead_out\n        return [dead_in]",
     "tests/test_invariants.py tests/test_values.py -k 'reference or sizes'"),
]
GROUPS = {"architectures": ARCHITECTURES, "onnx": ONNX, "method": METHOD, "twins": TWINS, "kinds": KINDS_GROUP}
selected = (sum(GROUPS.values(), MUTANTS) if sys.argv[1] == "all" else GROUPS.get(sys.argv[1], MUTANTS)) \
    if sys.argv[1:] else MUTANTS
if sys.argv[2:]:  # one bug, by the start of its description
    selected = [m for m in selected if m[0].startswith(sys.argv[2])]
clean = {}  # selector -> whether it passes, with tests, on the unchanged code


def passes_clean(tests):
    if tests not in clean:
        run = subprocess.run(f"{sys.executable} -m pytest -q -p no:cacheprovider {tests}", shell=True,
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
        clean[tests] = run.returncode == 0 and " passed" in run.stdout
    return clean[tests]


if sys.argv[1:] and sys.argv[1] not in GROUPS and sys.argv[1] not in ("", "all"):
    sys.exit(f"no group {sys.argv[1]!r}: use one of {', '.join(GROUPS)}, all, or none for the first group")
rows = []
for what, path, old, new, tests in selected:
    if not passes_clean(tests):  # a selector that fails (or runs nothing) on clean code proves nothing
        rows.append((what, path, "**selector fails or runs no test on the unchanged code**", tests))
        print(rows[-1], flush=True)
        continue
    file = ROOT / path
    text = file.read_text()
    if text.count(old) != 1:  # the code moved on: the mutant must be written again
        rows.append((what, path, f"**stale**: the text to mutate is found {text.count(old)} times", tests))
        print(rows[-1], flush=True)
        continue
    file.write_text(text.replace(old, new))
    try:
        run = subprocess.run(f"{sys.executable} -m pytest -q -x -p no:cacheprovider {tests}", shell=True,
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        file.write_text(text)
    failed = [l.split(" ")[1] for l in run.stdout.splitlines() if l.startswith("FAILED")]
    signal = -run.returncode if run.returncode < 0 else run.returncode - 128 if run.returncode > 128 else None
    died = f"the test process died (signal {signal}): {tests}" if signal else None  # the shell reports 128 + it
    rows.append((what, path, failed[0] if failed else died or "**survives**", tests))
    print(rows[-1], flush=True)
print("\n".join(f"| {w} | `{p}` | {f} |" for w, p, f, t in rows))
caught = sum(not f.startswith("**") for w, p, f, t in rows)
print(f"\n{caught} of {len(rows)} caught ({caught / max(len(rows), 1):.0%})")
