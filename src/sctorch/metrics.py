"""Evaluation metrics: gene-/cell-wise agreement of two matrices and clustering scores.

Gene-wise metrics compare the columns (one value per gene, across cells); cell-wise
metrics compare the rows (one value per cell, across genes). Both accept dense arrays
or :mod:`scipy.sparse` matrices of the same shape, :class:`pandas.DataFrame` (cells ×
genes) and :class:`anndata.AnnData` (its ``X``; a backed AnnData is read by blocks), and
are computed in blocks of rows, so a sparse matrix is never densified as a whole.

Inputs that carry labels are matched by label, never by position: when both carry cell
and gene names (DataFrame index/columns, AnnData ``obs_names``/``var_names``), ``b`` is
reordered to ``a``'s order, names present in one and not the other are refused (naming
them), and the outputs are indexed by the names. Unlabelled inputs (arrays, sparse
matrices) are matched by position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from ._utils import (
    check_finite,
    describe_source,
    get_matrix,
    is_backed,
    iter_batches,
    iter_row_blocks,
    read_rows,
    to_dense,
)

if TYPE_CHECKING:
    import anndata as ad

Axis = Literal["gene", "cell"]

__all__ = [
    "cell_cosine",
    "cell_mse",
    "cell_pearson",
    "cluster_and_score",
    "clustering_scores",
    "denoising_scores",
    "gene_cosine",
    "gene_mse",
    "gene_pearson",
    "pairwise_scores",
]


def _n_non_finite(X, name: str, batch_size: int = 4096) -> int:
    """Number of NaN/inf values in a dense or sparse matrix (dense scanned in row blocks)."""
    if X.dtype.kind not in "biufc":
        raise ValueError(
            f"{name} has dtype {X.dtype}, not a number; pass a numeric matrix "
            "(e.g. the .X or a layer of an AnnData)."
        )
    if X.dtype.kind in "biu":
        return 0
    if is_backed(X):
        return sum(int(np.count_nonzero(~np.isfinite(_values(b)))) for _, b in iter_row_blocks(X))
    if sparse.issparse(X):
        return int(np.count_nonzero(~np.isfinite(X.data)))
    return sum(
        int(np.count_nonzero(~np.isfinite(np.asarray(X[sl]))))
        for sl in iter_batches(X.shape[0], batch_size)
    )


def _values(block) -> np.ndarray:
    return np.asarray(block.data) if sparse.issparse(block) else np.asarray(block)


def _check_pair(a, b) -> None:
    """Same 2-D shape, non-empty, numeric and finite; ``ValueError`` saying what to do."""
    if a.shape != b.shape:
        raise ValueError(
            f"The two matrices differ in shape: {a.shape} vs {b.shape}. "
            "Align cells and genes first."
        )
    if len(a.shape) != 2:
        raise ValueError(f"Expected 2-D matrices (cells × genes), got shape {a.shape}.")
    if 0 in a.shape:
        what = "cells (rows)" if a.shape[0] == 0 else "genes (columns)"
        raise ValueError(
            f"a and b have 0 {what} (shape {a.shape}): there is nothing to score. "
            "Pass matrices with at least one cell and one gene."
        )
    bad = {name: _n_non_finite(X, name) for name, X in (("a", a), ("b", b))}
    if any(bad.values()):
        found = " and ".join(
            f"{name} holds {n} non-finite value(s) (NaN or inf)" for name, n in bad.items() if n
        )
        raise ValueError(
            f"{found}, out of {a.shape[0]} × {a.shape[1]}; the scores of the "
            "affected genes/cells would be NaN. Remove or impute them first (drop "
            "those cells or genes, or replace them, e.g. numpy.nan_to_num) and "
            "score again."
        )


def _block(X, sl):
    return to_dense(read_rows(X, sl), np.float64)


def _as_rows(X):
    if is_backed(X) and hasattr(X, "shape") and hasattr(X, "dtype"):
        return X  # the on-disk matrix of a backed AnnData, read by blocks
    return sparse.csr_matrix(X) if sparse.issparse(X) else np.asarray(X)


class _Labelled:
    """A matrix with its cell (row) and gene (column) names, or ``None`` when unlabelled."""

    def __init__(self, x, name: str):
        import anndata as ad

        self.rows = self.cols = None
        if isinstance(x, ad.AnnData):
            self.rows, self.cols = pd.Index(x.obs_names), pd.Index(x.var_names)
            self.X = x.X
            if self.X is None:
                raise ValueError(f"{name} is an AnnData without X; pass the matrix to score.")
        elif isinstance(x, pd.DataFrame):
            self.rows, self.cols = pd.Index(x.index), pd.Index(x.columns)
            self.X = x.to_numpy()
        else:
            self.X = x
        for what, idx in (("cell", self.rows), ("gene", self.cols)):
            if idx is not None and not idx.is_unique:
                dup = idx[idx.duplicated()].unique()[:5].tolist()
                raise ValueError(
                    f"{name} has duplicate {what} names, e.g. {dup}; labels must be unique "
                    "to match a and b by name (make them unique, or pass arrays to match "
                    "by position)."
                )


def _match(a: pd.Index, b: pd.Index, what: str) -> np.ndarray | None:
    """Positions of ``a``'s labels in ``b`` (``None``: same order); refuse other labels."""
    if a.equals(b):
        return None
    only_a, only_b = a.difference(b, sort=False), b.difference(a, sort=False)
    if len(only_a) or len(only_b):
        raise ValueError(
            f"a and b have different {what} names ({len(a)} vs {len(b)}; matched by "
            f"name): {len(only_a)} only in a, e.g. {only_a[:5].tolist()}, {len(only_b)} only "
            f"in b, e.g. {only_b[:5].tolist()}. Subset both to the shared {what}s "
            "(e.g. b[a.obs_names] / b.loc[a.index, a.columns]) or pass arrays to match "
            "by position."
        )
    return b.get_indexer(a)


def _align(a, b):
    """``(A, B, cell names, gene names)``: ``b`` reordered to ``a``'s labels when both have them."""
    la, lb = _Labelled(a, "a"), _Labelled(b, "b")
    A, B = _as_rows(la.X), _as_rows(lb.X)
    rows = cols = None
    if la.rows is not None and lb.rows is not None:
        r = _match(la.rows, lb.rows, "cell")
        c = _match(la.cols, lb.cols, "gene")
        if r is not None or c is not None:
            if is_backed(B):  # a backed b: read once, then reordered in memory
                B = _concat_rows(B)
            B = B[r] if r is not None else B
            B = B[:, c] if c is not None else B
            B = sparse.csr_matrix(B) if sparse.issparse(B) else B
        rows, cols = la.rows, la.cols
    else:
        labelled = la if la.rows is not None else lb
        rows, cols = labelled.rows, labelled.cols
        if rows is not None and (len(rows), len(cols)) != tuple(A.shape[:2]):
            rows = cols = None  # shapes differ: _check_pair says so
        if rows is not None and (len(rows), len(cols)) != tuple(B.shape[:2]):
            rows = cols = None
    return A, B, rows, cols


def _concat_rows(X):
    """A backed matrix read into memory block by block (sparse stays sparse)."""
    blocks = [block for _, block in iter_row_blocks(X)]
    if not blocks:
        return np.zeros(X.shape, dtype=np.float32)
    if sparse.issparse(blocks[0]):
        return sparse.vstack(blocks, format="csr")
    return np.vstack(blocks)


def pairwise_scores(a, b, *, axis: Axis = "gene", batch_size: int = 2048) -> pd.DataFrame:
    """Pearson correlation, cosine similarity and MSE between matching vectors of two matrices.

    Parameters
    ----------
    a, b
        Matrices of shape ``(n_cells, n_genes)`` on the same scale (e.g. both
        log1p-normalised): dense or sparse arrays (matched by position), DataFrames or
        AnnData (``X``, in memory or backed; matched by cell and gene names).
    axis
        ``"gene"``: one score per column (gene, across cells); ``"cell"``: one score per
        row (cell, across genes).
    batch_size
        Rows densified at a time.

    Returns
    -------
    DataFrame with columns ``pearson``, ``cosine``, ``mse`` and one row per gene
    (``n_genes``) or cell (``n_cells``), indexed by the gene (cell) names when an input
    carries them. Pearson is NaN where either vector is constant; cosine is NaN where
    either vector is all zero.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are not 2-D, have 0 cells or 0 genes, are not
        numeric, or hold NaN/inf (says which argument holds how many), labelled inputs
        carry different or duplicate names (names them), or ``axis`` is unknown.
    """
    A, B, rows, cols = _align(a, b)
    _check_pair(A, B)
    if axis not in ("gene", "cell"):
        raise ValueError(f"axis must be 'gene' or 'cell', got {axis!r}.")
    n_rows, n_cols = A.shape
    if axis == "gene":
        sx = np.zeros(n_cols)
        sy = np.zeros(n_cols)
        sxx = np.zeros(n_cols)
        syy = np.zeros(n_cols)
        sxy = np.zeros(n_cols)
        for sl in iter_batches(n_rows, batch_size):
            x, y = _block(A, sl), _block(B, sl)
            sx += x.sum(0)
            sy += y.sum(0)
            sxx += (x * x).sum(0)
            syy += (y * y).sum(0)
            sxy += (x * y).sum(0)
        n = float(n_rows)
        out = _from_sums(n, sx, sy, sxx, syy, sxy)
    else:
        parts = []
        for sl in iter_batches(n_rows, batch_size):
            x, y = _block(A, sl), _block(B, sl)
            parts.append(
                _from_sums(
                    float(n_cols),
                    x.sum(1),
                    y.sum(1),
                    (x * x).sum(1),
                    (y * y).sum(1),
                    (x * y).sum(1),
                )
            )
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("pearson", "cosine", "mse")}
    index = cols if axis == "gene" else rows
    return pd.DataFrame(out, index=None if index is None else pd.Index(index, dtype=object))


def _from_sums(n, sx, sy, sxx, syy, sxy) -> dict[str, np.ndarray]:
    cov = sxy - sx * sy / n
    vx = np.maximum(sxx - sx * sx / n, 0.0)
    vy = np.maximum(syy - sy * sy / n, 0.0)
    # a vector is constant when its variance vanishes relative to its second moment
    const = (vx <= 1e-10 * sxx) | (vy <= 1e-10 * syy)
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = np.where(const, np.nan, cov / np.sqrt(vx * vy))
        norm = np.sqrt(sxx * syy)
        cosine = np.where(norm > 0, sxy / norm, np.nan)
    mse = (sxx - 2 * sxy + syy) / n
    return {
        "pearson": np.clip(pearson, -1.0, 1.0),
        "cosine": np.clip(cosine, -1.0, 1.0),
        "mse": np.maximum(mse, 0.0),
    }


_WHAT = {
    "pearson": ("Pearson correlation", "NaN where either vector is constant"),
    "cosine": ("cosine similarity", "NaN where either vector is all zero"),
    "mse": ("mean squared error", "never NaN"),
}


def _one_score(axis: Axis, column: str):
    """Make the function that returns one column of :func:`pairwise_scores`."""
    what, nan = _WHAT[column]
    unit, other, n = (
        ("gene", "cells", "n_genes") if axis == "gene" else ("cell", "genes", "n_cells")
    )

    def score(a, b, *, batch_size: int = 2048) -> np.ndarray | pd.Series:
        out = pairwise_scores(a, b, axis=axis, batch_size=batch_size)[column]
        return out.to_numpy() if isinstance(out.index, pd.RangeIndex) else out

    score.__name__ = score.__qualname__ = f"{unit}_{column}"
    score.__module__ = __name__
    score.__doc__ = f"""{what.capitalize()} per {unit}, across {other}.

    Parameters
    ----------
    a, b
        Matrices of shape ``(n_cells, n_genes)`` on the same scale (e.g. both
        log1p-normalised): dense or sparse arrays (matched by position), DataFrames or
        AnnData (``X``, in memory or backed; matched by cell and gene names).
    batch_size
        Rows densified at a time.

    Returns
    -------
    float64 array of shape ``({n},)`` (a :class:`pandas.Series` indexed by the {unit}
    names when an input carries names); {nan}.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are not 2-D, have 0 cells or 0 genes, are not
        numeric, or hold NaN/inf (says which argument holds how many), or labelled inputs
        carry different or duplicate names (names them).
    """
    return score


gene_pearson = _one_score("gene", "pearson")
cell_pearson = _one_score("cell", "pearson")
gene_cosine = _one_score("gene", "cosine")
cell_cosine = _one_score("cell", "cosine")
gene_mse = _one_score("gene", "mse")
cell_mse = _one_score("cell", "mse")


def _labels(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels as two string arrays (see :func:`clustering_scores`)."""
    arrays = {
        "labels_true": np.asarray(labels_true, dtype=object),
        "labels_pred": np.asarray(labels_pred, dtype=object),
    }
    for name, v in arrays.items():
        if v.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one label per cell), got shape {v.shape}.")
    t, p = (pd.Series(v) for v in arrays.values())
    if len(t) != len(p):
        raise ValueError(f"labels_true has {len(t)} entries but labels_pred has {len(p)}.")
    if len(t) == 0:
        raise ValueError(
            "labels_true and labels_pred are empty (0 cells): there is nothing to "
            "score. Pass one label per cell."
        )

    def n_bad(x: pd.Series) -> int:
        inf = x.map(lambda v: isinstance(v, float | np.floating) and np.isinf(v))
        return int((x.isna() | inf.astype(bool)).sum())

    bt, bp = n_bad(t), n_bad(p)
    if bt or bp:
        raise ValueError(
            f"Labels contain missing or non-finite values (NaN, None or inf: {bt} in "
            f"labels_true, {bp} in labels_pred); drop those cells first."
        )
    return t.astype(str).to_numpy(), p.astype(str).to_numpy()


def clustering_scores(labels_true, labels_pred) -> dict[str, float]:
    """Agreement of two labelings with scikit-learn.

    Parameters
    ----------
    labels_true, labels_pred
        Array-likes of length ``n_cells`` (any hashable labels).

    Returns
    -------
    ``{"ARI", "FMI", "NMI", "completeness"}``: adjusted Rand index, Fowlkes–Mallows
    index, normalised mutual information and completeness score.

    Raises
    ------
    ValueError
        If the labels are not 1-D, the lengths differ, there are none, or a label is
        missing or non-finite (NaN, None, ±inf; says how many in each argument).
    """
    from sklearn import metrics as skm

    t, p = _labels(labels_true, labels_pred)
    return {
        "ARI": float(skm.adjusted_rand_score(t, p)),
        "FMI": float(skm.fowlkes_mallows_score(t, p)),
        "NMI": float(skm.normalized_mutual_info_score(t, p)),
        "completeness": float(skm.completeness_score(t, p)),
    }


def cluster_and_score(
    adata: ad.AnnData,
    labels_key: str,
    *,
    layer: str | None = None,
    use_rep: str | None = None,
    resolution: float = 1.0,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    random_state: int = 0,
) -> dict[str, float]:
    """Leiden-cluster one representation of ``adata`` and score it against known labels.

    Runs Scanpy PCA (unless ``use_rep`` names an ``obsm`` embedding) → neighbours →
    Leiden (igraph flavour) on a throw-away AnnData, so ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells × genes; the matrix (``layer`` or ``X``) should be log-normalised. A
        backed AnnData is read block by block (the matrix is then held in memory once,
        sparse when stored sparse, for the PCA).
    labels_key
        Column of ``adata.obs`` with the true labels.
    layer
        Layer to cluster (``None``: ``adata.X``). Ignored when ``use_rep`` is given.
    use_rep
        Key of ``adata.obsm`` to cluster directly (e.g. ``"X_scrobust"``).
    resolution, n_pcs, n_neighbors, random_state
        Passed to :func:`scanpy.tl.leiden`, :func:`scanpy.pp.pca` and
        :func:`scanpy.pp.neighbors`.

    Returns
    -------
    The dict of :func:`clustering_scores` plus ``n_clusters``. With a single gene (or
    ``min(n_cells, n_genes) - 1 < 1``) the matrix itself is clustered instead of PCs.

    Raises
    ------
    KeyError
        If ``labels_key``, ``layer`` or ``use_rep`` is missing.
    ValueError
        If ``adata`` has fewer than 2 cells, the matrix or embedding has 0 columns or
        holds NaN/inf (says how many), or a label is missing or non-finite. All checks
        run before any clustering; ``adata`` is never modified.
    """
    import anndata as ad
    import scanpy as sc

    if labels_key not in adata.obs:
        raise KeyError(
            f"labels_key {labels_key!r} not found in adata.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
    if adata.n_obs < 2:
        raise ValueError(
            f"adata has {adata.n_obs} cell(s); clustering needs at least 2. Pass "
            "the full data set, not a subset this small."
        )
    labels = adata.obs[labels_key].to_numpy()
    _labels(labels, labels)  # missing labels fail here, before the clustering
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(
                f"use_rep {use_rep!r} not found in adata.obsm (keys: {list(adata.obsm.keys())})."
            )
        R = np.asarray(adata.obsm[use_rep], dtype=np.float32).reshape(adata.n_obs, -1)
        what = f"adata.obsm[{use_rep!r}]"
    else:
        X = get_matrix(adata, layer)
        what = describe_source(layer)
        R = X
        if is_backed(X):  # a backed AnnData: read by blocks (PCA needs it in memory)
            check_finite(X, what=what)
            R = _concat_rows(X)
    if R.shape[1] == 0:
        raise ValueError(
            f"{what} has 0 columns: nothing to cluster. Pass a layer or use_rep "
            "with at least one gene or dimension."
        )
    check_finite(R, what=what)
    tmp = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names))
    n_comp = int(min(n_pcs, min(R.shape) - 1))
    if use_rep is not None or n_comp < 1:
        tmp.obsm["rep"] = R if use_rep is not None else to_dense(R, np.float32)
        rep = "rep"
    else:
        tmp = ad.AnnData(R.astype(np.float32), obs=tmp.obs)
        sc.pp.pca(tmp, n_comps=n_comp, random_state=random_state)
        rep = "X_pca"
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep=rep, random_state=random_state)
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        random_state=random_state,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    scores = clustering_scores(labels, tmp.obs["leiden"].to_numpy())
    scores["n_clusters"] = int(tmp.obs["leiden"].nunique())
    return scores


def _dense64(X) -> np.ndarray:
    """A float64 dense copy of an array, sparse matrix or AnnData's ``X``."""
    X = get_matrix(X, None) if hasattr(X, "obs_names") else X
    return to_dense(X, dtype=np.float64)


def _log_normalised(X: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``scanpy.pp.normalize_total(target_sum=1e4)`` then ``log1p``, on a copy."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X.copy())
    sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    return np.asarray(a.X)


def _poisson_nll(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """``mcv_sweep.poisson_nll_loss(y_pred, y_true) = mean(y_pred − y_true log(y_pred + 1e-6))``."""
    return float((y_pred - y_true * np.log(y_pred + 1e-6)).mean())


def denoising_scores(train, test, denoised) -> dict[str, float]:
    """The openproblems denoising task's metrics of one method's output, raw and scaled.

    openproblems-bio/task_denoising (``src/metrics/mse`` and ``src/metrics/poisson``):
    every count of a full-depth matrix is split binomially, a share to the method's input
    (``train``) and the rest held out (``test``; the task splits 0.9 / 0.1), and the
    method's output is scored against the held-out molecules:

    - ``mse``: mean squared error between ``log1p(normalize_total(1e4))`` of ``test`` and
      of ``denoised`` (lower is better);
    - ``poisson``: ``denoised`` is rescaled by ``test.sum() / train.sum()`` (the held-out
      depth) and scored by the Poisson negative log-likelihood of molecular
      cross-validation (Batson, Royer & Webber 2019, ``mcv_sweep.poisson_nll_loss``) with
      the **MCV argument order** (prediction = the rescaled output, truth = the held-out
      counts): the likelihood of the unseen molecules under the output (lower is better);
    - ``poisson_op``: the same with the arguments the other way round, as the
      openproblems script passes them (the held-out counts as the prediction);
    - ``*_scaled``: each score scaled as the task's leaderboard does, 0 = no denoising
      (``train`` itself), 1 = perfect denoising (``test`` itself); higher is better.

    Parameters
    ----------
    train
        ``(n_cells, n_genes)`` **raw counts** the method was given (array, sparse matrix
        or AnnData ``X``).
    test
        ``(n_cells, n_genes)`` held-out **raw counts** of the same cells and genes.
    denoised
        ``(n_cells, n_genes)`` method output on the **count scale of** ``train`` (not
        log-normalised).

    Returns
    -------
    ``{"mse", "poisson", "poisson_op", "mse_scaled", "poisson_scaled",
    "poisson_op_scaled"}``. Computed densely in float64 (three ``n_cells × n_genes``
    arrays in memory).

    Raises
    ------
    ValueError
        If the shapes differ, a value is NaN, infinite or negative, or ``train`` or
        ``test`` holds no count.
    """
    from sklearn.metrics import mean_squared_error

    mats = {"train": _dense64(train), "test": _dense64(test), "denoised": _dense64(denoised)}
    shapes = {n: m.shape for n, m in mats.items()}
    if len(set(shapes.values())) != 1 or len(shapes["train"]) != 2:
        raise ValueError(f"train, test and denoised must be 2-D of one shape, got {shapes}.")
    for n, m in mats.items():
        bad = int((~np.isfinite(m)).sum() + (m < 0).sum())
        if bad:
            raise ValueError(
                f"{n} holds {bad} NaN, infinite or negative value(s); the denoising metrics "
                "need counts (train, test) and a count-scale output (denoised)."
            )
    tr, te, de = mats["train"], mats["test"], mats["denoised"]
    if tr.sum() <= 0 or te.sum() <= 0:
        raise ValueError("train and test must each hold at least one count.")
    log_test = _log_normalised(te)
    depth = te.sum() / tr.sum()

    def scores(x: np.ndarray) -> tuple[float, float, float]:
        pred = x * depth
        return (
            float(mean_squared_error(log_test, _log_normalised(x))),
            _poisson_nll(pred, te),
            _poisson_nll(te, pred),
        )

    # the task's controls: no denoising returns train, perfect denoising returns test
    raw, base, perfect = scores(de), scores(tr), scores(te)
    names = ("mse", "poisson", "poisson_op")
    out = dict(zip(names, raw, strict=True))
    for i, n in enumerate(names):
        out[f"{n}_scaled"] = (base[i] - raw[i]) / (base[i] - perfect[i])
    return out
