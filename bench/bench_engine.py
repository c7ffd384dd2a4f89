"""fastdecomp's engine and decomposition against ONNX Runtime and TensorFlow, per target CPU.

Usage::

    python bench/bench_engine.py                          # native target and forced AVX2; writes engine.md
    python bench/bench_engine.py --targets native         # one target
    python bench/bench_engine.py --quick                  # fewer images

For ResNet-20 at 28x28x1 (the zoo model), ResNet-56 at 64x64x3 with 200
classes (seeded random weights), and keras.applications' MobileNetV2 and
DenseNet121 at 64x64x3 with 200 classes (random weights, BatchNorm statistics
randomised), in one process per target
(``FASTDECOMP_TARGET_CPU``), interleaved and best of ``--repeats``:

- fastdecomp's predict, its decomposition of every module, ONNX Runtime's
  predict (a graph built with ``onnx.helper`` from the same weights) and
  TensorFlow's predict, in images/s, and the time ratios against ONNX Runtime
  and TensorFlow;
- the engine's GFLOP/s per core;
- for every 3x3 convolution shape (one per stage), the generated kernel's
  GFLOP/s on one core and its fraction of the core's FMA peak, estimated and
  measured (:mod:`machine`);
- for every depthwise convolution shape of MobileNetV2, its GFLOP/s and GB/s
  on one core (memory-bound: compared with one core's copy bandwidth).

Every kernel is compiled (and tuned) before timing. Writes
``bench/results/engine.md`` and ``engine.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("native", "haswell")
AVX2_TARGETS = ("haswell", "skylake", "x86-64-v3")


def interleaved(runs, repeats):
    """Best seconds of each named callable, run in turn ``repeats`` times."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def network_flops(network):
    """Multiply-add flops per image of the convolutions and dense layers."""
    import numpy as np

    total = 0
    for layer in network.layers:
        if layer.kind in ("conv2d", "grouped_conv2d"):
            kh, kw, ci, _ = layer.weights["kernel"].shape
            total += 2 * kh * kw * ci * int(np.prod(layer.shape))
        elif layer.kind == "separable_conv2d":
            kh, kw, _, middle = layer.weights["depthwise"].shape
            total += 2 * (kh * kw + layer.shape[-1]) * middle * layer.shape[0] * layer.shape[1]
        elif layer.kind == "dense":
            total += 2 * layer.weights["kernel"].size
    return total


def stage_kernels(network, peak, images=64):
    """GFLOP/s on one core of each distinct 3x3 stride-1 convolution shape."""
    import numpy as np

    from fastdecomp.kernels import cpu, direct_conv, tuning
    from fastdecomp.kernels import target as targets

    rows, seen = [], set()
    for layer in network.layers:
        if layer.kind != "conv2d" or layer.weights["kernel"].shape[:2] != (3, 3) or layer.config["strides"] != (1, 1):
            continue
        h, w, ci = next(l.shape for l in network.layers if l.name == layer.inputs[0])
        key = (h, w, ci, layer.shape[-1])
        if key in seen or ci == network.input_shape[-1]:
            continue
        seen.add(key)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((images, h, w, ci)).astype(np.float32)
        kernel = layer.weights["kernel"]
        out = np.empty((images,) + layer.shape, np.float32)

        def run():
            cpu.conv2d_forward(x, kernel, layer.weights["bias"], 1, 1, 1, 1, out, rectify=True)

        run()
        seconds = interleaved({"conv": run}, 5)["conv"]
        shape = direct_conv.ConvShape(h, w, ci, 3, 3, 1, 1, 1, 1, *layer.shape)
        gflops = shape.flops * images / seconds / 1e9
        tiling = tuning.choose(shape, targets.current())
        rows.append({"shape": f"{h}x{w}x{ci}->{layer.shape[-1]}", "gflops": gflops,
                     "of_estimated": gflops / peak["estimated_peak"], "of_measured": gflops / peak["measured_peak"],
                     "tiling": f"{tiling.width}x{tiling.group}x{tiling.pixels}"})
    return rows


def copy_bandwidth(megabytes=256):
    """GB/s of one core copying a large array (reads plus writes): the memory-bound kernels' bar."""
    import numpy as np

    source = np.ones(megabytes * 2 ** 18, np.float32)
    target = np.empty_like(source)
    seconds = interleaved({"copy": lambda: np.copyto(target, source)}, 5)["copy"]
    return 2 * source.nbytes / seconds / 1e9


def depthwise_kernels(network, images=64):
    """GFLOP/s and GB/s on one core of each distinct depthwise convolution shape (memory-bound)."""
    import numpy as np

    from fastdecomp.kernels import cpu

    rows, seen = [], set()
    for layer in network.layers:
        if layer.kind != "grouped_conv2d" or not layer.config["depth_multiplier"]:
            continue
        in_shape = network.by_name[layer.inputs[0]].shape
        c = layer.config
        key = (in_shape, c["strides"])
        if key in seen:
            continue
        seen.add(key)
        x = np.random.default_rng(0).standard_normal((images,) + in_shape).astype(np.float32)
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        out = np.empty((images,) + layer.shape, np.float32)

        def run():
            cpu.grouped_conv2d_forward(x, kernel, bias, *c["strides"], *c["dilation"], c["pads"][0], c["pads"][2],
                                       c["groups"], out)

        run()
        seconds = interleaved({"depthwise": run}, 5)["depthwise"]
        flops = 2 * out.size * kernel.shape[0] * kernel.shape[1]
        moved = x.nbytes + out.nbytes + kernel.nbytes + bias.nbytes
        rows.append({"shape": f"{in_shape[0]}x{in_shape[1]}x{in_shape[2]} s{c['strides'][0]}",
                     "gflops": flops / seconds / 1e9, "gbps": moved / seconds / 1e9})
    return rows


def application(name, size, classes):
    """A keras.applications model, random weights, with BatchNorm statistics randomised."""
    import keras

    from conftest import randomise_normalisation

    keras.utils.set_random_seed(1)
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=classes)
    randomise_normalisation(model)
    return model


def measure(name, model, x, y, batch_size, repeats):
    import numpy as np

    import fastdecomp as fd
    from onnx_baseline import OnnxRuntimePredictor

    network = fd.from_keras(model)
    runtime = OnnxRuntimePredictor(network)
    classes = sorted(set(y.tolist()))
    source = fd.data.ArraySource(x, y)

    def decompose():
        fd.decompose(network, source, classes=classes, concerned="all", backtrack="bi", progress=False)

    runs = {"engine": lambda: network.predict_proba(x, batch_size=batch_size),
            "decompose": decompose,
            "onnxruntime": lambda: runtime.predict(x, batch_size),
            "tensorflow": lambda: model.predict(x, batch_size=batch_size, verbose=0)}
    for run in runs.values():  # compile, tune and trace outside the timed region
        run()
    best = interleaved(runs, repeats)
    ours = network.predict_proba(x, batch_size=batch_size)
    error_tf = float(np.abs(ours - model.predict(x, batch_size=batch_size, verbose=0)).max())
    error_ort = float(np.abs(ours - runtime.predict(x, batch_size)).max())
    flops = network_flops(network)
    cores = len(os.sched_getaffinity(0))
    row = {"model": name, "images": len(x), "modules": len(classes), "cores": cores,
           **{f"{k}_ips": len(x) / v for k, v in best.items()},
           "engine_vs_ort": best["engine"] / best["onnxruntime"], "engine_vs_tf": best["engine"] / best["tensorflow"],
           "decompose_vs_ort": best["decompose"] / best["onnxruntime"],
           "decompose_vs_tf": best["decompose"] / best["tensorflow"],
           "engine_gflops_per_core": flops * len(x) / best["engine"] / 1e9 / cores,
           "ort_gflops_per_core": flops * len(x) / best["onnxruntime"] / 1e9 / cores,
           "max_diff_tf": error_tf, "max_diff_ort": error_ort}
    print(f"{name:28} engine {row['engine_ips']:6.0f} img/s  decompose {row['decompose_ips']:6.0f}  "
          f"ONNX Runtime {row['onnxruntime_ips']:6.0f}  TensorFlow {row['tensorflow_ips']:6.0f}  | time ratios: "
          f"engine/ORT {row['engine_vs_ort']:.2f} engine/TF {row['engine_vs_tf']:.2f} "
          f"decompose/ORT {row['decompose_vs_ort']:.2f}  | engine {row['engine_gflops_per_core']:.0f} GFLOP/s/core "
          f"| max |diff| TF {error_tf:.1e} ORT {error_ort:.1e}", flush=True)
    return row, network


def one_target(args):
    import numpy as np

    import fastdecomp as fd
    import machine
    from fastdecomp import zoo

    peak = machine.describe()
    print(machine.header(), flush=True)
    n20, n56 = (512, 128) if args.quick else (4096, 512)
    test = fd.data.fashion_mnist("test")
    x20, y20 = test.read(np.arange(n20)), test.labels[:n20]
    rows, stages = [], []
    row, network = measure("ResNet-20 28x28x1 (zoo)", zoo.load("resnet20-fmnist"), x20, y20, args.batch_size,
                           args.repeats)
    rows.append(row)
    stages += [{"model": row["model"], **s} for s in stage_kernels(network, peak)]
    synthetic = fd.data.SyntheticTinyImageNet(n56, seed=1)
    x56 = synthetic.read(np.arange(n56))
    row, network = measure("ResNet-56 64x64x3, 200 cls", zoo.resnet_v1(56, (64, 64, 3), 200, seed=1), x56,
                           synthetic.labels, args.batch_size, args.repeats)
    rows.append(row)
    stages += [{"model": row["model"], **s} for s in stage_kernels(network, peak)]
    depthwise = []
    for name in ("MobileNetV2", "DenseNet121"):
        row, network = measure(f"{name} 64x64x3, 200 cls", application(name, 64, 200), x56, synthetic.labels,
                               args.batch_size, args.repeats)
        rows.append(row)
        depthwise += [{"model": row["model"], **d} for d in depthwise_kernels(network)]
    bandwidth = copy_bandwidth()
    for d in depthwise:
        print(f"  {d['model']:28} depthwise {d['shape']:14} {d['gflops']:5.1f} GFLOP/s {d['gbps']:5.1f} GB/s on one "
              f"core (a copy moves {bandwidth:.1f} GB/s)", flush=True)
    for s in stages:
        print(f"  {s['model']:28} {s['shape']:16} tiling {s['tiling']:8} {s['gflops']:5.0f} GFLOP/s on one core: "
              f"{s['of_estimated']:.0%} of the estimated peak, {s['of_measured']:.0%} of the measured", flush=True)
    return {"target": peak, "rows": rows, "stages": stages, "depthwise": depthwise, "copy_gbps": bandwidth}


def render(results, command):
    lines = ["# Engine and decomposition vs ONNX Runtime and TensorFlow, per target CPU", ""]
    lines += ["| target | model | images | engine img/s | decompose img/s | ORT img/s | TF img/s | engine/ORT | "
              "engine/TF | decompose/ORT | engine GFLOP/s/core | ORT GFLOP/s/core |", "|" + "---|" * 12]
    for result in results.values():
        for r in result["rows"]:
            lines.append(f"| {result['target']['target']} | {r['model']} | {r['images']} | {r['engine_ips']:.0f} | "
                         f"{r['decompose_ips']:.0f} | {r['onnxruntime_ips']:.0f} | {r['tensorflow_ips']:.0f} | "
                         f"{r['engine_vs_ort']:.2f}x | {r['engine_vs_tf']:.2f}x | {r['decompose_vs_ort']:.2f}x | "
                         f"{r['engine_gflops_per_core']:.0f} | {r['ort_gflops_per_core']:.0f} |")
    lines += ["", "3x3 convolutions, one core, batch 64, fused ReLU:", "",
              "| target | FMA peak/core est. / measured | model | shape | tiling (width x blocks x pixels) | "
              "GFLOP/s | of est. peak | of measured peak |", "|" + "---|" * 8]
    for result in results.values():
        t = result["target"]
        for s in result["stages"]:
            lines.append(f"| {t['isa']} | {t['estimated_peak']:.0f} / {t['measured_peak']:.0f} | {s['model']} | "
                         f"{s['shape']} | {s['tiling']} | {s['gflops']:.0f} | {s['of_estimated']:.0%} | "
                         f"{s['of_measured']:.0%} |")
    lines += ["", "Depthwise 3x3 convolutions (memory-bound), one core, batch 64, against one core's copy bandwidth:",
              "", "| target | model | input | GFLOP/s | GB/s | copy GB/s |", "|" + "---|" * 6]
    for result in results.values():
        for d in result.get("depthwise", []):
            lines.append(f"| {result['target']['target']} | {d['model']} | {d['shape']} | {d['gflops']:.1f} | "
                         f"{d['gbps']:.1f} | {result['copy_gbps']:.1f} |")
    lines += ["", f"`{command}`, {os.cpu_count()} cores, one process per target, interleaved, best of each. "
              "Ratios are times (below 1: fastdecomp is faster). The estimated peak uses the nominal clock; "
              "a core boosting above it exceeds the estimate, so the measured peak is the stricter bar. "
              "Under a forced AVX2 target only fastdecomp's code is AVX2 and TensorFlow's oneDNN kernels are "
              "held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`); ONNX Runtime has no such switch and still runs its "
              "AVX-512 kernels, so the AVX2 rows' ORT ratios compare AVX2 code against AVX-512 code."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated FASTDECOMP_TARGET_CPU values")
    parser.add_argument("--json", action="store_true", help="run the current target only, print JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    if args.json:
        print(json.dumps(one_target(args)))
        return
    results = {}
    for name in args.targets.split(","):
        command = [sys.executable, __file__, "--json", "--batch-size", str(args.batch_size),
                   "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        env = {**os.environ, "FASTDECOMP_TARGET_CPU": name}
        if name in AVX2_TARGETS:  # TensorFlow's oneDNN kernels held to AVX2 too; ONNX Runtime has no such switch
            env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        done = subprocess.run(command, env=env, text=True,
                              stdout=subprocess.PIPE, check=True)
        *progress, last = done.stdout.strip().splitlines()
        print("\n".join(progress), flush=True)
        results[name] = json.loads(last)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "engine.md").write_text(render(results, "python bench/bench_engine.py " + " ".join(sys.argv[1:])))
    print((RESULTS / "engine.md").read_text())


if __name__ == "__main__":
    main()
