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

__all__ = ["DecompositionOptions", "CONCERNED"]

CONCERNED = ("correct", "all")


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
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "ti_ratio", float(self.ti_ratio))
        object.__setattr__(self, "seed", int(self.seed))

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
