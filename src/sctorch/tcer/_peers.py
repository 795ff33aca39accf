"""The simple imputers TCER is measured against (benchmark and ``sctorch demo``).

Not part of TCER: they are here so that the benchmark and the demo run the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def knn_smoothing(counts: np.ndarray, k: int = 15, n_pcs: int = 10, seed: int = 0) -> np.ndarray:
    """kNN-smoothing 2 (Wagner, Yan & Yanai 2017, bioRxiv 217737): summed neighbour counts.

    In ``ceil(log2(k + 1))`` steps with ``k_t = min(2^t − 1, k)`` (1, 3, 7, 15 for
    ``k = 15``), the raw counts of each cell and its ``k_t`` nearest neighbours are
    summed; neighbours are found by Euclidean distance in the first ``n_pcs`` principal
    components of the Freeman–Tukey transform (``√x + √(x + 1)``) of the
    median-normalised *smoothed* counts of the previous step.

    Parameters
    ----------
    counts
        Dense ``(n_cells, n_genes)`` raw counts.
    k, n_pcs, seed
        Final neighbour count, principal components, PCA seed.

    Returns
    -------
    float64 ``(n_cells, n_genes)`` smoothed **counts** (log-normalise them to compare).

    Raises
    ------
    ValueError
        If ``counts`` is not 2-D or ``k`` ≥ the number of cells.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not 0 < k < counts.shape[0]:
        raise ValueError(
            f"knn_smoothing needs a 2-D counts matrix with more than k = {k} "
            f"cells, got shape {counts.shape}."
        )
    smoothed = counts
    for step in range(1, int(np.ceil(np.log2(k + 1))) + 1):
        k_step = min(2**step - 1, k)
        lib = np.maximum(smoothed.sum(1, keepdims=True), 1e-12)
        norm = smoothed / lib * np.median(lib)
        ft = np.sqrt(norm) + np.sqrt(norm + 1)
        n_comp = max(1, min(n_pcs, ft.shape[1] - 1, ft.shape[0] - 1))
        Z = PCA(n_comp, random_state=seed).fit_transform(ft - ft.mean(0))
        idx = NearestNeighbors(n_neighbors=k_step + 1).fit(Z).kneighbors(Z, return_distance=False)
        smoothed = counts[idx].sum(1)
    return smoothed


def magic_openproblems(counts) -> np.ndarray:
    """MAGIC as the openproblems denoising task runs it (its leaderboard's top method).

    openproblems-bio/task_denoising ``src/methods/magic``: each cell's counts divided by
    its library size, ``sqrt``, ``magic.MAGIC(solver="exact", decay=1, t=3)``
    (van Dijk et al. 2018), then squared and multiplied by the library size back: the
    "reversed normalisation" that returns the count scale.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` raw counts, dense or sparse; every cell needs a count.

    Returns
    -------
    float64 ``(n_cells, n_genes)`` denoised **counts** at each cell's own depth.

    Raises
    ------
    ImportError
        If ``magic-impute`` is not installed (``pip install magic-impute``).
    ValueError
        If a cell has no counts.
    """
    import magic

    X = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float64)
    lib = X.sum(1, keepdims=True)
    if (lib <= 0).any():
        raise ValueError(f"{int((lib <= 0).sum())} cell(s) have no counts; drop them before MAGIC.")
    Y = magic.MAGIC(solver="exact", decay=1, t=3, verbose=False).fit_transform(
        np.sqrt(X / lib), genes="all_genes"
    )
    return np.square(np.asarray(Y)) * lib


def ridge_blind_spot(
    log_expr: np.ndarray, lam: float = 1000.0
) -> Callable[[np.ndarray], np.ndarray]:
    """A ridge prediction of every gene from the *other* genes of the same cell.

    The linear counterpart of TCER's blind-spot network: fitted on ``log_expr`` (dense
    ``(n_cells, n_genes)``, log1p-normalised), it returns ``predict(A)`` that maps
    log-normalised cells ``A`` to the leave-one-gene-out prediction
    ``a_g − ((A − m) Θ)_g / Θ_gg`` (``Θ = (XᵀX + λI)⁻¹`` of the centred data, ``m`` the
    gene means), clipped at 0: each gene's value never enters its own prediction.

    Parameters
    ----------
    log_expr
        Dense ``(n_cells, n_genes)`` log1p-normalised expression to fit on.
    lam
        Ridge penalty λ (1000, as in ``benchmarks/tcer_ceiling.py``).

    Returns
    -------
    ``predict``: dense ``(m, n_genes)`` log-normalised → ``(m, n_genes)`` predictions on
    the same scale.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``XᵀX + λI`` is singular (only with ``lam`` ≤ 0).
    """
    mean = log_expr.mean(0)
    Xc = log_expr - mean
    theta = np.linalg.inv(Xc.T @ Xc + lam * np.eye(log_expr.shape[1]))
    diag = np.diag(theta)

    def predict(A: np.ndarray) -> np.ndarray:
        return np.clip(A - ((A - mean) @ theta) / diag, 0.0, None)

    return predict
