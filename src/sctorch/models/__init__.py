"""Models: the shared lifecycle (:class:`BaseModel`), the one training loop (:func:`fit`).

The method model classes live in their methods' folders and are re-exported here:
``sctorch.models.TCERModel``, ``StImputeModel`` and ``ScRobustModel`` (imported on first
use, so ``import sctorch`` stays light).
"""

from importlib import import_module

from ._base import BaseModel, ModelFileError, load
from ._fit import LossOutput, fit

_METHOD_MODELS = {
    "TCERModel": "sctorch.tcer._model",
    "StImputeModel": "sctorch.stimpute._model",
    "ScRobustModel": "sctorch.scrobust._model",
}

__all__ = [
    "BaseModel",
    "LossOutput",
    "ModelFileError",
    "ScRobustModel",
    "StImputeModel",
    "TCERModel",
    "fit",
    "load",
]


def __getattr__(name: str):
    if name in _METHOD_MODELS:
        return getattr(import_module(_METHOD_MODELS[name]), name)
    raise AttributeError(f"module 'sctorch.models' has no attribute {name!r}")
