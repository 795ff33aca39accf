"""Plot GenoMap images of cells, one row per group (TCER paper, Figure 1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import _keys
from .._docs import doc_params
from .._utils import (
    RandomState,
    accepts_random_state,
    check_finite,
    describe_source,
    get_matrix,
    get_rng,
)

if TYPE_CHECKING:
    import anndata as ad


@accepts_random_state
@doc_params
def genomap(
    adata: ad.AnnData,
    *,
    groupby: str | None = None,
    n_per_group: int = 8,
    cells=None,
    layer: str | None = None,
    key: str = _keys.GENOMAP,
    cmap: str = "viridis",
    vmax: float | str | None = "p99",
    rng: RandomState = 0,
    panel_size: float = 1.3,
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Show GenoMap images of cells in a grid, one row per group.

    Every panel is :func:`sctorch.tl.genomap_images` of one cell (the layer's values
    as they are, empty pixels 0). All panels share one colour scale, so images of
    different groups can be compared.

    Parameters
    ----------
    adata
        Cells × genes carrying a placement from :func:`sctorch.tl.genomap`.
    groupby
        Column of ``adata.obs`` (e.g. ``"zone"``): one row of panels per category, in
        category order. ``None``: one row.
    n_per_group
        Panels per row: cells drawn at random (seeded by ``rng``) from each group, all
        of them when a group is smaller.
    cells
        Restrict to these cells first (positions, obs names or a boolean mask).
    layer
        Matrix whose values are drawn (``None``: ``adata.X``); pass a log-normalised
        layer for readable images of count data.
    key
        The ``key_added`` of :func:`sctorch.tl.genomap`.
    cmap
        Matplotlib colour map.
    vmax
        Top of the shared colour scale: a number, ``"pNN"`` (the NN-th percentile of
        all drawn pixels) or ``None`` (their maximum). The bottom is 0.
    rng
        Seed or Generator for choosing the cells.
    {random_state}
    panel_size
        Inches per panel.
    show
        Call ``matplotlib.pyplot.show()``; ``None`` shows only when ``save`` is not given.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    ``(fig, axes)`` (``axes`` a 2-D array of matplotlib Axes, groups × ``n_per_group``)
    when ``show`` is false, else ``None``.

    Raises
    ------
    KeyError
        If ``groupby``, ``layer`` or the placement ``key`` is missing.
    ValueError
        If ``n_per_group < 1``, ``vmax`` is malformed, a group label is missing or no
        cell is left.
    """
    import matplotlib.pyplot as plt

    from ..genomap import Placement, select_cells

    if n_per_group < 1:
        raise ValueError(f"n_per_group must be >= 1, got {n_per_group}.")
    placement = Placement.from_adata(adata, key)
    pool = select_cells(adata, cells)
    if pool.size == 0:
        raise ValueError("No cells to plot: cells= selects none.")
    gen = get_rng(rng)
    if groupby is None:
        groups = [("all cells", pool)]
    else:
        if groupby not in adata.obs.columns:
            raise KeyError(
                f"groupby {groupby!r} not found in adata.obs (columns: {list(adata.obs.columns)})."
            )
        lab = adata.obs[groupby].iloc[pool]
        if lab.isna().any():
            raise ValueError(
                f"adata.obs[{groupby!r}] has {int(lab.isna().sum())} missing label(s) "
                "among the chosen cells; drop those cells via cells=."
            )
        cats = (
            list(lab.cat.categories)
            if hasattr(lab, "cat")
            else sorted(lab.unique().tolist(), key=str)
        )
        groups = [(str(c), pool[(lab == c).to_numpy()]) for c in cats]
        groups = [(c, idx) for c, idx in groups if idx.size]
    chosen = [
        (name, np.sort(gen.choice(idx, size=min(n_per_group, idx.size), replace=False)))
        for name, idx in groups
    ]
    X = get_matrix(adata, layer)
    check_finite(X, what=describe_source(layer))
    images = placement.images(X, cells=np.concatenate([idx for _, idx in chosen]))
    if vmax is None:
        top = float(images.max())
    elif isinstance(vmax, str):
        if not (vmax.startswith("p") and vmax[1:].replace(".", "", 1).isdigit()):
            raise ValueError(f"vmax must be a number, None or 'pNN' (e.g. 'p99'), got {vmax!r}.")
        top = float(np.percentile(images, float(vmax[1:])))
    else:
        top = float(vmax)
    top = top if top > 0 else (float(images.max()) or 1.0)

    n_rows = len(chosen)
    fig, axes = plt.subplots(
        n_rows,
        n_per_group,
        squeeze=False,
        figsize=(panel_size * n_per_group + 1.0, panel_size * n_rows + 0.4),
    )
    k = 0
    im = None
    for r, (name, idx) in enumerate(chosen):
        for c in range(n_per_group):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < idx.size:
                im = ax.imshow(images[k], cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
                k += 1
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name if groupby is None else f"{groupby} {name}", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label=f"{'X' if layer is None else layer}")
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show is None:
        show = save is None
    if show:
        plt.show()
        return None
    return fig, axes
