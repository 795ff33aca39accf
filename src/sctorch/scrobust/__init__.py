"""scRobust (Park & Lee, Brief Bioinform 2024, 25(6):bbae586): one home for the method.

``_config`` (:class:`ScRobustConfig`, the method's settings and presets, and
:class:`ScRobustNetworkConfig`, the network's hyper-parameters kept in model files),
``_module`` (torch network and its losses), ``_data`` (vocabulary, tokens, batches),
``_model`` (:class:`ScRobustModel`: pre-training, fine-tuning, embedding, classification,
save/load), ``_pathways`` and ``_markers``. The public functions are
``sctorch.tl.scrobust_*``.
"""

from ._config import ScRobustConfig, ScRobustNetworkConfig
from ._model import ScRobustModel

__all__ = ["ScRobustConfig", "ScRobustModel", "ScRobustNetworkConfig"]
