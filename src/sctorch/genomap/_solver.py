"""The GenoMap solver: grid geometry, spectral start, Gromov–Wasserstein placement.

Square-loss GW between the gene–gene interaction distance and the 2-D Euclidean distance
between grid pixels (TCER eqs. 3–9; Islam & Xing 2023), rounded to a one-to-one
gene → pixel map. :func:`solve` is the entry point; the solvers themselves are
:func:`exchange_search` (default), :func:`pot_exact` and :func:`entropic`.
"""

from __future__ import annotations

import logging

import numpy as np

from .._utils import iter_batches, progress_bar

logger = logging.getLogger("sctorch")


class GridConv:
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
        self.fs = (
            sfft.next_fast_len(2 * self.h - 1, real=True),
            sfft.next_fast_len(2 * self.w - 1, real=True),
        )
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
            full = self._fft.irfft2(f, s=fs)[:, h - 1 : 2 * h - 1, w - 1 : 2 * w - 1]
            out[sl] = full.reshape(full.shape[0], -1)[:, : self.n]
        return out


def positions(shape: tuple[int, int], n: int) -> np.ndarray:
    """``(n, 2)`` (row, col) of the first ``n`` pixels in raster order."""
    r, c = np.divmod(np.arange(n), shape[1])
    return np.stack([r, c], axis=1)


def grid_distance_rows(
    pos: np.ndarray, rows: slice | np.ndarray, others: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distances between the pixels ``pos[rows]`` and ``others`` (or ``pos``)."""
    others = pos if others is None else others
    d = (pos[rows, None, :] - others[None, :, :]).astype(np.float64)
    return np.sqrt((d * d).sum(-1))


# ----------------------------------------------------------------------------- the solver
def spectral_init(C1: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
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
        idx = order[start : start + w]
        idx = idx[np.argsort(y2[idx], kind="stable")]
        perm[idx] = start + np.arange(idx.size)
    return perm


def _gradient(C1: np.ndarray, perm: np.ndarray, conv: GridConv) -> np.ndarray:
    """``C1 P D`` for the permutation ``P`` (``P[i, perm[i]] = 1``): an ``(n, n)`` array."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return conv.apply(C1, columns=inv)


def _swap_pairs(
    pos: np.ndarray, shape: tuple[int, int], radius: int
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


def _disjoint_swaps(order: np.ndarray, pa: np.ndarray, pb: np.ndarray, n: int) -> np.ndarray:
    """Greedily keep the swaps of ``order`` (best first) that share no pixel with a kept one."""
    used = np.zeros(n, dtype=bool)
    sel = []
    for e in order.tolist():
        x, y = pa[e], pb[e]
        if not (used[x] or used[y]):
            used[x] = used[y] = True
            sel.append(e)
    return np.asarray(sel, dtype=np.int64)


def exchange_search(
    C1: np.ndarray,
    shape: tuple[int, int],
    perm0: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    radius: int,
    progress: bool,
) -> tuple[np.ndarray, int, bool]:
    r"""Exact square-loss GW over one-to-one couplings, by pairwise exchanges.

    For a permutation coupling :math:`T = P/n` the square-loss GW objective is, up to
    constants fixed by the uniform marginals, :math:`-\tfrac{2}{n^2} f(P)` with
    :math:`f(P) = \langle C_1 P D, P\rangle`; so we maximise :math:`f`. Its gradient
    :math:`G = C_1 P D` is a column gather plus a 2-D FFT convolution (:class:`GridConv`),
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
    conv = GridConv(shape, n)
    pos = positions(shape, n)
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
        sel = _disjoint_swaps(good[np.argsort(-delta[good], kind="stable")], pa, pb, n)
        while True:
            new = perm.copy()
            new[gi[sel]] = pb[sel]
            new[gk[sel]] = pa[sel]
            if 4 * sel.size < n and it % 25:
                # few genes moved: update G = C1 P D by their columns only
                moved = np.concatenate([gi[sel], gk[sel]])
                Gn = G + C1[:, moved] @ (
                    _dist_to_all(ktab, pos, new[moved]) - _dist_to_all(ktab, pos, perm[moved])
                )
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


def pot_exact(
    C1: np.ndarray, pos: np.ndarray, perm0: np.ndarray, *, max_iter: int, tol: float
) -> np.ndarray:
    """POT's conditional-gradient exact GW (dense, O(n³) per iteration), rounded."""
    import ot
    from scipy.optimize import linear_sum_assignment

    n = C1.shape[0]
    D = grid_distance_rows(pos, slice(None))
    p = np.full(n, 1.0 / n)
    G0 = np.zeros((n, n))
    G0[np.arange(n), perm0] = 1.0 / n
    T = np.asarray(
        ot.gromov.gromov_wasserstein(
            C1,
            D,
            p,
            p,
            loss_fun="square_loss",
            G0=G0,
            max_iter=max(int(max_iter), 1),
            tol_rel=tol,
            tol_abs=0.0,
        )
    )
    _, cols = linear_sum_assignment(T - T.mean(1, keepdims=True), maximize=True)
    return cols.astype(np.int64)


def entropic(
    C1: np.ndarray, pos: np.ndarray, perm0: np.ndarray, *, epsilon: float, max_iter: int, tol: float
) -> np.ndarray:
    """Entropic GW with POT (dense, O(n³) per iteration) rounded to a permutation."""
    import ot
    from scipy.optimize import linear_sum_assignment

    n = C1.shape[0]
    D = grid_distance_rows(pos, slice(None))
    C1s = C1 / max(C1.max(), 1e-12)
    Ds = D / max(D.max(), 1e-12)
    p = np.full(n, 1.0 / n)
    G0 = np.zeros((n, n))
    G0[np.arange(n), perm0] = 1.0 / n
    T = ot.gromov.entropic_gromov_wasserstein(
        C1s, Ds, p, p, loss_fun="square_loss", epsilon=epsilon, G0=G0, max_iter=max_iter, tol=tol
    )
    T = np.asarray(T)
    if not np.isfinite(T).all():
        raise ValueError(
            f"Entropic GW diverged with epsilon={epsilon}; use a larger epsilon "
            "(e.g. 1e-2) or epsilon=0 for the exact solver."
        )
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
        dmax = max(dmax, float(grid_distance_rows(pos, sl).max()))
    dmax = max(dmax, 1e-12)
    total = 0.0
    for sl in iter_batches(n, batch_size):
        diff = C1[sl] / c1max - grid_distance_rows(pos, sl) / dmax
        total += float((diff * diff).sum())
    return total / (n * n)


def solve(
    C1: np.ndarray,
    shape: tuple[int, int],
    *,
    seed: int,
    epsilon: float = 0.0,
    solver: str = "exchange",
    max_iter: int = 100,
    tol: float = 1e-6,
    radius: int = 2,
    progress: bool = True,
) -> tuple[np.ndarray, int, bool]:
    """One-to-one placement of ``n`` genes on the first ``n`` pixels of the ``shape`` grid.

    Starts from :func:`spectral_init` (seeded by ``seed``) and runs the entropic solver
    (``epsilon > 0``), POT's exact solver (``solver="pot"``) or the exchange search
    (``"exchange"``); see :func:`sctorch.tl.genomap` for the choice.

    Parameters
    ----------
    C1
        Interaction distance, float64 ``(n, n)`` (symmetric, zero diagonal).
    shape
        Grid ``(H, W)`` with ``H·W >= n``.

    Returns
    -------
    pos
        int64 ``(n, 2)``: the (row, col) pixel of every gene.
    n_iter, converged
        Iterations of the exchange search (0 and ``True`` for the POT solvers).
    """
    n = C1.shape[0]
    pos_all = positions(shape, n)
    perm0 = spectral_init(C1, shape, seed)
    n_iter, converged = 0, True
    if epsilon > 0:
        perm = entropic(C1, pos_all, perm0, epsilon=float(epsilon), max_iter=int(max_iter), tol=tol)
    elif solver == "pot":
        perm = pot_exact(C1, pos_all, perm0, max_iter=int(max_iter), tol=float(tol))
    else:
        perm, n_iter, converged = exchange_search(
            C1,
            shape,
            perm0,
            max_iter=int(max_iter),
            tol=float(tol),
            radius=int(radius),
            progress=progress,
        )
    return pos_all[perm], n_iter, converged
