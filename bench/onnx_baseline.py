"""ONNX Runtime as a baseline: a fastdecomp ``Network`` exported by :mod:`fastdecomp.onnx_io`.

ONNX Runtime is the fastest CPU runtime a user would pick instead of
fastdecomp's engine, so the benchmarks time it beside TensorFlow. The graph
has the network's weights as they are (the network was imported from the
Keras model the other baselines run), in ONNX's NCHW layout.
"""

import numpy as np


def network_to_onnx(network):
    """An ``onnx.ModelProto`` computing ``network``'s softmax output from NHWC float32 images."""
    from fastdecomp.onnx_io import network_to_onnx as export

    return export(network)


class OnnxRuntimePredictor:
    """``predict(x, batch_size)`` through an ONNX Runtime CPU session of ``network``'s graph.

    ``threads`` sets ONNX Runtime's intra-op threads (default: every core),
    as a user would run it.
    """

    def __init__(self, network, threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(network_to_onnx(network).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    def predict(self, x, batch_size=128):
        parts = [self.session.run([self.output], {"images": np.ascontiguousarray(x[i:i + batch_size],
                                                                                  dtype=np.float32)})[0]
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)
