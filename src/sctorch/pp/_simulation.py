"""The SAVER / TCER evaluation protocol: a high-quality reference and efficiency loss."""

from __future__ import annotations

import anndata as ad
import numpy as np
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from .._utils import (
    RandomState,
    accepts_random_state,
    check_cell_totals,
    check_copy,
    check_counts,
    check_not_empty,
    check_positive,
    check_unique_var_names,
    describe_source,
    get_matrix,
    get_rng,
    is_backed,
    iter_row_blocks,
    make_params,
    row_sums,
)


def _output_dtype(dtype: np.dtype, y_max: int) -> np.dtype:
    """Dtype that holds every drawn count exactly (see the Returns of the caller)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        out = np.promote_types(dtype, np.int32)  # int8/16, uint8/16 -> int32
        return out if y_max <= np.iinfo(out).max else np.dtype(np.int64)
    if dtype.kind == "f":
        for cand in map(np.dtype, (np.float32, np.float64)):
            if cand.itemsize >= dtype.itemsize and y_max <= 2 ** (np.finfo(cand).nmant + 1):
                return cand
        return np.dtype(np.float64)
    return np.dtype(np.float32)


@accepts_random_state
@doc_params
def simulate_efficiency_loss(
    adata: ad.AnnData,
    *,
    efficiency_shape: float = 10.0,
    efficiency_rate: float = 2000.0,
    scale: float = 1e5,
    layer: str | None = None,
    key_added: str = _keys.OBSERVED_LAYER,
    rng: RandomState = 0,
    copy: bool = False,
) -> ad.AnnData | None:
    r"""Down-sample counts with the Poisson–gamma efficiency-loss model.

    The observation model of SAVER (Huang et al. 2018) used by TCER (Wei et al. 2024,
    eq. 17): every cell :math:`c` gets an efficiency
    :math:`\tau_c \sim \mathrm{Gamma}(\text{shape}, \text{rate})` (``rate``, not
    scale: mean ``shape / rate``), the true expression is
    :math:`\lambda_{gc} = x_{gc} / \sum_g x_{gc} \times \text{scale}` and the observed
    counts are :math:`Y_{gc} \sim \mathrm{Poisson}(\tau_c \lambda_{gc})`.

    With the defaults the mean efficiency is 10 / 2000 = 0.5 %; the TCER paper's three
    levels are shape 15, 10 and 8 at rate 2000 (0.75 %, 0.5 %, 0.4 %).

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``) of **raw counts**, normally the
        high-quality reference from :func:`select_reference`. May be backed (read by
        blocks of cells; the new layer is held in memory).
    efficiency_shape, efficiency_rate
        Shape and rate of the gamma distribution of per-cell efficiencies.
    scale
        Total of :math:`\lambda_{\cdot c}` per cell (expected library before loss).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        Name of the output layer.
    rng
        Seed or :class:`numpy.random.Generator`; the same seed gives the same result.
    {random_state}
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or a copy when ``copy=True``), having written

    - ``layers[key_added]``: observed counts, ``n_obs × n_vars``, the same sparse/dense
      format as the input (CSC stays CSC), integer values drawn and checked in int64,
      then written as: the input's integer dtype widened to at least ``int32``
      (``int8``/``int16``/``uint8``/``uint16`` → ``int32``, which the draws cannot
      overflow unless ``scale`` is huge; then ``int64``); for float input ``float32``
      or ``float64``, whichever of them at least as wide as the input holds every
      count exactly (``float16`` → ``float32``; ``float32`` → ``float64`` only above
      2**24); for any other dtype ``float32``;
    - ``obs['efficiency']``: :math:`\tau_c` (float64);
    - ``uns[key_added]['params']``: the arguments and package versions.

    Raises
    ------
    KeyError
        If ``layer`` does not exist.
    ValueError
        If ``adata`` has 0 cells or 0 genes, if ``var_names`` has duplicates, if the
        input is not raw counts (non-finite, negative or non-integer values), if a cell
        has zero counts, or if a parameter is not positive. ``adata`` is left unchanged.
    TypeError
        If ``rng`` is not an int, a :class:`numpy.random.Generator` or ``None``.
    """
    check_copy(adata, copy)
    check_positive(efficiency_shape=efficiency_shape, efficiency_rate=efficiency_rate, scale=scale)
    check_not_empty(adata)
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    what = describe_source(layer)
    check_counts(X, what=what)
    lib = check_cell_totals(X, what=what)
    gen = get_rng(rng)
    tau = gen.gamma(shape=efficiency_shape, scale=1.0 / efficiency_rate, size=adata.n_obs)
    mult = tau * scale / lib  # per-cell factor: Y ~ Poisson(x * mult)
    in_dtype = X.dtype if np.issubdtype(X.dtype, np.number) else np.dtype(np.float32)

    if sparse.issparse(X) or (is_backed(X) and X.shape[0] and sparse.issparse(X[:1])):
        # CSR blocks of rows (one block in memory; 8,192 rows at a time from a backed file),
        # drawn in row-major order: the same stream whatever the blocks
        blocks = [b for _, b in iter_row_blocks(X, 8192)] if is_backed(X) else [X]
        Xc = sparse.vstack(
            [
                sparse.csr_matrix(b).sorted_indices()  # a copy: X is left as it was
                for b in blocks
            ],
            format="csr",
        )
        rows = np.repeat(np.arange(Xc.shape[0]), np.diff(Xc.indptr))
        lam = Xc.data.astype(np.float64) * mult[rows]
        y = gen.poisson(lam)  # int64: no overflow whatever the input dtype
        out_dtype = _output_dtype(in_dtype, int(y.max()) if y.size else 0)
        Y = sparse.csr_matrix((y.astype(out_dtype), Xc.indices, Xc.indptr), shape=Xc.shape)
        Y.eliminate_zeros()
        if getattr(X, "format", "csr") == "csc":
            Y = Y.tocsc()
    else:  # draw on the non-zeros in row-major order: the same stream as the CSR path
        Xd = np.asarray(X[:] if is_backed(X) else X)
        rows, cols = np.nonzero(Xd)
        y = gen.poisson(Xd[rows, cols].astype(np.float64) * mult[rows])
        out_dtype = _output_dtype(in_dtype, int(y.max()) if y.size else 0)
        Y = np.zeros(Xd.shape, dtype=out_dtype)
        Y[rows, cols] = y

    target = adata.copy() if copy else adata
    target.layers[key_added] = Y
    target.obs[_keys.EFFICIENCY_OBS] = tau
    target.uns[key_added] = {
        "params": make_params(
            efficiency_shape=efficiency_shape,
            efficiency_rate=efficiency_rate,
            scale=scale,
            layer=layer,
            rng=rng if not isinstance(rng, np.random.Generator) else "Generator",
        )
    }
    return target if copy else None


def select_reference(
    adata: ad.AnnData,
    *,
    min_library_quantile: float = 0.25,
    min_detection: float = 0.25,
    detection_among: str = "all",
    layer: str | None = None,
) -> ad.AnnData:
    """Keep the high-quality cells and well-detected genes of a counts matrix.

    The "high-quality reference" of SAVER (Huang et al. 2018) and TCER (Wei et al. 2024,
    §Data): cells whose library size is at least the ``min_library_quantile``
    quantile of all library sizes, and genes detected (count > 0) in at least a
    fraction ``min_detection`` of the cells.

    Which cells the detection fraction is counted over is not fixed by the papers'
    text. By default (``detection_among="all"``) both filters are computed on the
    input matrix, as SAVER's R code subsets rows and columns in one step; on
    ``intestine_moor2018`` this keeps 1,037 cells × 2,781 genes. ``"kept"`` counts
    detection among the kept cells only (3,357 genes there).

    Parameters
    ----------
    adata
        Cells × genes of **raw counts**; may be backed (read by blocks of cells, and the
        kept cells and genes loaded into memory).
    min_library_quantile
        Quantile of the library-size distribution below which cells are dropped (0–1).
    min_detection
        Minimum fraction of cells in which a gene must be detected (0–1).
    detection_among
        ``"all"`` (input cells) or ``"kept"`` (cells that pass the library filter).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.

    Returns
    -------
    A new AnnData (``n_kept_cells × n_kept_genes``), a copy: ``adata`` is unchanged. Its
    ``uns['reference']`` records the thresholds and the library-size cut-off.

    Raises
    ------
    ValueError
        If the input is not raw counts, a threshold is outside [0, 1],
        ``detection_among`` is not ``"all"``/``"kept"``, ``adata`` has 0 cells or 0
        genes, ``var_names`` has duplicates, or no cell or no gene passes (says how
        many of each remained).
    KeyError
        If ``layer`` does not exist.
    """
    for name, val in (
        ("min_library_quantile", min_library_quantile),
        ("min_detection", min_detection),
    ):
        if not 0.0 <= val <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {val!r}.")
    if detection_among not in ("all", "kept"):
        raise ValueError(f"detection_among must be 'all' or 'kept', got {detection_among!r}.")
    check_not_empty(adata)
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    check_counts(X, what=describe_source(layer))
    lib = row_sums(X)
    cutoff = float(np.quantile(lib, min_library_quantile))
    cells = lib >= cutoff
    n_cells = int(cells.sum())
    among = cells if detection_among == "kept" else np.ones(adata.n_obs, bool)
    detected = np.zeros(adata.n_vars, dtype=np.int64)
    for sl, block in iter_row_blocks(X, 8192):  # by blocks of cells (a backed X too)
        b = block[among[sl]]
        detected += np.asarray((b > 0).sum(axis=0)).ravel().astype(np.int64)
    genes = detected >= min_detection * among.sum() if n_cells else np.zeros(adata.n_vars, bool)
    if n_cells == 0 or genes.sum() == 0:
        raise ValueError(
            f"select_reference kept {n_cells} cell(s) and {int(genes.sum())} gene(s) "
            f"(min_library_quantile={min_library_quantile}, min_detection={min_detection}). "
            "Lower the thresholds or check that the input holds raw counts."
        )
    sub = adata[cells, genes]
    out = sub.to_memory() if adata.isbacked else sub.copy()
    out.uns["reference"] = {
        "min_library_quantile": min_library_quantile,
        "min_detection": min_detection,
        "detection_among": detection_among,
        "min_library": cutoff,
    }
    return out
