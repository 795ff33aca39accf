"""TCER's output rule without the network, by selection criterion and scale (issue 23).

The neighbour prior and posterior of TCER (what does the work in the default, see
``tcer_denoising.md``) under three rules, on SAVER's down-sampling protocol (as
``benchmarks/tcer.py``: ``select_reference``, ``simulate_efficiency_loss`` at shape 10 and
8, i.e. 0.5 and 0.4 % efficiency, rng 0; mean gene-wise Pearson against the log-normalised
reference):

- ``pearson/linear``: k and β chosen by the mean gene-wise Pearson of molecular
  cross-validation, SAVER's linear posterior (the rule of the default before issue 23,
  with the grids no longer clipped at their edge);
- ``poisson/linear``: chosen by the Poisson likelihood of the held-out half;
- ``poisson/sqrt``: the same, context and posterior on the square-root scale (the default
  before per-gene β);
- ``poisson/sqrt/gene``: the same with one β per gene (``shrinkage="gene"``, the default).

The first three rules use one β for all genes (``shrinkage="global"``); ``beta / median
s`` is the median over genes for the per-gene rule.

Seconds: the rule's selection and output (no network).

False signals (Andrews & Hemberg 2018, F1000Research 7:1740), where the data have cell-type
labels (ifnb, Zeisel ``cell_type``): ``false_DE`` is the number of (type, gene) pairs that
Scanpy's Wilcoxon ``rank_genes_groups`` (each type against the rest, Benjamini–Hochberg
adjusted p < 0.05) calls differential on the imputed data but not on the reference;
``misplaced`` is the fraction of the imputed expression (``expm1`` of the log values)
that lies in (type, gene) pairs where the reference detects the gene in under 1 % of the
type's cells. The target: both at or below the observed data's.

Usage::

    python benchmarks/tcer_output_rules.py --datasets ifnb zeisel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

import sctorch as sct
from sctorch import tcer

sys.path.insert(0, str(Path(__file__).parent))
from _harness import log_normalize, markdown_table, write_results

LOAD = {
    "ifnb": sct.datasets.ifnb_pbmc,
    "zeisel": sct.datasets.zeisel2015,
    "pbmc3k": sct.datasets.pbmc3k,
    "intestine": sct.datasets.intestine_moor2018,
}
RULES = (
    ("pearson", "linear", "global"),
    ("poisson", "linear", "global"),
    ("poisson", "sqrt", "global"),
    ("poisson", "sqrt", "gene"),
)


def rule_output(rates, crit: str, space: str, shrinkage: str, seed: int = 0):
    out, k, beta = tcer.neighbour_posterior(
        rates, criterion=crit, space=space, shrinkage=shrinkage, seed=seed
    )
    return np.log1p(out), k, float(np.median(beta)) / np.median(rates.counts(slice(None))[1])


def false_signals(X: np.ndarray, ref_log: np.ndarray, labels, ref_calls=None):
    """``(false_DE, misplaced, calls)`` of a log-normalised matrix against the reference."""
    import scanpy as sc

    def calls(M):
        a = ad.AnnData(np.asarray(M, dtype=np.float32), obs={"t": labels.to_numpy()})
        a.obs["t"] = a.obs["t"].astype("category")
        sc.tl.rank_genes_groups(a, "t", method="wilcoxon", n_genes=M.shape[1])
        rec = a.uns["rank_genes_groups"]
        out = set()
        for grp in rec["names"].dtype.names:
            names, padj = rec["names"][grp], rec["pvals_adj"][grp]
            out |= {(grp, str(g)) for g, q in zip(names, padj, strict=True) if q < 0.05}
        return out

    ref_calls = calls(ref_log) if ref_calls is None else ref_calls
    mine = calls(X)
    lab = labels.to_numpy()
    mass = np.expm1(X)
    absent = 0.0
    for t in np.unique(lab):
        rows = lab == t
        off = (ref_log[rows] > 0).mean(0) < 0.01
        absent += mass[rows][:, off].sum()
    return len(mine - ref_calls), float(absent / mass.sum()), ref_calls


def main() -> None:
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=["ifnb", "zeisel"], choices=list(LOAD))
    args = ap.parse_args()
    rows = []
    for name in args.datasets:
        ref = sct.pp.select_reference(LOAD[name]())
        for shape, level in ((10.0, "0.5 %"), (8.0, "0.4 %")):
            r = ref.copy()
            sct.pp.simulate_efficiency_loss(r, efficiency_shape=shape, rng=0)
            obs = ad.AnnData(sparse.csr_matrix(r.layers["observed"], dtype=np.float32))
            keep = np.asarray(obs.X.sum(1)).ravel() > 0
            obs = obs[keep].copy()
            truth = log_normalize(r.X[keep])
            truth = np.asarray(truth.toarray() if sparse.issparse(truth) else truth)
            rates = tcer.Rates(obs.X, None, 1e4)
            obs_log = np.asarray(log_normalize(obs.X).toarray())
            labels = r.obs["cell_type"][keep] if "cell_type" in r.obs else None
            ref_calls = None
            fs = ["", ""]
            if labels is not None:
                fd, mp, ref_calls = false_signals(obs_log, truth, labels)
                fs = [fd, f"{mp:.4f}"]
            g = sct.metrics.gene_pearson(obs_log, truth)
            rows.append([name, level, "observed", f"{np.nanmean(g):.3f}", "", "", "", *fs])
            for crit, space, shrinkage in RULES:
                t0 = time.perf_counter()
                out, k, rel = rule_output(rates, crit, space, shrinkage)
                sec = time.perf_counter() - t0
                g = sct.metrics.gene_pearson(out, truth)
                fs = ["", ""]
                if labels is not None:
                    fd, mp, _ = false_signals(out, truth, labels, ref_calls)
                    fs = [fd, f"{mp:.4f}"]
                rule = f"{crit}/{space}" + ("/gene" if shrinkage == "gene" else "")
                mean = f"{np.nanmean(g):.3f}"
                rows.append([name, level, rule, mean, k, f"{rel:.2f}", f"{sec:.1f}", *fs])
                print(rows[-1], flush=True)
    cols = [
        "data",
        "efficiency",
        "rule",
        "mean_pearson",
        "k",
        "beta / median s",
        "seconds",
        "false_DE",
        "misplaced",
    ]
    write_results(
        Path(__file__).parent / "results" / "tcer_output_rules.md",
        "TCER's output rule without the network (down-sampling protocol)",
        [
            "See the script's docstring for the protocol and the rules.",
            "",
            *markdown_table(cols, rows),
        ],
    )


if __name__ == "__main__":
    main()
