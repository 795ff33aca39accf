"""TCER on full-depth counts, by the openproblems denoising task's protocol and metrics.

The protocol and metrics of openproblems-bio/task_denoising (read at commit bda85e2),
re-expressed here without its workflow runner:

- ``src/data_processors/process_dataset``: every count of the **full-depth** matrix is
  split binomially, 0.9 to the method's input (``train``) and 0.1 held out (``test``),
  with the molecular cross-validation helper ``split_molecules(counts.data, 0.9, 0.0,
  np.random.RandomState(seed))`` (re-expressed in :func:`split_molecules`, the same
  draws); genes with no train molecule are dropped. As the issue asks, the 2,000 most
  variable genes of the train part are kept (``scanpy.pp.highly_variable_genes`` on the
  log-normalised train counts, Seurat flavour) and cells with no train molecule on them
  are dropped;
- each method returns ``denoised``: cells × genes on the **count scale** of the train
  part;
- ``src/metrics/mse`` and ``src/metrics/poisson``: :func:`sctorch.metrics.denoising_scores`
  (the MSE of the log-normalised test counts and output; the Poisson negative
  log-likelihood of molecular cross-validation, Batson et al. 2019, of the held-out
  counts under the output rescaled to their depth). **The openproblems script passes the
  Poisson loss's arguments the other way round** (the held-out counts as the
  prediction); the MCV order, the likelihood of the held-out molecules under the output,
  is the one reported as ``poisson``; the openproblems order is reported too
  (``poisson_op``);
- both scores are scaled as the openproblems leaderboard does: 0 = ``no denoising``
  (the train counts themselves), 1 = ``perfect denoising`` (the test counts); higher is
  better.

Methods, side by side in one process, each from the train counts only:

- ``no denoising``, ``perfect denoising`` (the scaling controls);
- ``MAGIC`` as openproblems runs it (``src/methods/magic``: library-size normalised to 1,
  ``sqrt``, ``MAGIC(solver="exact", decay=1, t=3)``, squared back and multiplied by the
  library size: the "reversed normalisation" of its leaderboard's top entry);
- ``kNN smoothing`` (openproblems ``src/methods/knn_smoothing``: kNN-smoothing 2 with
  k = 10; :func:`sctorch.tcer.knn_smoothing`);
- ``no ER-Net``: TCER's neighbour mean prior and posterior (the default's ``space`` and
  ``shrinkage``: one β per gene by molecular cross-validation), without the network;
- ``no ER-Net, β pooled over all genes``: the same, each gene's β pooled with all genes'
  rather than its expression group's (``choose_gene_beta(group=None)``, the rule before
  the seventh session of issue 23): the ablation of the expression groups;
- ``no ER-Net, fixed β = c × median`` (``beta_sweep``): the same prior at one β for all
  genes, ``c`` × the median library size / 10⁴ for ``c`` in :data:`SWEEP`, chosen by
  nothing: the trade-off between the two metrics along the amount of shrinkage;
- ``MAGIC`` / ``TCER, read out for the MSE (diagnostic)`` (``readout``): the same outputs
  mapped to the value that minimises the MSE metric's expected error at the held-out
  depth (:func:`mse_readout`; it uses the protocol's 0.1 split, so it is a diagnostic of
  the metric, not a method);
- ``no ER-Net, one β``: the same with one β for all genes (``shrinkage="global"``, the
  default before per-gene β): the ablation of per-gene shrinkage;
- ``no ER-Net, linear``: one β on the linear scale (the default before issue 23's
  square-root scale): the ablation of the square-root context and posterior;
- ``TCER`` (``sct.tl.tcer_impute`` defaults, ``counts_key`` = its count-scale posterior
  layer; ``prior`` says whether its gate kept the network's prior or the neighbour
  mean), ``TCER prior=network`` (the same with the network's prior forced: the gate's
  ablation), ``TCER shrinkage=global`` (one β for all genes),
  ``TCER prior=network, random placement`` (the same genes on random pixels
  of the grid: whether the GenoMap matters) and ``TCER preset=paper`` (its measured
  values kept, zeros filled; epochs and width capped by ``--paper-epochs`` /
  ``--paper-features``), ``TCER objective=noise2noise, prior=network`` (ER-Net trained to
  predict held-out molecules from the rest of each cell, its prior kept) and the same
  with random placement.

Each run appends its rows to ``benchmarks/results/tcer_denoising_runs.json``; ``--render``
writes ``benchmarks/results/tcer_denoising.md``, keeping its hand-written "## Reading"
section.

Usage::

    python benchmarks/tcer_denoising.py --datasets ifnb
    python benchmarks/tcer_denoising.py --render
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from scipy import sparse

import sctorch as sct
from sctorch import tcer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import RssSampler, command, kept_reading, random_placement, write_results

HERE = Path(__file__).parent
RUNS = HERE / "results" / "tcer_denoising_runs.json"
DATASETS = ("pbmc3k", "ifnb", "intestine", "zeisel")


METHODS = (
    "magic",
    "knn",
    "tcer",
    "network",
    "global",
    "random",
    "no_ernet",
    "paper",
    "noise2noise",
    "noise2noise_random",
    "one_pool",
    "beta_sweep",
    "readout",
)
#: relative β (× the median library size / 10⁴) of the ``beta_sweep`` rows
SWEEP = (1.0, 4.0, 16.0, 64.0)


def load(name: str) -> ad.AnnData:
    return {
        "intestine": sct.datasets.intestine_moor2018,
        "pbmc3k": sct.datasets.pbmc3k,
        "ifnb": sct.datasets.ifnb_pbmc,
        "zeisel": sct.datasets.zeisel2015,
    }[name]()


# ---------------------------------------------------------------------- the task's protocol
def split_molecules(umis: np.ndarray, data_split: float, random_state) -> tuple:
    """openproblems' ``split_molecules`` with ``overlap_factor=0`` (the same draws)."""
    x = random_state.binomial(umis, data_split)
    y = random_state.binomial(umis - x, 1.0)  # (1 - split) / (1 - split + 0) = 1
    return x, y


def process(adata: ad.AnnData, seed: int = 0, n_top_genes: int = 2000):
    """``(train, test)`` AnnData of integer counts, as ``process_dataset`` + 2,000 HVGs."""
    counts = sparse.csr_matrix(adata.X).astype(np.float64)
    counts.data = np.round(counts.data)
    counts = counts.astype(np.int64)
    train_data, test_data = split_molecules(counts.data, 0.9, np.random.RandomState(seed))
    X_train, X_test = counts.copy(), counts.copy()
    X_train.data, X_test.data = train_data, test_data
    X_train.eliminate_zeros()
    X_test.eliminate_zeros()
    keep = np.asarray(X_train.sum(0)).ravel() > 0
    train = ad.AnnData(X_train[:, keep].astype(np.float32), obs=adata.obs.copy())
    train.var_names = adata.var_names[keep]
    test = ad.AnnData(X_test[:, keep].astype(np.float32), obs=adata.obs.copy())
    test.var_names = train.var_names
    lg = train.copy()
    sc.pp.normalize_total(lg, target_sum=1e4)
    sc.pp.log1p(lg)
    sc.pp.highly_variable_genes(lg, n_top_genes=min(n_top_genes, lg.n_vars))
    hvg = lg.var["highly_variable"].to_numpy()
    train, test = train[:, hvg].copy(), test[:, hvg].copy()
    cells = np.asarray(train.X.sum(1)).ravel() > 0
    return train[cells].copy(), test[cells].copy()


# ---------------------------------------------------------------------- the methods
def no_ernet(
    train: ad.AnnData, k: int, seed: int = 0, space: str | None = None, shrinkage=None, **kw
) -> np.ndarray:
    """TCER's neighbour prior + posterior (``sctorch.tcer.neighbour_posterior``), count scale.

    The default's rule (``None``: the default config's ``space`` / ``shrinkage``) without
    the network.
    """
    rates = tcer.Rates(train.X, None, 1e4)
    out, _, _ = tcer.neighbour_posterior(
        rates, k=k, space=space, shrinkage=shrinkage, seed=seed, **kw
    )
    return out * rates.counts(slice(None))[1][:, None]


def fixed_beta(train: ad.AnnData, k: int, seed: int = 0):
    """``rel -> counts``: the neighbour prior and posterior at one fixed β (``rel`` × the
    median size), on the count scale; the neighbours and their mean are found once."""
    rates = tcer.Rates(train.X, None, 1e4)
    counts, size = rates.counts(slice(None))
    space = sct.tl.TCERConfig().space
    idx = tcer.neighbour_index(rates, k, seed=seed)
    mu = tcer.neighbour_mean(rates, idx, np.arange(rates.n), space)

    def at(rel: float) -> np.ndarray:
        beta = rel * float(np.median(size))
        return tcer.posterior(counts, size, mu, beta, space) * size[:, None]

    return at


def mse_readout(denoised: np.ndarray, train_lib: np.ndarray, held_out: float = 0.1) -> np.ndarray:
    """A denoiser's output read out for the MSE metric at the held-out depth (diagnostic).

    The value that minimises the expected squared error to ``log1p(10⁴ y / N)`` for a
    held-out count ``y ~ Poisson(p N)``, where ``p`` is the output's proportion of the cell
    and ``N`` the held-out library (the train library × ``held_out / (1 − held_out)``,
    the protocol's split; no held-out count is used): ``E[log1p(10⁴ y / N)]``, returned on
    the count scale (``expm1``). Exact sum over ``y`` where ``p N < 50``, the second-order
    expansion above. It uses the benchmark's split fraction, which a user does not have:
    it shows what the MSE metric rewards, and is not a method.
    """
    p = denoised / np.maximum(denoised.sum(1, keepdims=True), 1e-12)
    N = np.asarray(train_lib, dtype=np.float64).reshape(-1, 1) * held_out / (1 - held_out)
    lam, c = p * N, 1e4 / N
    big = lam >= 50
    out = np.log1p(c * lam) - c**2 * lam / (2 * (1 + c * lam) ** 2)
    lam_s, c_s = np.where(big, 0.0, lam), np.broadcast_to(c, lam.shape)
    exact = np.zeros_like(lam)
    pmf = np.exp(-lam_s)  # P(y = 0)
    for y in range(1, 120):
        pmf = pmf * lam_s / y
        exact += pmf * np.log1p(c_s * y)
    out[~big] = exact[~big]
    return np.expm1(out)


def timed(fn):
    with RssSampler() as mem:
        t0 = time.perf_counter()
        out = fn()
        sec = time.perf_counter() - t0
    return out, sec, mem.peak


def run_one(name: str, paper_epochs: int, paper_features: int, methods: list[str]) -> list[dict]:
    train, test = process(load(name))
    print(f"{name}: {train.n_obs} cells x {train.n_vars} genes (full depth, 0.9/0.1)", flush=True)
    results = {
        "no denoising": (train.X, 0.0, float("nan")),
        "perfect denoising": (test.X, 0.0, float("nan")),
    }
    extra: dict[str, dict] = {}
    if "magic" in methods:
        results["MAGIC"] = timed(lambda: tcer.magic_openproblems(train.X))
    if "knn" in methods:
        results["kNN smoothing"] = timed(
            lambda: tcer.knn_smoothing(np.asarray(train.X.toarray()), k=10)
        )

    def run_tcer(label, placement=False, **kw):
        def fn():
            a = train.copy()
            if placement:  # the GenoMap's genes on random pixels (built, then shuffled)
                sct.tl.genomap(a, rng=0, progress=False)
                random_placement(a, "random")
                kw["genomap_key"] = "random"
            model = sct.tl.tcer_impute(
                a, rng=0, progress=False, return_model=True, counts_key="denoised", **kw
            )
            extra[label] = {
                "epochs": len(model.history["train_loss"]),
                "n_neighbors": model.n_neighbors,
                # per-gene beta: the median over genes
                "beta": np.nan if model.beta is None else float(np.median(model.beta)),
                "prior": "network" if model.use_network else "context",
            }
            return a.layers["denoised"]

        results[label] = timed(fn)

    if "tcer" in methods:
        run_tcer("TCER")
    if "network" in methods:
        run_tcer("TCER prior=network", prior="network")
    if "global" in methods:
        run_tcer("TCER shrinkage=global", shrinkage="global")
    if "random" in methods:
        run_tcer("TCER prior=network, random placement", placement=True, prior="network")
    n2n = {"objective": "noise2noise", "prior": "network"}
    if "noise2noise" in methods:
        run_tcer("TCER objective=noise2noise, prior=network", **n2n)
    if "noise2noise_random" in methods:
        run_tcer("TCER objective=noise2noise, prior=network, random placement", True, **n2n)
    if {"no_ernet", "one_pool", "beta_sweep"} & set(methods):
        k = extra.get("TCER", {}).get("n_neighbors")
        if k is None:
            k = tcer.choose_neighbours(
                tcer.Rates(train.X, None, 1e4),
                seed=0,
                cells=np.arange(train.n_obs),
                space=sct.tl.TCERConfig().space,
            )[0]
    if "one_pool" in methods:  # per-gene beta pooled over all genes, not expression groups
        results["no ER-Net, β pooled over all genes"] = timed(
            lambda: no_ernet(train, int(k), group=None)
        )
    if "beta_sweep" in methods:  # the MSE / Poisson trade-off along β, chosen by nothing
        at = fixed_beta(train, int(k))
        for rel in SWEEP:
            results[f"no ER-Net, fixed β = {rel:g} × median"] = timed(lambda rel=rel: at(rel))
    if "no_ernet" in methods:
        results["no ER-Net"] = timed(lambda: no_ernet(train, int(k)))
        results["no ER-Net, one β"] = timed(lambda: no_ernet(train, int(k), shrinkage="global"))
        results["no ER-Net, linear"] = timed(
            lambda: no_ernet(train, int(k), space="linear", shrinkage="global")
        )
    if "readout" in methods:  # diagnostic: the outputs read out for the MSE metric
        lib = np.asarray(train.X.sum(1)).ravel()
        for label in ("MAGIC", "TCER"):
            if label in results:
                out = results[label][0]
                dense = out.toarray() if sparse.issparse(out) else np.asarray(out)
                results[f"{label}, read out for the MSE (diagnostic)"] = (
                    mse_readout(dense, lib),
                    float("nan"),
                    float("nan"),
                )
    if "paper" in methods:
        run_tcer(
            "TCER preset=paper", preset="paper", epochs=paper_epochs, n_features=paper_features
        )

    rows = []
    for method, (mat, sec, peak) in results.items():
        dense = mat.toarray() if sparse.issparse(mat) else np.asarray(mat)
        row = {
            "data": name,
            "method": method,
            "cells": int(train.n_obs),
            "genes": int(train.n_vars),
            **sct.metrics.denoising_scores(train, test, dense),
            "zeros_filled": float(((dense > 0) & (train.X.toarray() == 0)).mean()),
            "seconds": float(sec),
            "peak_rss_MiB": float(peak),
            **extra.get(method, {}),
        }
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def store(rows: list[dict], cmd: str) -> None:
    """Replace the stored rows of the same (data, method), re-reading first."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    new = {(r["data"], r["method"]) for r in rows}
    runs = [r for r in runs if (r["data"], r["method"]) not in new]
    runs += [dict(r, command=cmd, date=time.strftime("%Y-%m-%d")) for r in rows]
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1, default=float))


ORDER = [
    "no denoising",
    "perfect denoising",
    "MAGIC",
    "kNN smoothing",
    "no ER-Net",
    "no ER-Net, β pooled over all genes",
    *(f"no ER-Net, fixed β = {rel:g} × median" for rel in SWEEP),
    "no ER-Net, linear",
    "TCER",
    "TCER prior=network",
    "TCER prior=network, random placement",
    "TCER preset=paper",
    "TCER objective=noise2noise, prior=network",
    "TCER objective=noise2noise, prior=network, random placement",
    "MAGIC, read out for the MSE (diagnostic)",
    "TCER, read out for the MSE (diagnostic)",
]


def render(out: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(json.loads(RUNS.read_text()))
    df["_d"] = df["data"].map({d: i for i, d in enumerate(DATASETS)})
    df["_m"] = df["method"].map({m: i for i, m in enumerate(ORDER)})
    df = df.sort_values(["_d", "_m"])
    cols = [
        "data",
        "method",
        "mse_scaled",
        "poisson_scaled",
        "poisson_op_scaled",
        "mse",
        "poisson",
        "zeros_filled",
        "seconds",
        "peak_rss_MiB",
        "epochs",
        "n_neighbors",
        "beta",
        "prior",
    ]
    table = df[[c for c in cols if c in df]].to_markdown(index=False, floatfmt=".3f")
    lines = [
        "| data | MAGIC mse / poisson (scaled) | TCER mse / poisson (scaled) | "
        "target TCER ≥ MAGIC on both |",
        "|---|---|---|---|",
    ]
    for d, g in df.groupby("data", sort=False):
        by = g.set_index("method")
        if "TCER" in by.index and "MAGIC" in by.index:
            mg, tc = by.loc["MAGIC"], by.loc["TCER"]
            ok = (
                tc["mse_scaled"] >= mg["mse_scaled"]
                and tc["poisson_scaled"] >= mg["poisson_scaled"]
            )
            lines.append(
                f"| {d} | {mg['mse_scaled']:+.3f} / {mg['poisson_scaled']:+.3f} | "
                f"{tc['mse_scaled']:+.3f} / {tc['poisson_scaled']:+.3f} | "
                f"{'met' if ok else 'missed'} |"
            )
    cmds = sorted({r for r in df["command"]})
    reading = kept_reading(out)
    body = [
        "Protocol and metrics: openproblems-bio/task_denoising (see the script's docstring). "
        "`*_scaled`: 0 = no denoising, 1 = perfect denoising (the held-out counts), higher is "
        "better. `poisson`: the molecular cross-validation order (denoised as the prediction); "
        "`poisson_op`: the openproblems script's order (held-out counts as the prediction). "
        "`zeros_filled`: fraction of all entries that are 0 in the method's input and > 0 in "
        "its output. `peak_rss_MiB`: highest resident memory of the process while the method "
        "ran (includes the data already loaded). `beta`: TCER's fitted prior weight (units of "
        "library / 10⁴; with one β per gene, the default, the median over genes).",
        "",
        "Rows made by:",
        "",
        *[f"- `{c}`" for c in cmds],
        "",
        table,
        "",
        "## Target",
        "",
        *lines,
        *(["", *reading] if reading else []),
    ]
    write_results(out, "TCER on full-depth counts (openproblems denoising protocol)", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    ap.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        choices=METHODS,
    )
    ap.add_argument("--paper-epochs", type=int, default=10)
    ap.add_argument("--paper-features", type=int, default=16)
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    if args.render:
        render(HERE / "results" / "tcer_denoising.md")
        return
    cmd = command(__file__, sys.argv[1:])
    for name in args.datasets:
        store(run_one(name, args.paper_epochs, args.paper_features, args.methods), cmd)


if __name__ == "__main__":
    main()
