"""Molecular cross-validation of TCER's output rule: the neighbour count ``k`` and β.

β (the prior's weight in :func:`sctorch.tcer._context.posterior`; one per gene by
default) and ``k`` (the neighbours of the context) are chosen by **molecular
cross-validation** (Batson, Royer & Webber 2019, bioRxiv 786269): each count is split
binomially into halves A and B; the output computed from A is scored by the Poisson
likelihood of B's molecules (default) or by the mean gene-wise Pearson correlation
(across cells) of its log1p with the log-normalised B (sctorch's earlier criterion). The
halves are independent Poisson draws of the same cell, so the score ranks outputs as they
would score against the unseen expression. Neither grid is clipped at its edge. Nothing
but the input is used. Measured in ``benchmarks/results/tcer.md`` and
``tcer_denoising.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse

from .._utils import get_rng, iter_batches, row_sums
from ._context import Rates, neighbour_index, neighbour_mean, posterior, to_rates

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
#: neighbour counts searched by :func:`choose_neighbours`
K_GRID: tuple[int, ...] = (5, 10, 20, 40, 80)


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
