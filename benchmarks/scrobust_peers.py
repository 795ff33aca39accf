"""scRobust against the tools its users run, scored with the field's metric code (issue 25).

Two tasks, every method in its own process (seconds and peak resident memory of that
process, ``ru_maxrss``), one torch / BLAS thread each unless ``--threads`` says otherwise.

``--task embedding``: scRobust's cell embedding (``X_scrobust``) against PCA (50 PCs of the
log-normalised 2,000 HVGs, Seurat flavour, chosen on all cells without labels) and scVI
(scvi-tools defaults: 10 latent dimensions, ZINB, counts of the same HVGs,
``early_stopping=True``, CPU; ``batch_key="sample"`` on ifnb, as an scVI user integrating
control and IFN-β would). Scored by ``scib_metrics.benchmark.Benchmarker`` with its default
metric collections and PCA as the unintegrated embedding (Luecken et al. 2022, Nat Methods
19:41; total = 0.6 bio-conservation + 0.4 batch correction, as the Benchmarker computes it),
and by Leiden ARI (``sctorch.metrics.cluster_and_score``) beside it. On ifnb also PCA and
scRobust each followed by Harmony (``harmonypy.run_harmony`` on ``sample``, its defaults;
seconds = the embedding's + Harmony's, peak = the larger of the two processes'). ifnb: labels
``cell_type``, batch ``sample`` (ctrl vs IFN-β). Zeisel: labels ``cell_type``, one batch,
so batch metrics are undefined and not run (``batch_correction_metrics=None``). pbmc3k has
neither labels nor batches: no scIB metric is defined on it, so it is not run.
scRobust runs with the library's defaults (``sct.tl.scrobust_pretrain`` then
``sct.tl.scrobust_embed``), the same on every data set.

``--task annotation``: cell-type annotation on ifnb (2,800 cells, 13 types) by scRobust
(``sct.tl.scrobust_annotate`` with the library defaults, the model pre-trained on the
reference and query cells together without labels, as scVI is for scANVI; and, as the
plain call ``scrobust_annotate(query, ref, labels_key=...)`` does, pre-trained on the
reference alone, once per fold), logistic
regression (scikit-learn, ``max_iter=1000``; plain and ``class_weight="balanced"``),
CellTypist (``celltypist.train`` with ``use_SGD=True``: its default solver fails with
scikit-learn >= 1.8) and scANVI (scVI trained on reference + query without query labels,
then ``SCANVI.from_scvi_model`` with scvi-tools' default epochs, ``predict``), all on the
2,000 HVGs of reference and query together (chosen without labels, as scVI users do).
Splits: 5-fold stratified CV at 0 / 30 / 50 % added
dropout (``scrobust.add_dropout``: that fraction of each cell's non-zero counts set to 0,
in reference and query alike) and the condition shift: ctrl cells as the reference,
IFN-β cells as the query, 0 % added dropout. Scores as the openproblems label-projection
task reports them: accuracy and macro-F1 (``sklearn.metrics``).

Usage::

    python benchmarks/scrobust_peers.py --task embedding --data ifnb zeisel
    python benchmarks/scrobust_peers.py --task annotation
    python benchmarks/scrobust_peers.py --task annotation --splits shift --methods scRobust

Writes ``benchmarks/results/scrobust_peers_<task>.md`` from the rows stored in
``benchmarks/results/scrobust_peers_runs.json`` (each row with the command that measured it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import command, dataset, markdown_table, peak_rss_mib, write_results
from scrobust import add_dropout, lognorm  # benchmarks/scrobust.py: the same dropout model

HERE = Path(__file__).resolve().parent
RUNS = HERE / "results" / "scrobust_peers_runs.json"
SEED = 0
N_HVG = 2000
EMBED_METHODS = ("PCA", "scVI", "scRobust")
# Harmony (harmonypy, the integration ``scanpy.external.pp.harmony_integrate`` runs) on an
# embedding, where the data set has batches: the classical way a user corrects X_pca or
# X_scrobust for batch
HARMONY = ("PCA + Harmony", "scRobust + Harmony")
EMBED_ROWS = ("PCA", "PCA + Harmony", "scVI", "scRobust", "scRobust + Harmony")
REF_ONLY = "scRobust (pre-trained on the reference only)"
WIDE_C1 = "scRobust (wide path C = 1; before)"  # the wide path's old fixed L2 strength
ANNOT_METHODS = (
    "scRobust",
    REF_ONLY,
    WIDE_C1,
    "logistic regression",
    "logistic regression (balanced)",
    "CellTypist",
    "scANVI",
)
SPLITS = {  # key: (added dropout, title)
    "cv0": (0.0, "5-fold CV, 0 %"),
    "cv30": (0.3, "5-fold CV, 30 % added dropout"),
    "cv50": (0.5, "5-fold CV, 50 % added dropout"),
    "shift": (0.0, "ctrl → IFN-β"),
}


# ----------------------------------------------------------------------------- helpers
def _setup(threads: int) -> None:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)


def load(name: str):
    a = dataset(name)
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    a.obs_names_make_unique()
    return a


def hvg_mask(a) -> np.ndarray:
    """Top 2,000 HVGs (Seurat flavour) of ``a``'s log-normalised counts; all genes of a
    smaller panel (the Zeisel subset has 1,000)."""
    import scanpy as sc

    b = lognorm(a)
    if b.n_vars <= N_HVG:
        return np.asarray(b.X.sum(0)).ravel() > 0
    sc.pp.highly_variable_genes(b, n_top_genes=N_HVG)
    return b.var["highly_variable"].to_numpy()


def scvi_model(a, batch_key: str | None, threads: int):
    """scVI with scvi-tools' defaults on the counts of ``a`` (CPU, early stopping)."""
    import scvi

    scvi.settings.seed = SEED
    scvi.settings.num_threads = threads
    scvi.settings.dl_num_workers = 0
    a = a.copy()
    a.layers["counts"] = a.X.copy()
    scvi.model.SCVI.setup_anndata(a, layer="counts", batch_key=batch_key)
    vae = scvi.model.SCVI(a)
    vae.train(accelerator="cpu", early_stopping=True, enable_progress_bar=False)
    return vae, a


def _store(rows: list[dict]) -> dict:
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    for r in rows:
        runs[r["key"]] = r
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    return runs


# ----------------------------------------------------------------------------- embedding
def embedding_worker(data: str, method: str, threads: int) -> dict:
    _setup(threads)
    a = load(data)
    a = a[:, hvg_mask(a)].copy()
    base = peak_rss_mib()
    t0 = time.perf_counter()
    if method == "PCA":
        import scanpy as sc

        b = lognorm(a)
        sc.pp.pca(b, n_comps=50, random_state=SEED)
        emb = b.obsm["X_pca"]
    elif method == "scVI":
        vae, _ = scvi_model(a, "sample" if data == "ifnb" else None, threads)
        emb = vae.get_latent_representation()
    elif method == "scRobust":
        import sctorch as sct

        model = sct.tl.scrobust_pretrain(a, rng=SEED, progress=False)
        sct.tl.scrobust_embed(a, model, progress=False)
        emb = a.obsm["X_scrobust"]
    else:
        raise ValueError(method)
    return {
        "emb": np.asarray(emb, dtype=np.float32),
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak_rss_mib(),
        "base_mb": base,
    }


def harmony_worker(emb: np.ndarray, batch: np.ndarray, threads: int) -> dict:
    _setup(threads)
    import harmonypy
    import pandas as pd

    base = peak_rss_mib()
    t0 = time.perf_counter()
    meta = pd.DataFrame({"batch": batch})
    z = np.asarray(
        harmonypy.run_harmony(emb, meta, "batch", random_state=SEED, verbose=False).Z_corr
    )
    z = z if z.shape[0] == emb.shape[0] else z.T  # harmonypy < 0.1 returns dims x cells
    return {
        "emb": z.astype(np.float32),
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak_rss_mib(),
        "base_mb": base,
    }


def score_embeddings(data: str, embs: dict[str, np.ndarray]) -> dict[str, dict]:
    """scIB metrics (``Benchmarker`` defaults, PCA as unintegrated) and Leiden ARI."""
    import anndata as ad
    from scib_metrics.benchmark import Benchmarker

    import sctorch as sct

    a = load(data)
    obs = a.obs[["cell_type"]].astype(str).copy()
    has_batch = data == "ifnb"
    obs["batch"] = a.obs["sample"].astype(str).to_numpy() if has_batch else "one batch"
    adata = ad.AnnData(np.zeros((a.n_obs, 1), dtype=np.float32), obs=obs)
    for m, e in embs.items():
        adata.obsm[f"X_{m}"] = e
    kw = {} if has_batch else {"batch_correction_metrics": None}
    bm = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=[f"X_{m}" for m in embs],
        pre_integrated_embedding_obsm_key="X_PCA",
        n_jobs=1,
        progress_bar=False,
        **kw,
    )
    bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    out = {}
    for m in embs:
        row = df.loc[f"X_{m}"].to_dict()
        row = {k: float(v) for k, v in row.items()}
        row["Leiden ARI (sctorch.metrics)"] = sct.metrics.cluster_and_score(
            adata, "cell_type", use_rep=f"X_{m}"
        )["ARI"]
        out[m] = row
    return out


# ----------------------------------------------------------------------------- annotation
def split_indices(a, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    y = a.obs["cell_type"].astype(str).to_numpy()
    if split == "shift":
        s = a.obs["sample"].astype(str).to_numpy()
        ctrl = np.flatnonzero(s == sorted(set(s))[0])  # "CTRL" < "STIM"
        return [(ctrl, np.flatnonzero(s != s[ctrl[0]]))]
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(5, shuffle=True, random_state=SEED).split(y, y))


def annotation_worker(split: str, method: str, threads: int, max_folds: int) -> dict:
    _setup(threads)
    from sklearn.metrics import accuracy_score, f1_score

    level = SPLITS[split][0]
    a = load("ifnb")
    a.X = add_dropout(a.X, level, SEED + int(level * 100))
    y = a.obs["cell_type"].astype(str).to_numpy()
    base = peak_rss_mib()
    t0 = time.perf_counter()
    scores = []
    # genes: the 2,000 HVGs of reference and query together, chosen without labels, for
    # every method (what an scVI / scANVI user does); scRobust and scVI are trained once,
    # without labels, on all cells (reference and query), then each fold's reference
    # labels train the classifier.
    data = a[:, hvg_mask(a)].copy()
    if method in ("scRobust", WIDE_C1):
        import sctorch as sct

        model = sct.tl.scrobust_pretrain(data, rng=SEED, progress=False)
        extra = {"wide_c": 1.0} if method == WIDE_C1 else {}
    elif method == "scANVI":
        import scvi

        vae, both = scvi_model(data, "sample", threads)
    for tr, te in split_indices(a, split)[:max_folds]:
        ref, query = data[tr].copy(), data[te].copy()
        if method in ("scRobust", WIDE_C1):
            sct.tl.scrobust_annotate(
                query, ref, labels_key="cell_type", model=model, rng=SEED, progress=False, **extra
            )
            pred = query.obs["scrobust_label"].astype(str).to_numpy()
        elif method == REF_ONLY:  # the plain call: scrobust_annotate pre-trains on ref
            import sctorch as sct

            sct.tl.scrobust_annotate(query, ref, labels_key="cell_type", rng=SEED, progress=False)
            pred = query.obs["scrobust_label"].astype(str).to_numpy()
        elif method.startswith("logistic regression"):
            from sklearn.linear_model import LogisticRegression

            weight = "balanced" if method.endswith("(balanced)") else None
            r, q = lognorm(ref), lognorm(query)
            clf = LogisticRegression(max_iter=1000, class_weight=weight).fit(r.X, y[tr])
            pred = clf.predict(q.X)
        elif method == "CellTypist":
            import celltypist

            r, q = lognorm(ref), lognorm(query)
            m = celltypist.train(
                r,
                labels="cell_type",
                n_jobs=1,
                use_SGD=True,
                feature_selection=False,
                check_expression=False,
            )
            p = celltypist.annotate(q, model=m, majority_voting=False)
            pred = p.predicted_labels["predicted_labels"].astype(str).to_numpy()
        elif method == "scANVI":
            masked = np.full(a.n_obs, "Unknown", dtype=object)
            masked[tr] = y[tr]
            both.obs["label_masked"] = masked
            lvae = scvi.model.SCANVI.from_scvi_model(
                vae, unlabeled_category="Unknown", labels_key="label_masked", adata=both
            )
            lvae.train(accelerator="cpu", enable_progress_bar=False)
            pred = np.asarray(lvae.predict(both))[te].astype(str)
        else:
            raise ValueError(method)
        scores.append((f1_score(y[te], pred, average="macro"), accuracy_score(y[te], pred)))
    s = np.asarray(scores)
    return {
        "f1": s[:, 0].tolist(),
        "acc": s[:, 1].tolist(),
        "seconds": time.perf_counter() - t0,
        "peak_mb": peak_rss_mib(),
        "base_mb": base,
    }


# ----------------------------------------------------------------------------- rendering
def _run(fn, *args):
    ctx = get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
        return ex.submit(fn, *args).result()


EMBED_COLS = (
    "Isolated labels",
    "KMeans NMI",
    "KMeans ARI",
    "Silhouette label",
    "cLISI",
    "BRAS",
    "iLISI",
    "KBET",
    "Graph connectivity",
    "PCR comparison",
    "Bio conservation",
    "Batch correction",
    "Total",
    "Leiden ARI (sctorch.metrics)",
)


def _f(v):
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def render_embedding(runs: dict) -> list[str]:
    body = []
    for data in ("ifnb", "zeisel"):
        rows = [runs.get(f"embedding/{data}/{m}") for m in EMBED_ROWS]
        rows = [r for r in rows if r]
        if not rows:
            continue
        cols = [c for c in EMBED_COLS if any(c in r["scores"] for r in rows)]
        body += [f"## {data}", ""]
        table = [
            [
                r["method"],
                *[_f(r["scores"].get(c)) for c in cols],
                f"{r['seconds']:.0f}",
                f"{r['peak_mb']:.0f}",
                f"`{r['command']}`",
            ]
            for r in rows
        ]
        body += markdown_table(["method", *cols, "seconds", "peak MiB", "command"], table)
        body.append("")
        by = {r["method"]: r["scores"] for r in rows}
        if "scRobust" in by:
            for peer in ("scVI", "PCA"):
                if peer in by:
                    d = by["scRobust"]["Bio conservation"] - by[peer]["Bio conservation"]
                    ok = "met" if d >= 0 else "MISSED"
                    body.append(f"- bio conservation, scRobust − {peer}: {d:+.3f} ({ok})")
            for me in ("scRobust", "scRobust + Harmony"):
                if me in by and "Total" in by[me] and "scVI" in by:
                    d = by[me]["Total"] - by["scVI"]["Total"]
                    ok = "met" if d >= 0 else "MISSED"
                    body.append(f"- total, {me} − scVI: {d:+.3f} ({ok})")
        body.append("")
    body += [
        "pbmc3k: no labels and one batch, so no scIB metric is defined on it; not run.",
        "",
        "A command with `--reuse` scored embeddings kept from an earlier run of the same "
        "script (their seconds and peak memory are that run's, each method in its own "
        "process; here `--task embedding --data ifnb zeisel`, 2026-12-02, on a machine "
        "shared with other benchmark jobs). Harmony rows: seconds = the embedding's + "
        "Harmony's (1–2 s).",
        "",
    ]
    return body


def render_annotation(runs: dict) -> list[str]:
    body = []
    table = []
    for split, (_, title) in SPLITS.items():
        rows = [runs.get(f"annotation/{split}/{m}") for m in ANNOT_METHODS]
        rows = [r for r in rows if r]
        for r in rows:
            f1, acc = np.asarray(r["f1"]), np.asarray(r["acc"])
            sd = lambda v: f" ± {v.std():.3f}" if len(v) > 1 else ""  # noqa: E731
            table.append(
                [
                    title,
                    r["method"],
                    f"{f1.mean():.3f}{sd(f1)}",
                    f"{acc.mean():.3f}{sd(acc)}",
                    len(f1),
                    f"{r['seconds']:.0f}",
                    f"{r['peak_mb']:.0f}",
                    f"`{r['command']}`",
                ]
            )
    missing = [t for k, (_, t) in SPLITS.items() if not any(f"annotation/{k}/" in r for r in runs)]
    if missing:
        body += [f"Not run yet: {'; '.join(missing)}.", ""]
    body += markdown_table(
        ["split", "method", "macro-F1", "accuracy", "folds", "seconds", "peak MiB", "command"],
        table,
    )
    body += [
        "",
        "Targets (issue 25): scRobust macro-F1 ≥ the best peer at 0 %; ≥ best + 0.03 "
        "on the condition shift and at 50 % added dropout.",
        "",
    ]
    for split, need in (("cv0", 0.0), ("shift", 0.03), ("cv50", 0.03), ("cv30", None)):
        me = runs.get(f"annotation/{split}/scRobust")
        peers = [runs.get(f"annotation/{split}/{m}") for m in ANNOT_METHODS[3:]]
        peers = [p for p in peers if p]
        if not me or not peers:
            continue
        best = max(peers, key=lambda p: np.mean(p["f1"]))
        d = np.mean(me["f1"]) - np.mean(best["f1"])
        verdict = (
            "" if need is None else (" (met)" if d >= need else f" (target ≥ {need:+.2f}: MISSED)")
        )
        body.append(f"- {SPLITS[split][1]}: scRobust − {best['method']} = {d:+.3f}{verdict}")
    notes = [
        f"- {SPLITS[r['key'].split('/')[1]][1]}, {r['method']}: {r['note']}"
        for r in runs.values()
        if r["key"].startswith("annotation/") and r.get("note")
    ]
    if notes:
        body += ["", "Notes on rows:", "", *notes]
    return [*body, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("embedding", "annotation"), required=True)
    p.add_argument("--data", nargs="*", default=["ifnb", "zeisel"])
    p.add_argument("--splits", nargs="*", default=list(SPLITS))
    p.add_argument("--methods", default=None, help="comma-separated subset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-folds", type=int, default=5)
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--reuse", action="store_true", help="embeddings of an earlier run (temp folder)"
    )
    args = p.parse_args()
    # inherited by the spawned workers before they import NumPy, so BLAS uses --threads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    cmd = command()
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    pick = lambda all_: [m for m in all_ if args.methods is None or m in args.methods.split(",")]  # noqa: E731
    if not args.render_only and args.task == "embedding":
        for data in args.data:
            res = {}
            for m in pick(EMBED_METHODS):
                # kept on disk so that a failure in the scoring does not lose the runs
                cache = Path(tempfile.gettempdir()) / f"scrobust_peers_{data}_{m}.npz"
                if args.reuse and cache.exists():
                    res[m] = dict(np.load(cache, allow_pickle=False))
                    res[m] = {k: v if k == "emb" else float(v) for k, v in res[m].items()}
                else:
                    res[m] = _run(embedding_worker, data, m, args.threads)
                    np.savez(cache, **res[m])
            if data == "ifnb":  # the one set with batches
                batch = load(data).obs["sample"].astype(str).to_numpy()
                for m in HARMONY:
                    first = m.split(" + ")[0]
                    if first in res:
                        h = _run(harmony_worker, res[first]["emb"], batch, args.threads)
                        h["seconds"] += res[first]["seconds"]
                        h["peak_mb"] = max(h["peak_mb"], res[first]["peak_mb"])
                        res[m] = h
            scores = score_embeddings(data, {m: r["emb"] for m, r in res.items()})
            rows = [
                {
                    "key": f"embedding/{data}/{m}",
                    "method": m,
                    "scores": scores[m],
                    "seconds": r["seconds"],
                    "peak_mb": r["peak_mb"],
                    "command": cmd,
                    "date": time.strftime("%Y-%m-%d"),
                }
                for m, r in res.items()
            ]
            for r in rows:
                print(r["key"], {k: round(v, 3) for k, v in r["scores"].items()}, flush=True)
            runs = _store(rows)
    elif not args.render_only:
        for split in args.splits:
            for m in pick(ANNOT_METHODS):
                r = _run(annotation_worker, split, m, args.threads, args.max_folds)
                r.update(
                    key=f"annotation/{split}/{m}",
                    method=m,
                    command=cmd,
                    date=time.strftime("%Y-%m-%d"),
                )
                print(
                    r["key"],
                    f"F1 {np.mean(r['f1']):.3f} acc {np.mean(r['acc']):.3f} {r['seconds']:.0f} s",
                    flush=True,
                )
                runs = _store([r])
    title = f"scRobust against its users' peers: {args.task} (issue 25)"
    body = render_embedding(runs) if args.task == "embedding" else render_annotation(runs)
    note = (
        f"One process per method, {args.threads} thread(s); rows kept in "
        "`benchmarks/results/scrobust_peers_runs.json`. Protocol: see the script's docstring."
    )
    write_results(HERE / "results" / f"scrobust_peers_{args.task}.md", title, body, note=note)


if __name__ == "__main__":
    main()
