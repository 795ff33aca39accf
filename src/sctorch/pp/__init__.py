"""Preprocessing: the evaluation protocol, reference selection and ESM-2 gene embeddings."""

from ._esm import esm_gene_embeddings
from ._simulation import select_reference, simulate_efficiency_loss

__all__ = ["esm_gene_embeddings", "select_reference", "simulate_efficiency_loss"]
