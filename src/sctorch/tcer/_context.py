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
  ``s``;
- β and ``k`` are chosen by **molecular cross-validation** (Batson, Royer & Webber 2019,
  bioRxiv 786269): each count is split binomially into halves A and B; the output
  computed from A is scored by the Poisson likelihood of B's molecules (default) or by
  the mean gene-wise Pearson correlation (across cells) of its log1p with the
  log-normalised B (sctorch's earlier criterion). The halves are independent Poisson
  draws of the same cell, so the score ranks outputs as they would score against the
  unseen expression. Neither grid is clipped at its edge. Nothing but the input is
  used.

Rates here are ``counts / library × target_sum`` (the log-normalised scale before
``log1p``); ``library`` is the cell's total over all genes of the AnnData.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse

from .._utils import get_rng, is_backed, iter_batches, read_rows, row_sums

#: relative β grid (× the median ``s``) searched by :func:`choose_beta`
BETA_GRID: tuple[float, ...] = (
    0.0,
    0.05,
    0.1,
    0.2,
    0.35,
    0.5,
    0.7,
    1.0,
    1.4,
    2.0,
    3.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
)
#: relative β grid of :func:`choose_gene_beta` (one β per gene): :data:`BETA_GRID` and
#: further out, where a gene's output is essentially the prior
GENE_BETA_GRID: tuple[float, ...] = (*BETA_GRID, 200.0, 500.0, 1000.0, 10000.0)
#: pseudo-molecules of the genes' pooled held-out loss curve added to each gene's own
#: curve by :func:`choose_gene_beta`: a gene with far fewer held-out molecules follows the
#: β shared by its expression group, one with far more its own (a method constant; with
#: one pool of all genes, 20 to 500 gave the same openproblems scores within 0.01 on
#: pbmc3k and intestine)
GENE_BETA_POOLING: float = 100.0
#: genes per expression group of :func:`choose_gene_beta`: each gene's loss curve is
#: pooled with those of the genes nearest to it in prior mean expression, in groups of about
#: this many (2,000 genes: 10 groups), each group's curve pooled with all genes' by
#: :data:`GENE_BETA_GROUP_POOLING`. A method constant; its ablation (one pool) is a row of
#: ``benchmarks/results/tcer_denoising.md`` and ``tcer.md``
GENE_BETA_GROUP: int = 200
#: pseudo-molecules of all genes' pooled curve added to each expression group's curve by
#: :func:`choose_gene_beta`: a group with far fewer held-out molecules (sparse genes at
#: low depth) follows the curve of all genes, one with far more its own (a method
#: constant, chosen among 1,000, 5,000 and 20,000 in a one-off run on ifnb at full depth
#: and intestine down-sampled; without it, the groups cost intestine 0.02 mean gene
#: Pearson at 0.4 %, ``benchmarks/results/tcer.md``)
GENE_BETA_GROUP_POOLING: float = 1000.0
#: the scales on which the context is averaged and the posterior is taken
SPACES = ("linear", "sqrt")
#: most entries (cells × genes) of the dense matrix the context's PCA is fitted on; above
#: it, the PCA is fitted on a seeded sample of that many entries' cells and every cell
#: is projected in blocks (memory bounded at 100,000 cells and more)
PCA_DENSE_ENTRIES: int = 25_000_000
#: neighbour counts searched by :func:`choose_neighbours`
K_GRID: tuple[int, ...] = (5, 10, 20, 40, 80)


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
        ``(n_genes,)`` (one per gene, :func:`choose_gene_beta`). 0 returns the observed
        rates ``y / s``; a scalar ``inf`` returns ``mu``.
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


def split_molecules(counts, size: np.ndarray, seed, p=0.5):
    """Binomial split of every count (molecular cross-validation, Batson et al. 2019).

    Each molecule of the raw ``counts`` ``(n_cells, n_genes)`` goes to half A with
    probability ``p`` (a float, or one per cell, ``(n_cells,)``). Each half's size is
    ``size`` (``(n_cells,)``) × the half's share of the cell's counts, so a half is
    normalised by its own molecules (no molecule of B enters A's rates, or the reverse); a
    half with no counts gets size 0. ``seed``: an int or a :class:`numpy.random.Generator`
    (drawn from).

    Returns
    -------
    ``((counts_a, size_a), (counts_b, size_b))``: CSR float32 counts and float64 sizes.
    """
    counts = sparse.csr_matrix(counts)
    a = counts.copy()
    p = np.asarray(p, dtype=np.float64)
    p = p if p.ndim == 0 else np.repeat(p, np.diff(counts.indptr))  # one per stored count
    a.data = get_rng(seed).binomial(np.round(counts.data).astype(np.int64), p).astype(np.float32)
    b = counts - a
    total = np.maximum(row_sums(counts).astype(np.float64), 1e-12)
    return ((a, size * row_sums(a) / total), (b, size * row_sums(b) / total))


def _mean_gene_pearson(A: np.ndarray, B: np.ndarray) -> float:
    A = A - A.mean(0)
    B = B - B.mean(0)
    den = np.sqrt((A * A).sum(0) * (B * B).sum(0))
    ok = den > 0
    return float(((A * B).sum(0)[ok] / den[ok]).mean()) if ok.any() else float("nan")


#: the molecular cross-validation criteria of :func:`mcv_scores`
CRITERIA = ("poisson", "pearson")


def _poisson_losses(rate_a: np.ndarray, cb, sb: np.ndarray) -> np.ndarray:
    """Poisson loss of each of B's counts under rates from A: ``(n_cells, n_genes)`` float64.

    ``λ − y log(λ + 1e-6)`` with ``λ = rate × size_b`` (``mcv_sweep.poisson_nll_loss``,
    Batson et al. 2019).
    """
    pred = rate_a.astype(np.float64) * sb[:, None]
    y = cb.toarray() if sparse.issparse(cb) else np.asarray(cb)
    return pred - y * np.log(pred + 1e-6)


def _poisson_score(rate_a: np.ndarray, cb, sb: np.ndarray) -> float:
    """Minus the mean Poisson loss of B's counts under rates from A, at B's depth."""
    return -float(_poisson_losses(rate_a, cb, sb).mean())


def _scored_cells(half_a, half_b, mu):
    """The halves and prior of the cells with counts in both halves, and A's median size.

    Returns ``(ca, sa, cb, sb, mu, ms)``: the molecular cross-validation scores only
    these cells (a half with no molecules has no depth to score at).
    """
    (ca, sa), (cb, sb) = half_a, half_b
    ok = (sa > 0) & (sb > 0)
    sa = sa[ok]
    ms = float(np.median(sa)) if sa.size else 0.0
    return ca[ok], sa, cb[ok], sb[ok], np.asarray(mu)[ok], ms


def mcv_scores(
    half_a,
    half_b,
    mu: np.ndarray,
    grid: Sequence[float] = BETA_GRID,
    *,
    criterion: str = "poisson",
    extend: bool = False,
    space: str = "linear",
) -> dict[float, float]:
    """Molecular cross-validation score of every relative β in ``grid`` (higher is better).

    ``half_a`` and ``half_b`` are ``(counts, size)`` of :func:`split_molecules`; ``mu``
    the prior mean rates ``(n_cells, n_genes)`` computed without any molecule of half B.
    Cells with no counts in either half are left out. Returns ``{β / median(size_a):
    score}``, the score of the posterior rates from A against B:

    - ``criterion="poisson"`` (default): minus the mean Poisson negative log-likelihood of
      B's counts under the posterior rates from A times B's size, ``−mean(λ − y log(λ +
      1e-6))`` (Batson, Royer & Webber 2019, ``mcv_sweep.poisson_nll_loss``): B's
      molecules are an independent Poisson draw of the same cell, so this ranks outputs
      by their likelihood of the unseen molecules, without bias;
    - ``"pearson"``: the mean gene-wise Pearson correlation (across cells) between
      ``log1p`` of the posterior from A and of B's rates (sctorch's earlier criterion,
      which at full depth prefers the observed data).

    ``space``: the scale of :func:`posterior`.

    ``extend=True``: while the best β is the largest tried, twice it is tried too (so the
    search is not clipped at its edge), up to 2¹⁰ × the largest value of ``grid``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    ca, sa, cb, sb, mu, ms = _scored_cells(half_a, half_b, mu)
    if criterion == "pearson":
        target = np.log1p(posterior(cb, sb, mu, 0.0))

        def score(g):
            return _mean_gene_pearson(np.log1p(posterior(ca, sa, mu, g * ms, space)), target)
    else:

        def score(g):
            return _poisson_score(posterior(ca, sa, mu, g * ms, space), cb, sb)

    scores = {float(g): score(g) for g in grid}
    top = max(grid)
    while extend and _best(scores) == max(scores) and max(scores) < top * 2**10:
        g = 2.0 * max(scores)
        scores[g] = score(g)
    return scores


def _best(scores: dict) -> float:
    """The key of the highest score (NaN lowest; ties to the smaller key)."""
    return max(scores, key=lambda g: (np.nan_to_num(scores[g], nan=-np.inf), -g))


def choose_beta(
    half_a,
    half_b,
    mu: np.ndarray,
    *,
    grid: Sequence[float] = BETA_GRID,
    criterion: str = "poisson",
    space: str = "linear",
) -> tuple[float, dict[float, float]]:
    """The prior weight β of :func:`posterior`, by molecular cross-validation.

    ``half_a``, ``half_b``, ``mu``, ``criterion`` and ``space`` as for :func:`mcv_scores`
    (``mu`` from half A and other cells only; the grid is extended past its largest value while that
    value scores best). Returns ``(β, scores)``: β in the units of ``size`` (the best
    relative β × the median size of half A: β is a prior precision, a number of
    pseudo-molecules in units of ``size``, so it carries over from the half to the full
    depth unchanged), and the scores.
    """
    scores = mcv_scores(half_a, half_b, mu, grid, criterion=criterion, extend=True, space=space)
    return _best(scores) * float(np.median(half_a[1])), scores


def gene_mcv_losses(
    half_a, half_b, mu: np.ndarray, grid: Sequence[float], *, space: str = "linear"
) -> np.ndarray:
    """Held-out Poisson loss of every gene at every relative β: ``(len(grid), n_genes)``.

    As :func:`mcv_scores` with ``criterion="poisson"``, but summed over cells per gene
    rather than averaged over all entries: entry ``[i, g]`` is ``Σ_cells (λ − y log(λ +
    1e-6))`` for gene ``g``'s counts ``y`` in half B and its posterior rates λ from half A
    at β = ``grid[i]`` × the median size of half A, times B's size. Cells with no counts
    in either half are left out.
    """
    ca, sa, cb, sb, mu, ms = _scored_cells(half_a, half_b, mu)
    cb = cb.toarray() if sparse.issparse(cb) else np.asarray(cb)  # densified once
    return np.stack(
        [_poisson_losses(posterior(ca, sa, mu, g * ms, space), cb, sb).sum(0) for g in grid]
    )


def choose_gene_beta(
    half_a,
    half_b,
    mu: np.ndarray,
    *,
    grid: Sequence[float] = GENE_BETA_GRID,
    pooling: float = GENE_BETA_POOLING,
    group: int | None = GENE_BETA_GROUP,
    group_pooling: float = GENE_BETA_GROUP_POOLING,
    space: str = "linear",
) -> tuple[np.ndarray, dict[str, float]]:
    """One prior weight β per gene, by molecular cross-validation (held-out Poisson loss).

    ``half_a``, ``half_b`` and ``mu`` as for :func:`mcv_scores`. Each gene's held-out loss
    curve over ``grid`` (:func:`gene_mcv_losses`, relative to its loss at β = 0) plus the
    pooled curve of its expression group per held-out molecule × ``pooling`` is minimised
    over the grid: a gene with many more held-out molecules than ``pooling`` gets its own
    β, one with far fewer the β shared by its group. The groups: the genes ranked by their
    mean prior rate over the scored cells (``mu``, which holds no molecule of half B) and
    cut into ``round(n_genes / group)`` runs of equal size (at least one); ``group=None``:
    one group of all genes (the rule before this release). A group's
    curve is itself pooled with all genes' by :data:`GENE_BETA_GROUP_POOLING`
    pseudo-molecules, so a group with few held-out molecules (sparse genes at low depth)
    follows the curve of all genes. Pooling by expression keeps a sparse gene from
    following the β of the abundant genes, whose molecules dominate a single pooled
    curve, where its group holds enough molecules to say otherwise. Where a gene's true
    expression varies little between a cell and its neighbours, the held-out molecules
    favour a large β (much shrinkage); where the cell differs from its neighbours, a
    small one.
    sctorch's extension of SAVER's per-gene prior (Huang et al. 2018, whose shape
    parameter is fitted per gene by likelihood) to TCER's posterior; measured in
    ``benchmarks/results/tcer_denoising.md``.

    Returns
    -------
    ``(β, scores)``: float64 ``(n_genes,)`` β in the units of ``size`` (relative β × the
    median size of half A, as :func:`choose_beta`), and ``{"gene": score, "global":
    score}``: minus the mean held-out Poisson loss per entry with the per-gene β, and
    with the best single β of the grid (the scale of :func:`mcv_scores`).
    """
    _, sa, cb, _, mu_scored, ms = _scored_cells(half_a, half_b, mu)
    L = gene_mcv_losses(half_a, half_b, mu, grid, space=space)
    entries = max(sa.size * L.shape[1], 1)
    rel = L - L[:1]
    per_gene = np.asarray(cb.sum(0), dtype=np.float64).ravel()
    n_groups = 1 if group is None else max(1, round(L.shape[1] / group))
    every = rel.sum(1, keepdims=True) / max(per_gene.sum(), 1.0)  # all genes, per molecule
    pooled = np.broadcast_to(every, rel.shape).copy()
    if n_groups > 1:  # each group's curve per molecule, pooled with all genes'
        for genes in np.array_split(np.argsort(mu_scored.mean(0), kind="stable"), n_groups):
            own = rel[:, genes].sum(1, keepdims=True)
            m = per_gene[genes].sum()
            pooled[:, genes] = (own + group_pooling * every) / max(m + group_pooling, 1.0)
    pick = np.argmin(rel + pooling * pooled, axis=0)
    beta = np.asarray(grid, dtype=np.float64)[pick] * ms
    scores = {
        "gene": -float(L[pick, np.arange(L.shape[1])].sum()) / entries,
        "global": -float(L.sum(1).min()) / entries,
    }
    return beta, scores


def choose_beta_on(
    rates: Rates,
    cells: np.ndarray,
    prior_of: Callable,
    *,
    seed: int,
    batch_size: int = 256,
    criterion: str = "poisson",
    space: str = "linear",
) -> tuple[float, dict[float, float]]:
    """:func:`choose_beta` for a prior computed by ``prior_of`` on the cells ``cells``.

    The cells' counts are split (:func:`split_molecules`); ``prior_of(own_rates,
    cell_positions)`` gets the half-A rates (dense ``(b, n_genes)``) of ``batch_size``
    cells at a time and their positions in ``rates`` (for context from *other* cells) and
    returns their prior mean rates, so no molecule of half B enters the prior. Returns
    ``(β, scores)`` as :func:`choose_beta`.
    """
    _, beta, scores = choose_prior_on(
        rates,
        cells,
        {"prior": prior_of},
        seed=seed,
        batch_size=batch_size,
        criterion=criterion,
        space=space,
    )
    return beta, scores["prior"]


def choose_prior_on(
    rates: Rates,
    cells: np.ndarray,
    priors: dict[str, Callable],
    *,
    seed: int,
    beta: float | None = None,
    batch_size: int = 256,
    criterion: str = "poisson",
    space: str = "linear",
    shrinkage: str = "global",
    group: int | None = GENE_BETA_GROUP,
) -> tuple[str, float | np.ndarray, dict[str, dict]]:
    """Choose among prior rules (and β) by molecular cross-validation on ``cells``.

    One split of the cells' counts (:func:`split_molecules`, seeded) serves every rule:
    ``priors`` maps a name to ``prior_of(own_rates, cell_positions)`` as in
    :func:`choose_beta_on`. Each rule's posterior is scored against half B: over the β
    grid (``beta=None``; ``shrinkage="global"``: one β, :func:`choose_beta`, the grid
    extended past its edge; ``"gene"``: one β per gene, :func:`choose_gene_beta`, which
    needs ``criterion="poisson"``, its genes pooled in expression groups of ``group``) or
    at the given ``beta`` (units of ``size``). The rule with the highest score wins; on a
    tie the one listed first (list the cheaper rule first).

    Returns
    -------
    ``(name, β, scores)``: the chosen rule, its β (units of ``size``; a float, or
    ``(n_genes,)`` values with ``shrinkage="gene"``; ``beta`` if given) and ``{name:
    scores}``: ``{relative β: score}``, or :func:`choose_gene_beta`'s ``{"gene",
    "global"}`` scores.

    Raises
    ------
    ValueError
        For an unknown ``shrinkage``, or ``shrinkage="gene"`` with another criterion.
    """
    from ._config import check_shrinkage

    check_shrinkage(shrinkage, criterion, beta)
    per_gene = shrinkage == "gene" and beta is None
    cells = np.asarray(cells)
    half_a, half_b = split_molecules(*rates.counts(cells), seed)
    own = to_rates(*half_a)
    med = float(np.median(half_a[1]))
    scores, betas = {}, {}
    for name, prior_of in priors.items():
        mu = np.concatenate(
            [prior_of(own[sl].toarray(), cells[sl]) for sl in iter_batches(cells.size, batch_size)]
        )
        if per_gene:
            betas[name], scores[name] = choose_gene_beta(
                half_a, half_b, mu, space=space, group=group
            )
        elif beta is None:
            betas[name], scores[name] = choose_beta(
                half_a, half_b, mu, criterion=criterion, space=space
            )
        else:
            betas[name] = float(beta)
            scores[name] = mcv_scores(
                half_a, half_b, mu, (float(beta) / med,), criterion=criterion, space=space
            )
    best = max(scores, key=lambda n: np.nan_to_num(prior_score(scores[n]), nan=-np.inf))
    return best, betas[best], scores  # max() keeps the first of equal scores


def prior_score(scores: dict) -> float:
    """A prior rule's score in :func:`choose_prior_on`'s ``scores``: its best (higher is better)."""
    return float(scores["gene"]) if "gene" in scores else float(max(scores.values()))


def choose_neighbours(
    rates: Rates,
    *,
    seed: int,
    cells: np.ndarray,
    grid: Sequence[int] = K_GRID,
    n_pcs: int = 30,
    criterion: str = "poisson",
    space: str = "linear",
) -> tuple[int, dict[int, float]]:
    """Neighbour count ``k`` of the context, by molecular cross-validation of its mean.

    Among the cells ``cells`` (all cells, or a random subset of a large data set), the
    counts are split into halves and neighbours are found on half A; for every ``k`` in
    ``grid`` the neighbours' mean full rates (which hold none of the cell's molecules)
    (averaged in ``space``) are the prior of :func:`posterior`, and its best MCV score
    (``criterion``, see :func:`mcv_scores`) over the β grid scores ``k``. While the
    largest ``k`` tried scores best, twice it is tried too, up to the number of cells − 1:
    the search is not clipped at the grid's edge. Returns ``(k, {k: score})``.
    """
    counts, size = rates.counts(np.sort(np.asarray(cells)))
    sub = Rates.in_memory(counts, size, rates.target_sum)
    half_a, half_b = split_molecules(counts, size, seed)
    kmax = int(sub.n - 1)
    idx = neighbour_index(
        sub, min(max(grid), kmax), n_pcs=n_pcs, seed=seed, rates_in=to_rates(*half_a)
    )
    everyone = np.arange(sub.n)

    def score(k):
        nonlocal idx
        if k > idx.shape[1]:
            idx = neighbour_index(sub, k, n_pcs=n_pcs, seed=seed, rates_in=to_rates(*half_a))
        mu = neighbour_mean(sub, idx[:, :k], everyone, space)
        scores = mcv_scores(half_a, half_b, mu, criterion=criterion, extend=True, space=space)
        return max(scores.values())

    scores = {k: score(k) for k in sorted({min(int(g), kmax) for g in grid})}
    while max(scores, key=lambda k: (scores[k], -k)) == max(scores) < kmax:
        k = min(2 * max(scores), kmax)
        scores[k] = score(k)
    return max(scores, key=lambda k: (scores[k], -k)), scores


def neighbour_posterior(
    rates: Rates,
    *,
    k: int | None = None,
    criterion: str | None = None,
    space: str | None = None,
    shrinkage: str | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    group: int | None = GENE_BETA_GROUP,
) -> tuple[np.ndarray, int, float]:
    """TCER's output rule without the network: the neighbour mean as the prior.

    The cells' ``k`` nearest other cells (:func:`neighbour_index`) give the prior mean
    (:func:`neighbour_mean`, on ``space``), β (one per gene with ``shrinkage="gene"``) is
    chosen by molecular cross-validation on a seeded ``validation_fraction`` of the cells
    (:func:`choose_prior_on`, ``criterion``) and the output is :func:`posterior`. This is
    the "no ER-Net" ablation of the benchmarks.

    Parameters
    ----------
    rates
        The cells (:class:`Rates`, ``n`` cells × ``n_genes``, raw counts).
    k
        Neighbours per cell (``None``: chosen by :func:`choose_neighbours` on all cells).
    criterion, space, shrinkage
        As :class:`~sctorch.tcer.TCERConfig` (``None``: the default config's).
    seed
        Seeds the split of molecules, the PCA and the validation cells.
    validation_fraction
        Fraction of cells on which β is chosen.
    group
        Genes per expression group of the per-gene β (:func:`choose_gene_beta`).

    Returns
    -------
    ``(rates_out, k, beta)``: float32 ``(n, n_genes)`` posterior rates (counts per
    ``target_sum``; ``log1p`` for the log-normalised scale), the ``k`` used and β (units
    of library size / ``target_sum``; float64 ``(n_genes,)`` with ``shrinkage="gene"``).

    Raises
    ------
    ValueError
        With fewer than 2 cells, or an unknown ``criterion`` / ``space`` / ``shrinkage``.
    """
    from ._config import TCERConfig

    default = TCERConfig()
    criterion = default.criterion if criterion is None else criterion
    space = default.space if space is None else space
    shrinkage = default.shrinkage if shrinkage is None else shrinkage
    n = rates.n
    if k is None:
        k, _ = choose_neighbours(
            rates, seed=seed, cells=np.arange(n), criterion=criterion, space=space
        )
    idx = neighbour_index(rates, k, seed=seed)
    val = np.sort(get_rng(seed).permutation(n)[: round(validation_fraction * n)])
    _, beta, _ = choose_prior_on(
        rates,
        val,
        {"context": lambda own, cells: neighbour_mean(rates, idx, cells, space)},
        seed=seed,
        criterion=criterion,
        space=space,
        shrinkage=shrinkage,
        group=group,
    )
    counts, size = rates.counts(slice(None))
    mu = neighbour_mean(rates, idx, np.arange(n), space)
    return posterior(counts, size, mu, beta, space), int(k), beta if np.ndim(beta) else float(beta)
