"""GenoMap public functions: build a placement, draw images, read genes back, score it.

Thin wrappers (validate -> :mod:`sctorch.genomap` -> write keys); the method itself
(interaction distance, GW solver, placement and the images <-> genes code) lives in
:mod:`sctorch.genomap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _keys
from .._config import resolve_config
from .._docs import doc_params
from .._utils import (
    RandomState,
    accepts_random_state,
    check_copy,
    check_finite,
    check_fits_in_memory,
    check_unique_var_names,
    describe_source,
    get_matrix,
    get_rng,
    make_params,
    resolve_input_scale,
    seed_int,
)
from ..genomap import Placement, genomap_quality, grid_shape, gw_objective, select_cells, solve
from ..genomap._config import GenoMapConfig
from ..genomap._distance import distance_from_matrix, select_genes

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["genomap", "genomap_images", "genomap_quality", "genomap_to_genes"]

#: peak bytes per gene pair of the GenoMap construction: about four dense float64
#: ``n × n`` matrices live at once (the Gram matrix, the distance and its symmetrised
#: copy, then the distance and the solver's gradient)
GENOMAP_BYTES_PER_PAIR = 32


def _check_shape(shape, n: int) -> tuple[int, int]:
    if n < 4:
        raise ValueError(f"GenoMap needs at least 4 genes, got {n}. Pass more genes.")
    if shape is None:
        shape = grid_shape(n)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive integers, got {shape!r}.")
    if shape[0] * shape[1] < n:
        raise ValueError(
            f"The grid {shape[0]} × {shape[1]} has {shape[0] * shape[1]} pixels, "
            f"fewer than the {n} genes to place. Pass a larger shape= or "
            f"shape=None (default {grid_shape(n)})."
        )
    return shape


@accepts_random_state
@doc_params
def genomap(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genes: Sequence[str] | np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
    key_added: str = _keys.GENOMAP,
    config: GenoMapConfig | Mapping[str, Any] | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    r"""Place genes on a 2-D grid by Gromov–Wasserstein transport (GenoMap construction).

    Follows TCER (Wei et al., Brief Bioinform 2024, §"GenoMap Construction", eqs. 1–9)
    and Islam & Xing, Nat Commun 2023:

    1. interaction distance between genes :math:`C_1 = 1 - \rho` (eqs. 1–2), from the
       log-normalised expression (see :func:`sctorch.genomap.interaction_distance`);
    2. grid distance :math:`D_{jl} = \lVert p_j - p_l \rVert_2`, the true 2-D Euclidean
       distance between pixel centres (eqs. 3–5; not the distance between the points'
       radii that the authors' package uses);
    3. the GW coupling :math:`T^\ast = \arg\min_T \sum_{i,k,j,l} (C_{1,ik} - D_{jl})^2
       T_{ij} T_{kl}` under uniform marginals (eqs. 6–8), exact (``epsilon=0``) or
       entropic (``epsilon > 0``);
    4. the coupling rounded to a one-to-one gene → pixel map (the permutation of
       largest weight), so images map back to genes exactly.

    Choices where the papers leave details open: genes are matched to the first
    ``n_genes`` pixels in raster order (balanced marginals, each gene its own pixel; the
    ``H·W - n_genes`` unused pixels are the end of the last row and stay empty, as in the
    authors' package). Every solver starts from the same one-to-one layout: a 2-D
    classical MDS of the interaction distance, genes sorted into rows by the first axis
    and within rows by the second.

    - ``epsilon=0, solver="exchange"`` (default): the exact square-loss GW objective
      optimised directly over one-to-one couplings :math:`T = P/n` (the placement we
      need) by batched pairwise exchanges of genes on pixels within ``radius`` of each
      other; the gradient :math:`C_1 P D` is an FFT convolution, so an iteration costs
      O(n² log n) time and O(n²) memory. A local optimum, improving the objective
      monotonically.
    - ``epsilon=0, solver="pot"``: POT's conditional-gradient
      :func:`ot.gromov.gromov_wasserstein` over all couplings, rounded to the
      permutation of largest weight (linear assignment). Dense O(n³) per iteration
      (about 12 s per gradient at 5,000 genes on 2 CPU cores): for small gene sets or
      as a reference.
    - ``epsilon > 0``: POT's :func:`ot.gromov.entropic_gromov_wasserstein` on both
      distances scaled to [0, 1], rounded the same way (dense, O(n³) per iteration).

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``): **raw counts** (every value a non-negative
        integer; log-normalised here per cell to 10⁴ with ``log1p``) or
        **log-normalised** expression (any other non-negative values, used as they are).
    layer
        Layer to read (``None``: ``adata.X``). Not modified.
    genes
        Gene names or a boolean mask over ``var`` choosing the genes to place
        (``None``: all). Genes left out get pixel ``-1``.
    shape
        Grid ``(H, W)``; default :func:`sctorch.genomap.grid_shape` (smallest near-square with
        ``H·W >= n_genes``).
    key_added
        Output names (see Returns).
    config
        A :class:`~sctorch.genomap.GenoMapConfig` or a dict of some of its settings.
    rng
        Seed or Generator for the start vector of the MDS eigen-solver; the same seed
        gives the same placement.
    {random_state}
    {progress}
    {copy}
    {kwargs}
        The settings of :class:`~sctorch.genomap.GenoMapConfig`: ``metric``
        (``"correlation"``, the papers', or ``"cosine"``), ``epsilon`` (entropic
        regularisation; 0 is exact), ``max_iter``, ``tol``, ``solver`` (``"exchange"`` or
        ``"pot"``, see above), ``radius`` and ``batch_size``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``), having written

    - ``var[f"{key_added}_row"]``, ``var[f"{key_added}_col"]``: int64 pixel of each gene
      (``-1`` for genes excluded by ``genes``);
    - ``uns[key_added]`` = ``{"shape": (H, W), "objective": float, "n_iter": int,
      "converged": bool, "params": {...}}`` (``shape`` stored as an int64 array of
      length 2, so the AnnData can be written to h5ad), ``objective`` being the GW
      objective of the placement with both distance matrices scaled to [0, 1]
      (:func:`sctorch.genomap.gw_objective`).

    Images are made on demand with :func:`genomap_images`.

    Raises
    ------
    KeyError
        If ``layer`` or a name in ``genes`` is missing.
    ValueError
        Fewer than 4 genes; a grid with fewer pixels than genes; non-finite (NaN/inf)
        or negative values; a gene constant across cells; duplicate ``var_names``;
        fewer than 2 cells; a bad ``metric``, ``epsilon``, ``solver``, ``max_iter`` or
        ``radius``. Nothing is written to ``adata`` when an error is raised.
    TypeError
        If a keyword is not a setting of :class:`~sctorch.genomap.GenoMapConfig`.
    MemoryError
        Before any allocation, if the gene × gene matrices of the construction (about
        ``32 · n_genes²`` bytes) would not fit in the memory available; the message gives
        the estimate and advises selecting highly variable genes.
    """
    cfg = resolve_config(GenoMapConfig, None, config, kwargs)
    check_copy(adata, copy)
    rows, cols, record = _place(
        adata, layer=layer, genes=genes, shape=shape, config=cfg, rng=rng, progress=progress
    )
    target = adata.copy() if copy else adata
    target.var[f"{key_added}_row"] = rows
    target.var[f"{key_added}_col"] = cols
    target.uns[key_added] = record
    return target if copy else None


def _place(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genes=None,
    shape=None,
    config: GenoMapConfig | None = None,
    rng: RandomState = 0,
    progress: bool = True,
):
    """``(rows, cols, record)`` of :func:`genomap` (validated, computed, nothing written).

    ``rows``/``cols``: int64 ``(n_vars,)`` pixel of each gene (-1: not placed); ``record``
    the ``uns`` entry. ``config``: validated settings (``None``: the defaults). A backed
    ``adata`` is read ``batch_size`` cells at a time.
    """
    cfg = GenoMapConfig() if config is None else config
    metric, epsilon, max_iter, tol = cfg.metric, cfg.epsilon, cfg.max_iter, cfg.tol
    solver, radius, batch_size = cfg.solver, cfg.radius, cfg.batch_size
    check_unique_var_names(adata)
    gidx = select_genes(adata, genes)
    n = gidx.size
    shape = _check_shape(shape, n)
    check_fits_in_memory(
        GENOMAP_BYTES_PER_PAIR * float(max(n, shape[0] * shape[1])) ** 2,
        what=f"A GenoMap of {n} genes on a {shape[0]} × {shape[1]} grid (gene × gene matrices)",
        advice="select highly variable genes first (e.g. scanpy.pp.highly_variable_genes "
        "with n_top_genes=2000) and pass genes=adata.var['highly_variable'].",
    )
    X = get_matrix(adata, layer)
    counts = resolve_input_scale(X, "auto", what=describe_source(layer)) == "counts"
    C1 = distance_from_matrix(
        X, gidx, metric=metric, counts=counts, batch_size=batch_size, names=adata.var_names[gidx]
    )
    seed = seed_int(get_rng(rng) if isinstance(rng, np.random.Generator) else rng)
    pos, n_iter, converged = solve(
        C1,
        shape,
        seed=seed,
        epsilon=epsilon,
        solver=solver,
        max_iter=max_iter,
        tol=tol,
        radius=radius,
        progress=progress,
    )
    objective = gw_objective(C1, pos)

    rows = np.full(adata.n_vars, -1, dtype=np.int64)
    cols = np.full(adata.n_vars, -1, dtype=np.int64)
    rows[gidx] = pos[:, 0]
    cols[gidx] = pos[:, 1]
    return (
        rows,
        cols,
        {
            "shape": np.asarray(shape, dtype=np.int64),  # (H, W); an array so h5ad can store it
            "objective": float(objective),
            "n_iter": int(n_iter),
            "converged": bool(converged),
            "params": make_params(
                layer=layer,
                n_genes=int(n),
                shape=shape,
                metric=metric,
                epsilon=float(epsilon),
                max_iter=int(max_iter),
                tol=float(tol),
                solver=solver,
                radius=int(radius),
                counts_input=bool(counts),
                rng=rng if not isinstance(rng, np.random.Generator) else "Generator",
                seed=int(seed),
            ),
        },
    )


def genomap_images(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    key: str = _keys.GENOMAP,
    cells=None,
    batch_size: int = 4096,
) -> np.ndarray:
    """GenoMap images of cells: each gene's value on its pixel.

    Parameters
    ----------
    adata
        Cells × genes carrying a placement from :func:`genomap` (``var`` columns and
        ``uns[key]``).
    layer
        Matrix whose values fill the pixels (``None``: ``adata.X``), copied **as they
        are** (no normalisation): pass counts to get counts, a log-normalised layer
        to get log-normalised images.
    key
        The ``key_added`` of :func:`genomap`.
    cells
        Cells to draw: ``None`` (all), positions, obs names or a boolean mask.
    batch_size
        Cells densified at a time (sparse input stays sparse until its batch).

    Returns
    -------
    float32 array ``(n_cells, H, W)``; empty pixels (no gene) are 0.

    Raises
    ------
    KeyError
        No placement under ``key``, or a missing ``layer`` / cell name.
    ValueError
        An inconsistent placement (see :func:`sctorch.genomap.placement_index`), bad
        ``cells``, or non-finite values (NaN, inf) in the data.
    """
    placement = Placement.from_adata(adata, key)
    X = get_matrix(adata, layer)
    check_finite(X, what=describe_source(layer))
    return placement.images(X, cells=select_cells(adata, cells), batch_size=batch_size)


def genomap_to_genes(
    images: np.ndarray, adata: ad.AnnData, *, key: str = _keys.GENOMAP
) -> np.ndarray:
    """Read genes back off GenoMap images: the exact inverse of :func:`genomap_images`.

    Parameters
    ----------
    images
        Array ``(n_cells, H, W)`` (any source, e.g. a network's output), or
        ``(n_cells, 1, H, W)`` with a channel axis of length one.
    adata
        AnnData carrying the placement (only ``var`` and ``uns[key]`` are read).
    key
        The ``key_added`` of :func:`genomap`.

    Returns
    -------
    float32 array ``(n_cells, n_vars)`` in ``adata.var`` order; each placed gene takes
    its pixel's value; genes with no pixel (``-1``) are NaN.

    Raises
    ------
    KeyError
        No placement under ``key``.
    ValueError
        If ``images`` is not ``(n, H, W)`` for the stored grid.
    """
    return Placement.from_adata(adata, key).genes_of(images, what=f"the GenoMap {key!r}")
