"""Tools: the methods (GenoMap, TCER, stImpute, scRobust)."""

from ._genomap import genomap, genomap_images, genomap_quality, genomap_to_genes
from ._scrobust import (
    ScRobustModel,
    scrobust_annotate,
    scrobust_embed,
    scrobust_marker_genes,
    scrobust_pathway_scores,
    scrobust_pretrain,
)
from ._stimpute import stimpute, stimpute_cv, stimpute_gene_graph
from ._tcer import TCERModel, tcer_impute

__all__ = [
    "ScRobustModel",
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
