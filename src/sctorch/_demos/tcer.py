"""Demo part: TCER and the simple imputers on the bundled ifnb PBMCs, by two protocols.

The down-sampling protocol (SAVER/TCER: a reference thinned to 0.5 % capture, scored
against the reference) and the openproblems denoising protocol at full depth (molecules
split 0.9 / 0.1, scored against the held-out molecules, :func:`sctorch.metrics.denoising_scores`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EFFICIENCY_LEVELS = {"high (0.75 %)": 15.0, "medium (0.5 %)": 10.0, "low (0.4 %)": 8.0}


def _umaps(mats: dict[str, np.ndarray], labels, path: Path) -> None:
    """One UMAP panel per matrix (log-normalised), coloured by cell type."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    cats = list(np.unique(np.asarray(labels)))
    cmap = plt.get_cmap("tab20", len(cats))
    code = np.searchsorted(cats, np.asarray(labels))
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 4.4))
    for ax, (title, m) in zip(np.atleast_1d(axes), mats.items(), strict=True):
        tmp = ad.AnnData(np.asarray(m, dtype=np.float32))
        sc.pp.pca(tmp, n_comps=30, random_state=0)
        sc.pp.neighbors(tmp, random_state=0)
        sc.tl.umap(tmp, random_state=0)
        emb = tmp.obsm["X_umap"]
        ax.scatter(emb[:, 0], emb[:, 1], c=code, cmap=cmap, vmin=-0.5, vmax=len(cats) - 0.5, s=3)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=c) for i, c in enumerate(cats)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(cats), 7), fontsize=7)
    fig.subplots_adjust(bottom=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, *, quick: bool = False, device: str | None = None) -> list[str]:
    """Down-sample the bundled ifnb reference, impute it, compare with the simple imputers."""
    import anndata as ad

    from .. import _keys, datasets, metrics, pp, tcer, tl
    from .._utils import log_normalize

    adata = datasets.ifnb_pbmc(bundled=True)
    ref = pp.select_reference(adata)
    ref_log = log_normalize(ref.X)
    lines = [
        "## TCER on the bundled ifnb PBMCs (SAVER/TCER down-sampling protocol)",
        f"reference: {ref.n_obs} cells × {ref.n_vars} genes "
        "(select_reference quantile 0.25, detection 0.25)",
        "",
        "| efficiency | mean gene Pearson observed vs reference |",
        "|---|---|",
    ]
    levels = dict(list(EFFICIENCY_LEVELS.items())[1:2]) if quick else EFFICIENCY_LEVELS
    for label, shape in levels.items():
        pp.simulate_efficiency_loss(ref, efficiency_shape=shape, efficiency_rate=2000, rng=0)
        r = metrics.gene_pearson(log_normalize(ref.layers[_keys.OBSERVED_LAYER]), ref_log)
        lines.append(f"| {label} | {np.nanmean(r):.3f} |")

    # the imputers at the medium level (0.5 %)
    pp.simulate_efficiency_loss(ref, efficiency_shape=10.0, efficiency_rate=2000, rng=0)
    keep = np.asarray(ref.layers[_keys.OBSERVED_LAYER].sum(1)).ravel() > 0
    obs = ad.AnnData(
        ref.layers[_keys.OBSERVED_LAYER][keep].copy(),
        obs=ref.obs[keep].copy(),
        var=ref.var[[]].copy(),
    )
    truth = ref_log[keep]
    obs_log = log_normalize(obs.X).toarray()
    mats = {"observed": obs_log}
    try:
        import magic

        mats["MAGIC"] = magic.MAGIC(random_state=0, verbose=0).fit_transform(obs_log)
    except ImportError:
        lines += ["", "MAGIC is not installed (`pip install magic-impute`): its row is left out."]
    counts = obs.X.toarray() if hasattr(obs.X, "toarray") else np.asarray(obs.X)
    mats["kNN smoothing"] = log_normalize(tcer.knn_smoothing(counts))
    n_profiles = len(np.unique(np.round(np.asarray(mats["kNN smoothing"]), 5), axis=0))
    tl.genomap(obs, rng=0, progress=False)
    quick_budget = {"epochs": 1} if quick else {}  # the full demo runs TCER's defaults
    tl.tcer_impute(obs, device=device, rng=0, progress=False, **quick_budget)
    mats["TCER"] = obs.layers[_keys.TCER]
    lines += [
        "",
        f"Imputation at 0.5 % efficiency ({obs.n_obs} cells; TCER "
        f"{'1 epoch, quick' if quick else 'defaults'}); ARI: Leiden clusters of each "
        "matrix against the cell types (reference: "
        f"{_ari(truth, obs.obs['cell_type'], metrics):.3f}):",
        "",
        "| data | mean gene Pearson | median gene Pearson | ARI |",
        "|---|---|---|---|",
    ]
    for name, m in mats.items():
        r = metrics.gene_pearson(m, truth)
        lines.append(
            f"| {name} | {np.nanmean(r):.3f} | {np.nanmedian(r):.3f} | "
            f"{_ari(m, obs.obs['cell_type'], metrics):.3f} |"
        )
    lines += [
        "",
        f"kNN smoothing sums the counts of each cell and its 15 nearest neighbours; cells "
        f"that share their neighbours get the same profile ({n_profiles} distinct among "
        f"{obs.n_obs} cells), so its Leiden clusters and UMAP break into small clumps: that "
        "is the method's output, not a plotting fault.",
    ]
    lines += _full_depth(adata, quick=quick, device=device)
    from .. import pl

    pl.genomap(
        obs,
        groupby="cell_type",
        n_per_group=4,
        layer=_keys.TCER,
        show=False,
        save=str(out / "tcer_genomap_by_cell_type.png"),
    )
    _umaps({"reference": truth.toarray(), **mats}, obs.obs["cell_type"], out / "tcer_umap.png")
    obs.write_h5ad(out / "tcer_ifnb.h5ad", compression="gzip")
    lines += [
        "",
        "figures: tcer_genomap_by_cell_type.png, tcer_umap.png; data: tcer_ifnb.h5ad",
        "(full benchmark on four data sets: benchmarks/results/tcer.md)",
    ]
    return lines


def _full_depth(adata, *, quick: bool, device: str | None) -> list[str]:
    """The openproblems denoising protocol on the full-depth counts of ``adata``.

    Every count is split binomially, 0.9 to the input and 0.1 held out
    (:func:`sctorch.tcer.split_molecules`); each method denoises the input and
    :func:`sctorch.metrics.denoising_scores` scores its count-scale output against the
    held-out molecules. ``quick``: 600 cells, the 300 genes with the most counts, 1 epoch.
    """
    import time

    import anndata as ad
    from scipy import sparse

    from .. import metrics, tcer, tl

    counts = sparse.csr_matrix(adata.X, dtype=np.float32)
    if quick:
        top = np.sort(np.argsort(-np.asarray(counts.sum(0)).ravel())[:300])
        counts = counts[:600][:, top]
    (train_counts, _), (test_counts, _) = tcer.split_molecules(
        counts, np.ones(counts.shape[0]), seed=0, p=0.9
    )
    # as the task, genes without train molecules go (here: detected in < 2 cells, which
    # GenoMap cannot correlate), then cells without any
    genes = np.asarray((train_counts > 0).sum(0)).ravel() >= 2
    train_counts, test_counts = train_counts[:, genes], test_counts[:, genes]
    keep = np.asarray(train_counts.sum(1)).ravel() > 0
    train = ad.AnnData(train_counts[keep])
    test = test_counts[keep]
    outputs, seconds = {"no denoising": train.X}, {"no denoising": 0.0}
    try:
        t0 = time.perf_counter()
        outputs["MAGIC"] = tcer.magic_openproblems(train.X)
        seconds["MAGIC"] = time.perf_counter() - t0
    except ImportError:
        pass
    t0 = time.perf_counter()
    tl.genomap(train, rng=0, progress=False)
    tl.tcer_impute(
        train,
        **({"epochs": 1} if quick else {}),
        counts_key="tcer_counts",
        device=device,
        rng=0,
        progress=False,
    )
    seconds["TCER"] = time.perf_counter() - t0
    outputs["TCER"] = train.layers["tcer_counts"]
    lines = [
        "",
        "## TCER at full depth (openproblems denoising protocol)",
        f"{train.n_obs} cells × {train.n_vars} genes, molecules split 0.9 / 0.1; scaled "
        "scores: 0 = no denoising, 1 = the held-out counts, higher is better "
        f"(TCER {'1 epoch, quick' if quick else 'defaults'}, GenoMap included):",
        "",
        "| method | MSE (scaled) | Poisson (scaled) | seconds |",
        "|---|---|---|---|",
    ]
    for name, out in outputs.items():
        sc = metrics.denoising_scores(train.X, test, out)
        lines.append(
            f"| {name} | {round(sc['mse_scaled'], 3) + 0.0:.3f} | "
            f"{round(sc['poisson_scaled'], 3) + 0.0:.3f} | "
            f"{seconds[name]:.1f} |"
        )
    lines.append("(four data sets: benchmarks/results/tcer_denoising.md)")
    return lines


def _ari(m, labels, metrics) -> float:
    import anndata as ad

    tmp = ad.AnnData(np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32))
    tmp.obs["cell_type"] = np.asarray(labels)
    return float(metrics.cluster_and_score(tmp, "cell_type")["ARI"])
