"""TCER: self-supervised ER-Net imputation on GenoMap images (Wei et al. 2024, bbae031).

- ``_module``: ER-Net, the masks and the loss (torch only, no AnnData);
- ``_data``: the cell split and the masked batches for :func:`sctorch.models.fit`;
- ``_model``: :class:`TCERModel` (``fit``, ``impute``, ``save`` / ``load``) and
  :class:`TCERParams`.

The public function is :func:`sctorch.tl.tcer_impute`; the model is also
``sctorch.models.TCERModel`` and ``sctorch.tl.TCERModel``.
"""

from ._model import PRESETS, TCERModel, TCERParams

__all__ = ["PRESETS", "TCERModel", "TCERParams"]
