"""fastdecomp: decompose a trained CNN into one reusable module per output class.

The method is Pan & Rajan, "Decomposing Convolutional Neural Networks into
Reusable and Replaceable Modules" (ICSE 2022). A Keras model is imported as a
plain layer graph (:func:`from_keras`), activation statistics stream through
Numba kernels in one pass for all classes (:func:`decompose`), and the modules
come out as a :class:`ModuleSet` that composes, evaluates, exports to Keras and
saves. Importing fastdecomp never needs TensorFlow, CuPy or a GPU.
"""

from . import data, zoo
from .compose import Composition, compose, load_composition
from .decompose import decompose
from .errors import (BackendError, ConfigError, DatasetNotFoundError, FastDecompError, InputError,
                     ModelFileError, TargetError, UnsupportedLayerError)
from .modules import ModuleSet, load_modules
from .network import Network, from_keras

__version__ = "0.1.0"

__all__ = [
    "decompose", "compose", "Composition", "load_composition", "from_keras", "Network", "ModuleSet", "load_modules", "data", "zoo",
    "FastDecompError", "UnsupportedLayerError", "InputError", "ModelFileError",
    "DatasetNotFoundError", "BackendError", "ConfigError", "TargetError", "__version__",
]
