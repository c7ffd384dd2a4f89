"""One command for a lent GPU: the device tests, the engine against the CPU and PyTorch cuDNN, decomposition at
Tiny-ImageNet scale, and the convolutions' hardware counters.

Usage (on a machine with CuPy, PyTorch and Keras; TensorFlow is not needed)::

    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python bench/gpu_check.py            # every step, about 6 minutes
    python bench/gpu_check.py --steps engine,decompose --images 4096
    ncu --clock-control none -k regex:conv2d_forward --launch-skip 20 --launch-count 6 \\
        --section SpeedOfLight python bench/gpu_check.py --steps profile

Steps (``--steps``, comma-separated, in this order):

- ``tests``: ``pytest -m gpu --gpu`` over the kernel and host tests: every kernel against its CPU twin, bit
  for bit, and decomposition through the whole device path against the CPU;
- ``kernel``: ResNet-56's three 3x3 stride-1 layer shapes at the batch size, with other tiles per thread
  (``CONV_PIXELS``) and register limits (``CONV_MIN_BLOCKS``), against cuDNN's fp32 on the same layer;
- ``engine``: images/s of the device engine on ResNet-56 (64x64x3, 200 classes, biases randomised) with the
  input coming from the host, against the CPU engine and against PyTorch cuDNN on the same weights (fp32 with
  TF32 off, input from the host; TF32 with channels_last, input on the device); the outputs compared;
- ``decompose``: 200 modules from 10,000 and 100,000 synthetic Tiny-ImageNet images on the device (the time,
  the statistics pass's share), masks compared with the CPU's on the smaller run's first images; then the
  composed inference of all 200 modules;
- ``profile``: a few forward passes only, for ``ncu`` to read.

Each step prints its figures as it finishes, so a step cut short leaves the earlier ones.
``../shared/gpu/RECIPE.md`` says how to bring Keras to a machine without TensorFlow.
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import fastdecomp as fd
from fastdecomp import backends

STEPS = ("tests", "kernel", "engine", "decompose", "profile")
BACKEND = "cuda"  # --backend emulated-cuda: a dry run of this script on a machine without a GPU
RESNET56_GFLOP = 1.006  # multiply-adds x 2 per 64x64x3 image (PERFORMANCE.md)


def say(*parts):
    print(*parts, flush=True)


def best_of(fn, repeats=3):
    """The fastest of ``repeats`` runs of ``fn``, in seconds."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def resnet56(seed=1):
    """ResNet-56 for 64x64x3 and 200 classes, its biases randomised (an untrained model's are all zero)."""
    network = fd.from_keras(fd.zoo.resnet_v1(56, (64, 64, 3), 200, seed=seed))
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if "bias" in layer.weights:
            layer.weights["bias"][...] = rng.normal(0, 0.05, layer.weights["bias"].shape).astype(np.float32)
    return network


def run_tests():
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "--gpu", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
               "tests/test_gpu_kernels.py", "tests/test_gpu_host.py"]
    say("$", " ".join(command[1:]))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = (result.stdout + result.stderr).strip().splitlines()
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    say("\n".join(failures[:20] + lines[-1:]))


class TorchResNet:
    """The network's layers as PyTorch operations on the same weights (NCHW, cuDNN)."""

    def __init__(self, network, torch, channels_last=False):
        self.torch, self.network = torch, network
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.weights = {}
        for layer in network.layers:
            if layer.kind == "conv2d":
                kernel = torch.from_numpy(layer.weights["kernel"].transpose(3, 2, 0, 1).copy()).cuda()
                self.weights[layer.name] = (kernel.contiguous(memory_format=self.format),
                                            torch.from_numpy(layer.weights["bias"]).cuda())
            elif layer.kind == "dense":
                self.weights[layer.name] = (torch.from_numpy(layer.weights["kernel"]).cuda(),
                                            torch.from_numpy(layer.weights["bias"]).cuda())

    def __call__(self, x):
        F, values = self.torch.nn.functional, {}
        for layer in self.network.layers:
            inputs = [values[name] for name in layer.inputs]
            if layer.kind == "input":
                out = x
            elif layer.kind == "conv2d":
                top, bottom, left, right = layer.config["pads"]
                source = inputs[0]
                if (top, left) != (bottom, right):
                    source, top, left = F.pad(source, (left, right, top, bottom)), 0, 0
                out = F.conv2d(source, *self.weights[layer.name], stride=layer.config["strides"], padding=(top, left))
            elif layer.kind == "relu":
                out = F.relu(inputs[0])
            elif layer.kind == "add":
                out = inputs[0] + inputs[1]
            elif layer.kind == "gap":
                out = inputs[0].mean(dim=(2, 3))
            elif layer.kind == "dense":
                kernel, bias = self.weights[layer.name]
                out = inputs[0] @ kernel + bias
            elif layer.kind == "softmax":
                out = F.softmax(inputs[0], dim=1)
            else:
                raise ValueError(f"no PyTorch equivalent written for {layer.kind}")
            values[layer.name] = out
        return values[self.network.layers[-1].name]


CONV_LAYERS = [(64, 16), (32, 32), (16, 64)]  # ResNet-56's 3x3 stride-1 layers: size, channels in and out
CONV_VARIANTS = [(4, 2), (4, 1), (2, 2), (8, 1), (4, 3)]  # CONV_PIXELS, CONV_MIN_BLOCKS; the first is forward.cu's


def time_launches(launch, synchronize, repeats):
    launch()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        launch()
    synchronize()
    return (time.perf_counter() - start) / repeats


def kernel_step(batch_size, repeats=20):
    from fastdecomp.kernels import gpu

    device = backends.get(BACKEND)
    try:
        import torch
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = True, False
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    for size, channels in CONV_LAYERS:
        x = device.asarray(rng.standard_normal((batch_size, size, size, channels), dtype=np.float32))
        kernel = device.asarray(rng.standard_normal((3, 3, channels, channels), dtype=np.float32))
        bias = device.asarray(rng.standard_normal(channels, dtype=np.float32))
        with device.compute():
            out = device.xp.empty((batch_size, size, size, channels), np.float32)
        flop = 2 * batch_size * size * size * channels * 9 * channels
        for pixels, min_blocks in CONV_VARIANTS:
            threads = batch_size * size * -(-size // pixels) * (channels // gpu.CONV_CHANNELS)
            args = [x, kernel, bias, out, out, out.view(np.uint8), np.int64(batch_size),
                    *[np.int32(v) for v in (size, size, channels, 3, 3, 1, 1, 1, 1, size, size, channels, 0, 1)],
                    np.float32(0), np.int32(0), np.int32(0)]
            defines = (f"CONV_PIXELS={pixels}", f"CONV_MIN_BLOCKS={min_blocks}")
            seconds = time_launches(lambda: device.launch("forward", "conv2d_forward", threads, args, defines),
                                    device.synchronize, repeats)
            say(f"kernel: 3x3 {channels}->{channels} at {size}x{size}, batch {batch_size}, {pixels} pixels x "
                f"{gpu.CONV_CHANNELS} channels, min blocks {min_blocks}: {seconds * 1e3:.3f} ms, "
                f"{flop / seconds / 1e12:.2f} TFLOP/s")
        if torch is not None:
            tx = torch.randn(batch_size, channels, size, size, device="cuda")
            tk, tb = torch.randn(channels, channels, 3, 3, device="cuda"), torch.randn(channels, device="cuda")
            seconds = time_launches(lambda: torch.nn.functional.conv2d(tx, tk, tb, padding=1), torch.cuda.synchronize,
                                    repeats)
            say(f"kernel: the same layer in cuDNN fp32 (TF32 off, NCHW): {seconds * 1e3:.3f} ms, "
                f"{flop / seconds / 1e12:.2f} TFLOP/s")


def engine_step(images, batch_size):
    network, device = resnet56(), backends.get(BACKEND)
    x = fd.data.SyntheticTinyImageNet(images, num_classes=200, seed=1).read(np.arange(images))
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]

    def ours():
        for batch in batches:
            network.forward(batch, backend=device)
        device.synchronize()

    first = device.to_host(network.forward(batches[0], backend=device))
    on_cpu = network.forward(batches[0], backend="cpu")
    say(f"engine: device output equals the CPU's bit for bit on {len(batches[0])} images: "
        f"{np.array_equal(first, on_cpu)} (max |diff| {np.abs(first - on_cpu).max():.3g})")
    rows = [("fastdecomp CUDA, input from host", best_of(ours))]
    large = [x[i:i + 4 * batch_size] for i in range(0, len(x), 4 * batch_size)]

    def ours_large():
        for batch in large:
            network.forward(batch, backend=device)
        device.synchronize()

    rows.append((f"fastdecomp CUDA, input from host, batch {4 * batch_size}", best_of(ours_large)))
    cpu_images = batches[0][:128]
    rows.append(("fastdecomp CPU (this machine's cores)",
                 best_of(lambda: network.forward(cpu_images, backend="cpu"), 2) * len(x) / len(cpu_images)))

    try:
        import torch
    except ImportError:
        torch = None
        say("engine: no PyTorch here, so no cuDNN rows")
    for label, tf32, channels_last, on_device in [] if torch is None else [
            ("PyTorch cuDNN fp32 (TF32 off), input from host", False, False, False),
            ("PyTorch cuDNN fp32 (TF32 off), input on device", False, False, True),
            ("PyTorch cuDNN TF32, channels_last, on device", True, True, True)]:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        model = TorchResNet(network, torch, channels_last)
        fmt = model.format
        resident = [torch.from_numpy(b).cuda().permute(0, 3, 1, 2).contiguous(memory_format=fmt) for b in batches]

        def theirs():
            with torch.inference_mode():
                for i, batch in enumerate(batches):
                    source = resident[i] if on_device else \
                        torch.from_numpy(batch).pin_memory().cuda(non_blocking=True).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
                    model(source)
            torch.cuda.synchronize()

        theirs()
        rows.append((label, best_of(theirs)))
        if not tf32:
            with torch.inference_mode():
                reference = model(resident[0]).cpu().numpy()
            say(f"engine: max |ours - PyTorch fp32| on {len(first)} images: {np.abs(first - reference).max():.3g}")
    ours_seconds = rows[0][1]
    say(f"\nResNet-56 64x64x3, 200 classes, fp32, batch {batch_size}, {len(x)} images")
    say(f"| engine | img/s | TFLOP/s | time / fastdecomp CUDA |\n|---|---|---|---|")
    for label, seconds in rows:
        say(f"| {label} | {len(x) / seconds:,.0f} | {len(x) * RESNET56_GFLOP / seconds / 1e3:.1f} | "
            f"{seconds / ours_seconds:.2f} |")


def decompose_step(sizes, batch_size):
    network = resnet56()
    small = fd.data.SyntheticTinyImageNet(min(min(sizes), 1024), num_classes=200, seed=1)
    present = sorted(set(small.labels.tolist()))
    on_device, on_cpu = (fd.decompose(network, small, classes=present, concerned="all", backend=where,
                                      progress=False) for where in (BACKEND, "cpu"))
    same = all(np.array_equal(on_device.masks(k)[name], mask) for k in present
               for name, mask in on_cpu.masks(k).items())
    say(f"decompose: masks of all {len(present)} modules from {len(small):,} images equal the CPU's: {same}")
    for images in sizes:
        source = fd.data.SyntheticTinyImageNet(images, num_classes=200, seed=1)
        classes = sorted(set(source.labels.tolist()))
        start = time.perf_counter()
        modules = fd.decompose(network, source, classes=classes, concerned="all", backend=BACKEND,
                               batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - start
        say(f"decompose: {len(modules)} modules from {images:,} images on the device: {seconds:.1f} s "
            f"(statistics pass {modules.info['statistics_seconds']:.1f} s), {images / seconds:,.0f} img/s")
    x = small.read(np.arange(min(len(small), 512)))
    modules.predict_proba(x[:8], backend=BACKEND)
    start = time.perf_counter()
    modules.predict_proba(x, backend=BACKEND)
    seconds = time.perf_counter() - start
    say(f"composed inference, all {len(modules)} modules on the device: {len(x) / seconds:,.1f} img/s")


def profile_step(batch_size):
    network, device = resnet56(), backends.get(BACKEND)
    x = fd.data.SyntheticTinyImageNet(batch_size, num_classes=200, seed=1).read(np.arange(batch_size))
    for _ in range(2):
        network.forward(x, backend=device)
    device.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="tests,kernel,engine,decompose")
    parser.add_argument("--images", type=int, default=4096, help="images for the engine step")
    parser.add_argument("--decompose-images", default="10000,100000")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--backend", default="cuda", help="emulated-cuda: a dry run, without a GPU")
    args = parser.parse_args()
    global BACKEND
    BACKEND = args.backend
    steps = args.steps.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    backends.get(BACKEND)  # a BackendError here names what the machine lacks
    for step in steps:
        start = time.perf_counter()
        say(f"\n== {step}")
        if step == "tests":
            run_tests()
        elif step == "kernel":
            kernel_step(args.batch_size)
        elif step == "engine":
            engine_step(args.images, args.batch_size)
        elif step == "decompose":
            decompose_step([int(n) for n in args.decompose_images.split(",")], args.batch_size)
        else:
            profile_step(args.batch_size)
        say(f"== {step}: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
