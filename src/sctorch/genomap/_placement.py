"""The GenoMap placement: grid shape, reading it from AnnData, images <-> genes.

A placement puts gene ``i`` on pixel ``(rows[i], cols[i])`` of an ``H × W`` grid
(``-1``: not placed), at most one gene per pixel. :class:`Placement` holds the one
implementation of "expression -> images" and its exact inverse; both
:func:`sctorch.tl.genomap_images` / :func:`sctorch.tl.genomap_to_genes` and TCER use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .. import _keys
from .._utils import iter_batches

if TYPE_CHECKING:
    import anndata as ad


def grid_shape(n_genes: int) -> tuple[int, int]:
    """The smallest near-square grid ``(H, W)`` with ``H * W >= n_genes``.

    ``W = ceil(sqrt(n_genes))`` and ``H = ceil(n_genes / W)``, so ``H <= W <= H + 1``
    (1,024 genes → 32 × 32, 2,025 → 45 × 45, 5,000 → 71 × 71).

    Raises
    ------
    ValueError
        If ``n_genes < 1``.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}.")
    w = int(np.ceil(np.sqrt(n_genes)))
    h = int(np.ceil(n_genes / w))
    return h, w


def check_placement(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], *, what: str = "The placement"
) -> None:
    """Raise ``ValueError`` unless ``rows``/``cols`` are a one-to-one placement on ``shape``.

    ``rows``, ``cols``: integer arrays of one length (``-1``: gene not placed, in both);
    every placed pixel inside the ``H × W`` grid, no two genes on one pixel, at least one
    gene placed. ``what`` starts the error messages.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(
            f"{what} has {rows.shape} row and {cols.shape} column indices; "
            "they must be two 1-D arrays of one length."
        )
    placed = rows >= 0
    if not np.array_equal(placed, cols >= 0):
        raise ValueError(
            f"{what}: rows and cols disagree on which genes are placed (-1 in one coordinate only)."
        )
    h, w = shape
    if (
        (rows[placed] >= h).any()
        or (cols[placed] >= w).any()
        or (rows < -1).any()
        or (cols < -1).any()
    ):
        raise ValueError(f"{what} has pixels outside the {h} × {w} grid.")
    flat = rows[placed] * w + cols[placed]
    n_dup = flat.size - np.unique(flat).size
    if n_dup:
        raise ValueError(
            f"{what} puts {n_dup} gene(s) on an already used pixel; it is not one-to-one."
        )
    if not placed.any():
        raise ValueError(f"{what} places no gene.")


def _stored_shape(adata: ad.AnnData, key: str) -> tuple[int, int]:
    rec = adata.uns[key]
    if "shape" not in rec:
        raise KeyError(f"adata.uns[{key!r}] has no 'shape' entry; run sctorch.tl.genomap again.")
    shape = tuple(int(s) for s in np.asarray(rec["shape"]).ravel())
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(
            f"adata.uns[{key!r}]['shape'] must be (H, W) with H, W >= 1, got {rec['shape']!r}."
        )
    return shape


def placement_index(
    adata: ad.AnnData, key: str = _keys.GENOMAP
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read and validate the GenoMap placement stored under ``key``.

    Parameters
    ----------
    adata
        AnnData on which :func:`sctorch.tl.genomap` was run (or one with the same
        ``var`` columns and ``uns[key]['shape']``).
    key
        The ``key_added`` that :func:`sctorch.tl.genomap` used.

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
        missing: run :func:`sctorch.tl.genomap` first (or pass the right ``key``).
    ValueError
        If the stored placement is inconsistent: non-integer or out-of-grid pixels, a
        gene placed in one coordinate only, or two genes on the same pixel (e.g. after
        ``var`` was subset or re-ordered by hand in a way that broke it).
    """
    rk, ck = f"{key}_row", f"{key}_col"
    if key not in adata.uns:
        raise KeyError(
            f"adata.uns[{key!r}] not found: run sctorch.tl.genomap(adata, "
            f"key_added={key!r}) first (uns keys: {list(adata.uns.keys())})."
        )
    missing = [c for c in (rk, ck) if c not in adata.var.columns]
    if missing:
        raise KeyError(
            f"adata.var lacks {missing}: the GenoMap placement {key!r} is "
            "incomplete. Run sctorch.tl.genomap again on this AnnData."
        )
    shape = _stored_shape(adata, key)
    rows = adata.var[rk].to_numpy()
    cols = adata.var[ck].to_numpy()
    for name, v in ((rk, rows), (ck, cols)):
        vf = np.asarray(v, dtype=np.float64)
        if not np.isfinite(vf).all() or not np.array_equal(vf, np.round(vf)):
            raise ValueError(
                f"adata.var[{name!r}] must hold integer pixel indices (-1 for "
                "unplaced genes); it holds non-integer or missing values."
            )
    rows = rows.astype(np.int64)
    cols = cols.astype(np.int64)
    check_placement(rows, cols, shape, what=f"The placement {key!r}")
    return rows, cols, shape


@dataclass
class Placement:
    """Gene → pixel map of a GenoMap: the one images <-> genes code of sctorch.

    Attributes
    ----------
    rows, cols
        int64 ``(n_genes,)``: the pixel of every gene (``-1``: not placed).
    shape
        The grid ``(H, W)``.
    """

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_adata(cls, adata: ad.AnnData, key: str = _keys.GENOMAP) -> Placement:
        """The validated placement ``key`` of ``adata`` (see :func:`placement_index`)."""
        rows, cols, shape = placement_index(adata, key)
        return cls(rows, cols, shape)

    def check(self, what: str = "The placement") -> None:
        """Raise ``ValueError`` unless one-to-one and within the grid (:func:`check_placement`)."""
        check_placement(self.rows, self.cols, self.shape, what=what)

    @property
    def placed(self) -> np.ndarray:
        """Indices of the placed genes."""
        return np.flatnonzero(self.rows >= 0)

    @property
    def flat(self) -> np.ndarray:
        """Raster pixel index of every placed gene (in :attr:`placed` order)."""
        placed = self.placed
        return self.rows[placed] * self.shape[1] + self.cols[placed]

    def pixel_mask(self) -> np.ndarray:
        """Bool ``(H, W)``: the pixels that hold a gene."""
        m = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        m[self.flat] = True
        return m.reshape(self.shape)

    def images(self, X, *, cells: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
        """GenoMap images of rows of ``X``: each gene's value on its pixel.

        Parameters
        ----------
        X
            Cells × genes (dense or sparse; columns in placement order), values copied as
            they are (any scale).
        cells
            Row positions to draw (``None``: all rows).
        batch_size
            Rows densified at a time (sparse input stays sparse until its batch).

        Returns
        -------
        float32 ``(n_cells, H, W)``; pixels without a gene are 0.
        """
        h, w = self.shape
        placed, flat = self.placed, self.flat
        every = placed.size == len(self.rows)
        idx = np.arange(X.shape[0]) if cells is None else np.asarray(cells)
        Xr = sparse.csr_matrix(X) if sparse.issparse(X) and X.format != "csr" else X
        out = np.zeros((idx.size, h * w), dtype=np.float32)
        for sl in iter_batches(idx.size, batch_size):
            block = Xr[idx[sl]] if every else Xr[idx[sl]][:, placed]
            out[sl, flat] = block.toarray() if sparse.issparse(block) else np.asarray(block)
        return out.reshape(idx.size, h, w)

    def genes_of(self, images: np.ndarray, *, what: str = "the GenoMap") -> np.ndarray:
        """Read genes back off images: the exact inverse of :meth:`images`.

        Parameters
        ----------
        images
            ``(n_cells, H, W)`` or ``(n_cells, 1, H, W)`` (a channel axis of length one).

        Returns
        -------
        float32 ``(n_cells, n_genes)``: each placed gene takes its pixel's value; genes
        with no pixel are NaN.

        Raises
        ------
        ValueError
            If ``images`` is not ``(n, H, W)`` for this grid.
        """
        h, w = self.shape
        arr = np.asarray(images)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3 or arr.shape[1:] != (h, w):
            raise ValueError(
                f"images must have shape (n_cells, {h}, {w}) for {what}, got {arr.shape}."
            )
        out = np.full((arr.shape[0], self.rows.size), np.nan, dtype=np.float32)
        out[:, self.placed] = arr.reshape(arr.shape[0], -1)[:, self.flat]
        return out


def select_cells(adata: ad.AnnData, cells) -> np.ndarray:
    """Row positions of ``cells``: ``None`` (all), positions, obs names or a boolean mask.

    Raises
    ------
    ValueError
        A mask of the wrong length or positions outside the AnnData.
    KeyError
        Names not in ``adata.obs_names``.
    """
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
        raise KeyError(
            f"{int((idx < 0).sum())} name(s) of cells= are not in adata.obs_names, "
            f"e.g. {arr[idx < 0][:5].tolist()}."
        )
    return idx
