"""The kernels: on the CPU (:mod:`.cpu`, :mod:`.direct_conv`) and their CUDA twins (:mod:`.gpu`).

Every device (:mod:`fastdecomp.backends`) offers the kernels of
:data:`KERNEL_NAMES` under these names, with one contract per name.
"""

KERNEL_NAMES = ("conv2d_forward", "grouped_conv2d_forward", "dense_forward", "pool2d_forward", "global_average_pool_forward",
                "accumulate_activity", "accumulate_packed_activity", "accumulate_concerned",
                "tangling_keep", "window_dead_inputs")
