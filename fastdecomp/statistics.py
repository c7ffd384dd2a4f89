"""Per-class activity statistics gathered in one streamed pass (CI and TI)."""

import threading

import numpy as np

from . import backends
from .kernels import checks, cpu

__all__ = ["ActivityStatistics"]


class ActivityStatistics:
    """Bit-packed per-class activity at every mask point, OR-reduced batch by batch.

    For each mask point it keeps

    - ``active[c]``: OR over the concerned inputs of class c of ``value > 0``
      (concern identification), bit-packed;
    - ``first_rank[c, node]``: the smallest rank (see :mod:`fastdecomp.sampling`)
      of an input of class c, among the first ``rank_limit[c]``, for which the
      node was active (tangling identification); ``rank_limit.max()`` where none.

    The result does not depend on the batch size or on the order in which
    batches arrive. Updates of different mask points may run concurrently
    (each mask point has its own lock), so threads fold a layer's values in
    while they are still in cache.

    Parameters
    ----------
    shapes : dict
        Mask-point name -> output shape without the batch axis.
    num_classes : int
    rank_limit : array_like of int
        ``[C]``: ranks at or beyond it are never in any module's sample.
    backend : device
        Keep the statistics on this device (:func:`fastdecomp.backends.get`),
        bit-packed, for the whole pass (updates take the device's arrays and
        run its kernels); :meth:`to_host` brings them back.
    """

    def __init__(self, shapes, num_classes, rank_limit, backend):
        self.shapes = dict(shapes)
        self.num_classes = num_classes
        self.rank_limit = np.asarray(rank_limit, dtype=np.int64)
        never = int(self.rank_limit.max(initial=0))
        rank_dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if never < np.iinfo(t).max)
        self.never = never
        self.backend = backend
        xp = backend.xp
        self.active, self.first_rank = {}, {}
        with backend.compute():  # on the stream of the kernels that update them
            for name, shape in self.shapes.items():
                nodes = int(np.prod(shape))
                self.active[name] = xp.zeros((num_classes, (nodes + 7) // 8), dtype=np.uint8)
                self.first_rank[name] = xp.full((num_classes, nodes + (-nodes) % 8), never, dtype=rank_dtype)
        self.concerned_count = np.zeros(num_classes, dtype=np.int64)
        self._locks = {name: threading.Lock() for name in self.shapes}
        self._count_lock = threading.Lock()

    def batch_roles(self, labels, ranks, concerned):
        """(concerned_class, tangle_class, tangle_rank) arrays for a batch.

        Parameters
        ----------
        labels : array_like of int
            ``[B]``.
        ranks : numpy.ndarray
            ``[B]``: each image's rank in its class's order (:func:`fastdecomp.sampling.class_ranks`).
        concerned : numpy.ndarray or None
            bool ``[B]``, or None when it is not known yet (every
            ``concerned_class`` is then -1; see :meth:`update_concerned`).
        """
        labels = np.asarray(labels, dtype=np.int64)
        concerned_class = np.full(len(labels), -1) if concerned is None else np.where(concerned, labels, -1)
        in_sample = ranks < self.rank_limit[labels]
        tangle_class = np.where(in_sample, labels, -1)
        tangle_rank = np.where(in_sample, ranks, -1)
        return concerned_class, tangle_class, tangle_rank

    def upload(self, indices):
        """A device copy of a host array of class indices or ranks (from :meth:`batch_roles`), its value range
        recorded (:func:`fastdecomp.kernels.checks.known_range`) so that the kernels' checks need not read
        it back from the device at every mask point.

        Parameters
        ----------
        indices : numpy.ndarray
            int64 ``[B]``.
        """
        device_copy = self.backend.asarray(indices)
        if len(indices):
            checks.known_range(device_copy, indices.min(), indices.max())
        return device_copy

    def update(self, name, values, concerned_class, tangle_class, tangle_rank, packed=False, bits=None):
        """Fold one batch's values ``[B] + shape`` at mask point ``name`` into the statistics.

        Parameters
        ----------
        name : str
            The mask point.
        values : array
            float32 ``[B] + shape``, on this statistics' device.
        concerned_class, tangle_class, tangle_rank : array
            int64 ``[B]`` each, from :meth:`batch_roles`, on the device.
        packed : bool
            Also return each image's bit-packed activity ``[B, nbytes]``, for
            :meth:`update_concerned` once concern is known.
        bits : array, optional
            That packed activity already computed (by the convolution
            epilogue): it is used instead of ``values``.

        Returns
        -------
        array or None
            The packed activity, with ``packed=True``.
        """
        kernels, xp = self.backend.kernels, self.backend.xp
        if bits is not None:
            with self._locks[name]:
                kernels.accumulate_packed_activity(bits, concerned_class, tangle_class, tangle_rank,
                                                   self.active[name], self.first_rank[name])
            return bits if packed else None
        values = xp.ascontiguousarray(values.reshape(len(values), -1), dtype=np.float32)
        nbytes = (values.shape[1] + 7) // 8
        bits = xp.empty((len(values), nbytes) if packed else (0, 0), dtype=np.uint8)
        with self._locks[name]:
            kernels.accumulate_activity(values, concerned_class, tangle_class, tangle_rank, self.active[name],
                                        self.first_rank[name], bits)
        return bits if packed else None

    def update_concerned(self, name, bits, concerned_class):
        """Fold bit-packed activity into the concerned statistics, for images whose concern was
        decided after :meth:`update`.

        Parameters
        ----------
        name : str
            The mask point.
        bits : array
            uint8 ``[B, nbytes]``: ``numpy.packbits`` of ``values > 0``.
        concerned_class : array
            int64 ``[B]``: the class whose concerned set each image joins, or -1.
        """
        with self._locks[name]:
            self.backend.kernels.accumulate_concerned(bits, concerned_class, self.active[name])

    def to_host(self):
        """These statistics with every array on the host (the arrays themselves when already there).

        The tables move: this object lets go of them, so that :meth:`keep` with
        ``release=True`` on the result frees each table once used.
        """
        host = self._shallow_copy()
        host.backend = backends.get("cpu")
        host.active = {name: self.backend.to_host(a) for name, a in self.active.items()}
        host.first_rank = {name: self.backend.to_host(a) for name, a in self.first_rank.items()}
        host.concerned_count = self.concerned_count.copy()
        self.active, self.first_rank = {}, {}
        return host

    def _shallow_copy(self):
        """A new object sharing this one's attributes (not :func:`copy.copy`, which pickles: to the host)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        return other

    def __getstate__(self):
        """Pickled (to move between processes) on the host, without its locks; the tables go as they are,
        out of band where the pickler takes buffers (Dask's does, so they are not copied)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_locks", "_count_lock", "backend")}
        state["active"] = {name: self.backend.to_host(a) for name, a in self.active.items()}
        state["first_rank"] = {name: self.backend.to_host(a) for name, a in self.first_rank.items()}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend = backends.get("cpu")
        self._locks = {name: threading.Lock() for name in self.shapes}
        self._count_lock = threading.Lock()

    def merged(self, other):
        """These host statistics combined with ``other``'s, gathered over other images: activity ORed,
        first ranks the smaller, counts summed (each is a commutative monoid, so any grouping of
        shards gives the statistics of the whole pass bit for bit).

        Parameters
        ----------
        other : ActivityStatistics
            On the host, of the same mask points, classes and rank limits.

        Returns
        -------
        ActivityStatistics
        """
        if self.shapes != other.shapes or not np.array_equal(self.rank_limit, other.rank_limit):
            raise ValueError("statistics of different mask points or samples cannot be merged")
        out = self._shallow_copy()
        out.active = {name: np.bitwise_or(a, other.active[name]) for name, a in self.active.items()}
        out.first_rank = {name: np.minimum(r, other.first_rank[name]) for name, r in self.first_rank.items()}
        out.concerned_count = self.concerned_count + other.concerned_count
        return out

    def count(self, concerned_class):
        """Count a batch's concerned inputs per class (once per batch)."""
        valid = concerned_class[concerned_class >= 0]
        with self._count_lock:
            self.concerned_count += np.bincount(valid, minlength=self.num_classes)

    def keep(self, modules, counts, release=False):
        """Kept nodes of every module after CI and TI, per mask point.

        Parameters
        ----------
        modules : sequence of int
            The class of each module.
        counts : array_like of int
            ``[M, C]``: how many inputs of each class each module's unconcerned
            sample takes (:func:`fastdecomp.sampling.tangling_counts`).
        release : bool
            Drop each mask point's first-rank table once used (the statistics
            can then not give TI again), so that peak memory holds one table,
            not all of them, beside the masks.

        Returns
        -------
        dict
            Mask-point name -> bool ``[M] + shape``.
        """
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        if (counts > self.rank_limit).any():
            raise ValueError("a tangling sample exceeds the ranks gathered in the pass")
        out = {}
        for name, shape in self.shapes.items():
            nodes = int(np.prod(shape))
            keep = np.unpackbits(self.active[name][list(modules)], axis=1, count=nodes).view(bool)
            cpu.tangling_keep(self.first_rank[name], counts, keep)
            if release:
                del self.first_rank[name]
            out[name] = keep.reshape((len(modules),) + tuple(shape))
        return out

