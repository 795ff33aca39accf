"""TCER's cross-cell context and count-scale output: neighbours, their mean, the posterior.

sctorch's default TCER departs from the paper in two places, both measured in
``benchmarks/results/tcer.md``:

- **cross-cell context**: ER-Net sees, beside the cell's own GenoMap, the GenoMap of the
  mean normalised expression of the cell's ``k`` nearest *other* cells (PCA of the
  log-normalised counts), and predicts a residual on it;
- **count-scale posterior** (SAVER, Huang et al. 2018, Nat Methods 15:539, eq. 2): the
  network's blind-spot prediction μ (which never saw the pixel it predicts) is a prior
  mean, and the output rate is ``(y + β μ) / (s + β)`` with ``y`` the cell's count,
  ``s`` its library size / ``target_sum``, and β the prior's weight, in the units of
  ``s``.

β and ``k`` are chosen by molecular cross-validation in :mod:`sctorch.tcer._mcv`.

Rates here are ``counts / library × target_sum`` (the log-normalised scale before
``log1p``); ``library`` is the cell's total over all genes of the AnnData.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .._utils import get_rng, is_backed, iter_batches, read_rows, row_sums

#: the scales on which the context is averaged and the posterior is taken
SPACES = ("linear", "sqrt")
#: most entries (cells × genes) of the dense matrix the context's PCA is fitted on; above
#: it, the PCA is fitted on a seeded sample of that many entries' cells and every cell
#: is projected in blocks (memory bounded at 100,000 cells and more)
PCA_DENSE_ENTRIES: int = 25_000_000


def to_rates(counts, size: np.ndarray) -> sparse.csr_matrix:
    """Rates ``counts / size`` (one size per cell; 0 where the size is 0), CSR float32.

    ``counts``: ``(n_cells, n_genes)`` raw counts (dense or sparse); ``size``: library
    size / ``target_sum``, shape ``(n_cells,)``. The result is on the log-normalised
    scale before ``log1p``.
    """
    size = np.asarray(size, dtype=np.float64)
    inv = np.divide(1.0, size, out=np.zeros_like(size), where=size > 0)
    return sparse.csr_matrix(sparse.diags(inv) @ sparse.csr_matrix(counts), dtype=np.float32)


class Rates:
    """Counts of a model's genes as rates, from an in-memory or a backed matrix.

    Parameters
    ----------
    X
        Cells × genes of raw counts (validated by the caller), in memory or the ``X`` of a
        backed AnnData.
    cols
        Positions of the model's genes among the columns of ``X`` (``None``: all, in order).
    target_sum
        The normalisation target (rates sum to it over all columns of ``X``).
    """

    def __init__(self, X, cols: np.ndarray | None, target_sum: float):
        self.X, self.cols, self.target_sum = X, cols, float(target_sum)
        self.n = int(X.shape[0])
        self.backed = is_backed(X)
        self._all = None if self.backed else self.counts_of(X)
        self._source: dict[str, sparse.csr_matrix] = {}

    @classmethod
    def in_memory(cls, counts, size: np.ndarray, target_sum: float) -> Rates:
        """Rates of given ``counts`` (cells × genes) and sizes, without a source matrix."""
        self = cls.__new__(cls)
        self.X, self.cols, self.target_sum = None, None, float(target_sum)
        self.n, self.backed = int(counts.shape[0]), False
        self._all = (sparse.csr_matrix(counts, dtype=np.float32), np.asarray(size))
        self._source = {}
        return self

    def counts_of(self, block) -> tuple[sparse.csr_matrix, np.ndarray]:
        """``(counts, size)`` of a block of rows already read from ``X`` (all its columns)."""
        size = row_sums(block).astype(np.float64) / self.target_sum
        counts = sparse.csr_matrix(block, dtype=np.float32)
        return (counts if self.cols is None else counts[:, self.cols]), size

    def counts(self, rows) -> tuple[sparse.csr_matrix, np.ndarray]:
        """``(counts, size)`` of ``rows``: CSR float32 counts and ``library / target_sum``."""
        if self._all is None:
            return self.counts_of(read_rows(self.X, rows))
        counts, size = self._all
        return counts[rows], size[rows]

    def rates(self, rows) -> sparse.csr_matrix:
        """CSR float32 rates (``counts / size``) of ``rows``."""
        return to_rates(*self.counts(rows))

    def averaged(self, space: str) -> sparse.csr_matrix:
        """All cells' rates on the scale the context averages (``"sqrt"``: their roots).

        In memory only; computed once and kept, so a neighbour mean per block of cells
        costs the block's neighbours, not a pass over the whole matrix.
        """
        if space not in self._source:
            source = self.rates(slice(None))
            self._source[space] = source.sqrt() if space == "sqrt" else source
        return self._source[space]


def _embedding(
    rates: Rates, n_pcs: int, seed: int, rates_in: sparse.csr_matrix | None = None
) -> np.ndarray:
    """PCA scores ``(n, n_pcs)`` of ``log1p(rates)``.

    IncrementalPCA in blocks when backed; fitted on a sample of cells above
    :data:`PCA_DENSE_ENTRIES`. ``rates_in``: in-memory rates to embed instead of those of ``rates``.
    """
    from sklearn.decomposition import PCA, IncrementalPCA

    n_genes = rates.counts(slice(0, 1))[0].shape[1]
    n_comp = int(max(1, min(n_pcs, rates.n - 1, n_genes)))
    if not rates.backed:
        source = rates.rates(slice(None)) if rates_in is None else rates_in
        pca = PCA(n_comp, random_state=seed, svd_solver="full" if n_genes <= 500 else "randomized")
        if rates.n * n_genes <= PCA_DENSE_ENTRIES:
            return pca.fit_transform(source.log1p().toarray())
        # a large matrix: fitted on a seeded sample of cells, every cell projected in
        # blocks, so no dense n_cells x n_genes copy is made
        fit_on = np.sort(get_rng(seed).choice(rates.n, PCA_DENSE_ENTRIES // n_genes, False))
        pca.fit(source[fit_on].log1p().toarray())
        return np.concatenate(
            [pca.transform(source[sl].log1p().toarray()) for sl in iter_batches(rates.n, 4096)]
        ).astype(np.float32)
    block = max(4096, n_comp)
    ipca = IncrementalPCA(n_comp, batch_size=block)
    blocks = list(iter_batches(rates.n, block))
    for sl in blocks:
        L = rates.rates(sl).log1p().toarray()
        if L.shape[0] >= n_comp:
            ipca.partial_fit(L)
    return np.concatenate([ipca.transform(rates.rates(sl).log1p().toarray()) for sl in blocks])


def _without_self(idx: np.ndarray, k: int) -> np.ndarray:
    """Drop each row's own position from its neighbour list, keep the first ``k`` others."""
    own = idx == np.arange(idx.shape[0])[:, None]
    own[~own.any(axis=1), -1] = True  # duplicates: self not returned -> drop the farthest
    return idx[~own].reshape(idx.shape[0], idx.shape[1] - 1)[:, :k]


def neighbour_index(
    rates: Rates,
    k: int,
    *,
    n_pcs: int = 30,
    seed: int = 0,
    rates_in: sparse.csr_matrix | None = None,
) -> np.ndarray:
    """The ``k`` nearest *other* cells of every cell: int64 ``(n, min(k, n − 1))``.

    Euclidean distance between PCA scores (``n_pcs`` components, scikit-learn; fitted in
    blocks with IncrementalPCA for a backed matrix, and on a seeded sample of cells when
    the matrix has more than :data:`PCA_DENSE_ENTRIES` entries) of the log1p rates;
    nearest first.

    Parameters
    ----------
    rates
        The cells (:class:`Rates`, ``n`` cells).
    k
        Neighbours per cell (capped at ``n − 1``).
    n_pcs, seed
        Principal components and the PCA seed.
    rates_in
        In-memory rates ``(n, n_genes)`` to find the neighbours on instead (e.g. one half
        of a molecular cross-validation split).

    Returns
    -------
    int64 ``(n, min(k, n − 1))``: positions of each cell's neighbours, never itself.

    Raises
    ------
    ValueError
        With fewer than 2 cells (the context of a cell is other cells).
    """
    from sklearn.neighbors import NearestNeighbors

    if rates.n < 2:
        raise ValueError(
            f"TCER's cross-cell context needs at least 2 cells, got {rates.n}; "
            "impute more cells at once or use a model trained with "
            "n_neighbors=0."
        )
    k = int(min(k, rates.n - 1))
    Z = _embedding(rates, n_pcs, seed, rates_in)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    return _without_self(idx, k)


def neighbour_mean(rates: Rates, idx: np.ndarray, cells, space: str = "linear") -> np.ndarray:
    """Mean rates of the neighbours of ``cells``: float32 ``(len(cells), n_genes)``.

    ``idx`` is :func:`neighbour_index`'s ``(n, k)`` array; ``cells`` positions or a slice
    of rows. Rates are ``counts / library × target_sum`` (before ``log1p``). ``space="sqrt"``
    averages the square roots of the rates and squares the mean (the variance-stabilised
    mean of Poisson counts: a gene detected in few neighbours gets much less than its
    plain mean); ``"linear"`` the plain mean. For a backed matrix each neighbour row is
    read once.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    nb = idx[cells]
    b, k = nb.shape
    if rates.backed:  # read each neighbour row once
        uniq, pos = np.unique(nb.ravel(), return_inverse=True)
        source, cols = rates.rates(uniq), pos
        source = source.sqrt() if space == "sqrt" else source
    else:
        source, cols = rates.averaged(space), nb.ravel()
    W = sparse.csr_matrix(
        (np.full(b * k, 1.0 / k, dtype=np.float32), (np.repeat(np.arange(b), k), cols)),
        shape=(b, source.shape[0]),
    )
    out = np.asarray((W @ source).toarray(), dtype=np.float32)
    return np.square(out) if space == "sqrt" else out


def posterior(counts, size: np.ndarray, mu: np.ndarray, beta, space: str = "linear") -> np.ndarray:
    """Posterior mean rate of each cell and gene, from its counts and a prior mean rate μ.

    ``space="linear"`` (SAVER, Huang et al. 2018, eq. 2): ``(y + β μ) / (s + β)``.
    ``space="sqrt"``: the same weighting of the cell's own rate and the prior on the
    square-root (variance-stabilising) scale of Poisson counts, ``((√(y s) + β √μ) /
    (s + β))²``, i.e. ``(w √(y/s) + (1 − w) √μ)²`` with ``w = s / (s + β)``. Both give
    the observed rate ``y / s`` for β = 0 and μ for β → ∞.

    Parameters
    ----------
    counts
        ``y``: raw counts ``(n_cells, n_genes)``, dense or sparse.
    size
        ``s``: library size / ``target_sum``, shape ``(n_cells,)``.
    mu
        Prior mean rates ``(n_cells, n_genes)`` (counts per ``target_sum``).
    beta
        Prior weight in units of ``s``: a number (every gene), or finite values of shape
        ``(n_genes,)`` (one per gene, :func:`~sctorch.tcer.choose_gene_beta`). 0 returns
        the observed rates ``y / s``; a scalar ``inf`` returns ``mu``.
    space
        ``"linear"`` or ``"sqrt"`` (see above).

    Returns
    -------
    float32 ``(n_cells, n_genes)`` rates (take ``log1p`` for the log-normalised scale).

    Raises
    ------
    ValueError
        For an unknown ``space``, or a per-gene ``beta`` of the wrong shape.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    y = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    s = np.asarray(size, dtype=np.float64)[:, None]
    if np.ndim(beta) == 0:
        if np.isinf(beta):
            return np.asarray(mu, dtype=np.float32)
    else:
        beta = np.asarray(beta, dtype=np.float64)
        if beta.shape != (y.shape[1],):
            raise ValueError(
                f"a per-gene beta must have shape ({y.shape[1]},) (one per gene), got {beta.shape}."
            )
        beta = beta[None, :]
    if space == "sqrt":
        mu = np.asarray(mu, dtype=np.float64)
        return np.square((np.sqrt(y * s) + beta * np.sqrt(mu)) / (s + beta)).astype(np.float32)
    return ((y + beta * mu) / (s + beta)).astype(np.float32)
