"""scRobust embedding ablation: does pre-training learn biology or sequencing depth?

ifnb PBMC (2,800 cells, 13 types; labels used only to score), pbmc3k (no labels: depth
only) and, with ``--data zeisel``, the Zeisel 2015 subset (1,464 cells × 1,000 genes, 3
types; all genes kept). Every variant pre-trains on the 2,000 HVGs of all cells (chosen
without labels, Seurat flavour on log-normalised counts), CPU settings of ``benchmarks/scrobust.py``
(d_model 64, 4 heads, batch 64, lr 1e-3), one torch thread, and embeds every cell from its
400 highly unique genes. Variants: token values log1p (paper) or within-cell ranks; views
thinned binomially at a random per-cell rate or not; the epoch chosen by the k-NN agreement
of two thinned copies, by held-out NT-Xent (paper preset) or the last; 50 genes per view
(authors' code) unless said. Metrics: |Pearson(PC1 of the embedding, log library size)|, Leiden
(resolution 1) ARI/NMI against cell_type, 15-NN label accuracy (5-fold) on the frozen
embedding, all beside PCA (50) of the same HVGs.

Usage::

    python benchmarks/scrobust_depth.py [--variants "ranks, no thinning;..."] [--epochs 10]
    python benchmarks/scrobust_depth.py --variants "default (50 genes, thinned views, last epoch)" \
        --epochs 10,default --data ifnb,pbmc3k,zeisel --out benchmarks/results/scrobust_steps.md
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import dataset, peak_rss_mib, write_results

SEED = 0
BASE = {"d_model": 64, "n_heads": 4, "lr": 1e-3, "batch_size": 64, "n_genes_per_view": 50}
VARIANTS = {
    "paper preset (10 % of genes per view)": {"preset": "paper", "n_genes_per_view": None},
    "paper preset, 50 genes per view": {"preset": "paper"},
    "paper preset, 50 genes, rank values": {"preset": "paper", "token_values": "rank"},
    "default (50 genes, thinned views, last epoch)": {},
    "default + k-NN-agreement selection": {"select": "knn"},
    "default + rank values": {"token_values": "rank"},
    "default, 30 epochs": {"epochs": 30},
}


def hvg_data(name: str):
    import scanpy as sc

    a = dataset(name)
    sc.pp.filter_cells(a, min_counts=1)
    if a.n_vars <= 2000:  # Zeisel 2015 subset: 1,000 genes, all kept
        a = a[:, np.asarray((a.X > 0).sum(0)).ravel() > 0].copy()
        return a, lognormed(a)
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=2000)
    hv = b.var["highly_variable"].to_numpy()
    a, b = a[:, hv].copy(), b[:, hv].copy()
    keep = np.asarray(a.X.sum(1)).ravel() > 0
    return a[keep].copy(), b[keep].copy()


def lognormed(a):
    import scanpy as sc

    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


def depth_corr(emb, lib) -> float:
    from sklearn.decomposition import PCA

    pc1 = PCA(1, random_state=SEED).fit_transform(emb)[:, 0]
    return float(abs(np.corrcoef(pc1, np.log(lib))[0, 1]))


def within_type_depth_corr(emb, lib, y, min_cells: int = 100) -> float:
    """Mean |corr(PC1, log depth)| within each cell type of ≥ ``min_cells`` cells.

    Cell types differ in library size (ifnb: monocytes hold more UMIs than T cells), so a
    representation that separates types correlates with depth globally; within a type,
    depth is what is left to follow.
    """
    vals = [
        depth_corr(emb[y == t], lib[y == t]) for t in np.unique(y) if (y == t).sum() >= min_cells
    ]
    return float(np.mean(vals))


def knn_acc(emb, y) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(15), emb, y, cv=5).mean())


def score(a, rep: str, lib, labels: bool) -> dict:
    import sctorch as sct

    out = {"depth_corr": depth_corr(a.obsm[rep], lib)}
    if labels:
        y = a.obs["cell_type"].astype(str).to_numpy()
        out["depth_corr_within"] = within_type_depth_corr(a.obsm[rep], lib, y)
        out |= sct.metrics.cluster_and_score(a, "cell_type", use_rep=rep)
        out["knn_acc"] = knn_acc(a.obsm[rep], a.obs["cell_type"].astype(str).to_numpy())
    return out


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    import scanpy as sc
    import torch

    import sctorch as sct

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated")
    ap.add_argument("--data", default="ifnb,pbmc3k", help="ifnb, pbmc3k and/or zeisel")
    ap.add_argument(
        "--epochs",
        default="10",
        help="comma-separated pre-training lengths; 'default' is the preset's "
        "(ceil(320,000 / n_obs) epochs for the default preset)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scrobust_depth.md"))
    args = ap.parse_args(argv)
    rows = []
    for data in args.data.split(","):
        a, b = hvg_data(data)
        lib = np.asarray(a.X.sum(1)).ravel()
        labels = "cell_type" in a.obs
        sc.pp.pca(b, n_comps=50, random_state=SEED)
        a.obsm["X_pca"] = b.obsm["X_pca"]
        rows.append(
            {
                "data": data,
                "variant": "PCA (50) of the HVGs",
                "seconds": np.nan,
                "best_epoch": "",
                **score(a, "X_pca", lib, labels),
            }
        )
        print(rows[-1], flush=True)
        for v, ep in [(v, e) for v in args.variants.split(";") for e in args.epochs.split(",")]:
            kw = dict(VARIANTS[v])
            t0 = time.perf_counter()
            model = sct.tl.scrobust_pretrain(
                a,
                rng=SEED,
                progress=False,
                **(BASE | ({} if ep == "default" else {"epochs": int(ep)}) | kw),
            )
            sct.tl.scrobust_embed(a, model, rng=SEED, progress=False)
            h = model.history
            val = h.get("pretrain_knn_agreement") or h.get("pretrain_val_contrastive")
            best = (
                ""
                if not val
                else (
                    int(np.argmax(val)) + 1
                    if "pretrain_knn_agreement" in h
                    else int(np.argmin(val)) + 1
                )
            )
            n_ep = len(h["pretrain_loss"])
            label = v if len(args.epochs.split(",")) == 1 else f"{v}, {n_ep} epochs ({ep})"
            rows.append(
                {
                    "data": data,
                    "variant": label,
                    "seconds": time.perf_counter() - t0,
                    "best_epoch": best,
                    **score(a, "X_scrobust", lib, labels),
                }
            )
            print(rows[-1], flush=True)
    lines = [
        "| data | representation | \\|corr(PC1, log depth)\\| | within types | Leiden "
        "ARI | NMI | 15-NN accuracy | best epoch | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = {
            k: f"{r[k]:.3f}" if k in r else "—"
            for k in ("ARI", "NMI", "knn_acc", "depth_corr_within")
        }
        lines.append(
            f"| {r['data']} | {r['variant']} | {r['depth_corr']:.3f} | "
            f"{f['depth_corr_within']} | {f['ARI']} | "
            f"{f['NMI']} | {f['knn_acc']} | {r['best_epoch']} | "
            f"{r['seconds']:.0f} |"
        )
    note = (
        f"Pre-training {BASE}, up to {args.epochs} epochs, on the 2,000 HVGs of all cells, "
        f"no labels; one torch thread; peak RSS {peak_rss_mib():.0f} MB."
    )
    write_results(
        args.out,
        f"scRobust embedding: depth and clustering ({args.data})",
        lines,
        script=__file__,
        args=argv or sys.argv[1:],
        note=note,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
