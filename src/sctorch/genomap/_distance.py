"""Gene–gene interaction distance from expression (TCER eqs. 1–2), and gene selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from .._utils import describe_source, get_matrix, iter_batches, log_normalize, resolve_input_scale

if TYPE_CHECKING:
    import anndata as ad

Metric = Literal["correlation", "cosine"]


def select_genes(adata: ad.AnnData, genes) -> np.ndarray:
    """Indices of the chosen genes (``None``: all), validated."""
    if genes is None:
        return np.arange(adata.n_vars)
    arr = np.asarray(genes)
    if arr.dtype == bool:
        if arr.shape != (adata.n_vars,):
            raise ValueError(
                f"A boolean genes= mask must have length n_vars={adata.n_vars}, "
                f"got shape {arr.shape}."
            )
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError("genes= must be a 1-D list of gene names or a boolean mask.")
    names = arr.astype(str)
    if len(set(names.tolist())) != names.size:
        raise ValueError("genes= lists a gene more than once.")
    idx = adata.var_names.get_indexer(names)
    if (idx < 0).any():
        bad = names[idx < 0][:5].tolist()
        raise KeyError(
            f"{int((idx < 0).sum())} gene(s) of genes= are not in adata.var_names, e.g. {bad}."
        )
    return np.sort(idx)


def _log_block(X, sl, gidx, counts: bool) -> np.ndarray:
    """Rows ``sl`` of ``X`` (log-normalised if counts, using the full library) at ``gidx``."""
    block = X[sl]
    if counts:
        block = log_normalize(block)
    block = block[:, gidx]
    if sparse.issparse(block):
        return block.toarray().astype(np.float64, copy=False)
    return np.asarray(block, dtype=np.float64)


def interaction_distance(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genes=None,
    metric: Metric = "correlation",
    batch_size: int = 2048,
    var_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Gene–gene interaction distance from log-normalised expression (TCER eqs. 1–2).

    ``1 - Pearson correlation`` (``metric="correlation"``) or ``1 - cosine similarity``
    (``"cosine"``) between the genes' expression vectors across cells; values in
    ``[0, 2]``, zero on the diagonal. Raw counts (detected: every value a non-negative
    integer) are log-normalised first with :func:`sctorch._utils.log_normalize`
    (library size over all genes of ``adata``, target 10⁴, ``log1p``); any other
    non-negative input is used as it is (taken as already log-normalised). Cells are
    read ``batch_size`` at a time, so sparse input is never densified as a whole.

    Parameters
    ----------
    adata
        Cells × genes.
    layer
        Layer to read (``None``: ``adata.X``).
    genes
        Gene names or a boolean mask (``None``: all genes); rows/columns follow
        ``adata.var`` order.
    metric
        ``"correlation"`` or ``"cosine"``.
    batch_size
        Cells per block.
    var_names
        Alternative to ``genes`` (names, kept in the given order).

    Returns
    -------
    float64 array ``(n_genes, n_genes)``.

    Raises
    ------
    ValueError
        Non-finite or negative values, an unknown metric, or a gene that is constant
        across cells (its correlation is undefined) or all zero (cosine).
    KeyError
        If ``layer`` or a gene is missing.
    """
    if metric not in ("correlation", "cosine"):
        raise ValueError(f"metric must be 'correlation' or 'cosine', got {metric!r}.")
    X = get_matrix(adata, layer)
    counts = resolve_input_scale(X, "auto", what=describe_source(layer)) == "counts"
    gidx = (
        adata.var_names.get_indexer(list(var_names))
        if var_names is not None
        else select_genes(adata, genes)
    )
    if (gidx < 0).any():
        raise KeyError("Some var_names are not in adata.var_names.")
    return distance_from_matrix(
        X, gidx, metric=metric, counts=counts, batch_size=batch_size, names=adata.var_names[gidx]
    )


def distance_from_matrix(X, gidx, *, metric, counts, batch_size, names) -> np.ndarray:
    """The interaction distance of the columns ``gidx`` of ``X`` (cells × genes).

    ``counts=True`` log-normalises each block of cells first (library over all columns).
    Accumulates column sums and the Gram matrix over blocks of ``batch_size`` cells, so
    sparse ``X`` is never densified as a whole. Returns float64 ``(len(gidx), len(gidx))``.

    Raises
    ------
    ValueError
        Fewer than 2 cells, or a gene constant across cells (named from ``names``).
    """
    n_cells = X.shape[0]
    n = gidx.size
    if n_cells < 2:
        raise ValueError(
            f"At least 2 cells are needed to compute gene interactions, got {n_cells}."
        )
    s = np.zeros(n)
    gram = np.zeros((n, n))
    Xr = sparse.csr_matrix(X) if sparse.issparse(X) and not sparse.isspmatrix_csr(X) else X
    for sl in iter_batches(n_cells, batch_size):
        b = _log_block(Xr, sl, gidx, counts)
        s += b.sum(0)
        gram += b.T @ b
    if metric == "correlation":
        mean = s / n_cells
        cov = gram / n_cells - np.outer(mean, mean)
        var = np.diag(cov).copy()
        bad = var <= 1e-12 * np.maximum(np.diag(gram) / n_cells, 1e-300)
    else:
        cov = gram
        var = np.diag(gram).copy()
        bad = var <= 0
    if bad.any():
        ex = list(np.asarray(names)[bad][:5])
        raise ValueError(
            f"{int(bad.sum())} gene(s) are constant across cells (e.g. {ex}); their "
            f"{metric} with other genes is undefined. Remove them (e.g. "
            "scanpy.pp.filter_genes(adata, min_cells=2)) or leave them out "
            "via genes=."
        )
    sd = np.sqrt(var)
    sim = cov / np.outer(sd, sd)
    np.clip(sim, -1.0, 1.0, out=sim)
    dist = 1.0 - sim
    np.fill_diagonal(dist, 0.0)
    return (dist + dist.T) / 2.0
