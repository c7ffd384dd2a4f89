"""fastdecomp: decompose a trained CNN into one reusable module per output class.

The method is Pan & Rajan, "Decomposing Convolutional Neural Networks into
Reusable and Replaceable Modules" (ICSE 2022), as ``docs/method.md`` states it.
A Keras model is imported as a plain layer graph (:func:`from_keras`),
activation statistics stream through fastdecomp's kernels in one pass for all
classes (:func:`decompose`), and the modules come out as a :class:`ModuleSet`
whose modules compose (:func:`compose`), export to Keras and ONNX, and save
(:func:`save`). Importing fastdecomp never needs TensorFlow, ONNX, CuPy or a GPU.
"""

from . import backends, config, data, energy, engine, keras_io, layers, metrics, onnx_io, pruning, report, suite, thresholds, zoo
from .backends import set_backend
from .compose import Composition, compose
from .decompose import DecompositionWarning, decompose
from .errors import (BackendError, ConfigError, DatasetNotFoundError, FastDecompError, InputError,
                     ModelFileError, OutputExistsError, SaveError, TargetError, UnsupportedLayerError)
from .keras_io import from_keras
from .modules import Module, ModuleSet
from .network import Network
from .onnx_io import from_onnx
from .options import DecompositionOptions
from .saving import load, load_composition, load_modules, save
from .shards import PartialStatistics, gather_statistics, merge as merge_statistics, modules_from_statistics

__version__ = "0.1.0"

__all__ = [
    "decompose", "DecompositionWarning", "DecompositionOptions", "compose", "Composition", "Module", "ModuleSet", "from_keras", "from_onnx", "Network",
    "save", "load", "load_modules", "load_composition", "set_backend", "backends", "config", "data", "engine",
    "keras_io", "layers", "metrics", "onnx_io", "pruning", "gather_statistics", "merge_statistics",
    "modules_from_statistics", "PartialStatistics", "energy", "report", "suite", "thresholds",
    "zoo", "FastDecompError", "UnsupportedLayerError", "InputError", "ModelFileError", "DatasetNotFoundError",
    "BackendError", "ConfigError", "TargetError", "OutputExistsError", "SaveError", "__version__",
]
