"""Demo part: stImpute on the bundled Drosophila embryo pair (in situ atlas + Drop-seq)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HOLD_OUT = 0.2


def run(out: Path, *, quick: bool = False, device: str | None = None) -> list[str]:
    """Hold out 20 % of the in situ genes, impute them from the scRNA-seq, report Pearson."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import _keys, datasets, metrics, tl

    insitu, scrna = datasets.drosophila_embryo(bundled=True)
    rng = np.random.default_rng(0)
    genes = np.asarray(insitu.var_names)
    held = sorted(rng.choice(genes, round(HOLD_OUT * len(genes)), replace=False).tolist())
    measured = insitu[:, [g for g in genes if g not in set(held)]].copy()
    # the default transfer trains no network (epochs / ae_epochs would be unused and warn)
    settings = dict(reliability_folds=0) if quick else dict(reliability_folds=3)
    res = tl.stimpute(
        measured,
        scrna,
        genes=held,
        device=device,
        rng=0,
        return_adata=True,
        progress=False,
        **settings,
    )
    truth = np.asarray(insitu[:, held].X, dtype=np.float32)
    r = metrics.gene_pearson(truth, res.X)
    res.layers["measured"] = truth
    res.var["pearson"] = r
    res.write_h5ad(out / "stimpute_drosophila.h5ad", compression="gzip")

    show = [held[int(i)] for i in np.argsort(-np.nan_to_num(r, nan=-2))[:2]]
    xy = np.asarray(res.obsm[_keys.SPATIAL])
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), constrained_layout=True)
    for row, g in enumerate(show):
        j = held.index(g)
        for col, (vals, what) in enumerate(((truth[:, j], "measured"), (res.X[:, j], "imputed"))):
            ax = axes[row, col]
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=4, cmap="viridis")
            ax.set_title(f"{g} {what}" + (f" (Pearson {r[j]:.2f})" if col else ""))
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.savefig(out / "stimpute_heldout.png", dpi=110)
    plt.close(fig)
    rel = res.var["reliability"].to_numpy()
    lines = [
        "## stImpute, bundled Drosophila embryo (BDTNP in situ + Karaiskos 2017 Drop-seq)",
        f"{measured.n_vars} in situ genes measured, {len(held)} held out (20 %, seed 0) "
        f"and imputed at {insitu.n_obs} locations from {scrna.n_obs} scRNA-seq cells "
        "(default method: k-NN + ridge transfer in PCA space"
        + (
            ", k = 50 and weight 0.5 without the inner gene CV"
            if quick
            else ", k and weight chosen by inner gene CV on the measured genes"
        )
        + ")"
        + (" — quick settings" if quick else ""),
        "",
        "| held-out genes | Pearson mean | Pearson median |",
        "|---|---|---|",
        f"| {len(held)} | {np.nanmean(r):.3f} | {np.nanmedian(r):.3f} |",
        "",
    ]
    if np.isfinite(rel).all():
        top = np.argsort(-rel)[: len(rel) // 2]
        lines.append(
            f"Median Pearson of the top-50 % genes by reliability: {np.nanmedian(r[top]):.3f}."
        )
    lines.append("Figures: `stimpute_heldout.png`; data: `stimpute_drosophila.h5ad`.")
    return lines
