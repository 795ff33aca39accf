"""scRobust (Park & Lee, Brief Bioinform 2024, 25(6):bbae586): one home for the method.

``_module`` (torch network), ``_data`` (vocabulary, tokens, batches), ``_model``
(:class:`ScRobustModel`: pre-training, fine-tuning, embedding, classification, save/load),
``_pathways`` and ``_markers``. The public functions are ``sctorch.tl.scrobust_*``.
"""

from ._model import ScRobustConfig, ScRobustModel

__all__ = ["ScRobustConfig", "ScRobustModel"]
