"""A slow, literal implementation of docs/method.md sections 1-4: the oracle.

One input at a time, one module at a time, one node at a time, straight from
the definitions. It shares only the imported graph and the forward pass with
fastdecomp (so that both see the same float values; test_network pins the
forward pass to Keras); mask points, readers, statistics, sampling,
channeling and backtracking are written here again, independently and plainly.
"""

import itertools

import numpy as np


_VALUES = {}


def mask_point_values(network, image, mask_at):
    """Values at every mask point for one image, and the model's probabilities (memoised)."""
    key = (id(network), mask_at, image.tobytes())
    if key not in _VALUES:
        _VALUES[key] = _forward_one(network, image, mask_at)
    return _VALUES[key]


def _forward_one(network, image, mask_at):
    values = {}
    probs = network.forward(image[None], observe=lambda layer, v: values.__setitem__(layer.name, v[0]),
                            mask_at=mask_at)
    return values, probs[0]


def _activating(values_of, inputs, point, level):
    """How many of ``inputs`` activate each node of ``point`` (level "node"), or each channel anywhere."""
    counts = np.zeros(point.shape if level == "node" else point.shape[-1:], dtype=np.int64)
    for i in inputs:
        values = values_of[i][point.name]
        if level == "node":
            counts += values > 0
        else:
            for c in range(point.shape[-1]):
                counts[c] += bool((values[..., c] > 0).any())
    return counts


def tangling_sample(k, concerned_size, labels, num_classes, ti_ratio, seed):
    """U_k as fastdecomp.sampling's docstring defines it, dealt one input at a time."""
    if ti_ratio == 0:
        return []
    pools = {}
    for c in range(num_classes):
        members = [i for i in range(len(labels)) if labels[i] == c]
        if c != k and members:
            pools[c] = [members[j] for j in np.random.default_rng([seed, 7, c]).permutation(len(members))]
    order = [int(c) for c in np.random.default_rng([seed, 11, k]).permutation(sorted(pools))]
    target = max(int(round(ti_ratio * concerned_size)), 1)
    taken = {c: 0 for c in pools}
    sample = []
    while True:
        dealt = False
        for c in order:  # one round: one input from each class that has one left
            if taken[c] < len(pools[c]) and (len(sample) < target or taken[c] == 0):
                sample.append(pools[c][taken[c]])
                taken[c] += 1
                dealt = True
        if not dealt or len(sample) >= target:
            break
    return sorted(sample)


MASK_POINT_KINDS = {"relu": ("relu",), "conv": ("conv2d", "grouped_conv2d", "separable_conv2d", "dense")}


def mask_points(network, mask_at):
    """docs/method.md 0.2: every ReLU output, or every convolution's and hidden Dense layer's output."""
    return [layer for layer in network.layers
            if layer.kind in MASK_POINT_KINDS[mask_at] and layer.name != network.output_dense]


def readers(network, name):
    """The layers reading ``name``'s output, once per input they read it through."""
    return [layer.name for layer in network.layers for source in layer.inputs if source == name]


def reads(network, layer, out_node):
    """The paper's forward map: (input index, input node) pairs one output node reads."""
    in_shapes = [network.by_name[s].shape for s in layer.inputs]
    kind = layer.kind
    if kind in ("relu", "softmax", "rescale", "normalize", "affine"):
        return [(0, out_node)]
    if kind in ("add", "scaled_add"):
        return [(i, out_node) for i in range(len(layer.inputs))]
    if kind == "flatten":
        return [(0, tuple(int(v) for v in np.unravel_index(out_node[0], in_shapes[0])))]
    if kind == "dense":
        return [(0, (f,)) for f in range(in_shapes[0][0])]
    if kind in ("gap", "gmp"):
        h, w, _ = in_shapes[0]
        return [(0, (a, b, out_node[0])) for a in range(h) for b in range(w)]
    if kind == "zeropad":
        pt, _, pl, _ = layer.config["pads"]
        h, w, _ = in_shapes[0]
        i, j, c = out_node
        return [(0, (i - pt, j - pl, c))] if 0 <= i - pt < h and 0 <= j - pl < w else []
    if kind == "crop":
        top, _, left, _ = layer.config["crops"]
        i, j, c = out_node
        return [(0, (i + top, j + left, c))]
    if kind == "upsample":
        sh, sw = layer.config["size"]
        i, j, c = out_node
        return [(0, (i // sh, j // sw, c))]
    if kind == "concat":
        i, j, o = out_node
        for index, shape in enumerate(in_shapes):
            if o < shape[-1]:
                return [(index, (i, j, o))]
            o -= shape[-1]
    if kind in ("conv2d", "maxpool", "avgpool", "grouped_conv2d", "separable_conv2d"):
        return [(0, node) for node in _window_reads(layer, in_shapes[0], out_node)]
    raise AssertionError(f"no forward map for {kind}")


def _window_reads(layer, in_shape, out_node):
    """The input nodes in the (dilated) window of one output node, of the channels it reads."""
    h, w, cin = in_shape
    kind, c = layer.kind, layer.config
    window = {"conv2d": lambda: layer.weights["kernel"].shape[:2],
              "grouped_conv2d": lambda: layer.weights["kernel"].shape[:2],
              "separable_conv2d": lambda: layer.weights["depthwise"].shape[:2]}.get(kind, lambda: c["pool"])()
    dh, dw = c.get("dilation", (1, 1))
    i, j, o = out_node
    if kind in ("maxpool", "avgpool"):
        channels = [o]
    elif kind == "grouped_conv2d":
        per_group = cin // c["groups"]
        group = o // (layer.shape[-1] // c["groups"])
        channels = range(group * per_group, (group + 1) * per_group)
    else:
        channels = range(cin)
    out = []
    for dy in range(window[0]):
        for dx in range(window[1]):
            y, x = i * c["strides"][0] + dy * dh - c["pads"][0], j * c["strides"][1] + dx * dw - c["pads"][2]
            if 0 <= y < h and 0 <= x < w:
                out += [(y, x, ch) for ch in channels]
    return out


def backtrack_dead(network, removed_features, through_conv):
    """Dead nodes per layer (sets of node tuples), walking back node by node."""
    dense = network.by_name[network.output_dense]
    source = dense.inputs[0]
    dead_for_reader = {source: {network.output_dense: {(f,) for f in np.flatnonzero(removed_features)}}}
    dead = {}
    for layer in reversed(network.layers):
        if layer.name in (network.output_dense, network.layers[-1].name):
            continue
        layer_readers = readers(network, layer.name)
        per_reader = dead_for_reader.get(layer.name, {})
        nodes = set(itertools.product(*[range(d) for d in layer.shape]))
        if any(r not in per_reader for r in layer_readers) or not layer_readers:
            dead[layer.name] = set()
        else:
            dead[layer.name] = set.intersection(*[per_reader[r] for r in set(layer_readers)])
        if not dead[layer.name] or layer.kind == "input":
            continue
        if layer.kind in ("conv2d", "grouped_conv2d", "separable_conv2d") and not through_conv:
            for src in layer.inputs:
                dead_for_reader.setdefault(src, {})[layer.name] = set()
            continue
        # forward pass of the map: every input node -> the output nodes reading it
        readers_of = {}
        for out_node in nodes:
            for index, in_node in reads(network, layer, out_node):
                readers_of.setdefault((index, in_node), []).append(out_node)
        for index, src in enumerate(layer.inputs):
            src_nodes = itertools.product(*[range(d) for d in network.by_name[src].shape])
            dead_in = {n for n in src_nodes
                       if all(o in dead[layer.name] for o in readers_of.get((index, n), []))}
            dead_for_reader.setdefault(src, {})[layer.name] = dead_in
    return dead


def reference_decompose(network, x, y, k, *, mask_at="conv", backtrack="bln", delta=0.5,
                        bln_rule="algorithm", ti_ratio=1.0, concerned="correct", seed=0,
                        tangling=True, activity_threshold=0.0, tangling_threshold=0.0, channel_threshold=None,
                        count_level="node"):
    """Masks (by layer name), channeled head and samples of module ``k``, literally."""
    num_classes = network.num_classes
    predictions = [int(np.argmax(mask_point_values(network, x[i], mask_at)[1])) for i in range(len(x))]
    concerned_set = [i for i in range(len(x))
                     if y[i] == k and (concerned == "all" or predictions[i] == k)]
    points = mask_points(network, mask_at)
    unconcerned = tangling_sample(k, len(concerned_set), y, num_classes, ti_ratio, seed) if tangling else []
    values = {i: mask_point_values(network, x[i], mask_at)[0] for i in set(concerned_set) | set(unconcerned)}
    keep = {}
    for point in points:  # 1. concern identification, 2. tangling identification
        by_concern = _activating(values, concerned_set, point, "node")
        by_sample = _activating(values, unconcerned, point, "node")
        level = "node" if len(point.shape) < 2 else count_level
        concern_counts = _activating(values, concerned_set, point, level)
        sample_counts = _activating(values, unconcerned, point, level)
        keep[point.name] = np.zeros(point.shape, dtype=bool)
        for node in itertools.product(*[range(d) for d in point.shape]):
            unit = node if level == "node" else node[-1]
            by_ci = concern_counts[unit] >= 1 and concern_counts[unit] >= activity_threshold * len(concerned_set)
            by_ti = sample_counts[unit] >= 1 and sample_counts[unit] >= tangling_threshold * len(unconcerned)
            if level == "node":
                keep[point.name][node] = by_ci or by_ti
            else:
                keep[point.name][node] = ((by_concern[node] > 0 and by_ci)
                                          or ((by_concern[node] > 0 or by_sample[node] > 0) and by_ti))
        if channel_threshold is not None and len(point.shape) == 3:
            for c in range(point.shape[2]):
                kept = keep[point.name][:, :, c].sum()
                keep[point.name][:, :, c] = kept >= channel_threshold * point.shape[0] * point.shape[1]
    dense = network.by_name[network.output_dense]  # 3. channeling
    w, b = dense.weights["kernel"], dense.weights["bias"]
    others = [c for c in range(num_classes) if c != k]
    w_c, w_uc = w[:, k], w[:, others].mean(axis=1)
    head = (np.stack([w_c, w_uc], axis=1).astype(np.float32),
            np.array([b[k], b[others].mean()], dtype=np.float32))
    if backtrack is not None:  # 4. backtracking
        removed = np.array([(w_uc[j] <= -delta and w_c[j] >= delta) if bln_rule == "algorithm"
                            else (w_uc[j] >= delta and w_c[j] <= -delta) for j in range(len(w_c))])
        head[0][removed] = 0.0
        dead = backtrack_dead(network, removed, through_conv=backtrack == "bi")
        for name in keep:
            for node in dead.get(name, ()):
                keep[name][node] = False
    return keep, head, (np.array(concerned_set, dtype=np.int64), np.array(unconcerned, dtype=np.int64))
