"""Benchmark stImpute (Zeng et al. 2024, Commun Biol 7:1271) against peers, side by side.

1. Gene cross-validation (the paper's protocol: 5 folds over the shared genes, the same
   folds for every method) on
   - ``dros``: the Drosophila embryo (BDTNP in situ 3,039 locations × 84 genes + Karaiskos
     2017 Drop-seq), the one real cross-platform pair;
   - ``ifnb``, ``zeisel``: same-platform proxies. Each labelled scRNA-seq set is split into
     halves (stratified by ``cell_type``, seed 0); the "spatial" half measures only a panel
     of 100 genes, the top 100 highly variable genes of that half (Scanpy
     ``highly_variable_genes(flavor="cell_ranger")`` on its log-normalised values, genes
     detected in ≥ 3 of its cells and present in the other half), as raw counts; the other
     half, all its genes, is the reference.
   Methods: the default (k-NN + ridge transfer in PCA space), its ablations (autoencoder
   space; k-NN only; ridge only), the GNN (sparse expression-similarity graph; no graph),
   ``preset="paper"``, the SpaGE-style k-NN baseline (z-score → PCA 30 → cosine 50-NN
   → neighbour mean), the peers Li et al. 2022 benchmarked and stImpute's users pick,
   Tangram (``tangram-sc``) and gimVI (``scvi.external.GIMVI``), each on the same folds
   (:func:`tangram_fold`, :func:`gimvi_fold`), and, on the Drosophila pair (the only one
   with coordinates), the default followed by spatial smoothing of its predictions
   (:func:`smooth_choice`; weight by the inner gene CV on the training genes).
   Metrics: Li et al. 2022's per-gene PCC, SSIM, RMSE and JS and their accuracy score
   (:func:`li2022_gene_metrics`, :func:`accuracy_score`), median gene Pearson and cosine,
   median cell cosine, Spearman(reliability, held-out gene Pearson) — for the k-NN
   baseline its neighbour spread, the uncertainty peer — and the median Pearson of the
   top half of genes by reliability vs all genes.
2. Scale: osmFISH cells resampled (Poisson) to N spatial cells against a synthetic
   20,000-cell reference on the same 33 genes; 7 genes predicted; stImpute defaults vs the
   k-NN baseline.

Every method runs in its own subprocess, which reports its wall-clock seconds and its own
peak resident memory (``ru_maxrss``). Threads are limited to ``--threads`` (default 2).
Each run stores its rows in ``benchmarks/results/stimpute_runs.json`` (with the command
that measured them) and rewrites ``benchmarks/results/stimpute.md`` from all stored rows,
so data sets and method groups can be run separately::

    python benchmarks/stimpute.py --data dros ifnb zeisel --methods fast peers --skip-scale
    python benchmarks/stimpute.py --data dros --methods smooth --skip-scale
    python benchmarks/stimpute.py --data dros --methods gnn --skip-scale
    python benchmarks/stimpute.py --data --scale 20000        # scale only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import command, is_counts, peak_rss_mib, stimpute_normalise, write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stimpute.md"
RUNS = HERE / "results" / "stimpute_runs.json"
N_FOLDS = 5
SEED = 0
PANEL = 100

METHODS = {  # key: (label, stimpute_cv keywords)
    "default": ("stImpute default: k-NN + ridge transfer, PCA space, k / w by inner gene CV", {}),
    "ae": ("ablation: transfer in the autoencoder space", {"latent": "autoencoder"}),
    "knn_only": (
        "ablation: transfer, k-NN mean only (w = 0, k by inner CV)",
        {"ridge_weight": 0.0},
    ),
    "ridge_only": ("ablation: transfer, ridge only (w = 1)", {"ridge_weight": 1.0}),
    "gnn": (
        "GNN, sparse expression-similarity graph (eqs. 5, 7–12), reliability off",
        {"method": "gnn", "reliability_folds": 0},
    ),
    "gnn_nograph": (
        "GNN without a gene graph (graph_neighbors = 0), reliability off",
        {"method": "gnn", "graph_neighbors": 0, "reliability_folds": 0},
    ),
    "gnn_rel": ("GNN, expression graph, held-out reliability (5 folds)", {"method": "gnn"}),
    "paper": (
        "preset='paper' (authors' code: distance graph, in-sample MLP, 0.7/0.3)",
        {"preset": "paper"},
    ),
    "knn": ("SpaGE-style k-NN baseline (z-score → PCA 30 → cosine 50-NN)", None),
    "tangram": (
        "Tangram (tangram-sc 1.0.4: pp_adatas, map_cells_to_space mode 'cells', CPU, "
        "project_genes)",
        "peer",
    ),
    "gimvi": ("gimVI (scvi-tools GIMVI, defaults, early stopping)", "peer"),
    "smooth": (
        "stImpute default + spatial smoothing (k spatial neighbours, weight by inner gene CV)",
        "peer",
    ),
}
#: the methods ranked by the accuracy score (AS): stImpute's default and its peers
AS_SET = ("default", "tangram", "gimvi", "knn")
GROUPS = {
    "fast": ["default", "ae", "knn_only", "ridge_only", "knn"],
    "gnn": ["gnn", "gnn_nograph", "paper"],
    "gnn_rel": ["gnn_rel"],
    "peers": ["tangram", "gimvi"],
}
TANGRAM_EPOCHS = 1000  # tangram-sc's default num_epochs
GIMVI_EPOCHS = 200  # GIMVI.train's default max_epochs (--gimvi-epochs to reduce)
SMOOTH_K = (5, 10, 20, 50)
SMOOTH_B = (0.0, 0.25, 0.5, 0.75, 1.0)
DATA = {
    "dros": "Drosophila embryo (real pair: BDTNP in situ × Karaiskos Drop-seq)",
    "ifnb": "proxy: ifnb_pbmc (Kang 2018), halves, 100-HVG panel",
    "zeisel": "proxy: zeisel2015 descend subset (1,464 cells × 1,000 genes), halves, 100-HVG panel",
}


# ----------------------------------------------------------------------------- data
def load(name: str):
    """``(spatial AnnData restricted to the shared genes, reference AnnData, description)``."""
    import scanpy as sc

    import sctorch as sct

    if name == "dros":
        sp, ref = sct.datasets.drosophila_embryo()
        shared = [g for g in sp.var_names if g in set(ref.var_names)]
        return (
            sp[:, shared].copy(),
            ref,
            (
                f"{sp.n_obs} locations × {len(shared)} shared genes; "
                f"{ref.n_obs} scRNA-seq cells × {ref.n_vars} genes"
            ),
        )
    a = sct.datasets.ifnb_pbmc() if name == "ifnb" else sct.datasets.zeisel2015()
    rng = np.random.default_rng(SEED)
    lab = a.obs["cell_type"].astype(str).to_numpy()
    half = np.zeros(a.n_obs, bool)
    for c in np.unique(lab):
        i = np.where(lab == c)[0]
        rng.shuffle(i)
        half[i[: len(i) // 2]] = True
    sp_all, ref = a[half].copy(), a[~half].copy()
    sc.pp.filter_genes(ref, min_cells=1)
    t = sp_all.copy()
    sc.pp.filter_genes(t, min_cells=3)
    t = t[:, [g for g in t.var_names if g in set(ref.var_names)]].copy()
    sc.pp.normalize_total(t)
    sc.pp.log1p(t)
    sc.pp.highly_variable_genes(t, n_top_genes=PANEL, flavor="cell_ranger")
    panel = list(t.var_names[t.var["highly_variable"].to_numpy()])
    sp = sp_all[:, panel].copy()
    return (
        sp,
        ref,
        (
            f"spatial half {sp.n_obs} cells × {len(panel)} panel genes (raw counts); "
            f"reference half {ref.n_obs} cells × {ref.n_vars} genes"
        ),
    )


def folds(n):
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED).split(np.arange(n)))


def knn_baseline(sp_train, ref_train, ref_target, k=50, n_pcs=30, spread=False):
    """SpaGE-style: z-score the shared genes per data set, PCA, cosine k-NN, neighbour mean.

    ``spread=True`` also returns the uncertainty peer of stImpute's reliability (TransImp
    does not install here): per gene, the mean over spatial cells of the standard
    deviation of the ``k`` neighbours' values, relative to the gene's mean prediction,
    negated (higher = more reliable).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    def z(a):
        a = np.asarray(a, np.float64)
        sd = a.std(0)
        return (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)

    zs, zr = z(sp_train), z(ref_train)
    pca = PCA(n_components=min(n_pcs, zr.shape[1] - 1), random_state=SEED).fit(zr)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(pca.transform(zr))
    out = np.empty((zs.shape[0], ref_target.shape[1]), np.float32)
    sd_sum = np.zeros(ref_target.shape[1])
    for s in range(0, zs.shape[0], 8192):
        idx = nn.kneighbors(pca.transform(zs[s : s + 8192]), return_distance=False)
        vals = ref_target[idx]  # (cells, k, genes)
        out[s : s + 8192] = vals.mean(1)
        if spread:
            sd_sum += vals.std(1).sum(0)
    if not spread:
        return out
    mean = out.mean(0)
    return out, -(sd_sum / zs.shape[0]) / np.where(mean > 1e-12, mean, 1e-12)


def tangram_fold(sp, ref, train, test):
    """Tangram's documented workflow for one fold (tangram-sc 1.0.4, CPU).

    Inputs on the scale the benchmark scores on (``stimpute_normalise``: log-normalised
    counts, in situ values as given), as Li et al. 2022 fed Tangram log-normalised
    scRNA-seq; ``tg.pp_adatas`` on the training genes, ``tg.map_cells_to_space`` (mode
    "cells", ``num_epochs`` ``TANGRAM_EPOCHS``, its other defaults), ``tg.project_genes``
    restricted to the held-out genes (the projection is per gene, so this only saves time).
    """
    import anndata as ad
    import tangram as tg

    a_sp = ad.AnnData(stimpute_normalise(sp[:, train]).astype(np.float32))
    a_sp.var_names = [str(g) for g in sp.var_names[train]]
    a_sp.obs_names = [str(o) for o in sp.obs_names]
    genes = [str(g) for g in sp.var_names[train]] + [str(g) for g in sp.var_names[test]]
    col = {g: i for i, g in enumerate(ref.var_names)}
    a_sc = ad.AnnData(stimpute_normalise(ref)[:, [col[g] for g in genes]].astype(np.float32))
    a_sc.var_names, a_sc.obs_names = genes, [str(o) for o in ref.obs_names]
    tg.pp_adatas(a_sc, a_sp, genes=list(a_sp.var_names))
    ad_map = tg.map_cells_to_space(
        a_sc,
        a_sp,
        mode="cells",
        device="cpu",
        num_epochs=TANGRAM_EPOCHS,
        random_state=SEED,
        verbose=False,
    )
    target = a_sc[:, [g.lower() for g in sp.var_names[test]]].copy()
    ge = tg.project_genes(ad_map, target)
    return np.asarray(ge[:, [g.lower() for g in sp.var_names[test]]].X, np.float32)


def gimvi_fold(sp, ref, train, test):
    """gimVI (scvi-tools ``scvi.external.GIMVI``) for one fold, its documented defaults.

    As Li et al. 2022's pipeline (``Benchmarking/SpatialGenes.py``): the scRNA-seq
    reference restricted to the shared genes, raw values for both (gimVI models counts;
    the Drosophila in situ values are continuous and go in as given),
    ``GIMVI.train(max_epochs=GIMVI_EPOCHS)`` with early stopping on the validation ELBO,
    ``get_imputed_values(normalized=True)`` for the spatial cells. The imputed per-cell
    proportions times the median total of the spatial input are put through the same
    transform as the truth (``stimpute_normalise``: log1p for count data; as given for
    the in situ values).
    """
    import anndata as ad
    import scvi
    from scvi.external import GIMVI

    scvi.settings.seed = SEED
    genes = [str(g) for g in sp.var_names[train]] + [str(g) for g in sp.var_names[test]]
    col = {g: i for i, g in enumerate(ref.var_names)}
    Xr = ref.X[:, [col[g] for g in genes]]
    seq = ad.AnnData(np.asarray(Xr.toarray() if hasattr(Xr, "toarray") else Xr, np.float32))
    seq.var_names = genes
    Xs = sp.X[:, train]
    spa = ad.AnnData(np.asarray(Xs.toarray() if hasattr(Xs, "toarray") else Xs, np.float32))
    spa.var_names = genes[: len(train)]
    GIMVI.setup_anndata(seq)
    GIMVI.setup_anndata(spa)
    model = GIMVI(seq, spa)
    epochs = int(os.environ.get("BENCH_GIMVI_EPOCHS", GIMVI_EPOCHS))
    model.train(
        max_epochs=epochs,
        accelerator="cpu",
        early_stopping=True,
        enable_progress_bar=False,
    )
    _, rho = model.get_imputed_values(normalized=True)
    Xall = sp.X.toarray() if hasattr(sp.X, "toarray") else np.asarray(sp.X)
    counts = is_counts(Xall)
    target = float(np.median(Xall.sum(1))) if counts else 1.0
    pred = np.asarray(rho[:, len(train) :], np.float64) * target
    epochs = len(model.history_["elbo_validation"]) if model.history_ else epochs
    return (np.log1p(pred) if counts else pred).astype(np.float32), epochs


def spatial_neighbours(sp, k):
    """``(n, k)`` nearest other locations in ``obsm['spatial3d']`` (else ``'spatial'``)."""
    from sklearn.neighbors import NearestNeighbors

    key = "spatial3d" if "spatial3d" in sp.obsm else "spatial"
    return NearestNeighbors(n_neighbors=k).fit(sp.obsm[key]).kneighbors(return_distance=False)


def smooth(P, nbr, beta):
    """``(1 − β) · P + β · mean of P over each location's spatial neighbours``."""
    return (1.0 - beta) * P + beta * P[nbr].mean(1) if beta > 0 else P


def smooth_choice(sp, ref, train, nbrs):
    """Choose (k, β) by the inner gene CV on the training genes only.

    ``sct.tl.stimpute_cv`` on the fold's training genes (5 folds, its own defaults) gives
    each training gene a prediction made without it; every (k, β) smooths these and the
    one with the highest median Pearson on the training genes wins (ties: smaller β).
    """
    import sctorch as sct

    sub = sp[:, train].copy()
    sct.tl.stimpute_cv(sub, ref, n_folds=N_FOLDS, rng=SEED, progress=False)
    P, T = sub.layers["stimpute_cv"], stimpute_normalise(sub)
    best = (-np.inf, 0, 0.0)
    for k in SMOOTH_K:
        for b in SMOOTH_B:
            pearson = sct.metrics.pairwise_scores(T, smooth(P, nbrs[k], b))["pearson"]
            m = float(np.median(pearson.to_numpy()))
            if m > best[0] + 1e-12:
                best = (m, k, b)
    return best[1], best[2]


def scale_data(n_cells: int):
    import anndata as ad

    import sctorch as sct

    osm = sct.datasets.osmfish()
    X = osm.X.toarray() if hasattr(osm.X, "toarray") else np.asarray(osm.X)
    rng = np.random.default_rng(SEED)
    pick = rng.integers(0, osm.n_obs, n_cells)
    sp = ad.AnnData(rng.poisson(X[pick]).astype(np.float32))
    sp.var_names = osm.var_names
    pr = rng.integers(0, osm.n_obs, 20_000)
    lib = rng.gamma(5.0, 0.2, (20_000, 1))
    ref = ad.AnnData(rng.poisson(X[pr] * lib).astype(np.float32))
    ref.var_names = osm.var_names
    held = ["Plp1", "Gad2", "Vip", "Gfap", "Mrc1", "Acta2", "Rorb"]
    sp = sp[:, [g for g in sp.var_names if g not in held]].copy()
    return sp, ref, held


# ----------------------------------------------------------------------------- children
def child(task: str, arg: str, out: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    import sctorch as sct

    extra = {}
    if task == "scale":
        method, n = arg.split(":")
        sp, ref, held = scale_data(int(n))
        t0 = time.perf_counter()
        if method == "knn":
            sp_n, ref_n = stimpute_normalise(sp), stimpute_normalise(ref)
            col = {g: i for i, g in enumerate(ref.var_names)}
            pred = knn_baseline(
                sp_n, ref_n[:, [col[g] for g in sp.var_names]], ref_n[:, [col[g] for g in held]]
            )
        else:
            pred = sct.tl.stimpute(
                sp, ref, genes=held, rng=SEED, progress=False, return_adata=True
            ).X
        extra["shape"] = list(pred.shape)
        return {"seconds": time.perf_counter() - t0, "peak_mib": peak_rss_mib(), **extra}
    data, method = arg.split(":")
    sp, ref, _ = load(data)
    t0 = time.perf_counter()
    genes = np.asarray(sp.var_names)
    rel = np.full(len(genes), np.nan)
    if METHODS[method][1] is None:
        sp_n = stimpute_normalise(sp)
        ref_all = stimpute_normalise(ref)
        col = {g: i for i, g in enumerate(ref.var_names)}
        ref_n = ref_all[:, [col[g] for g in genes]]
        pred = np.full((sp.n_obs, len(genes)), np.nan, np.float32)
        for tr, te in folds(len(genes)):
            pred[:, te], rel[te] = knn_baseline(
                sp_n[:, tr], ref_n[:, tr], ref_n[:, te], spread=True
            )
    elif method in ("tangram", "gimvi"):
        pred = np.full((sp.n_obs, len(genes)), np.nan, np.float32)
        extra["epochs"] = []
        for tr, te in folds(len(genes)):
            if method == "tangram":
                pred[:, te] = tangram_fold(sp, ref, tr, te)
                extra["epochs"].append(TANGRAM_EPOCHS)
            else:
                pred[:, te], ep = gimvi_fold(sp, ref, tr, te)
                extra["epochs"].append(int(ep))
    elif method == "smooth":
        tab = sct.tl.stimpute_cv(sp, ref, n_folds=N_FOLDS, rng=SEED, progress=False)
        raw, rel = sp.layers["stimpute_cv"], tab["reliability"].to_numpy()
        nbrs = {k: spatial_neighbours(sp, k) for k in SMOOTH_K}
        pred = np.full_like(raw, np.nan)
        extra["k"], extra["weight"] = [], []
        for tr, te in folds(len(genes)):
            k, b = smooth_choice(sp, ref, tr, nbrs)
            pred[:, te] = smooth(raw[:, te], nbrs[k], b)
            extra["k"].append(int(k))
            extra["weight"].append(float(b))
    else:
        tab = sct.tl.stimpute_cv(
            sp, ref, n_folds=N_FOLDS, rng=SEED, progress=False, **METHODS[method][1]
        )
        pred, rel = sp.layers["stimpute_cv"], tab["reliability"].to_numpy()
        p = sp.uns["stimpute_cv"]["params"]
        extra["k"] = np.asarray(p["k"]).tolist()
        extra["weight"] = np.asarray(p["weight"]).tolist()
    secs = time.perf_counter() - t0
    np.savez(out, pred=pred, rel=rel, truth=stimpute_normalise(sp))
    return {"seconds": secs, "peak_mib": peak_rss_mib(), **extra}


def run_child(task: str, arg: str, threads: int) -> tuple[dict, Path | None]:
    out = Path(tempfile.mkstemp(suffix=".npz")[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "BENCH_THREADS": str(threads),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", task, arg, str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}, None
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print(task, arg, info, flush=True)
    return info, out


# ----------------------------------------------------------------------------- metrics
def _spearman(a, b):
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def li2022_gene_metrics(truth, pred) -> dict[str, np.ndarray]:
    """Per-gene PCC, SSIM, RMSE and JS of Li et al. 2022 (Nat Methods 19:662).

    By the definitions of ``Benchmarking/GenesMetrics.py`` in QuKunLab/SpatialBenchmarking
    (commit 3586b9d81c479f939aa40adedfe1c95c5b496bcb; re-expressed here, not copied), per
    gene (column) of the truth ``T`` and the prediction ``P``:

    - PCC: Pearson correlation of ``T`` and ``P``;
    - SSIM: ``T`` and ``P`` each divided by its maximum, then their ``cal_ssim``: the
      global SSIM of the two columns (means, population standard deviations and
      covariance), ``k1 = 0.01``, ``k2 = 0.03``, ``C3 = C2 / 2``, ``L`` = the smaller of
      the two maxima, as their ``[raw_max, impute_max][raw_max > impute_max]`` picks (1
      after the scaling either way);
    - RMSE: root mean squared difference of the z-scored columns (population SD);
    - JS: each column divided by its sum, ``M = (T + P) / 2``,
      ``JS = ½ KL(T‖M) + ½ KL(P‖M)`` (natural logarithm, as ``scipy.stats.entropy``).

    As theirs, missing predictions count as ``1e-20``. Their inputs are non-negative
    (counts); where a prediction here has negative values (the ridge part of stImpute's
    transfer can go below zero) JS, a divergence of distributions, reads them as 0 — the
    only departure. Higher PCC / SSIM, lower RMSE / JS are better.
    """
    from scipy.stats import entropy

    T = np.asarray(truth, np.float64)
    P = np.nan_to_num(np.asarray(pred, np.float64), nan=1e-20)
    with np.errstate(invalid="ignore", divide="ignore"):
        Tc, Pc = T - T.mean(0), P - P.mean(0)
        sT, sP = np.sqrt((Tc**2).mean(0)), np.sqrt((Pc**2).mean(0))
        pcc = (Tc * Pc).mean(0) / (sT * sP)
        # SSIM on max-scaled columns
        A, B = T / T.max(0), P / P.max(0)
        L = np.minimum(A.max(0), B.max(0))
        c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
        c3 = c2 / 2
        ma, mb = A.mean(0), B.mean(0)
        sa, sb = np.sqrt(((A - ma) ** 2).mean(0)), np.sqrt(((B - mb) ** 2).mean(0))
        sab = ((A - ma) * (B - mb)).mean(0)
        ssim = (
            (2 * ma * mb + c1)
            / (ma**2 + mb**2 + c1)
            * (2 * sa * sb + c2)
            / (sa**2 + sb**2 + c2)
            * (sab + c3)
            / (sa * sb + c3)
        )
        # RMSE on z-scored columns
        rmse = np.sqrt((((Tc / sT) - (Pc / sP)) ** 2).mean(0))
        # JS on sum-scaled columns
        Pp = np.clip(P, 0.0, None)
        U, V = T / T.sum(0), Pp / Pp.sum(0)
        M = (U + V) / 2
        js = 0.5 * entropy(U, M, axis=0) + 0.5 * entropy(V, M, axis=0)
    return {"pcc": pcc, "ssim": ssim, "rmse": rmse, "js": js}


def _mean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else 0.0


def accuracy_score(rows: dict[str, dict]) -> dict[str, float]:
    """Li et al. 2022's accuracy score (AS) of each method among ``rows``.

    As their ``get_score`` / ``plot_all`` (``BLAST_GenePrediction.ipynb``, same commit):
    each method's metrics are averaged over the genes (mean; a missing mean counts as 0);
    for PCC and SSIM the methods are ranked so that the highest gets ``N`` and the lowest
    1, for RMSE and JS the lowest gets ``N``; ranks are divided by ``N`` (the number of
    methods) and AS is the mean of the four, in (0, 1], higher = better. Ties share the
    average rank (theirs: the order of a sort).
    """
    from scipy.stats import rankdata

    names = list(rows)
    n = len(names)
    out = np.zeros(n)
    for m, sign in (("pcc", 1), ("ssim", 1), ("rmse", -1), ("js", -1)):
        v = np.array([_mean(rows[k]["genes"][m]) for k in names])
        out += rankdata(sign * v) / n
    return dict(zip(names, (out / 4).tolist(), strict=True))


def score(path: Path) -> dict:
    from sctorch import metrics

    d = np.load(path)
    truth, pred, rel = d["truth"], d["pred"], d["rel"]
    g = metrics.pairwise_scores(truth, pred, axis="gene")
    c = metrics.pairwise_scores(truth, pred, axis="cell")
    pr, co = g["pearson"].to_numpy(), g["cosine"].to_numpy()
    li = li2022_gene_metrics(truth, pred)
    row = {
        "genes": {k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in li.items()},
        **{f"median_{k}": float(np.nanmedian(v)) for k, v in li.items()},
        "pearson": float(np.nanmedian(pr)),
        "pearson_mean": float(np.nanmean(pr)),
        "cosine": float(np.nanmedian(co)),
        "cell_cosine": float(np.nanmedian(c["cosine"])),
    }
    if np.isfinite(rel).any():
        top = np.argsort(-np.nan_to_num(rel, nan=-np.inf), kind="stable")[: len(rel) // 2]
        row.update(
            spearman=_spearman(rel, pr),
            spearman_cos=_spearman(rel, co),
            top_pearson=float(np.nanmedian(pr[top])),
            top_cosine=float(np.nanmedian(co[top])),
        )
    return row


# ----------------------------------------------------------------------------- report
def esm_coverage() -> str:
    import sctorch as sct

    emb = set()
    for n in ("osmFISH", "MERFISH", "Mouse_brain"):
        emb |= set(sct.datasets.esm2_gene_embeddings(n).index)
    out = []
    for name in ("zeisel", "ifnb"):
        sp, ref, _ = load(name)
        out.append(
            f"{name}: {len(set(sp.var_names) & emb)} of the {sp.n_vars} panel genes, "
            f"{len(set(ref.var_names) & emb)} of the {ref.n_vars} reference genes"
        )
    return "; ".join(out)


def as_column(rows: dict[str, dict]) -> dict[str, float]:
    """AS of every scored row: the members of ``AS_SET`` ranked among themselves; any
    other row (an ablation, the smoothing) ranked in the default's place among them."""
    scored = {m: r for m, r in rows.items() if "genes" in r}
    peers = [m for m in AS_SET if m in scored]
    out = accuracy_score({m: scored[m] for m in peers}) if peers else {}
    for m, r in scored.items():
        if m not in AS_SET and "default" in peers:
            group = {
                (m if k == "default" else k): (r if k == "default" else scored[k]) for k in peers
            }
            out[m] = accuracy_score(group)[m]
    return out


def _f(r: dict, key: str, fmt: str = ".3f") -> str:
    return format(r[key], fmt) if key in r and np.isfinite(r[key]) else "—"


def summary(runs: dict) -> list[str]:
    """The targets of issue 25, met or missed, from the stored rows."""
    out = []
    peers = ("tangram", "gimvi", "knn")
    for data in DATA:
        rows = {m: r for m, r in runs.get(data, {}).items() if m in METHODS and "genes" in r}
        if "default" not in rows:
            continue
        sc = as_column(rows)
        rank = sorted((m for m in AS_SET if m in rows), key=lambda m: -sc[m])
        present = [m for m in peers if m in rows]
        d = rows["default"]
        txt = f"**{data}**: AS ranking " + " > ".join(f"{m} {sc[m]:.3f}" for m in rank)
        txt += f" (AS first: {'met' if rank[0] == 'default' else 'missed'})"
        if present:
            best = max(present, key=lambda m: rows[m]["median_pcc"])
            gap = d["median_pcc"] - rows[best]["median_pcc"]
            txt += (
                f"; median PCC {d['median_pcc']:.3f} vs best peer {best} "
                f"{rows[best]['median_pcc']:.3f} ({gap:+.3f}; target ≥ +0.02: "
                f"{'met' if gap >= 0.02 else 'missed'})"
            )
        if "knn" in rows and "spearman" in d and "spearman" in rows["knn"]:
            a, b = d["spearman"], rows["knn"]["spearman"]
            txt += (
                f"; reliability Spearman {a:.2f} vs k-NN spread {b:.2f} "
                f"({'met' if a >= b else 'missed'})"
            )
        if "smooth" in rows:
            s_ = rows["smooth"]
            pairs = ", ".join(
                f"{k.upper()} {s_[f'median_{k}']:.3f} / {d[f'median_{k}']:.3f}"
                for k in ("pcc", "ssim", "rmse", "js")
            )
            txt += (
                f"; spatial smoothing with / without (medians): {pairs}; mean PCC "
                f"{s_['pearson_mean']:.3f} / {d['pearson_mean']:.3f}; AS in the default's "
                f"place {sc['smooth']:.3f} / {sc['default']:.3f}"
            )
        missing = [m for m in AS_SET if m not in rows]
        if missing:
            txt += f" (not run: {', '.join(missing)})"
        out += [txt + ".", ""]
    if out:
        out = [
            "Targets (issue 25): stImpute's AS first among default, Tangram, gimVI and the "
            "SpaGE-style k-NN on every data set; median PCC ≥ best peer + 0.02; reliability "
            "Spearman ≥ the uncertainty peer's (k-NN neighbour spread).",
            "",
            *out,
        ]
    return out


def render(runs: dict) -> list[str]:
    lines = []
    for data, title in DATA.items():
        rows = {m: r for m, r in runs.get(data, {}).items() if m in METHODS}
        if not rows:
            continue
        base = rows.get("knn")
        sc = as_column(rows)
        lines += [
            f"## {title}",
            "",
            rows[next(iter(rows))]["desc"],
            "",
            "| method | median PCC | median SSIM | median RMSE | median JS | AS "
            "| gene Pearson median (mean) | gene cosine median | cell cosine "
            "median | Spearman(rel, Pearson) | top-half Pearson / all | k, w per fold "
            "(peers: epochs) | seconds | peak MiB | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            if m not in rows:
                continue
            r = rows[m]
            if "error" in r:
                lines.append(f"| {METHODS[m][0]} | failed: {r['error'][:80]} ||||||||||||| |")
                continue
            rel = f"{r['spearman']:.2f}" if "spearman" in r else "—"
            top = f"{r['top_pearson']:.3f} / {r['pearson']:.3f}" if "top_pearson" in r else "—"
            kw = ""
            if "k" in r:
                kw = ", ".join(f"{k}/{w:g}" for k, w in zip(r["k"], r["weight"], strict=True))
            elif "epochs" in r:
                kw = ", ".join(str(e) for e in r["epochs"])
            li = " | ".join(_f(r, f"median_{k}") for k in ("pcc", "ssim", "rmse", "js"))
            a_s = f"{sc[m]:.3f}" if m in sc else "—"
            lines.append(
                f"| {METHODS[m][0]} | {li} | {a_s} | {r['pearson']:.3f} ({r['pearson_mean']:.3f}) "
                f"| {r['cosine']:.3f} | {r['cell_cosine']:.3f} | {rel} | {top} | {kw} "
                f"| {r['seconds']:.0f} | {r['peak_mib']:.0f} | `{r['command']}` |"
            )
        if base and "default" in rows and "error" not in rows["default"]:
            d = rows["default"]["pearson"] - base["pearson"]
            lines += [
                "",
                f"Default − k-NN baseline: {d:+.3f} median gene Pearson "
                f"({rows['default']['cosine'] - base['cosine']:+.3f} cosine).",
            ]
        lines.append("")
    if "scale" in runs:
        lines += [
            "## Scale: osmFISH resampled to N spatial cells, synthetic 20,000-cell reference",
            "",
            "26 measured genes, 7 predicted; defaults; one CPU thread "
            "per run (`--threads 1`) on 2 cores shared with other jobs; seconds exclude "
            "building the data; peak MiB is each run's own process (libraries, the "
            "reference and the spatial cells). The default's inner gene CV reads at most "
            "5,000 spatial and 5,000 reference cells, so above that only the neighbour "
            "search and the prediction grow with N.",
            "",
            "| N spatial cells | stImpute seconds | peak MiB | k-NN seconds | peak MiB | command |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in sorted(runs["scale"].items(), key=lambda kv: int(kv[0])):
            st, kn = r.get("default", {}), r.get("knn", {})
            lines.append(
                f"| {int(n):,} | {st.get('seconds', float('nan')):.0f} "
                f"| {st.get('peak_mib', float('nan')):.0f} "
                f"| {kn.get('seconds', float('nan')):.0f} "
                f"| {kn.get('peak_mib', float('nan')):.0f} | `{st.get('command', '')}` |"
            )
        lines.append("")
    return lines


def _store(keys: list[str], value) -> dict:
    """Put ``value`` at ``keys`` in the runs file, re-read first (runs may overlap)."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    if keys:
        node = runs
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        RUNS.write_text(json.dumps(runs, indent=1))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--data", nargs="*", default=["dros", "ifnb", "zeisel"], choices=list(DATA))
    p.add_argument(
        "--methods", nargs="*", default=["fast"], help=f"method keys or groups {list(GROUPS)}"
    )
    p.add_argument("--scale", type=int, nargs="*", default=[])
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--gimvi-epochs",
        type=int,
        default=GIMVI_EPOCHS,
        help="gimVI's max_epochs (default: its own default, 200)",
    )
    p.add_argument("--esm-coverage", action="store_true")
    p.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="the JSON file of stored rows (default: benchmarks/results/stimpute_runs.json)",
    )
    args = p.parse_args()
    if args.runs is not None:
        global RUNS
        RUNS = args.runs
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    os.environ["BENCH_GIMVI_EPOCHS"] = str(args.gimvi_epochs)  # read by the children
    argv = sys.argv[1:]
    if "--runs" in argv:  # where rows are stored is not part of what was measured
        i = argv.index("--runs")
        argv = argv[:i] + argv[i + 2 :]
    cmd = command(__file__, argv)
    methods = [m for key in args.methods for m in GROUPS.get(key, [key])]
    for data in args.data:
        _, _, desc = load(data)
        for m in methods:
            info, path = run_child("cv", f"{data}:{m}", args.threads)
            row = info if path is None else {**info, **score(path)}
            _store(
                [data, m], {**row, "desc": desc, "command": cmd, "date": time.strftime("%Y-%m-%d")}
            )
    for n in [] if args.skip_scale else args.scale:
        for m in ("default", "knn"):
            info, _ = run_child("scale", f"{m}:{n}", args.threads)
            _store(["scale", str(n), m], {**info, "command": cmd})
    if args.esm_coverage:
        _store(["esm_coverage"], esm_coverage())
    runs = _store([], None)
    notes = NOTES + (
        [
            "",
            f"ESM-2 coverage of the proxies (union of the osmFISH, MERFISH and "
            f"Mouse_brain tables): {runs['esm_coverage']}.",
        ]
        if "esm_coverage" in runs
        else []
    )
    write_results(
        RESULTS,
        "stImpute benchmark",
        [*summary(runs), *notes, "", *render(runs)],
        script=__file__,
        note="Each row names the command that measured it (rows are kept across "
        "runs in `benchmarks/results/stimpute_runs.json`).",
    )


NOTES = [
    "Protocol: 5-fold cross-validation over the shared genes (KFold, shuffle, seed 0; the "
    "same folds for every method, peers included); scores on the normalised scale (raw "
    "counts: total → median total, log1p; in situ values as given). Reliability: Spearman "
    "with each gene's held-out Pearson; top half = median held-out Pearson of the half of "
    "the genes with the highest reliability. k, w: the neighbours and ridge weight each "
    "fold chose by inner gene CV on its training genes (GNN rows: k and alpha; smoothing "
    "row: spatial neighbours and smoothing weight).",
    "",
    "Li et al. 2022 (Nat Methods 19:662) metrics, by the definitions of "
    "QuKunLab/SpatialBenchmarking `Benchmarking/GenesMetrics.py` (commit 3586b9d): per "
    "gene PCC, SSIM on max-scaled values, RMSE on z-scored values, JS divergence on "
    "sum-scaled values (columns: medians over genes). AS (their accuracy score, "
    "`BLAST_GenePrediction.ipynb` `get_score`): each metric's mean over genes ranks the "
    "methods (best = N … worst = 1, divided by N), AS = mean of the four ranks; ranked "
    "among stImpute default, Tangram, gimVI and the SpaGE-style k-NN (N = 4); every other "
    "row's AS is its AS in the default's place among the same four.",
    "",
    "Peers: Tangram (tangram-sc 1.0.4) `tg.pp_adatas` on the fold's training genes, "
    "`tg.map_cells_to_space(mode='cells', device='cpu')` at its default 1,000 epochs, "
    "`tg.project_genes`, on log-normalised inputs (as Li et al. fed it). gimVI "
    "(scvi-tools 1.4.2 `scvi.external.GIMVI`) as in Li et al.'s pipeline: reference "
    "restricted to the shared genes, raw values, `train(max_epochs=200)` (its default) "
    "with early stopping on the validation ELBO (epochs per fold in the k, w column), "
    "`get_imputed_values(normalized=True)` × the median spatial total, then the truth's "
    "transform. Uncertainty peer of the reliability (TransImp has no installable package "
    "here: `pip index versions transimp` finds none): the k-NN baseline's neighbour "
    "spread, per gene the mean over cells of the 50 neighbours' standard deviation "
    "relative to the gene's mean prediction, negated; its Spearman is in the k-NN row.",
    "",
    "Spatial smoothing (Drosophila only: the proxies are scRNA-seq halves with no "
    "coordinates): stImpute's held-out predictions mixed with their mean over the k "
    "nearest other locations in `obsm['spatial3d']`, (1 − β)·P + β·mean; (k, β) from "
    "k ∈ {5, 10, 20, 50}, β ∈ {0, 0.25, 0.5, 0.75, 1} chosen per fold by stImpute's own "
    "gene CV on that fold's training genes (never the held-out genes). Verdict from the "
    "Drosophila figures above: it does not pay — median PCC, SSIM and RMSE slightly "
    "worse, only JS better (which lifts its AS by one rank swap among four methods) — so "
    "it stays in the benchmark and is not an option of `sct.tl.stimpute`.",
    "",
    "Cost of the peers here (one thread, on a machine shared with other jobs), both at "
    "their defaults on every data set: Tangram (1,000 epochs) 691 / 253 / 63 s and gimVI "
    "(200 epochs; early stopping on the validation ELBO never ended a fold early, see the "
    "epochs column) 520 / 289 / 183 s for the 5 folds of dros / ifnb / zeisel, under the "
    "~10 minutes per data set allowed except Tangram on dros (kept at its default). The "
    "GNN and `preset='paper'` rows measured before the Li et al. metrics were added kept "
    "no predictions, so their new columns are empty where they were not re-run "
    "(`--methods gnn gnn_rel` fills them; 4–11 min a row).",
    "",
    "Scale of the GNN (`method='gnn'`, the default before this rewrite; previous run "
    "2026-11-22/23 with that version's `--scale 100000 25000 --threads 1`): 100,000 spatial "
    "cells 526 s and 2.7 GiB peak on one thread, 1,000,000 cells 1,892 s and 4.2 GiB; the "
    "k-NN baseline 72 s and 770 s.",
]


if __name__ == "__main__":
    main()
