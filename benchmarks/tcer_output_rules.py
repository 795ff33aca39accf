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
- ``poisson/sqrt``: the same, context and posterior on the square-root scale (the default).

Seconds: the rule's selection and output (no network). Usage::

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
RULES = (("pearson", "linear"), ("poisson", "linear"), ("poisson", "sqrt"))


def rule_output(rates, crit: str, space: str, seed: int = 0):
    n = rates.n
    k, _ = tcer.choose_neighbours(rates, seed=seed, cells=np.arange(n), criterion=crit, space=space)
    idx = tcer.neighbour_index(rates, k, seed=seed)
    val = np.sort(np.random.default_rng(seed).permutation(n)[: round(0.1 * n)])
    beta, _ = tcer.choose_beta_on(
        rates,
        val,
        lambda own, c: tcer.neighbour_mean(rates, idx, c, space),
        seed=seed,
        criterion=crit,
        space=space,
    )
    counts, size = rates.counts(slice(None))
    mu = tcer.neighbour_mean(rates, idx, np.arange(n), space)
    return np.log1p(tcer.posterior(counts, size, mu, beta, space)), k, beta / np.median(size)


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
            g = sct.metrics.gene_pearson(np.asarray(log_normalize(obs.X).toarray()), truth)
            rows.append([name, level, "observed", f"{np.nanmean(g):.3f}", "", "", ""])
            for crit, space in RULES:
                t0 = time.perf_counter()
                out, k, rel = rule_output(rates, crit, space)
                sec = time.perf_counter() - t0
                g = sct.metrics.gene_pearson(out, truth)
                rows.append(
                    [
                        name,
                        level,
                        f"{crit}/{space}",
                        f"{np.nanmean(g):.3f}",
                        k,
                        f"{rel:.2f}",
                        f"{sec:.1f}",
                    ]
                )
                print(rows[-1], flush=True)
    cols = ["data", "efficiency", "rule", "mean_pearson", "k", "beta / median s", "seconds"]
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
