"""scRobust annotation ablation on ifnb PBMC: what the Transformer path and pre-training add.

Same data, folds and added dropout as ``benchmarks/scrobust.py`` (folds 1–2 of its 5-fold
split by default, to keep the run short), one process, one torch thread. Pre-training
runs on the 2,000 HVGs of all cells (chosen without labels) with the default preset;
fine-tuning and prediction see the 2,000 HVGs of the training fold (the genes the
logistic regression sees). Variants:

- ``wide and deep (default)``: ``head="wide_and_deep"`` on the pre-trained encoder;
- ``wide path alone``: ``head="wide"`` — the linear path, trained the same way;
- ``deep path alone``: ``head="deep"`` (the paper's classifier) on the default encoder;
- ``wide and deep, random encoder`` / ``deep path alone, random encoder``: the default
  head / the deep path on an encoder that was never pre-trained (pre-training with a
  learning rate of 1e-12 for one epoch);
- ``wide and deep, log1p values``: the default with ``token_values="log1p"`` (the same as
  the default since log1p became the default value; kept for the record);
- ``wide and deep, no gate``: the default with ``validation_fraction=0``: nothing held out, so
  the deep path is always kept (last fine-tuning epoch);
- ``paper preset``: pre-trained and fine-tuned with ``preset="paper"`` at CPU-sized
  settings (d_model 64, 10 pre-training epochs, lr 1e-3 as the others);
- ``logistic regression (balanced)``: scikit-learn on the same HVGs.

Usage::

    python benchmarks/scrobust_ablation.py               # levels 0 and 0.5, folds 1-2
    python benchmarks/scrobust_ablation.py --folds 5 --levels 0.3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import write_results
from scrobust import CPU, SEED, fold_hvgs, folds, load, lognorm, score

VARIANTS = (
    "wide and deep (default)",
    "wide path alone",
    "deep path alone",
    "deep path alone, random encoder",
    "wide and deep, random encoder",
    "wide and deep, log1p values",
    "wide and deep, no gate",
    "paper preset",
    "logistic regression (balanced)",
)


def pretrained(variant: str, a, b, cache: dict):
    """The encoder a variant fine-tunes (cached per pre-training setting)."""
    import sctorch as sct

    key = (
        "paper"
        if variant == "paper preset"
        else "random"
        if variant.endswith("random encoder")
        else "log1p"
        if variant.endswith("log1p values")
        else "default"
    )
    if key not in cache:
        data = a[:, fold_hvgs(b)].copy()
        data = data[np.asarray(data.X.sum(1)).ravel() > 0].copy()
        kw = dict(CPU["pretrain"])
        if key == "paper":
            kw["preset"] = "paper"
        if key == "log1p":
            kw["token_values"] = "log1p"
        if key == "random":
            kw.update(epochs=1, lr=1e-12, select=None)
        t0 = time.perf_counter()
        cache[key] = (
            sct.tl.scrobust_pretrain(data, rng=SEED, progress=False, **kw),
            time.perf_counter() - t0,
        )
    return cache[key]


def run_variant(variant: str, a, b, y, n_folds: int, cache: dict) -> dict:
    """One variant on counts ``a`` (``b``: the same cells log-normalised, for HVGs)."""
    import sctorch as sct

    f1, acc, secs = [], [], 0.0
    model, pre_s = (
        (None, 0.0) if variant.startswith("logistic") else pretrained(variant, a, b, cache)
    )
    ft = dict(CPU["finetune"])
    if variant == "paper preset":
        ft["preset"] = "paper"
    elif variant == "wide path alone":
        ft["head"] = "wide"
    elif variant.startswith("deep path alone"):
        ft["head"] = "deep"
    elif variant == "wide and deep, no gate":  # nothing held out: no gate, last epoch
        ft["validation_fraction"] = 0.0
    for tr, te in folds(y)[:n_folds]:
        hv = fold_hvgs(b[tr])
        t0 = time.perf_counter()
        if model is None:
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(max_iter=1000, class_weight="balanced")
            pred = clf.fit(b.X[tr][:, hv], y[tr]).predict(b.X[te][:, hv])
        else:
            q = a[te][:, hv].copy()
            sct.tl.scrobust_annotate(
                q,
                a[tr][:, hv].copy(),
                labels_key="cell_type",
                model=model,
                rng=SEED,
                progress=False,
                **ft,
            )
            pred = q.obs["scrobust_label"].astype(str)
        secs += time.perf_counter() - t0
        s = score(y[te], pred)
        f1.append(s[0])
        acc.append(s[1])
    return {
        "variant": variant,
        "f1": float(np.mean(f1)),
        "acc": float(np.mean(acc)),
        "f1_folds": f1,
        "seconds": secs + pre_s,
    }


def main(argv=None) -> int:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="0,0.5")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "scrobust_ablation.md")
    )
    args = ap.parse_args(argv)
    rows = []
    for level in (float(x) for x in args.levels.split(",")):
        a = load(level)
        b = lognorm(a)
        y = a.obs["cell_type"].astype(str).to_numpy()
        cache: dict = {}
        for v in args.variants.split(";"):
            r = run_variant(v, a, b, y, args.folds, cache) | {"level": level}
            print(r, flush=True)
            rows.append(r)
    note = (
        f"Pre-training {CPU['pretrain']} on the 2,000 HVGs of all cells (no labels); "
        f"fine-tuning {CPU['finetune']}; folds 1–{args.folds} of the 5-fold split of "
        "`benchmarks/scrobust.py`; one torch thread. Seconds include pre-training."
    )
    lines = [
        "| added dropout | variant | macro-F1 (mean of folds) | per fold | accuracy | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']:.0%} | {r['variant']} | {r['f1']:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in r['f1_folds'])} | {r['acc']:.3f} | "
            f"{r['seconds']:.0f} |"
        )
    write_results(
        args.out,
        "scRobust annotation ablation: heads and pre-training (ifnb PBMC)",
        lines,
        script=__file__,
        args=argv if argv is not None else sys.argv[1:],
        note=note,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
