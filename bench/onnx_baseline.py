"""ONNX Runtime as a baseline: an ONNX graph built with ``onnx.helper`` from a fastdecomp ``Network``.

ONNX Runtime is the fastest CPU runtime a user would pick instead of
fastdecomp's engine, so the benchmarks time it beside TensorFlow. The graph
has the network's weights as they are (the network was imported from the
Keras model the other baselines run), in ONNX's NCHW layout: the input is
transposed once at the start, and a map is transposed back to NHWC only
before a ``Flatten``, so the features reach a ``Dense`` in Keras's order.
"""

import numpy as np

OPSET = 17


def network_to_onnx(network):
    """An ``onnx.ModelProto`` computing ``network``'s softmax output from NHWC float32 images."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def constant(name, array):
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    for layer in network.layers:
        source = layer.inputs[0] if layer.inputs else None
        name, kind, c = layer.name, layer.kind, layer.config
        if kind == "input":
            nodes.append(helper.make_node("Transpose", ["images"], [name], perm=[0, 3, 1, 2]))
        elif kind == "conv2d":
            kernel = layer.weights["kernel"]
            pt, pb, pl, pr = c["pads"]
            nodes.append(helper.make_node(
                "Conv", [source, constant(f"{name}.w", kernel.transpose(3, 2, 0, 1)),
                         constant(f"{name}.b", layer.weights["bias"])], [name],
                kernel_shape=list(kernel.shape[:2]), strides=list(c["strides"]), pads=[pt, pl, pb, pr]))
        elif kind in ("maxpool", "avgpool"):
            pt, pb, pl, pr = c["pads"]
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            nodes.append(helper.make_node(op, [source], [name], kernel_shape=list(c["pool"]),
                                          strides=list(c["strides"]), pads=[pt, pl, pb, pr]))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [source], [name]))
        elif kind == "add":
            nodes.append(helper.make_node("Add", layer.inputs, [name]))
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [source], [f"{name}.map"]))
            nodes.append(helper.make_node("Flatten", [f"{name}.map"], [name], axis=1))
        elif kind == "flatten":
            nodes.append(helper.make_node("Transpose", [source], [f"{name}.nhwc"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Flatten", [f"{name}.nhwc"], [name], axis=1))
        elif kind == "dense":
            nodes.append(helper.make_node("Gemm", [source, constant(f"{name}.w", layer.weights["kernel"]),
                                                   constant(f"{name}.b", layer.weights["bias"])], [name]))
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [source], [name], axis=-1))
        elif kind in ("identity", "dropout"):
            nodes.append(helper.make_node("Identity", [source], [name]))
        elif kind == "grouped_conv2d":
            nodes.append(_grouped_conv(helper, constant, layer, source, name, layer.weights["kernel"],
                                       layer.weights["bias"], c["groups"]))
        elif kind == "separable_conv2d":
            depthwise = layer.weights["depthwise"]
            nodes.append(_grouped_conv(helper, constant, layer, source, f"{name}.depthwise", depthwise,
                                       np.zeros(depthwise.shape[3]), network.by_name[source].shape[-1]))
            nodes.append(helper.make_node(
                "Conv", [f"{name}.depthwise", constant(f"{name}.w", layer.weights["kernel"].transpose(3, 2, 0, 1)),
                         constant(f"{name}.b", layer.weights["bias"])], [name], kernel_shape=[1, 1]))
        elif kind in ("affine", "rescale", "normalize"):
            shape = (-1, 1, 1) if len(layer.shape) == 3 else (-1,)
            a, b = (constant(f"{name}.{k}", layer.weights[k].reshape(shape)) for k in ("a", "b"))
            first, second = ("Sub", "Div") if kind == "normalize" else ("Mul", "Add")
            nodes.append(helper.make_node(first, [source, a], [f"{name}.half"]))
            nodes.append(helper.make_node(second, [f"{name}.half", b], [name]))
        elif kind == "concat":
            nodes.append(helper.make_node("Concat", layer.inputs, [name], axis=1))
        elif kind == "scaled_add":
            nodes.append(helper.make_node("Mul", [layer.inputs[1], constant(f"{name}.s", np.array(c["scale"]))],
                                          [f"{name}.scaled"]))
            nodes.append(helper.make_node("Add", [layer.inputs[0], f"{name}.scaled"], [name]))
        elif kind == "gmp":
            nodes.append(helper.make_node("GlobalMaxPool", [source], [f"{name}.map"]))
            nodes.append(helper.make_node("Flatten", [f"{name}.map"], [name], axis=1))
        elif kind == "zeropad":
            pt, pb, pl, pr = c["pads"]
            pads = numpy_helper.from_array(np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64), f"{name}.pads")
            initializers.append(pads)
            nodes.append(helper.make_node("Pad", [source, f"{name}.pads"], [name]))
        elif kind == "crop":
            top, _, left, _ = c["crops"]
            h, w, _ = layer.shape
            for key, values in (("starts", [top, left]), ("ends", [top + h, left + w]), ("axes", [2, 3])):
                initializers.append(numpy_helper.from_array(np.array(values, np.int64), f"{name}.{key}"))
            nodes.append(helper.make_node("Slice", [source, f"{name}.starts", f"{name}.ends", f"{name}.axes"], [name]))
        elif kind == "upsample":
            scales = constant(f"{name}.scales", np.array([1, 1, *c["size"]]))
            nodes.append(helper.make_node("Resize", [source, "", scales], [name], mode="nearest"))
        else:
            raise NotImplementedError(f"the ONNX baseline does not convert {kind!r} layers ({name})")
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *network.input_shape])
    output = helper.make_tensor_value_info(network.layers[-1].name, TensorProto.FLOAT, ["N", network.layers[-1].shape[0]])
    graph = helper.make_graph(nodes, "fastdecomp_baseline", [images], [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def _grouped_conv(helper, constant, layer, source, name, kernel, bias, groups):
    c = layer.config
    pt, pb, pl, pr = c["pads"]
    return helper.make_node(
        "Conv", [source, constant(f"{name}.w", kernel.transpose(3, 2, 0, 1)), constant(f"{name}.b", bias)], [name],
        kernel_shape=list(kernel.shape[:2]), strides=list(c["strides"]), pads=[pt, pl, pb, pr],
        dilations=list(c["dilation"]), group=groups)


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
