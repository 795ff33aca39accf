"""GenoMap: gene–gene interactions laid out as an image (Islam & Xing 2023; TCER §GenoMap).

A GenoMap places every gene on its own pixel of an ``H × W`` grid so that genes that
interact (are co-expressed) lie close together. The placement is the Gromov–Wasserstein
(GW) coupling between the gene–gene interaction distance and the 2-D Euclidean distance
between grid points, rounded to a one-to-one gene → pixel map so that an image can be
mapped back to genes exactly.

Besides the public functions this module holds small helpers that other methods (TCER)
reuse: :func:`placement_index`, :func:`grid_shape`, :func:`interaction_distance`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_finite,
    check_non_negative,
    check_unique_var_names,
    describe_source,
    get_matrix,
    get_rng,
    is_integer_matrix,
    iter_batches,
    log_normalize,
    make_params,
    progress_bar,
    seed_int,
)

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger("sctorch")

Metric = Literal["correlation", "cosine"]

__all__ = [
    "genomap",
    "genomap_images",
    "genomap_to_genes",
    "grid_shape",
    "interaction_distance",
    "placement_index",
]


# ----------------------------------------------------------------------------- small helpers
def grid_shape(n_genes: int) -> tuple[int, int]:
    """The smallest near-square grid ``(H, W)`` with ``H * W >= n_genes``.

    ``W = ceil(sqrt(n_genes))`` and ``H = ceil(n_genes / W)``, so ``H <= W <= H + 1``
    (1,024 genes → 32 × 32, 2,025 → 45 × 45, 5,000 → 71 × 71).
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}.")
    w = int(np.ceil(np.sqrt(n_genes)))
    h = int(np.ceil(n_genes / w))
    return h, w


def placement_index(adata: ad.AnnData, key: str = _keys.GENOMAP
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read and validate the GenoMap placement stored under ``key``.

    Parameters
    ----------
    adata
        AnnData on which :func:`genomap` was run (or one with the same ``var`` columns).
    key
        The ``key_added`` that :func:`genomap` used.

    Returns
    -------
    rows, cols
        int64 arrays of shape ``(n_vars,)``: the pixel of every gene of ``adata``;
        ``-1`` for genes that are not placed.
    shape
        The grid ``(H, W)``.

    Raises
    ------
    KeyError
        If ``adata.uns[key]`` or ``adata.var[f"{key}_row"]`` / ``[f"{key}_col"]`` is
        missing: run :func:`genomap` first (or pass the right ``key``).
    ValueError
        If the stored placement is inconsistent: non-integer or out-of-grid pixels, a
        gene placed in one coordinate only, or two genes on the same pixel (e.g. after
        ``var`` was subset or re-ordered by hand in a way that broke it).
    """
    rk, ck = f"{key}_row", f"{key}_col"
    if key not in adata.uns:
        raise KeyError(f"adata.uns[{key!r}] not found: run sctorch.tl.genomap(adata, "
                       f"key_added={key!r}) first (uns keys: {list(adata.uns.keys())}).")
    missing = [c for c in (rk, ck) if c not in adata.var.columns]
    if missing:
        raise KeyError(f"adata.var lacks {missing}: the GenoMap placement {key!r} is "
                       "incomplete. Run sctorch.tl.genomap again on this AnnData.")
    rec = adata.uns[key]
    if "shape" not in rec:
        raise KeyError(f"adata.uns[{key!r}] has no 'shape' entry; run sctorch.tl.genomap again.")
    shape = tuple(int(s) for s in np.asarray(rec["shape"]).ravel())
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"adata.uns[{key!r}]['shape'] must be (H, W) with H, W >= 1, "
                         f"got {rec['shape']!r}.")
    rows = adata.var[rk].to_numpy()
    cols = adata.var[ck].to_numpy()
    for name, v in ((rk, rows), (ck, cols)):
        vf = np.asarray(v, dtype=np.float64)
        if not np.isfinite(vf).all() or not np.array_equal(vf, np.round(vf)):
            raise ValueError(f"adata.var[{name!r}] must hold integer pixel indices (-1 for "
                             "unplaced genes); it holds non-integer or missing values.")
    rows = rows.astype(np.int64)
    cols = cols.astype(np.int64)
    placed = rows >= 0
    if not np.array_equal(placed, cols >= 0):
        raise ValueError(f"adata.var[{rk!r}] and adata.var[{ck!r}] disagree on which genes are "
                         "placed (-1 in one column only).")
    h, w = shape
    if (rows[placed] >= h).any() or (cols[placed] >= w).any() or (rows < -1).any() \
            or (cols < -1).any():
        raise ValueError(f"The placement {key!r} has pixels outside the {h} × {w} grid.")
    flat = rows[placed] * w + cols[placed]
    if np.unique(flat).size != flat.size:
        raise ValueError(f"The placement {key!r} puts {flat.size - np.unique(flat).size} "
                         "gene(s) on an already used pixel; it is not one-to-one.")
    if not placed.any():
        raise ValueError(f"The placement {key!r} places no gene of this AnnData.")
    return rows, cols, (h, w)


def _select_genes(adata: ad.AnnData, genes) -> np.ndarray:
    """Indices of the chosen genes (``None``: all), validated."""
    if genes is None:
        return np.arange(adata.n_vars)
    arr = np.asarray(genes)
    if arr.dtype == bool:
        if arr.shape != (adata.n_vars,):
            raise ValueError(f"A boolean genes= mask must have length n_vars={adata.n_vars}, "
                             f"got shape {arr.shape}.")
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError("genes= must be a 1-D list of gene names or a boolean mask.")
    names = arr.astype(str)
    if len(set(names.tolist())) != names.size:
        raise ValueError("genes= lists a gene more than once.")
    idx = adata.var_names.get_indexer(names)
    if (idx < 0).any():
        bad = names[idx < 0][:5].tolist()
        raise KeyError(f"{int((idx < 0).sum())} gene(s) of genes= are not in adata.var_names, "
                       f"e.g. {bad}.")
    return np.sort(idx)


def _select_cells(adata: ad.AnnData, cells) -> np.ndarray:
    if cells is None:
        return np.arange(adata.n_obs)
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise ValueError(f"A boolean cells= mask must have length n_obs={adata.n_obs}.")
        return np.flatnonzero(arr)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < -adata.n_obs or arr.max() >= adata.n_obs):
            raise ValueError(f"cells= holds positions outside 0..{adata.n_obs - 1}.")
        return arr.astype(np.int64) % max(adata.n_obs, 1)
    idx = adata.obs_names.get_indexer(arr.astype(str))
    if (idx < 0).any():
        raise KeyError(f"{int((idx < 0).sum())} name(s) of cells= are not in adata.obs_names, "
                       f"e.g. {arr[idx < 0][:5].tolist()}.")
    return idx


def _log_block(X, sl, gidx, counts: bool) -> np.ndarray:
    """Rows ``sl`` of ``X`` (log-normalised if counts, using the full library) at ``gidx``."""
    block = X[sl]
    if counts:
        block = log_normalize(block)
    block = block[:, gidx]
    if sparse.issparse(block):
        return block.toarray().astype(np.float64, copy=False)
    return np.asarray(block, dtype=np.float64)


def interaction_distance(adata: ad.AnnData, *, layer: str | None = None, genes=None,
                         metric: Metric = "correlation", batch_size: int = 2048,
                         var_names: Sequence[str] | None = None) -> np.ndarray:
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
    what = describe_source(layer)
    check_finite(X, what=what)
    check_non_negative(X, what=what)
    gidx = (adata.var_names.get_indexer(list(var_names)) if var_names is not None
            else _select_genes(adata, genes))
    if (gidx < 0).any():
        raise KeyError("Some var_names are not in adata.var_names.")
    return _distance_from_matrix(X, gidx, metric=metric, counts=is_integer_matrix(X),
                                 batch_size=batch_size, names=adata.var_names[gidx])


def _distance_from_matrix(X, gidx, *, metric, counts, batch_size, names) -> np.ndarray:
    n_cells = X.shape[0]
    n = gidx.size
    if n_cells < 2:
        raise ValueError(f"At least 2 cells are needed to compute gene interactions, "
                         f"got {n_cells}.")
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
        raise ValueError(f"{int(bad.sum())} gene(s) are constant across cells (e.g. {ex}); their "
                         f"{metric} with other genes is undefined. Remove them (e.g. "
                         "scanpy.pp.filter_genes(adata, min_cells=2)) or leave them out "
                         "via genes=.")
    sd = np.sqrt(var)
    sim = cov / np.outer(sd, sd)
    np.clip(sim, -1.0, 1.0, out=sim)
    dist = 1.0 - sim
    np.fill_diagonal(dist, 0.0)
    return (dist + dist.T) / 2.0


# ----------------------------------------------------------------------------- grid geometry
class _GridConv:
    """Multiply by the grid's Euclidean distance matrix through a 2-D FFT convolution.

    For values ``A`` of shape ``(m, n)`` on the first ``n`` pixels (raster order) of an
    ``H × W`` grid, ``apply(A)`` equals ``A @ D`` with ``D[j, l] = ||p_j - p_l||_2``, in
    O(m · HW log HW) time and without forming ``D`` (O(n²) memory and O(m n²) time).
    The transforms run in single precision (relative error ~1e-6), the result is float64.
    """

    def __init__(self, shape: tuple[int, int], n: int, batch: int = 256):
        import scipy.fft as sfft

        self.h, self.w = shape
        self.n = n
        self.batch = batch
        dy = np.arange(-(self.h - 1), self.h)
        dx = np.arange(-(self.w - 1), self.w)
        kernel = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        self.fs = (sfft.next_fast_len(2 * self.h - 1, real=True),
                   sfft.next_fast_len(2 * self.w - 1, real=True))
        self.kf = sfft.rfft2(kernel.astype(np.float32), s=self.fs)
        self._fft = sfft

    def apply(self, A: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """``A[:, columns] @ D`` (``columns=None``: ``A @ D``)."""
        m = A.shape[0]
        out = np.empty((m, self.n), dtype=np.float64)
        h, w, fs = self.h, self.w, self.fs
        for sl in iter_batches(m, self.batch):
            img = np.zeros((sl.stop - sl.start, h * w), dtype=np.float32)
            block = A[sl]
            img[:, : self.n] = block if columns is None else block[:, columns]
            f = self._fft.rfft2(img.reshape(-1, h, w), s=fs) * self.kf
            full = self._fft.irfft2(f, s=fs)[:, h - 1: 2 * h - 1, w - 1: 2 * w - 1]
            out[sl] = full.reshape(full.shape[0], -1)[:, : self.n]
        return out


def _positions(shape: tuple[int, int], n: int) -> np.ndarray:
    """``(n, 2)`` (row, col) of the first ``n`` pixels in raster order."""
    r, c = np.divmod(np.arange(n), shape[1])
    return np.stack([r, c], axis=1)


def _grid_distance_rows(pos: np.ndarray, rows: slice | np.ndarray,
                        others: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between the pixels ``pos[rows]`` and ``others`` (or ``pos``)."""
    others = pos if others is None else others
    d = (pos[rows, None, :] - others[None, :, :]).astype(np.float64)
    return np.sqrt((d * d).sum(-1))


# ----------------------------------------------------------------------------- the solver
def _spectral_init(C1: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Initial one-to-one placement from a 2-D classical MDS of the interaction distance.

    Genes are sorted into grid rows by the first MDS axis and within each row by the
    second (the "naive layout" of the issue, on MDS rather than PCA axes). Returns
    ``perm`` with ``perm[i]`` the raster pixel of gene ``i``.
    """
    from scipy.sparse.linalg import eigsh

    n = C1.shape[0]
    B = C1 - C1.mean(0, keepdims=True)
    B -= B.mean(1, keepdims=True)
    B *= -0.5
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals, vecs = eigsh(B, k=2, which="LA", v0=v0)
    order_ax = np.argsort(vals)[::-1]
    y1, y2 = vecs[:, order_ax[0]], vecs[:, order_ax[1]]
    # fix the eigenvectors' arbitrary signs so the layout depends on the data only
    y1 = y1 * (np.sign(y1[np.argmax(np.abs(y1))]) or 1.0)
    y2 = y2 * (np.sign(y2[np.argmax(np.abs(y2))]) or 1.0)
    w = shape[1]
    perm = np.empty(n, dtype=np.int64)
    order = np.argsort(y1, kind="stable")
    for start in range(0, n, w):
        idx = order[start: start + w]
        idx = idx[np.argsort(y2[idx], kind="stable")]
        perm[idx] = start + np.arange(idx.size)
    return perm


def _gradient(C1: np.ndarray, perm: np.ndarray, conv: _GridConv) -> np.ndarray:
    """``C1 P D`` for the permutation ``P`` (``P[i, perm[i]] = 1``): an ``(n, n)`` array."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return conv.apply(C1, columns=inv)


def _swap_pairs(pos: np.ndarray, shape: tuple[int, int], radius: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel pairs ``(a, b)`` at Chebyshev distance ``<= radius`` (each pair once)."""
    h, w = shape
    n = pos.shape[0]
    pa, pb = [], []
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue
            r2, c2 = pos[:, 0] + dy, pos[:, 1] + dx
            j = r2 * w + c2
            ok = (r2 < h) & (c2 >= 0) & (c2 < w) & (j < n)
            pa.append(np.flatnonzero(ok))
            pb.append(j[ok])
    pa = np.concatenate(pa)
    pb = np.concatenate(pb)
    dab = np.sqrt(((pos[pa] - pos[pb]) ** 2).sum(1).astype(np.float64))
    return pa, pb, dab


def _dist_to_all(ktab: np.ndarray, pos: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Grid distances from the pixels ``pix`` to all ``pos``, by table look-up."""
    dr = np.abs(pos[pix, 0][:, None] - pos[None, :, 0])
    dc = np.abs(pos[pix, 1][:, None] - pos[None, :, 1])
    return ktab[dr, dc]


def _exchange_search(C1: np.ndarray, shape: tuple[int, int], perm0: np.ndarray, *,
                     max_iter: int, tol: float, radius: int, progress: bool
                     ) -> tuple[np.ndarray, int, bool]:
    r"""Exact square-loss GW over one-to-one couplings, by pairwise exchanges.

    For a permutation coupling :math:`T = P/n` the square-loss GW objective is, up to
    constants fixed by the uniform marginals, :math:`-\tfrac{2}{n^2} f(P)` with
    :math:`f(P) = \langle C_1 P D, P\rangle`; so we maximise :math:`f`. Its gradient
    :math:`G = C_1 P D` is a column gather plus a 2-D FFT convolution (:class:`_GridConv`),
    O(n² log n) instead of the O(n³) dense products of a generic GW solver. Swapping the
    genes ``i, k`` on pixels ``a, b`` changes :math:`f` by
    :math:`2(G_{ib} - G_{ia} + G_{ka} - G_{kb} + 2 C_{1,ik} D_{ab})`; each iteration scores
    every pair of pixels within ``radius`` of each other, applies the best disjoint
    improving swaps together, and recomputes :math:`f` exactly (halving the batch if the
    joint move did not improve it), so :math:`f` increases monotonically.

    Returns the permutation, the number of iterations and whether it converged (no
    improving swap, or a relative gain below ``tol``).
    """
    n = C1.shape[0]
    ar = np.arange(n)
    conv = _GridConv(shape, n)
    pos = _positions(shape, n)
    pa, pb, dab = _swap_pairs(pos, shape, radius)
    ktab = np.hypot(*np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"))
    perm = perm0.copy()
    G = _gradient(C1, perm, conv)
    f = float(G[ar, perm].sum())
    converged = False
    it = 0
    bar = progress_bar(total=max_iter, desc="genomap GW", progress=progress)
    for it in range(1, max_iter + 1):
        bar.update(1)
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = ar
        gi, gk = inv[pa], inv[pb]
        delta = 2.0 * (G[gi, pb] - G[gi, pa] + G[gk, pa] - G[gk, pb] + 2.0 * C1[gi, gk] * dab)
        good = np.flatnonzero(delta > 1e-12 * abs(f))
        if good.size == 0:
            converged = True
            break
        good = good[np.argsort(-delta[good], kind="stable")]
        used = np.zeros(n, dtype=bool)
        sel = []
        for e in good.tolist():
            x, y = pa[e], pb[e]
            if not (used[x] or used[y]):
                used[x] = used[y] = True
                sel.append(e)
        sel = np.asarray(sel, dtype=np.int64)
        while True:
            new = perm.copy()
            new[gi[sel]] = pb[sel]
            new[gk[sel]] = pa[sel]
            if 4 * sel.size < n and it % 25:
                # few genes moved: update G = C1 P D by their columns only
                moved = np.concatenate([gi[sel], gk[sel]])
                Gn = G + C1[:, moved] @ (_dist_to_all(ktab, pos, new[moved])
                                         - _dist_to_all(ktab, pos, perm[moved]))
            else:
                Gn = _gradient(C1, new, conv)
            fn = float(Gn[ar, new].sum())
            if fn > f or sel.size <= 1:
                break
            sel = sel[: sel.size // 2]
        if fn <= f:
            converged = True
            break
        gain = fn - f
        perm, G, f = new, Gn, fn
        logger.debug("genomap GW exchange %d: %d swaps, f=%.8g", it, sel.size, f)
        if gain <= tol * abs(f):
            converged = True
            break
    bar.close()
    return perm, it, converged


def _pot_exact(C1: np.ndarray, pos: np.ndarray, perm0: np.ndarray, *, max_iter: int,
               tol: float) -> np.ndarray:
    """POT's conditional-gradient exact GW (dense, O(n³) per iteration), rounded."""
    import ot
    from scipy.optimize import linear_sum_assignment

    n = C1.shape[0]
    D = _grid_distance_rows(pos, slice(None))
    p = np.full(n, 1.0 / n)
    G0 = np.zeros((n, n))
    G0[np.arange(n), perm0] = 1.0 / n
    T = np.asarray(ot.gromov.gromov_wasserstein(C1, D, p, p, loss_fun="square_loss", G0=G0,
                                                 max_iter=max(int(max_iter), 1),
                                                 tol_rel=tol, tol_abs=0.0))
    _, cols = linear_sum_assignment(T - T.mean(1, keepdims=True), maximize=True)
    return cols.astype(np.int64)


def _entropic(C1: np.ndarray, pos: np.ndarray, perm0: np.ndarray, *, epsilon: float,
              max_iter: int, tol: float) -> np.ndarray:
    """Entropic GW with POT (dense, O(n³) per iteration) rounded to a permutation."""
    import ot
    from scipy.optimize import linear_sum_assignment

    n = C1.shape[0]
    D = _grid_distance_rows(pos, slice(None))
    C1s = C1 / max(C1.max(), 1e-12)
    Ds = D / max(D.max(), 1e-12)
    p = np.full(n, 1.0 / n)
    G0 = np.zeros((n, n))
    G0[np.arange(n), perm0] = 1.0 / n
    T = ot.gromov.entropic_gromov_wasserstein(C1s, Ds, p, p, loss_fun="square_loss",
                                              epsilon=epsilon, G0=G0, max_iter=max_iter,
                                              tol=tol)
    T = np.asarray(T)
    if not np.isfinite(T).all():
        raise ValueError(f"Entropic GW diverged with epsilon={epsilon}; use a larger epsilon "
                         "(e.g. 1e-2) or epsilon=0 for the exact solver.")
    _, cols = linear_sum_assignment(T - T.mean(1, keepdims=True), maximize=True)
    return cols.astype(np.int64)


def gw_objective(C1: np.ndarray, pos: np.ndarray, *, batch_size: int = 1024) -> float:
    """GW square-loss objective of a one-to-one placement, both distances scaled to [0, 1].

    ``(1/n²) Σ_{i,k} (C1[i, k]/max C1 - D[i, k]/max D)²`` where ``D[i, k]`` is the 2-D
    Euclidean distance between the pixels ``pos[i]`` and ``pos[k]`` of genes ``i, k``
    (the coupling ``T = P / n`` of a permutation ``P``). Computed in row blocks.
    """
    n = C1.shape[0]
    c1max = max(float(C1.max()), 1e-12)
    dmax = 0.0
    for sl in iter_batches(n, batch_size):
        dmax = max(dmax, float(_grid_distance_rows(pos, sl).max()))
    dmax = max(dmax, 1e-12)
    total = 0.0
    for sl in iter_batches(n, batch_size):
        diff = C1[sl] / c1max - _grid_distance_rows(pos, sl) / dmax
        total += float((diff * diff).sum())
    return total / (n * n)


# ----------------------------------------------------------------------------- public API
def genomap(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genes: Sequence[str] | np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
    metric: Metric = "correlation",
    epsilon: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    solver: Literal["exchange", "pot"] = "exchange",
    radius: int = 2,
    batch_size: int = 2048,
    key_added: str = _keys.GENOMAP,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
) -> ad.AnnData | None:
    r"""Place genes on a 2-D grid by Gromov–Wasserstein transport (GenoMap construction).

    Follows TCER (Wei et al., Brief Bioinform 2024, §"GenoMap Construction", eqs. 1–9)
    and Islam & Xing, Nat Commun 2023:

    1. interaction distance between genes :math:`C_1 = 1 - \rho` (eqs. 1–2), from the
       log-normalised expression (see :func:`interaction_distance`);
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
        Grid ``(H, W)``; default :func:`grid_shape` (smallest near-square with
        ``H·W >= n_genes``).
    metric
        Interaction distance: ``"correlation"`` (1 - Pearson, the papers' choice) or
        ``"cosine"``.
    epsilon
        Entropic regularisation of GW (on distances scaled to [0, 1]); ``0`` is exact.
    max_iter
        Maximum GW iterations.
    tol
        Stop when an iteration improves the GW objective by less than ``tol`` (relative).
    solver
        Exact solver (``epsilon=0``): ``"exchange"`` or ``"pot"`` (see above).
    radius
        ``solver="exchange"``: genes on pixels at most this far apart (Chebyshev
        distance) are considered for a swap.
    batch_size
        Cells read at a time to compute the interaction distance.
    key_added
        Output names (see Returns).
    rng
        Seed or Generator for the start vector of the MDS eigen-solver; the same seed
        gives the same placement.
    progress
        Show a progress bar.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``), having written

    - ``var[f"{key_added}_row"]``, ``var[f"{key_added}_col"]``: int64 pixel of each gene
      (``-1`` for genes excluded by ``genes``);
    - ``uns[key_added]`` = ``{"shape": (H, W), "objective": float, "n_iter": int,
      "converged": bool, "params": {...}}`` (``shape`` stored as an int64 array of
      length 2, so the AnnData can be written to h5ad), ``objective`` being the GW objective of
      the placement with both distance matrices scaled to [0, 1] (:func:`gw_objective`).

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
    """
    check_unique_var_names(adata)
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}.")
    if int(max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}.")
    if int(radius) < 1:
        raise ValueError(f"radius must be >= 1, got {radius}.")
    if solver not in ("exchange", "pot"):
        raise ValueError(f"solver must be 'exchange' or 'pot', got {solver!r}.")
    if metric not in ("correlation", "cosine"):
        raise ValueError(f"metric must be 'correlation' or 'cosine', got {metric!r}.")
    gidx = _select_genes(adata, genes)
    n = gidx.size
    if n < 4:
        raise ValueError(f"GenoMap needs at least 4 genes, got {n}. Pass more genes.")
    if shape is None:
        shape = grid_shape(n)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive integers, got {shape!r}.")
    if shape[0] * shape[1] < n:
        raise ValueError(f"The grid {shape[0]} × {shape[1]} has {shape[0] * shape[1]} pixels, "
                         f"fewer than the {n} genes to place. Pass a larger shape= or "
                         f"shape=None (default {grid_shape(n)}).")
    X = get_matrix(adata, layer)
    what = describe_source(layer)
    check_finite(X, what=what)
    check_non_negative(X, what=what)
    counts = is_integer_matrix(X)
    C1 = _distance_from_matrix(X, gidx, metric=metric, counts=counts, batch_size=batch_size,
                               names=adata.var_names[gidx])
    seed = seed_int(get_rng(rng) if isinstance(rng, np.random.Generator) else rng)

    pos_all = _positions(shape, n)
    perm0 = _spectral_init(C1, shape, seed)
    n_iter, converged = 0, True
    if epsilon > 0:
        perm = _entropic(C1, pos_all, perm0, epsilon=float(epsilon), max_iter=int(max_iter),
                         tol=tol)
    elif solver == "pot":
        perm = _pot_exact(C1, pos_all, perm0, max_iter=int(max_iter), tol=float(tol))
    else:
        perm, n_iter, converged = _exchange_search(
            C1, shape, perm0, max_iter=int(max_iter), tol=float(tol), radius=int(radius),
            progress=progress)
    pos = pos_all[perm]
    objective = gw_objective(C1, pos)

    rows = np.full(adata.n_vars, -1, dtype=np.int64)
    cols = np.full(adata.n_vars, -1, dtype=np.int64)
    rows[gidx] = pos[:, 0]
    cols[gidx] = pos[:, 1]
    target = adata.copy() if copy else adata
    target.var[f"{key_added}_row"] = rows
    target.var[f"{key_added}_col"] = cols
    target.uns[key_added] = {
        "shape": np.asarray(shape, dtype=np.int64),  # (H, W); an array so h5ad can store it
        "objective": float(objective),
        "n_iter": int(n_iter),
        "converged": bool(converged),
        "params": make_params(layer=layer, n_genes=int(n), shape=shape, metric=metric,
                              epsilon=float(epsilon), max_iter=int(max_iter), tol=float(tol),
                              solver=solver, radius=int(radius), counts_input=bool(counts),
                              rng=rng if not isinstance(rng, np.random.Generator) else
                              "Generator", seed=int(seed)),
    }
    return target if copy else None


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
        An inconsistent placement (see :func:`placement_index`) or bad ``cells``.
    """
    rows, cols, (h, w) = placement_index(adata, key)
    X = get_matrix(adata, layer)
    idx = _select_cells(adata, cells)
    placed = np.flatnonzero(rows >= 0)
    flat = rows[placed] * w + cols[placed]
    out = np.zeros((idx.size, h * w), dtype=np.float32)
    Xr = sparse.csr_matrix(X) if sparse.issparse(X) and not sparse.isspmatrix_csr(X) else X
    for sl in iter_batches(idx.size, batch_size):
        block = Xr[idx[sl]][:, placed]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        out[sl, flat] = block
    return out.reshape(idx.size, h, w)


def genomap_to_genes(images: np.ndarray, adata: ad.AnnData, key: str = _keys.GENOMAP
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
    rows, cols, (h, w) = placement_index(adata, key)
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (h, w):
        raise ValueError(f"images must have shape (n_cells, {h}, {w}) for the GenoMap {key!r}, "
                         f"got {arr.shape}.")
    out = np.full((arr.shape[0], rows.size), np.nan, dtype=np.float32)
    placed = rows >= 0
    out[:, placed] = arr[:, rows[placed], cols[placed]]
    return out
