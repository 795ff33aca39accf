"""Layout quality of a GenoMap placement (GW objective, neighbour coherence, Spearman)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _keys
from .._docs import doc_params
from .._utils import accepts_random_state, describe_source, get_matrix, get_rng, resolve_input_scale
from ._distance import distance_from_matrix
from ._placement import placement_index
from ._solver import grid_distance_rows, gw_objective

if TYPE_CHECKING:
    import anndata as ad


@accepts_random_state
@doc_params
def genomap_quality(
    adata: ad.AnnData,
    *,
    key: str = _keys.GENOMAP,
    layer: str | None = None,
    rng: int | np.random.Generator | None = 0,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Layout quality of a GenoMap placement (issue 3; TCER §GenoMap Construction).

    Parameters
    ----------
    adata
        Cells × genes carrying a placement from :func:`sctorch.tl.genomap` under ``key``.
    key
        The ``key_added`` of :func:`sctorch.tl.genomap`.
    layer
        Expression to score against (``None``: ``adata.X``): raw counts (log-normalised
        here, as :func:`sctorch.tl.genomap` does) or log-normalised values. Use the
        layer the placement was built from.
    rng
        Seed or Generator of the random placement that coherence is compared with.
    {random_state}
    batch_size
        Cells read at a time.

    Returns
    -------
    dict with

    - ``gw_objective``: the square-loss GW objective of the placement (coupling
      ``P / n``) with the interaction distance (the placement's ``metric``) and the 2-D
      grid distance both scaled to [0, 1] (lower is better; see
      :func:`sctorch.genomap.gw_objective`);
    - ``neighbor_coherence``: the mean over genes of the mean Pearson correlation
      (across cells) between a gene and its 4-connected grid neighbours, minus the same
      for a random placement of the same genes on the same pixels (seeded by ``rng``);
      ``coherence`` and ``coherence_random`` are the two terms;
    - ``spearman``: Spearman correlation between the interaction distance and the grid
      distance over all pairs of placed genes (higher is better).

    Raises
    ------
    KeyError
        If the placement ``key`` or ``layer`` is missing.
    ValueError
        If the placement is inconsistent, or the data hold non-finite or negative
        values, or a placed gene is constant.
    """
    from scipy.stats import spearmanr

    rows, cols, (h, w) = placement_index(adata, key)
    X = get_matrix(adata, layer)
    counts = resolve_input_scale(X, "auto", what=describe_source(layer)) == "counts"
    gidx = np.flatnonzero(rows >= 0)
    params = adata.uns[key].get("params", {}) if hasattr(adata.uns[key], "get") else {}
    metric = str(params.get("metric", "correlation"))
    metric = metric if metric in ("correlation", "cosine") else "correlation"
    names = adata.var_names[gidx]
    C1 = distance_from_matrix(
        X, gidx, metric=metric, counts=counts, batch_size=batch_size, names=names
    )
    if metric == "correlation":
        R = 1.0 - C1
    else:
        R = 1.0 - distance_from_matrix(
            X, gidx, metric="correlation", counts=counts, batch_size=batch_size, names=names
        )
    pos = np.stack([rows[gidx], cols[gidx]], axis=1)
    n = gidx.size

    def _coherence(p: np.ndarray) -> float:
        grid = np.full((h, w), -1, dtype=np.int64)
        grid[p[:, 0], p[:, 1]] = np.arange(n)
        a = np.concatenate([grid[:, :-1].ravel(), grid[:-1, :].ravel()])
        b = np.concatenate([grid[:, 1:].ravel(), grid[1:, :].ravel()])
        ok = (a >= 0) & (b >= 0)
        a, b = a[ok], b[ok]
        tot = np.bincount(a, R[a, b], minlength=n) + np.bincount(b, R[a, b], minlength=n)
        cnt = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
        has = cnt > 0
        return float(np.mean(tot[has] / cnt[has])) if has.any() else float("nan")

    coh = _coherence(pos)
    coh_rand = _coherence(pos[get_rng(rng).permutation(n)])
    iu = np.triu_indices(n, k=1)
    D = grid_distance_rows(pos, slice(None))
    rho = spearmanr(C1[iu], D[iu]).statistic if n > 2 else float("nan")
    return {
        "gw_objective": gw_objective(C1, pos),
        "neighbor_coherence": coh - coh_rand,
        "coherence": coh,
        "coherence_random": coh_rand,
        "spearman": float(rho),
    }
