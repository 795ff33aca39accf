"""Tools: the methods (GenoMap, TCER, stImpute, scRobust)."""

from ..genomap import GenoMapConfig
from ._genomap import genomap, genomap_images, genomap_quality, genomap_to_genes
from ._scrobust import (
    ScRobustConfig,
    ScRobustModel,
    scrobust_annotate,
    scrobust_embed,
    scrobust_marker_genes,
    scrobust_pathway_scores,
    scrobust_pretrain,
)
from ._stimpute import StImputeConfig, stimpute, stimpute_cv, stimpute_gene_graph
from ._tcer import TCERConfig, TCERModel, tcer_impute

__all__ = [
    "GenoMapConfig",
    "ScRobustConfig",
    "ScRobustModel",
    "StImputeConfig",
    "TCERConfig",
    "TCERModel",
    "genomap",
    "genomap_images",
    "genomap_quality",
    "genomap_to_genes",
    "scrobust_annotate",
    "scrobust_embed",
    "scrobust_marker_genes",
    "scrobust_pathway_scores",
    "scrobust_pretrain",
    "stimpute",
    "stimpute_cv",
    "stimpute_gene_graph",
    "tcer_impute",
]
