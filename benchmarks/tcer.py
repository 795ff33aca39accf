"""TCER benchmark: the SAVER/TCER down-sampling protocol on real data, against simple peers.

Protocol (TCER issue): ``select_reference`` (quantile 0.25, detection 0.25) →
``simulate_efficiency_loss`` at shape 15, 10, 8 (0.75, 0.5, 0.4 % efficiency) with rate
2000, scale 1e5, rng 0 → impute the observed counts → mean and median gene-wise Pearson
(across cells) and mean cell-wise Pearson (across genes) against ``log1p(normalize_total
1e4)`` of the reference; Leiden ARI (``sct.metrics.cluster_and_score``) against the
labels where the data have them (ifnb and Zeisel ``cell_type``); seconds and the peak
resident memory of the process while the method ran (sampled, ``_harness.RssSampler``).

Methods, all from the observed counts only, side by side in one process:

- ``observed``: the log-normalised observed counts;
- ``MAGIC`` (magic-impute defaults, on the log-normalised counts);
- ``kNN smoothing`` (Wagner et al. 2017, kNN-smoothing 2 with k = 15, d = 10 PCs: in
  ``ceil(log2(k + 1))`` steps of k = 1, 3, 7, 15, the counts of each cell and its nearest
  neighbours are summed, neighbours being found in PCA of the Freeman–Tukey transform of
  the median-normalised smoothed counts; then log-normalised);
- ``ridge + posterior``: each gene predicted from the other genes of the same cell by
  ridge regression (the leave-one-gene-out closed form of ``tcer_ceiling.py``, λ = 1000)
  as the prior of TCER's own output rule (``sctorch.tcer.posterior``, β by molecular
  cross-validation on the same held-out cells);
- ``TCER`` (``sct.tl.tcer_impute`` defaults) and, at the ``--ablation-levels``:
  ``TCER preset=paper`` (its objective, output rule and no context, but F and epochs
  capped by ``--paper-features`` and ``--paper-epochs``, default 16 and 10: the paper's
  100 epochs at F = 64 take hours per data set on a 2-core CPU), ``TCER random
  placement`` (same genes, random pixels), ``TCER no cross-cell channel``
  (``n_neighbors=0``), ``TCER plain convolution`` (``deformable=False``) and ``no
  ER-Net`` (the same neighbours, the same molecular cross-validation of β on the same
  held-out cells, the neighbour mean as the prior: TCER's priors and output rule without
  the network), ``TCER objective=noise2noise, prior=network`` (ER-Net trained to predict
  held-out molecules from the rest of the cell, its prior kept) and the same with random
  placement, ``no ER-Net, β pooled over all genes`` (``one_pool``: each gene's β pooled
  with all genes' rather than its expression group's, the rule before the seventh
  session of issue 23); ``--ablations`` picks which.

Each run appends its rows to ``benchmarks/results/tcer_runs.json`` (so data sets can run in
parallel processes); ``--render`` writes ``benchmarks/results/tcer.md`` from that file,
keeping its hand-written "## Reading" section.

Usage::

    python benchmarks/tcer.py --datasets ifnb --levels 10          # one data set, one level
    python benchmarks/tcer.py --render                              # the table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

import sctorch as sct
from sctorch import tcer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import (
    RssSampler,
    command,
    kept_reading,
    log_normalize,
    random_placement,
    write_results,
)

HERE = Path(__file__).parent
RUNS = HERE / "results" / "tcer_runs.json"
LEVELS = {15.0: "0.75 %", 10.0: "0.5 %", 8.0: "0.4 %"}
LABELS = {"ifnb": "cell_type", "zeisel": "cell_type"}
DATASETS = ("pbmc3k", "ifnb", "intestine", "zeisel")
ABLATIONS = ("no_ernet", "random", "no_context", "plain", "paper", "noise2noise", "one_pool")


def load(name: str) -> ad.AnnData:
    if name == "intestine":
        return sct.datasets.intestine_moor2018()
    if name == "pbmc3k":
        return sct.datasets.pbmc3k()
    if name == "ifnb":
        return sct.datasets.ifnb_pbmc()
    if name == "zeisel":
        return sct.datasets.zeisel2015()
    raise ValueError(name)


# ---------------------------------------------------------------------- TCER's output rule on peers
def posterior_on(rates: tcer.Rates, prior_of, val: np.ndarray, seed: int = 0) -> tuple:
    """TCER's output rule on another prior: β by MCV on ``val``, then the posterior.

    ``prior_of(own_rates, cells) -> prior mean rates`` (own_rates: the cells' rates,
    from half A during the cross-validation; ``sctorch.tcer.choose_beta_on``).
    """
    beta, _ = tcer.choose_beta_on(rates, val, prior_of, seed=seed)
    counts, size = rates.counts(slice(None))
    mu = prior_of(rates.rates(slice(None)).toarray(), np.arange(rates.n))
    return np.log1p(tcer.posterior(counts, size, mu, beta)), beta


# ---------------------------------------------------------------------- one data set
def timed(fn):
    with RssSampler() as mem:
        t0 = time.perf_counter()
        out = fn()
        sec = time.perf_counter() - t0
    return out, sec, mem.peak


def downsampled(name: str, shape: float) -> tuple[ad.AnnData, sparse.csr_matrix]:
    """``(observed, truth)``: the protocol's observed counts and log-normalised reference.

    ``observed``: cells × genes of raw counts (cells with no observed count dropped);
    ``truth``: ``log1p(normalize_total 1e4)`` of the reference of the same cells.
    """
    ref = sct.pp.select_reference(load(name))
    sct.pp.simulate_efficiency_loss(ref, efficiency_shape=shape, rng=0)
    obs = ad.AnnData(
        sparse.csr_matrix(ref.layers["observed"], dtype=np.float32),
        obs=ref.obs.copy(),
        var=ref.var[[]].copy(),
    )
    keep = np.asarray(obs.X.sum(1)).ravel() > 0
    return obs[keep].copy(), log_normalize(ref.X[keep])


def run_one(
    name: str, shape: float, ablations: list[str], paper_epochs: int, paper_features: int
) -> list[dict]:
    import magic

    obs, truth = downsampled(name, shape)
    counts = obs.X.toarray().astype(np.float64)
    obs_log = log_normalize(obs.X)
    print(f"{name} {LEVELS[shape]}: {obs.n_obs} cells x {obs.n_vars} genes", flush=True)

    results = {"observed": (obs_log, 0.0, float("nan"))}
    results["MAGIC"] = timed(
        lambda: magic.MAGIC(random_state=0, verbose=0).fit_transform(obs_log.toarray())
    )
    results["kNN smoothing"] = timed(lambda: log_normalize(tcer.knn_smoothing(counts)))

    rates = tcer.Rates(obs.X, None, 1e4)
    val = np.sort(np.random.default_rng(0).permutation(obs.n_obs)[: round(0.1 * obs.n_obs)])

    def ridge():
        predict = tcer.ridge_blind_spot(obs_log.toarray())
        return posterior_on(rates, lambda own, cells: np.expm1(predict(np.log1p(own))), val)[0]

    results["ridge + posterior"] = timed(ridge)
    _, gsec, gpeak = timed(lambda: sct.tl.genomap(obs, rng=0, progress=False))
    models = {}

    def run_tcer(label, key="genomap", **kw):
        def fn():
            a = obs.copy()
            models[label] = sct.tl.tcer_impute(
                a, genomap_key=key, rng=0, progress=False, return_model=True, **kw
            )
            return a.layers["tcer"]

        out, sec, peak = timed(fn)
        results[label] = (out, sec + gsec, max(peak, gpeak))

    run_tcer("TCER")
    if ablations:
        k = models["TCER"].n_neighbors

        def no_ernet():  # the default's rule (its criterion and space), without ER-Net
            return np.log1p(tcer.neighbour_posterior(rates, k=k, seed=0)[0])

        if "no_ernet" in ablations:
            results["no ER-Net"] = timed(no_ernet)
        if "one_pool" in ablations:  # per-gene beta pooled over all genes, not by expression
            results["no ER-Net, β pooled over all genes"] = timed(
                lambda: np.log1p(tcer.neighbour_posterior(rates, k=k, seed=0, group=None)[0])
            )
        random_placement(obs, "random")
        if "random" in ablations:
            run_tcer("TCER random placement", key="random")
        if "no_context" in ablations:
            run_tcer("TCER no cross-cell channel", n_neighbors=0)
        if "plain" in ablations:
            run_tcer("TCER plain convolution", deformable=False)
        if "paper" in ablations:
            run_tcer(
                "TCER preset=paper", preset="paper", epochs=paper_epochs, n_features=paper_features
            )
        if "noise2noise" in ablations:  # molecular noise2noise, the network's prior kept
            n2n = {"objective": "noise2noise", "prior": "network"}
            run_tcer("TCER objective=noise2noise, prior=network", **n2n)
            run_tcer("TCER objective=noise2noise, prior=network, random placement", "random", **n2n)

    rows = []
    label_key = LABELS.get(name)
    for method, (mat, sec, peak) in results.items():
        dense = np.asarray(mat.toarray() if sparse.issparse(mat) else mat, dtype=np.float32)
        g = sct.metrics.gene_pearson(dense, truth)
        row = {
            "data": name,
            "efficiency": LEVELS[shape],
            "method": method,
            "cells": int(obs.n_obs),
            "genes": int(obs.n_vars),
            "mean_pearson": float(np.nanmean(g)),
            "median_pearson": float(np.nanmedian(g)),
            "cell_pearson": float(np.nanmean(sct.metrics.cell_pearson(dense, truth))),
            "seconds": float(sec),
            "peak_rss_MiB": float(peak),
        }
        m = models.get(method)
        if m is not None:
            row.update(
                epochs=len(m.history["train_loss"]),
                n_neighbors=m.n_neighbors,
                beta=np.nan if m.beta is None else float(np.median(m.beta)),
            )
        if label_key:
            tmp = ad.AnnData(dense, obs=obs.obs[[label_key]])
            row["ARI"] = sct.metrics.cluster_and_score(tmp, label_key)["ARI"]
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    if label_key:
        tmp = ad.AnnData(np.asarray(truth.toarray(), dtype=np.float32), obs=obs.obs[[label_key]])
        rows.append(
            {
                "data": name,
                "efficiency": LEVELS[shape],
                "method": "reference",
                "cells": int(obs.n_obs),
                "genes": int(obs.n_vars),
                "ARI": sct.metrics.cluster_and_score(tmp, label_key)["ARI"],
            }
        )
    return rows


def store(rows: list[dict], cmd: str) -> None:
    """Replace the stored rows of the same (data, efficiency, method), re-reading first."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    new = {(r["data"], r["efficiency"], r["method"]) for r in rows}
    runs = [r for r in runs if (r["data"], r["efficiency"], r["method"]) not in new]
    runs += [dict(r, command=cmd, date=time.strftime("%Y-%m-%d")) for r in rows]
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1))


ORDER = [
    "observed",
    "MAGIC",
    "kNN smoothing",
    "ridge + posterior",
    "TCER",
    "no ER-Net",
    "no ER-Net, β pooled over all genes",
    "TCER random placement",
    "TCER no cross-cell channel",
    "TCER plain convolution",
    "TCER preset=paper",
    "TCER objective=noise2noise, prior=network",
    "TCER objective=noise2noise, prior=network, random placement",
    "reference",
]


def render(out: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(json.loads(RUNS.read_text()))
    df["_d"] = df["data"].map({d: i for i, d in enumerate(DATASETS)})
    df["_e"] = df["efficiency"].map({v: i for i, v in enumerate(LEVELS.values())})
    df["_m"] = df["method"].map({m: i for i, m in enumerate(ORDER)})
    df = df.sort_values(["_d", "_e", "_m"])
    cols = [
        "data",
        "efficiency",
        "method",
        "mean_pearson",
        "median_pearson",
        "cell_pearson",
        "ARI",
        "seconds",
        "peak_rss_MiB",
        "epochs",
        "n_neighbors",
        "beta",
    ]
    table = df[[c for c in cols if c in df]].to_markdown(index=False, floatfmt=".3f")
    summary = [
        "",
        "## Targets",
        "",
        "| data | efficiency | best peer (observed, MAGIC, kNN smoothing) | TCER | "
        "margin (target ≥ +0.030) | ARI observed | ARI TCER |",
        "|---|---|---|---|---|---|---|",
    ]
    for (d, e), g in df.groupby(["data", "efficiency"], sort=False):
        by = g.set_index("method")
        if "TCER" not in by.index:
            continue
        peers = by.loc[[m for m in ("observed", "MAGIC", "kNN smoothing") if m in by.index]]
        best = peers["mean_pearson"].idxmax()
        margin = by.loc["TCER", "mean_pearson"] - peers["mean_pearson"].max()
        ari = (
            f"{by.loc['observed', 'ARI']:.3f} | {by.loc['TCER', 'ARI']:.3f}"
            if "ARI" in by and np.isfinite(by.loc["TCER"].get("ARI", np.nan))
            else "– | –"
        )
        summary.append(
            f"| {d} | {e} | {best} {peers['mean_pearson'].max():.3f} | "
            f"{by.loc['TCER', 'mean_pearson']:.3f} | {margin:+.3f} | {ari} |"
        )
    reading = kept_reading(out)
    commands = sorted(set(df["command"].dropna()))
    body = [
        "Rows from `benchmarks/results/tcer_runs.json`, made by:",
        "",
        *[f"- `{c}`" for c in commands],
        "",
        "`peak_rss_MiB`: the highest resident memory of the benchmark process while the "
        "method ran (it includes the data already loaded). TCER seconds include "
        "`sct.tl.genomap`. Columns `epochs`, `n_neighbors`, `beta`: what TCER's "
        "self-supervised selection chose (early stopping; molecular cross-validation).",
        "",
        table,
        *summary,
        "",
        *reading,
    ]
    write_results(
        out,
        "TCER benchmark (down-sampling protocol)",
        body,
        script=__file__,
        args=["--render"],
        echo=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    ap.add_argument("--ablation-levels", nargs="*", type=float, default=[10.0])
    ap.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=ABLATIONS)
    ap.add_argument("--paper-epochs", type=int, default=10)
    ap.add_argument("--paper-features", type=int, default=16)
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "tcer.md"))
    args = ap.parse_args()
    if args.render:
        render(Path(args.out))
        return
    cmd = command(__file__, sys.argv[1:])
    for name in args.datasets:
        for shape in args.levels:
            ablations = args.ablations if shape in args.ablation_levels else []
            rows = run_one(name, shape, ablations, args.paper_epochs, args.paper_features)
            store(rows, cmd)


if __name__ == "__main__":
    main()
