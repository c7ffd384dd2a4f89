"""The landed tiling before this target-aware one against the rule's, on ResNet-56's 3x3 shapes, one core.

Usage::

    FASTDECOMP_TARGET_CPU=haswell python bench/bench_tiling.py    # the AVX2 path on any x86 host with AVX2
    python bench/bench_tiling.py                                   # native

The old rule always took 16-float vectors and 16 accumulators; on AVX2 that
tile needs 32 of the 16 registers and spills.
"""

from fastdecomp.kernels import direct_conv, target, tuning


def main():
    current = target.current()
    print(current.describe())
    for h, c in [(64, 16), (32, 32), (16, 64)]:
        shape = direct_conv.ConvShape(h, h, c, 3, 3, 1, 1, 1, 1, h, h, c)
        old = direct_conv.Tiling(16, 1 if c == 16 else 2, 16 if c == 16 else 8)
        new = direct_conv.rule_tiling(shape, current)
        seconds = tuning.measure(shape, [old, new], current, rounds=5)
        print(f"{h}x{h}x{c}: old {old} {shape.flops / seconds[old] / 1e9:.0f} GFLOP/s, "
              f"rule {new} {shape.flops / seconds[new] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
