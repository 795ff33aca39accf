"""TCER benchmark: the SAVER/TCER down-sampling protocol on real data.

Protocol (TCER issue): ``select_reference`` (quantile 0.25, detection 0.25) →
``simulate_efficiency_loss`` at shape 15, 10, 8 with rate 2000, scale 1e5, rng 0 →
impute the observed counts → mean and median gene-wise Pearson (across cells) against
``log1p(normalize_total 1e4)`` of the reference. Every method is compared on that
log-normalised scale: "observed" is the log-normalised observed counts, MAGIC runs on
them (magic-impute defaults) and returns that scale, TCER writes it. Leiden ARI against
the labels (ifnb ``cell_type``, intestine ``zone``) for reference, observed, MAGIC,
TCER. Seconds and peak memory (tracemalloc, Python + numpy allocations; torch CPU
tensors are included as they allocate through the same allocator hooks only partly,
so the process peak RSS is reported too).

Usage::

    python benchmarks/tcer.py                       # everything (hours on 2 CPU cores)
    python benchmarks/tcer.py --datasets intestine --levels 10 --epochs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np

import sctorch as sct

sys.path.insert(0, str(Path(__file__).parent))
from _harness import log_normalize, measured, peak_rss_mib, write_results

LEVELS = {15.0: "0.75 %", 10.0: "0.5 %", 8.0: "0.4 %"}
LABELS = {"intestine": "zone", "ifnb": "cell_type", "pbmc3k": None}


def load(name: str) -> ad.AnnData:
    if name == "intestine":
        return sct.datasets.intestine_moor2018()
    if name == "pbmc3k":
        return sct.datasets.pbmc3k()
    if name == "ifnb":
        return sct.datasets.ifnb_pbmc()
    raise ValueError(name)


def random_placement(a: ad.AnnData, key: str, seed: int = 0) -> None:
    """The paper's ablation: the same genes on the same grid in a random order."""
    H, W = a.uns["genomap"]["shape"]
    pix = np.random.default_rng(seed).permutation(H * W)[: a.n_vars]
    a.var[f"{key}_row"] = pix // W
    a.var[f"{key}_col"] = pix % W
    a.uns[key] = {"shape": (H, W), "objective": float("nan")}


def run(datasets, levels, epochs, preset, out: Path, n_features=None) -> None:
    import magic

    rows = []
    for name in datasets:
        full = load(name)
        ref = sct.pp.select_reference(full)
        ref_log = log_normalize(ref.X)
        labels = LABELS[name]
        print(f"{name}: reference {ref.n_obs} x {ref.n_vars}", flush=True)
        for shape in levels:
            sct.pp.simulate_efficiency_loss(ref, efficiency_shape=shape, rng=0)
            obs = ad.AnnData(ref.layers["observed"].copy(), obs=ref.obs.copy(),
                             var=ref.var[[]].copy())
            keep = np.asarray(obs.X.sum(1)).ravel() > 0
            obs = obs[keep].copy()
            truth = ref_log[keep]
            obs_log = log_normalize(obs.X)
            results = {"observed": (obs_log, 0.0, 0.0)}

            def run_magic(obs_log=obs_log):
                return magic.MAGIC(random_state=0, verbose=0).fit_transform(obs_log.toarray())

            results["MAGIC"] = measured(run_magic)

            def run_genomap(obs=obs):
                sct.tl.genomap(obs, rng=0)

            _, gsec, gpeak = measured(run_genomap)

            def run_tcer(obs=obs, key="genomap"):
                sct.tl.tcer_impute(obs, genomap_key=key, preset=preset, epochs=epochs,
                                   n_features=n_features, progress=True, rng=0,
                                   key_added=f"tcer_{key}")
                return obs.layers[f"tcer_{key}"]

            tc, tsec, tpeak = measured(run_tcer)
            results["TCER"] = (tc, tsec + gsec, max(tpeak, gpeak))
            random_placement(obs, "random")
            results["TCER random placement"] = measured(lambda: run_tcer(key="random"))
            for method, (mat, sec, peak) in results.items():
                r = sct.metrics.gene_pearson(mat, truth)
                row = {"data": name, "efficiency": LEVELS[shape], "method": method,
                       "cells": obs.n_obs, "genes": obs.n_vars,
                       "mean_pearson": float(np.nanmean(r)),
                       "median_pearson": float(np.nanmedian(r)), "seconds": sec,
                       "peak_MiB": peak}
                if labels:
                    tmp = ad.AnnData(np.asarray(mat.toarray() if hasattr(mat, "toarray") else mat,
                                                dtype=np.float32), obs=obs.obs[[labels]])
                    row["ARI"] = sct.metrics.cluster_and_score(tmp, labels)["ARI"]
                rows.append(row)
                print(row, flush=True)
            if labels:
                tmp = ad.AnnData(np.asarray(truth.toarray(), dtype=np.float32),
                                 obs=obs.obs[[labels]])
                rows.append({"data": name, "efficiency": LEVELS[shape], "method": "reference",
                             "cells": obs.n_obs, "genes": obs.n_vars,
                             "ARI": sct.metrics.cluster_and_score(tmp, labels)["ARI"]})
            write(rows, out, epochs, preset, n_features)  # after every level: partial runs count


def write(rows, out: Path, epochs, preset, n_features) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    body = [f"Settings: preset={preset!r}, epochs={epochs}, n_features={n_features}; "
            f"2 CPU cores. Process peak RSS {peak_rss_mib():.0f} MiB.", "",
            df.to_markdown(index=False, floatfmt=".3f")]
    write_results(out, "TCER benchmark (down-sampling protocol)", body, script=__file__,
                  echo=False)
    print(df.to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["intestine", "pbmc3k", "ifnb"])
    ap.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--n-features", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/tcer.md")
    args = ap.parse_args()
    run(args.datasets, args.levels, args.epochs, args.preset, Path(args.out), args.n_features)


if __name__ == "__main__":
    main()
