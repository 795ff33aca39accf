"""TCER: self-supervised ER-Net imputation on GenoMap images (Wei et al. 2024, bbae031).

- ``_module``: ER-Net, the masks and the losses (torch only, no AnnData);
- ``_data``: the cell split and the masked batches for :func:`sctorch.models.fit`;
- ``_context``: the cross-cell context (nearest neighbours and their mean) and the
  count-scale posterior output;
- ``_mcv``: the molecular cross-validation that chooses the number of neighbours and
  the posterior's prior weight (one per gene by default), and the output rule without
  ER-Net (:func:`neighbour_posterior`);
- ``_config``: :class:`TCERConfig` (its presets are named instances) and the objectives;
- ``_model``: :class:`TCERModel` (``fit``, ``impute``, ``save`` / ``load``);
- ``_peers``: the simple imputers TCER is compared with (kNN smoothing, ridge).

The public function is :func:`sctorch.tl.tcer_impute`; the model is also
``sctorch.models.TCERModel`` and ``sctorch.tl.TCERModel``. The ``_context`` and
``_mcv`` functions exported here let a benchmark build TCER's output rule on another
prior (the ablation without ER-Net, the ridge peer).
"""

from ._config import TCERConfig
from ._context import Rates, neighbour_index, neighbour_mean, posterior, to_rates
from ._mcv import (
    BETA_GRID,
    K_GRID,
    choose_beta,
    choose_beta_on,
    choose_gene_beta,
    choose_neighbours,
    choose_prior_on,
    gene_mcv_losses,
    mcv_scores,
    neighbour_posterior,
    split_molecules,
)
from ._model import TCERModel
from ._peers import knn_smoothing, magic_openproblems, ridge_blind_spot

__all__ = [
    "BETA_GRID",
    "K_GRID",
    "Rates",
    "TCERConfig",
    "TCERModel",
    "choose_beta",
    "choose_beta_on",
    "choose_gene_beta",
    "choose_neighbours",
    "choose_prior_on",
    "gene_mcv_losses",
    "knn_smoothing",
    "magic_openproblems",
    "mcv_scores",
    "neighbour_index",
    "neighbour_mean",
    "neighbour_posterior",
    "posterior",
    "ridge_blind_spot",
    "split_molecules",
    "to_rates",
]
