"""scRobust ablation on ifnb PBMC: what pre-training and the gene set do to annotation.

Same data, folds, added dropout and CPU settings as ``benchmarks/scrobust.py`` (folds 1–2
of its 5-fold split by default, to keep the run short), one process, one torch thread.
Variants (pre-training always on all cells, without labels):

- ``all genes``: pre-train on all genes (5 epochs), fine-tune on the fold's cells, all
  genes — the benchmark's "scRobust" row;
- ``HVG fine-tune``: the same pre-trained model, fine-tuned and applied on the 2,000 HVGs
  of the training fold — the benchmark's "scRobust (HVGs)" row;
- ``HVG pre-train E``: pre-trained for ``E`` epochs on the 2,000 HVGs of all cells, then
  as ``HVG fine-tune``;
- ``no pre-training``: random initial weights (pre-training with a learning rate of
  1e-12 for one epoch), fine-tuned on the fold's HVGs;
- ``frozen gene embeddings``: as ``all genes`` but the gene vectors are not updated
  while fine-tuning.

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

VARIANTS = ("all genes", "HVG fine-tune", "HVG pre-train 2", "HVG pre-train 5",
            "HVG pre-train 50", "no pre-training", "frozen gene embeddings")


def run_variant(variant: str, a, b, y, n_folds: int) -> dict:
    """One variant on counts ``a`` (``b``: the same cells log-normalised, for HVGs)."""
    import sctorch as sct

    pre = dict(CPU["pretrain"])
    data = a
    if variant.startswith("HVG pre-train"):
        pre["epochs"] = int(variant.rsplit(" ", 1)[1])
        data = a[:, fold_hvgs(b)].copy()
        data = data[np.asarray(data.X.sum(1)).ravel() > 0].copy()
    elif variant == "no pre-training":
        pre.update(epochs=1, lr=1e-12)
    t0 = time.perf_counter()
    model = sct.tl.scrobust_pretrain(data, rng=SEED, progress=False, **pre)
    if variant == "frozen gene embeddings":
        model.network.encoder.tokens.embedding.weight.requires_grad_(False)
    f1, acc = [], []
    for tr, te in folds(y)[:n_folds]:
        hv = (np.ones(a.n_vars, dtype=bool) if variant in ("all genes", "frozen gene embeddings")
              else fold_hvgs(b[tr]))
        q = a[te][:, hv].copy()
        sct.tl.scrobust_annotate(q, a[tr][:, hv].copy(), labels_key="cell_type", model=model,
                                 rng=SEED, progress=False, **CPU["finetune"])
        s = score(y[te], q.obs["scrobust_label"].astype(str))
        f1.append(s[0])
        acc.append(s[1])
    return {"variant": variant, "f1": float(np.mean(f1)), "acc": float(np.mean(acc)),
            "f1_folds": f1, "seconds": time.perf_counter() - t0,
            "pretrain_loss": model.history["pretrain_contrastive"][-1]}


def main(argv=None) -> int:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="0,0.5")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"
                                         / "scrobust_ablation.md"))
    args = ap.parse_args(argv)
    rows = []
    for level in (float(x) for x in args.levels.split(",")):
        a = load(level)
        b = lognorm(a)
        y = a.obs["cell_type"].astype(str).to_numpy()
        for v in args.variants.split(","):
            r = run_variant(v, a, b, y, args.folds) | {"level": level}
            print(r, flush=True)
            rows.append(r)
    note = (f"CPU settings of `benchmarks/scrobust.py` (pre-training {CPU['pretrain']}, "
            f"fine-tuning {CPU['finetune']}), folds 1–{args.folds} of its 5-fold split, one "
            "torch thread.")
    lines = ["| added dropout | variant | macro-F1 (mean of folds) | per fold | accuracy | "
             "final NT-Xent | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['level']:.0%} | {r['variant']} | {r['f1']:.3f} | "
                     f"{' / '.join(f'{v:.3f}' for v in r['f1_folds'])} | {r['acc']:.3f} | "
                     f"{r['pretrain_loss']:.2f} | {r['seconds']:.0f} |")
    write_results(args.out, "scRobust ablation: pre-training and gene set (ifnb PBMC)", lines,
                  script=__file__, args=["--levels", args.levels, "--folds", str(args.folds)],
                  note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
