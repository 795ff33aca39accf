"""stImpute's default predictor: neighbour mean + ridge transfer, and held-out reliability.

Both predict a target gene for a spatial cell from the reference cells that resemble it
in a latent space built from the measured (training) genes:

- **k-NN mean** (eq. 12 with ``alpha = 0``): the mean of the gene over the cell's ``k``
  cosine-nearest reference cells;
- **ridge transfer**: a ridge regression from the latent coordinates to the gene, fitted
  on the reference cells and applied to the spatial cells (the linear mapping of gimVI /
  SpaGE-style integration without the neighbour step).

The output is ``w · ridge + (1 − w) · k-NN mean``. ``k`` and ``w`` are chosen by an inner
cross-validation over the **training genes** (each fold hides some measured genes, builds
the latent space from the rest and scores every ``(k, w)`` on the hidden ones): the genes
being predicted are never used.

Reliability (replacing eq. 13): each gene's *reference self-prediction*, the Pearson
correlation between its leave-one-out k-NN mean within the reference (neighbours among
other reference cells in the same latent space) and its reference values, scaled by the
factor (≥ 0, a least-squares line through the origin) that best maps it to the held-out
Pearson of the training genes in the same inner cross-validation. The score estimates a
gene's held-out Pearson and ranks genes like the self-prediction does. No AnnData and no torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import sparse

from .._utils import iter_batches, to_dense

K_GRID = (10, 20, 50, 100)
W_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
CV_CELLS = 5_000  # spatial cells scored in the inner cross-validation (seeded subset)
SELF_CELLS = 5_000  # reference cells of the self-prediction (seeded subset)
RIDGE_ALPHA = 1.0  # on standardised latent coordinates
_BLOCK = 8192


# ----------------------------------------------------------------------------- helpers
def column_stats(X) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation (float64; 1 where the column is constant)."""
    n = X.shape[0]
    s = np.zeros(X.shape[1])
    ss = np.zeros(X.shape[1])
    for sl in iter_batches(max(n, 1), _BLOCK):
        b = to_dense(X[sl], np.float64)
        s += b.sum(0)
        ss += (b * b).sum(0)
    mu = s / max(n, 1)
    sd = np.sqrt(np.maximum(ss / max(n, 1) - mu * mu, 0.0))
    return mu, np.where(sd > 1e-12, sd, 1.0)


def neighbours(emb_ref: np.ndarray, emb_q: np.ndarray | None, k: int) -> np.ndarray:
    """``(n_q, k)`` int64: cosine k-nearest rows of ``emb_ref`` for each row of ``emb_q``.

    ``emb_q=None`` queries ``emb_ref`` against itself leaving every cell out of its own
    neighbours (scikit-learn's ``kneighbors()`` without ``X``). Brute force, by blocks.
    """
    from sklearn.neighbors import NearestNeighbors

    knn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(emb_ref)
    if emb_q is None:
        return knn.kneighbors(return_distance=False).astype(np.int64)
    if len(emb_q) == 0:
        return np.zeros((0, k), np.int64)
    return np.concatenate(
        [
            knn.kneighbors(emb_q[sl], return_distance=False)
            for sl in iter_batches(len(emb_q), _BLOCK)
        ]
    ).astype(np.int64)


def neighbour_mean(nbr: np.ndarray, Y) -> np.ndarray:
    """``(n, m)`` float32 mean of the rows ``nbr`` (``(n, k)``) of ``Y`` (dense or CSR)."""
    n, k = nbr.shape
    W = sparse.csr_matrix(
        (np.full(n * k, 1.0 / k, np.float32), (np.repeat(np.arange(n), k), nbr.ravel())),
        shape=(n, Y.shape[0]),
    )
    out = W @ Y
    return to_dense(out) if sparse.issparse(out) else np.asarray(out, np.float32)


def gene_pearson(P: np.ndarray, Y) -> np.ndarray:
    """Pearson per column of two ``(n, m)`` matrices; 0 where either column is constant."""
    P = np.asarray(P, np.float64)
    Y = to_dense(Y, np.float64)
    Pc, Yc = P - P.mean(0), Y - Y.mean(0)
    den = np.sqrt((Pc * Pc).sum(0) * (Yc * Yc).sum(0))
    return np.where(den > 1e-12, (Pc * Yc).sum(0) / np.where(den > 1e-12, den, 1.0), 0.0)


# ----------------------------------------------------------------------------- latent space
@dataclasses.dataclass
class PcaSpace:
    """SpaGE-style space: z-score each data set's genes on its own, PCA of the reference.

    ``ref_mean``/``ref_sd`` z-score the reference; a spatial section is z-scored with its
    own column statistics (so platform offsets cancel); ``components`` (``(d, n_genes)``)
    and ``pca_mean`` are scikit-learn's ``PCA`` fitted on the z-scored reference.
    """

    ref_mean: np.ndarray
    ref_sd: np.ndarray
    components: np.ndarray
    pca_mean: np.ndarray

    @classmethod
    def fit(cls, ref_train, n_pcs: int, seed: int) -> PcaSpace:
        from sklearn.decomposition import PCA

        mu, sd = column_stats(ref_train)
        Z = (to_dense(ref_train, np.float64) - mu) / sd
        d = max(1, min(n_pcs, Z.shape[1] - 1 if Z.shape[1] > 1 else 1, Z.shape[0]))
        pca = PCA(n_components=d, random_state=seed % (2**31)).fit(Z)
        return cls(mu, sd, pca.components_.astype(np.float64), pca.mean_.astype(np.float64))

    def _project(self, X, mu, sd) -> np.ndarray:
        out = np.empty((X.shape[0], len(self.components)), np.float32)
        for sl in iter_batches(max(X.shape[0], 1), _BLOCK):
            Z = (to_dense(X[sl], np.float64) - mu) / sd
            out[sl] = (Z - self.pca_mean) @ self.components.T
        return out

    def embed_ref(self, X) -> np.ndarray:
        return self._project(X, self.ref_mean, self.ref_sd)

    def embed_section(self, X) -> np.ndarray:
        return self._project(X, *column_stats(X))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"pca_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> PcaSpace:
        return cls(
            **{
                f.name: np.asarray(arrays[f"pca_{f.name}"], np.float64)
                for f in dataclasses.fields(cls)
            }
        )


# ----------------------------------------------------------------------------- ridge
@dataclasses.dataclass
class Ridge:
    """Ridge regression latent → genes on standardised coordinates (closed form).

    ``coef`` ``(d, m)``, ``intercept`` ``(m,)`` (the reference mean: the coordinates are
    centred), ``x_mean`` / ``x_sd`` standardise the coordinates. Sparse targets stay sparse
    (only ``Xᵀ Y`` is formed).
    """

    x_mean: np.ndarray
    x_sd: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def fit(cls, E: np.ndarray, Y, alpha: float = RIDGE_ALPHA) -> Ridge:
        E = np.asarray(E, np.float64)
        mu, sd = E.mean(0), E.std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        Xs = (E - mu) / sd
        gram = Xs.T @ Xs + alpha * np.eye(Xs.shape[1])
        if sparse.issparse(Y):
            XtY = np.asarray((sparse.csr_matrix(Y).T @ Xs).T)
            ybar = np.asarray(Y.mean(0)).ravel()
        else:
            Y = np.asarray(Y, np.float64)
            XtY, ybar = Xs.T @ Y, Y.mean(0)
        return cls(mu, sd, np.linalg.solve(gram, XtY).astype(np.float32), ybar.astype(np.float32))

    def predict(self, E: np.ndarray) -> np.ndarray:
        return (
            ((E - self.x_mean) / self.x_sd).astype(np.float32) @ self.coef + self.intercept
        ).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"ridge_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> Ridge:
        return cls(
            **{f.name: np.asarray(arrays[f"ridge_{f.name}"]) for f in dataclasses.fields(cls)}
        )


def transfer(
    emb_sp: np.ndarray, emb_ref: np.ndarray, Y, ridge: Ridge | None, k: int, w: float
) -> np.ndarray:
    """``w · ridge + (1 − w) · k-NN mean`` of reference genes ``Y`` for the spatial cells."""
    out = np.empty((len(emb_sp), Y.shape[1]), np.float32)
    for sl in iter_batches(max(len(emb_sp), 1), _BLOCK):
        if sl.stop <= sl.start:
            break
        part = 0.0
        if w < 1.0:
            part = (1.0 - w) * neighbour_mean(neighbours(emb_ref, emb_sp[sl], k), Y)
        if w > 0.0:
            part = part + w * ridge.predict(emb_sp[sl])
        out[sl] = part
    return out


# ----------------------------------------------------------------------------- reliability
def self_prediction(
    emb_ref: np.ndarray, Y, k: int, cells: np.ndarray, nbr: np.ndarray | None = None
) -> np.ndarray:
    """Per column of ``Y``: Pearson of its leave-one-out k-NN mean within reference ``cells``.

    ``nbr``: the cells' leave-one-out neighbours (positions in ``cells``, nearest first),
    when already computed for a larger ``k``.
    """
    k = min(k, len(cells) - 1)
    nbr = neighbours(emb_ref[cells], None, k) if nbr is None else nbr[:, :k]
    Ys = sparse.csc_matrix(Y[cells]) if sparse.issparse(Y) else np.asarray(Y)[cells]
    res = np.empty(Y.shape[1])
    for cs in iter_batches(Y.shape[1], 2048):
        Yc = Ys[:, cs]
        res[cs] = gene_pearson(neighbour_mean(nbr, Yc), Yc)
    return res


def calibrate(feature: np.ndarray, heldout: np.ndarray) -> tuple[float, float]:
    """``(0, slope ≥ 0)``: the least-squares line through the origin heldout ≈ b · feature.

    A line through the origin, not a free intercept: with tens of training genes the
    intercept is mostly the noise of which genes a fold holds out, and it would shift
    whole folds of genes against each other; the slope only shrinks the
    within-reference self-prediction to the accuracy reached across data sets.
    """
    ok = np.isfinite(feature) & np.isfinite(heldout)
    den = float((feature[ok] ** 2).sum())
    if ok.sum() < 2 or den < 1e-12:
        return 0.0, 0.0
    return 0.0, max(0.0, float((feature[ok] * heldout[ok]).sum()) / den)


def reliability_score(feature: np.ndarray, calib: tuple[float, float]) -> np.ndarray:
    """Calibrated estimate of each gene's held-out Pearson, clipped to [-1, 1]."""
    a, b = calib
    return np.clip(a + b * np.nan_to_num(feature), -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- selection
@dataclasses.dataclass
class Selection:
    """Outcome of the inner gene cross-validation on the training genes."""

    k: int
    w: float
    scores: dict  # (k, w) -> median held-out Pearson of the training genes
    heldout: np.ndarray  # (n_train,) held-out Pearson at the chosen (k, w)
    feature: np.ndarray  # (n_train,) self-prediction at the chosen k
    calib: tuple[float, float]


def select(
    sp, ref, n_train: int, make_space: Callable, *, ks, ws, n_folds: int, seed: int
) -> Selection:
    """Choose ``k`` and ``w`` by ``n_folds``-fold CV over the training genes; calibrate.

    ``make_space(cols, sp_rows)`` returns ``(emb_ref, emb_sp_rows)``: the reference and the
    spatial cells ``sp_rows`` embedded using training genes ``cols`` only.
    """
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(seed)
    n_sp, n_ref = sp.shape[0], ref.shape[0]
    rows = (
        np.sort(rng.choice(n_sp, CV_CELLS, replace=False)) if n_sp > CV_CELLS else np.arange(n_sp)
    )
    cells = (
        np.sort(rng.choice(n_ref, SELF_CELLS, replace=False))
        if n_ref > SELF_CELLS
        else np.arange(n_ref)
    )
    ks = [k for k in ks if k <= n_ref] or [n_ref]
    kmax = max(ks)
    held = {(k, w): np.zeros(n_train) for k in ks for w in ws}
    feat = {k: np.zeros(n_train) for k in ks}
    n_folds = min(n_folds, n_train)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**31))
    sp_rows = sp[rows]
    for tr, te in kf.split(np.arange(n_train)):
        emb_ref, emb_sp = make_space(tr, rows)
        Y = sparse.csr_matrix(ref)[:, te] if sparse.issparse(ref) else np.asarray(ref)[:, te]
        y_sp = to_dense(sp_rows[:, te])
        nbr = neighbours(emb_ref, emb_sp, kmax)
        rid = Ridge.fit(emb_ref, Y).predict(emb_sp) if max(ws) > 0 else None
        self_nbr = neighbours(emb_ref[cells], None, min(kmax, len(cells) - 1))
        for k in ks:
            knn = neighbour_mean(nbr[:, :k], Y) if min(ws) < 1 else None
            for w in ws:
                P = rid if w == 1 else knn if w == 0 else w * rid + (1 - w) * knn
                held[(k, w)][te] = gene_pearson(P, y_sp)
            feat[k][te] = self_prediction(emb_ref, Y, k, cells, self_nbr)
    scores = {kw: float(np.median(v)) for kw, v in held.items()}
    k, w = max(scores, key=lambda kw: (round(scores[kw], 12), -kw[1], kw[0]))
    return Selection(
        int(k), float(w), scores, held[(k, w)], feat[k], calibrate(feat[k], held[(k, w)])
    )
