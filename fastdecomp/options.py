"""The options that define a decomposition, validated once.

One frozen :class:`DecompositionOptions` serves :func:`fastdecomp.decompose`,
:meth:`fastdecomp.ModuleSet.variant`, the command line's defaults and the
saved manifest, so a default or a check lives in one place.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .backtrack import BACKTRACKS, BLN_RULES
from .errors import InputError
from .layers import DEFAULT_MASK_AT, MASK_PLACEMENTS

__all__ = ["DecompositionOptions", "CONCERNED", "THRESHOLDS"]

CONCERNED = ("correct", "all")
THRESHOLDS = ("activity_threshold", "tangling_threshold", "channel_threshold")


@dataclass(frozen=True, kw_only=True)
class DecompositionOptions:
    """What a decomposition computes (not how fast, or where).

    Parameters
    ----------
    mask_at : {"relu", "conv"}
        Where nodes are observed and removed: every ReLU output (the
        default; exact on the concerned inputs), or every Conv2D and hidden
        Dense output before its activation (the paper's). On the zoo models
        ``relu`` loses 0.07 top-1 points (ResNet-20) where ``conv`` loses
        0.3, and ``conv`` collapses on ResNet-56 (bench/results/decompose.md).
    backtrack : {None, "bln", "bi"}
        CI+TI+MC, CI+TI+MC-BLN, or CI+TI+MC-BLN+MC-BI.
    delta : float
        MC-BLN threshold (the paper's 0.5), finite and >= 0.
    bln_rule : {"algorithm", "prose"}
        Which reading of the paper's MC-BLN rule to use (docs/method.md section 4).
    ti_ratio : float
        Size of each unconcerned sample relative to the concerned set; 0 turns
        tangling identification off (CI + MC only).
    concerned : {"correct", "all"}
        Concerned inputs: the class's images the model classifies correctly, or all.
    seed : int
        Seed of the tangling samples.
    activity_threshold : float
        Concern identification keeps a node active for at least this fraction
        of the concerned inputs (and for one at least). 0, the default, is the
        paper's "any"; larger values make smaller modules
        (:mod:`fastdecomp.thresholds`; bench/results/size_accuracy.md).
    tangling_threshold : float
        The same for tangling identification, over each module's unconcerned sample.
    channel_threshold : float or None
        None (the default): node masks. A fraction in (0, 1]: at every mask
        point with channels, a channel is kept whole when at least this
        fraction of its positions is kept, and removed whole otherwise, so
        that pruning can drop it.

    Raises
    ------
    InputError
        For a value outside its domain, naming the option.
    """

    mask_at: str = DEFAULT_MASK_AT
    backtrack: str | None = "bln"
    delta: float = 0.5
    bln_rule: str = "algorithm"
    ti_ratio: float = 1.0
    concerned: str = "correct"
    seed: int = 0
    activity_threshold: float = 0.0
    tangling_threshold: float = 0.0
    channel_threshold: float | None = None

    def __post_init__(self):
        _one_of("mask_at", self.mask_at, MASK_PLACEMENTS)
        _one_of("backtrack", self.backtrack, BACKTRACKS)
        _one_of("bln_rule", self.bln_rule, BLN_RULES)
        _one_of("concerned", self.concerned, CONCERNED)
        if not _finite(self.delta) or self.delta < 0:
            raise InputError(f"delta must be a finite number >= 0, got {self.delta!r}")
        if not _finite(self.ti_ratio) or self.ti_ratio < 0:
            raise InputError(f"ti_ratio must be a number >= 0 (0 turns TI off), got {self.ti_ratio!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("activity_threshold", "tangling_threshold"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value < 1:
                raise InputError(f"{name} must be a fraction in [0, 1) (0: the paper's 'any input'), got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.channel_threshold is not None:
            if not _finite(self.channel_threshold) or not 0 < self.channel_threshold <= 1:
                raise InputError("channel_threshold must be None (node masks) or a fraction in (0, 1], got "
                                 f"{self.channel_threshold!r}")
            object.__setattr__(self, "channel_threshold", float(self.channel_threshold))
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "ti_ratio", float(self.ti_ratio))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def thresholded(self):
        """Whether any threshold differs from the paper's (the masks then need activity counts)."""
        return any(getattr(self, name) != getattr(_PAPER, name) for name in THRESHOLDS)

    def replace(self, **changes):
        """A copy with ``changes`` applied, validated again.

        Parameters
        ----------
        **changes
            Option name -> new value.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown options {unknown}; the options are {self.names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """The options as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Options from :meth:`to_dict`'s output (a saved manifest), validated.

        Parameters
        ----------
        values : dict

        Raises
        ------
        InputError
            For a missing, unknown or invalid option.
        """
        if isinstance(values, dict):
            values = {**{name: getattr(_PAPER, name) for name in THRESHOLDS}, **values}  # saved before them
        if not isinstance(values, dict) or set(values) != set(cls.names()):
            got = sorted(map(repr, values)) if isinstance(values, dict) else type(values).__name__
            raise InputError(f"options must have exactly the keys {cls.names()}, got {got}")
        return cls(**values)

    @classmethod
    def names(cls):
        """The option names, in order."""
        return [f.name for f in dataclasses.fields(cls)]


def _one_of(name, value, allowed):
    if not (value is None or isinstance(value, str)) or value not in allowed:
        raise InputError(f"{name} must be one of {allowed}, got {value!r}")


def _finite(value):
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


_PAPER = DecompositionOptions()
