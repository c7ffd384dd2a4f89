"""The forward pass: a network's layers over one batch, with fused epilogues, on any device.

:func:`plan_fusions` decides once per network and set of observed and masked
layers what each convolution's epilogue computes in place of the layers after
it (a residual ``Add``, a ReLU, the packed activity bits); the result is a
frozen :class:`FusionPlan`. :func:`walk` then runs one batch through the
layers for one or several masked variants of the network (modules), sharing
every layer computed before their masks part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .layers import DEFAULT_MASK_AT

__all__ = ["FusionPlan", "plan_fusions", "walk"]


@dataclass(frozen=True)
class FusionPlan:
    """What the convolution epilogues compute in place of the layers after them.

    Parameters
    ----------
    residuals : Mapping
        Convolution -> ``(add, shortcut)``: it is the only input of a
        two-input residual ``Add`` that it alone feeds, and ``shortcut`` is
        computed before it, so the convolution adds ``shortcut`` itself and
        the ``Add`` passes its result on.
    rectified : Mapping
        Convolution (or fused ``Add``) -> the cap of its only reader, a
        rectifier, which then runs in the epilogue too (None: no cap).
    activity : Mapping
        Convolution -> the observed, unmasked layer (itself, or the ``Add``
        or ReLU fused into it) whose packed ``> 0`` bits its epilogue writes.
    """

    residuals: MappingProxyType
    rectified: MappingProxyType
    activity: MappingProxyType


def plan_fusions(network, observed, masked, activity_bits):
    """The :class:`FusionPlan` of ``network`` when ``observed`` and ``masked`` layers must be kept.

    Parameters
    ----------
    network : Network
    observed, masked : frozenset of str
        Layers whose values an observer sees, or a mask multiplies: no value
        among them is skipped by a fusion.
    activity_bits : bool
        Plan the packed activity bits of observed values too.

    Returns
    -------
    FusionPlan
    """
    untouched = observed | masked
    residuals, rectified = {}, {}
    for layer in network.layers:
        if not layer.handler.epilogue:
            continue
        after = layer
        add = _sole_reader(network, layer, "residual", untouched)
        if add is not None and len(add.inputs) == 2 and add.inputs[0] != add.inputs[1]:
            shortcut = next(src for src in add.inputs if src != layer.name)
            if network.position[shortcut] < network.position[layer.name]:
                residuals[layer.name] = (add.name, shortcut)
                after = add
        rectifier = _sole_reader(network, after, "rectify", untouched)
        if rectifier is not None:
            rectified[after.name] = rectifier.handler.cap(rectifier)
    activity = _activity_sources(network, observed, masked, residuals, rectified) if activity_bits else {}
    return FusionPlan(MappingProxyType(residuals), MappingProxyType(rectified), MappingProxyType(activity))


def _sole_reader(network, layer, role, untouched):
    readers = network.readers[layer.name]
    reader = network.by_name[readers[0]] if len(readers) == 1 else None
    if reader is not None and layer.name not in untouched and reader.handler.fusion(reader) == role:
        return reader
    return None


def _activity_sources(network, observed, masked, residuals, rectified):
    sources = {}
    for layer in network.layers:
        if not layer.handler.epilogue or not layer.handler.writes_activity(layer):
            continue
        chain = [layer.name]
        if layer.name in residuals:
            chain.append(residuals[layer.name][0])
        if chain[-1] in rectified:
            chain.append(network.readers[chain[-1]][0])
        seen = [name for name in chain if name in observed]
        if seen and seen[-1] not in masked:
            sources[layer.name] = seen[-1]
    return sources


@dataclass
class _Branch:
    """Variants (by index) that still share every value, from layer ``start`` on.

    ``values`` holds the arrays still to be read, ``remaining`` how many
    readers each has left, ``shared`` the names computed before the variants
    of this branch parted from others (their arrays are not this branch's own),
    ``roots`` the value whose memory a view (a flatten, a crop) is, for each
    view: writing the view writes it.
    """

    variants: list
    start: int
    values: dict
    remaining: dict
    shared: frozenset
    roots: dict = field(default_factory=dict)


class _Walk:
    """One batch through the layers; see :func:`walk`."""

    def __init__(self, network, x, variants, backend, *, observe, mask_at, logits, keys, packed_activity,
                 observed_reusable):
        self.network, self.x, self.variants, self.backend = network, x, variants, backend
        self.observe, self.logits, self.keys = observe, logits, keys
        self.observed = frozenset(l.name for l in network.mask_points(mask_at)) if observe else frozenset()
        masked = frozenset(name for masks, _ in variants for name in (masks or {}))
        self.packed_activity = packed_activity
        self.plan = network.fusion_plan(self.observed, masked, packed_activity and backend.writes_activity_bits)
        self.kept = frozenset() if observed_reusable else self.observed
        self.bits = {}

    def run(self):
        network = self.network
        final = network.output_dense if self.logits else network.layers[-1].name
        results = [None] * len(self.variants)
        pending = [_Branch(list(range(len(self.variants))), 1, {network.layers[0].name: self.x},
                           {name: len(r) for name, r in network.readers.items()}, frozenset(), {})]
        while pending:
            branch = pending.pop()
            parts = self._advance(branch)
            if parts:
                pending += parts
            else:
                for b in branch.variants:
                    results[b] = branch.values[final]
        return results

    def _advance(self, branch):
        """Run ``branch`` to the end, or to where its variants part: then return the parts."""
        layers = self.network.layers
        for index in range(branch.start, len(layers)):
            layer = layers[index]
            if self.logits and layer is layers[-1]:
                return []
            parts = self._parting(branch, layer)
            if len(parts) > 1:
                return [_Branch(part, index, dict(branch.values), dict(branch.remaining),
                                frozenset(branch.values), dict(branch.roots)) for part in parts]
            self._step(branch, layer)
        return []

    def _parting(self, branch, layer):
        """The groups of ``branch``'s variants whose masks (or head) agree at ``layer``."""
        if len(branch.variants) == 1 or self.keys is None or layer.name not in self.keys:
            return [branch.variants]
        parts = {}
        for b in branch.variants:
            parts.setdefault(self.keys[layer.name][b], []).append(b)
        return list(parts.values())

    def _step(self, branch, layer):
        masks, head = self.variants[branch.variants[0]]
        out, alias = self._output(branch, layer, head)
        viewed = alias if alias is not None else self._viewed(branch, layer, out)
        if viewed is not None:
            branch.roots[layer.name] = branch.roots.get(viewed, viewed)
        if masks is not None and layer.name in masks:
            fresh = self._writable(viewed, branch) if viewed is not None else not self._borrows(out)
            out = self.backend.xp.multiply(out, self.backend.weights(masks[layer.name]), out=out if fresh else None)
        if layer.name in self.observed:
            if self.packed_activity:
                self.observe(layer, out, self.bits.pop(layer.name, None))
            else:
                self.observe(layer, out)
        branch.values[layer.name] = out
        for src in layer.inputs:
            branch.remaining[src] -= 1
            if branch.remaining[src] == 0:
                del branch.values[src]

    def _output(self, branch, layer, head):
        """``(output, alias)``: alias names the layer whose array the output is, when it computes nothing."""
        plan, values = self.plan, branch.values
        inputs = [values[src] for src in layer.inputs]
        if head is not None and layer.name == self.network.output_dense:
            channeled = layer.handler.with_head(layer, head)
            return layer.handler.forward(channeled, inputs, backend=self.backend), None
        fused = next((src for src in layer.inputs if src in plan.residuals), None)
        if layer.handler.fusion(layer) == "residual" and fused is not None:
            return values[fused], fused
        if layer.handler.fusion(layer) == "rectify" and layer.inputs[0] in plan.rectified:
            return inputs[0], layer.inputs[0]
        if layer.handler.epilogue:
            return layer.handler.forward(layer, inputs, backend=self.backend, **self._epilogue(branch, layer)), None
        reusable = [self._overwritable(src, branch) and layer.inputs.count(src) == 1 for src in layer.inputs]
        return layer.handler.forward(layer, inputs, reusable, backend=self.backend), None

    def _epilogue(self, branch, layer):
        plan, options = self.plan, {}
        if layer.name in plan.activity:
            options["activity"] = self.bits[plan.activity[layer.name]] = self.backend.xp.empty(
                (len(self.x), int(np.prod(layer.shape)) // 8), np.uint8)
        last = layer.name
        if layer.name in plan.residuals:
            last, shortcut = plan.residuals[layer.name]
            options.update(residual=branch.values[shortcut], in_place=self._overwritable(shortcut, branch))
        options.update(rectify=last in plan.rectified, cap=plan.rectified.get(last))
        return options

    def _owned(self, src, shared):
        """The array of ``src`` belongs to this walk alone: computed after the variants parted,
        kept by no observer, not the caller's input."""
        return src not in shared and src not in self.kept and src != self.network.layers[0].name

    def _overwritable(self, src, branch):
        """A value only one reader is left to read, and owned, may be overwritten."""
        return self._writable(src, branch)

    def _writable(self, src, branch):
        """Whether the array of ``src``, read by its last reader now, may be written: owned, and where it is a
        view, the value it views owned too and read by no one else any more."""
        root = branch.roots.get(src, src)
        return (branch.remaining[src] == 1 and self._owned(src, branch.shared) and self._owned(root, branch.shared)
                and (root == src or root not in branch.values) and not self._borrows(branch.values[src]))

    def _viewed(self, branch, layer, out):
        """The input of ``layer`` whose memory ``out`` is (a flatten, a crop of it), or None."""
        return next((src for src in layer.inputs if self._shares(out, branch.values[src])), None)

    def _borrows(self, array):
        """``array`` may be the caller's memory: a view of the input batch (a flatten or reshape of it)."""
        return self._shares(array, self.x)

    def _shares(self, a, b):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.may_share_memory(a, b)
        return type(a) is type(b) and bool(self.backend.xp.may_share_memory(a, b))  # device arrays (CuPy)


def walk(network, x, variants, backend, *, observe=None, mask_at=DEFAULT_MASK_AT, logits=False, keys=None,
         packed_activity=False, observed_reusable=False):
    """Run one batch ``x`` (an array of ``backend``) through ``network`` for every variant.

    Parameters
    ----------
    network : Network
    x : array
        The batch, already checked and on ``backend``.
    variants : list of (dict or None, tuple or None)
        ``(masks, head)`` of each variant; see :meth:`Network.forward`.
    backend : device
    observe, mask_at, logits, packed_activity, observed_reusable :
        See :meth:`Network.forward`.
    keys : dict, optional
        Layer name -> a hashable per variant identifying its mask there (or
        its head at the output layer); variants part where their keys differ.

    Returns
    -------
    list of arrays
        Each variant's output, on ``backend``.
    """
    return _Walk(network, x, variants, backend, observe=observe, mask_at=mask_at, logits=logits, keys=keys,
                 packed_activity=packed_activity, observed_reusable=observed_reusable).run()
