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
   ``preset="paper"`` and the SpaGE-style k-NN baseline (z-score → PCA 30 → cosine 50-NN
   → neighbour mean). Metrics: median gene Pearson and cosine, median cell cosine,
   Spearman(reliability, held-out gene Pearson), median Pearson of the top half of genes
   by reliability vs all genes.
2. Scale: osmFISH cells resampled (Poisson) to N spatial cells against a synthetic
   20,000-cell reference on the same 33 genes; 7 genes predicted; stImpute defaults vs the
   k-NN baseline.

Every method runs in its own subprocess, which reports its wall-clock seconds and its own
peak resident memory (``ru_maxrss``). Threads are limited to ``--threads`` (default 2).
Each run stores its rows in ``benchmarks/results/stimpute_runs.json`` (with the command
that measured them) and rewrites ``benchmarks/results/stimpute.md`` from all stored rows,
so data sets and method groups can be run separately::

    python benchmarks/stimpute.py --data dros ifnb zeisel --methods fast --skip-scale
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
from _harness import command, peak_rss_mib, stimpute_normalise, write_results

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
}
GROUPS = {
    "fast": ["default", "ae", "knn_only", "ridge_only", "knn"],
    "gnn": ["gnn", "gnn_nograph", "paper"],
    "gnn_rel": ["gnn_rel"],
}
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


def knn_baseline(sp_train, ref_train, ref_target, k=50, n_pcs=30):
    """SpaGE-style: z-score the shared genes per data set, PCA, cosine k-NN, neighbour mean."""
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
    for s in range(0, zs.shape[0], 8192):
        idx = nn.kneighbors(pca.transform(zs[s : s + 8192]), return_distance=False)
        out[s : s + 8192] = ref_target[idx].mean(1)
    return out


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
            pred[:, te] = knn_baseline(sp_n[:, tr], ref_n[:, tr], ref_n[:, te])
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


def score(path: Path) -> dict:
    from sctorch import metrics

    d = np.load(path)
    truth, pred, rel = d["truth"], d["pred"], d["rel"]
    g = metrics.pairwise_scores(truth, pred, axis="gene")
    c = metrics.pairwise_scores(truth, pred, axis="cell")
    pr, co = g["pearson"].to_numpy(), g["cosine"].to_numpy()
    row = {
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


def render(runs: dict) -> list[str]:
    lines = []
    for data, title in DATA.items():
        rows = {m: r for m, r in runs.get(data, {}).items() if m in METHODS}
        if not rows:
            continue
        base = rows.get("knn")
        lines += [
            f"## {title}",
            "",
            rows[next(iter(rows))]["desc"],
            "",
            "| method | gene Pearson median (mean) | gene cosine median | cell cosine "
            "median | Spearman(rel, Pearson) | top-half Pearson / all | k, w per fold "
            "| seconds | peak MiB | command |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            if m not in rows:
                continue
            r = rows[m]
            if "error" in r:
                lines.append(f"| {METHODS[m][0]} | failed: {r['error'][:80]} |||||||| |")
                continue
            rel = f"{r['spearman']:.2f}" if "spearman" in r else "—"
            top = f"{r['top_pearson']:.3f} / {r['pearson']:.3f}" if "top_pearson" in r else "—"
            kw = ""
            if "k" in r:
                kw = ", ".join(f"{k}/{w:g}" for k, w in zip(r["k"], r["weight"], strict=True))
            lines.append(
                f"| {METHODS[m][0]} | {r['pearson']:.3f} ({r['pearson_mean']:.3f}) "
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
        [*notes, "", *render(runs)],
        script=__file__,
        note="Each row names the command that measured it (rows are kept across "
        "runs in `benchmarks/results/stimpute_runs.json`).",
    )


NOTES = [
    "Protocol: 5-fold cross-validation over the shared genes (KFold, shuffle, seed 0; the "
    "same folds for every method); scores on the normalised scale (raw counts: total → "
    "median total, log1p; in situ values as given). Reliability: Spearman with each gene's "
    "held-out Pearson; top half = median held-out Pearson of the half of the genes with the "
    "highest reliability. k, w: the neighbours and ridge weight each fold chose by inner "
    "gene CV on its training genes (GNN rows: k and alpha). Tangram (previous run, "
    "2026-11-22, not installed here any more): 0.557 median gene Pearson, 0.852 cosine on "
    "the Drosophila pair.",
    "",
    "Scale of the GNN (`method='gnn'`, the default before this rewrite; previous run "
    "2026-11-22/23 with that version's `--scale 100000 25000 --threads 1`): 100,000 spatial "
    "cells 526 s and 2.7 GiB peak on one thread, 1,000,000 cells 1,892 s and 4.2 GiB; the "
    "k-NN baseline 72 s and 770 s.",
]


if __name__ == "__main__":
    main()
