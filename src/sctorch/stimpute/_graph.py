"""The stImpute gene graph: gene–gene similarity and its symmetric top-k graph (eqs. 4–6).

Zeng et al. 2024, Commun Biol 7:1271, §Methods "Gene network construction": two genes
are compared by the cosine similarity of their protein-language-model embeddings (eq. 4)
when both have one, else by the cosine similarity of their expression over the reference
cells (eq. 5); the merged matrix (eq. 6) is reduced to each gene's top-k neighbours.
No AnnData here: inputs are gene names, embedding tables and expression matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import check_finite, iter_batches
from ._data import fold, name_index


def embedding_table(embeddings) -> tuple[list[str], np.ndarray]:
    """``(gene names, (n, d) float32)`` from a DataFrame (genes × dims) or a mapping.

    Raises
    ------
    TypeError
        If ``embeddings`` is neither a DataFrame nor a mapping.
    ValueError
        If the values are not numbers, differ in dimension, are non-finite, or names repeat.
    """
    if isinstance(embeddings, pd.DataFrame):
        names = [str(g) for g in embeddings.index]
        try:
            M = embeddings.to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError("gene_embeddings must hold numbers (genes × dimensions).") from err
    elif isinstance(embeddings, Mapping):
        names = [str(g) for g in embeddings]
        vecs = [np.asarray(v, dtype=np.float32).ravel() for v in embeddings.values()]
        dims = {v.shape[0] for v in vecs}
        if len(dims) > 1:
            by_dim: dict[int, list[str]] = {}
            for n, v in zip(names, vecs, strict=True):
                by_dim.setdefault(v.shape[0], []).append(n)
            desc = ", ".join(f"{d} dims: {len(g)} gene(s) e.g. {g[:3]}" for d, g in by_dim.items())
            raise ValueError(
                f"gene_embeddings have different dimensions per gene ({desc}); "
                "all embeddings must come from the same model and layer."
            )
        M = np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)
    else:
        raise TypeError(
            "gene_embeddings must be a pandas DataFrame (genes × dimensions) or a "
            f"mapping gene → vector, got {type(embeddings).__name__}."
        )
    if len(set(names)) != len(names):
        raise ValueError("gene_embeddings has duplicate gene names.")
    if M.size and not np.isfinite(M).all():
        raise ValueError(
            f"gene_embeddings contains {int((~np.isfinite(M)).sum())} non-finite value(s)."
        )
    return names, M


def _unit_columns(expression):
    """Columns scaled to unit norm, float32; the same values for sparse and dense input."""
    if sparse.issparse(expression):
        Xc = sparse.csc_matrix(expression, dtype=np.float64, copy=True)
        nrm = np.sqrt(np.asarray(Xc.multiply(Xc).sum(0)).ravel())
        inv = 1.0 / np.where(nrm > 0, nrm, 1.0)
        Xc.data *= np.repeat(inv, np.diff(Xc.indptr))
        return sparse.csc_matrix(Xc, dtype=np.float32)
    X = np.asarray(expression, dtype=np.float64)
    nrm = np.sqrt((X * X).sum(0))
    return (X * (1.0 / np.where(nrm > 0, nrm, 1.0))).astype(np.float32)


class GeneSimilarity:
    """Pairwise gene similarity of eqs. 4–6 over a fixed gene list, evaluated in blocks.

    ``S[i, j]`` = cosine of the protein embeddings when both genes have one (eq. 4), else
    cosine of their expression over the reference cells (eq. 5); the merged matrix (eq. 6)
    is never stored, only its top-k entries per gene.

    Parameters
    ----------
    n_genes
        Number of genes (nodes).
    emb
        ``(n_with_embedding, d)`` embeddings of the genes flagged in ``has_emb``, or ``None``.
    has_emb
        ``(n_genes,)`` bool: which genes have an embedding.
    expression
        ``(n_cells, n_genes)`` reference expression (dense or sparse), needed when a gene
        lacks an embedding.
    """

    def __init__(self, n_genes: int, emb: np.ndarray | None, has_emb: np.ndarray, expression=None):
        self.n = n_genes
        self.has_emb = has_emb
        self.emb = None
        if emb is not None and has_emb.any():
            E = np.zeros((n_genes, emb.shape[1]), np.float64)
            E[has_emb] = emb
            nrm = np.linalg.norm(E, axis=1, keepdims=True)
            self.emb = (E / np.where(nrm > 0, nrm, 1.0)).astype(np.float32)
        self.expr = None
        if not has_emb.all():
            if expression is None:
                raise ValueError(
                    f"{int((~has_emb).sum())} gene(s) have no embedding and no "
                    "reference expression was given to build their edges (eq. 5)."
                )
            self.expr = _unit_columns(expression)

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarities ``S[rows][:, cols]``.

        Float64, rounded to 1e-9 so that sparse and dense inputs give the same ranking.
        """
        S = np.zeros((len(rows), len(cols)), np.float64)
        both = self.has_emb[rows][:, None] & self.has_emb[cols][None, :]
        if self.expr is not None and not both.all():
            A = self.expr[:, rows].astype(np.float64)
            for cs in iter_batches(len(cols), 2048):
                P = A.T @ self.expr[:, cols[cs]].astype(np.float64)
                S[:, cs] = P.toarray() if sparse.issparse(P) else P
        if self.emb is not None and both.any():
            P = self.emb[rows].astype(np.float64) @ self.emb[cols].astype(np.float64).T
            S = np.where(both, P, S)
        return np.round(S, 9)

    def knn_graph(self, idx: np.ndarray, k: int) -> sparse.csr_matrix:
        """Symmetric top-``k`` graph among genes ``idx`` (CSR, weights = similarity)."""
        m = len(idx)
        k = min(k, m - 1)
        if k < 1:
            return sparse.csr_matrix((m, m), dtype=np.float32)
        rows_l, cols_l, vals_l = [], [], []
        for sl in iter_batches(m, 1024):
            S = self.block(idx[sl], idx)
            r = np.arange(sl.start, sl.stop)
            S[r - sl.start, r] = -np.inf  # no self loops: SAGEConv adds the root term itself
            nb = np.argsort(-S, axis=1, kind="stable")[:, :k]  # ties: lower index first
            rows_l.append(np.repeat(r, k))
            cols_l.append(nb.ravel())
            vals_l.append(np.take_along_axis(S, nb, axis=1).ravel())
        A = sparse.csr_matrix(
            (
                np.concatenate(vals_l).astype(np.float32),
                (np.concatenate(rows_l), np.concatenate(cols_l)),
            ),
            shape=(m, m),
            dtype=np.float32,
        )
        # union of the two directions; similarity is symmetric so the values agree
        return A.maximum(A.T).tocsr()


def similarity_for(
    genes: list[str], embeddings, expression, case_sensitive: bool
) -> tuple[GeneSimilarity, int]:
    """The similarity over ``genes`` and how many of them have an embedding."""
    has = np.zeros(len(genes), bool)
    emb = None
    if embeddings is not None:
        names, M = embedding_table(embeddings)
        lookup = name_index(names, case_sensitive, "gene_embeddings")
        pos = np.array([lookup.get(fold(g, case_sensitive), -1) for g in genes])
        has = pos >= 0
        emb = M[pos[has]] if has.any() else None
    return GeneSimilarity(len(genes), emb, has, expression), int(has.sum())


def gene_graph(
    genes: Sequence[str],
    *,
    gene_embeddings=None,
    expression=None,
    n_neighbors: int = 10,
    case_sensitive: bool = True,
) -> sparse.csr_matrix:
    """The symmetric top-``n_neighbors`` gene graph; see :func:`sctorch.tl.stimpute_gene_graph`.

    Raises
    ------
    ValueError
        If ``genes`` repeat or are fewer than 2, ``n_neighbors < 1``, ``expression`` has
        the wrong width, fewer than 2 cells or non-finite values, or the embeddings are
        inconsistent.
    """
    genes = [str(g) for g in genes]
    name_index(genes, case_sensitive, "genes")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
    if expression is not None:
        if expression.shape[1] != len(genes):
            raise ValueError(
                f"expression has {expression.shape[1]} columns but {len(genes)} "
                "genes were given; pass the reference columns in the order of "
                "`genes`."
            )
        # a NaN would spread into every similarity of its gene (NaN edges)
        check_finite(expression, what="expression")
        if expression.shape[0] < 2:
            raise ValueError(
                f"expression has {expression.shape[0]} cell(s); gene similarity "
                "from co-expression needs at least 2 cells."
            )
    if len(genes) < 2:
        raise ValueError(f"A gene graph needs at least 2 genes, got {len(genes)}.")
    sim, _ = similarity_for(genes, gene_embeddings, expression, case_sensitive)
    return sim.knn_graph(np.arange(len(genes)), n_neighbors)


def distance_graph(sim: GeneSimilarity, idx: np.ndarray) -> sparse.csr_matrix:
    """The authors' dense gene graph among genes ``idx`` (``preset="paper"``).

    github.com/cquzys/stImpute ``build_graph_by_gene`` + ``GS_block.aggregate``: the cosine
    *distance* ``D = 1 − S`` of every pair (no sparsification), the identity subtracted
    (``D − I``, so each gene weighs itself −1) and each row divided by its sum; the GNN
    aggregates ``A @ x`` with these weights. Dense: ``n_genes²`` stored values, for
    comparison on panels of hundreds of genes, not for whole transcriptomes.
    """
    idx = np.asarray(idx)
    A = 1.0 - sim.block(idx, idx) - np.eye(len(idx))
    A = A / (A.sum(1, keepdims=True) + 1e-12)
    return sparse.csr_matrix(A.astype(np.float32))
