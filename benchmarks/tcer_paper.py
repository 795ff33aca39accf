"""TCER ``preset="paper"`` at the authors' epochs, and how much their checkpoint pick explains.

Issue 23, Build 7: in ``benchmarks/results/tcer.md`` the paper's method (10 epochs, F = 16
there) halves the observed data's mean gene Pearson, where the paper reports a gain
(mammalian brain at 0.4 % efficiency: 0.7653 → 0.7974). Three explanations are measured
here, on the paper's tissue and protocol: the Zeisel subset of ``benchmarks/tcer.py`` at
0.4 % (``efficiency_shape=8``):

- **the CPU budget**: ``preset="paper"`` trained for the paper's 100 epochs (learning rate
  halved every 40, all cells every epoch, batch 64), with ER-Net's width capped by
  ``--features`` (default 16, the paper's 64 would take many hours on 2 CPU cores);
- **the authors' checkpoint pick**: their training script keeps the checkpoint with the
  highest Pearson correlation against the *ground truth* (the reference). Here every
  ``--every`` epochs the model's output is scored against the reference, and the best
  epoch is reported as ``ground-truth pick`` — **a benchmark-only row**: sctorch never
  chooses with the reference (its own pick is the epoch with the lowest held-out masked
  loss, restored at the end: ``self-supervised pick``); the authors' README loads a fixed
  epoch-50 checkpoint, reported as ``epoch 50``;
- **a defect of the objective**: the mean imputed value (log1p-normalised) of the entries
  that are zero in the observed data, against the reference's mean at the same entries and
  at the observed non-zeros. The paper's L1 loss is computed on observed non-zero pixels
  only, so the network learns the value a gene has *if detected*.

Writes ``benchmarks/results/tcer_paper.md``.

Usage::

    python benchmarks/tcer_paper.py                 # 100 epochs, F = 16, scored every 5
    python benchmarks/tcer_paper.py --epochs 4 --every 2 --out /tmp/tcer_paper.md   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import sctorch as sct
from sctorch.tcer import TCERConfig, TCERModel, _data

sys.path.insert(0, str(Path(__file__).parent))
from _harness import command, log_normalize, write_results

HERE = Path(__file__).parent

# benchmarks/tcer.py under another name (``tcer`` is sctorch's module)
_spec = importlib.util.spec_from_file_location("tcer_benchmark", HERE / "tcer.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def zero_fill(pred: np.ndarray, observed: np.ndarray, truth: np.ndarray) -> dict:
    """Mean log1p values: the output at observed zeros, the reference there and elsewhere."""
    zero = observed == 0
    return {
        "output_at_zeros": float(pred[zero].mean()),
        "reference_at_zeros": float(truth[zero].mean()),
        "reference_at_detected": float(truth[~zero].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="zeisel")
    ap.add_argument("--shape", type=float, default=8.0, help="efficiency_shape (8: 0.4 %%)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument(
        "--objective", default=None, help="another training objective (default: the paper's)"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "tcer_paper.md"))
    args = ap.parse_args()

    obs, truth = bench.downsampled(args.dataset, args.shape)
    truth = np.asarray(truth.toarray(), dtype=np.float32)
    observed = np.asarray(log_normalize(obs.X).toarray(), dtype=np.float32)
    print(f"{args.dataset} {bench.LEVELS[args.shape]}: {obs.n_obs} cells x {obs.n_vars} genes")
    sct.tl.genomap(obs, rng=0, progress=False)
    config = TCERConfig.preset("paper").replace(epochs=args.epochs, n_features=args.features)
    if args.objective:
        config = config.replace(objective=args.objective)
    model = TCERModel.from_genomap(obs, config)

    # score the network against the reference after every `every`-th epoch (benchmark only)
    trace, best = [], {"pearson": -np.inf, "state": None}
    val_loss = _data.MaskedBatches.val_loss
    t_train = [time.perf_counter()]

    def scored_val_loss(self, module):
        v = val_loss(self, module)
        epoch = len(trace) + 1
        row = {"epoch": epoch, "val_loss": float(v), "mean_pearson": np.nan}
        if epoch % args.every == 0 or epoch == 1 or epoch == 50 or epoch == args.epochs:
            pred = model.predict(obs, progress=False)
            row["mean_pearson"] = float(np.nanmean(sct.metrics.gene_pearson(pred, truth)))
            if row["mean_pearson"] > best["pearson"]:
                best.update(pearson=row["mean_pearson"], epoch=epoch)
                best["state"] = copy.deepcopy(module.state_dict())
            module.train(False)
        trace.append(row)
        print(row, f"{time.perf_counter() - t_train[0]:.0f} s", flush=True)
        return v

    _data.MaskedBatches.val_loss = scored_val_loss
    try:
        t0 = time.perf_counter()
        model.fit(obs, rng=0, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        _data.MaskedBatches.val_loss = val_loss

    own = model.predict(obs, progress=False)  # the restored best-held-out-loss weights
    own_epoch = int(np.nanargmin([r["val_loss"] for r in trace])) + 1
    rows = [
        {"method": "observed", "epoch": np.nan, **_scores(observed, observed, truth)},
        {
            "method": "preset=paper, self-supervised pick (lowest held-out masked loss)",
            "epoch": own_epoch,
            **_scores(own, observed, truth),
        },
    ]
    at50 = [r for r in trace if r["epoch"] == 50]
    if at50:
        rows.append(
            {
                "method": "preset=paper, epoch 50 (the authors' README checkpoint)",
                "epoch": 50,
                "mean_pearson": at50[0]["mean_pearson"],
            }
        )
    model.module.load_state_dict(best["state"])
    gt = model.predict(obs, progress=False)
    rows.append(
        {
            "method": "preset=paper, ground-truth pick (benchmark only: chosen with the reference)",
            "epoch": best["epoch"],
            **_scores(gt, observed, truth),
        }
    )
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f")
    curve = pd.DataFrame(trace).dropna(subset=["mean_pearson"])
    body = [
        f"Data: {args.dataset} subset of `benchmarks/tcer.py` at {bench.LEVELS[args.shape]} "
        f'efficiency, {obs.n_obs} cells × {obs.n_vars} genes. `preset="paper"` with '
        f"{args.epochs} epochs (the paper's 100 when not changed), F = {args.features} "
        f"(the paper's 64 is beyond a 2-core CPU) and objective {config.objective!r}; "
        f"training took {seconds:.0f} s including "
        "the scoring below.",
        "",
        "`mean_pearson`: mean gene-wise Pearson correlation (across cells) of the "
        "log1p-normalised output with the reference; `output_at_zeros`: the output's mean at "
        "the entries that are zero in the observed data, `reference_at_zeros` / "
        "`reference_at_detected`: the reference's mean there and at the observed non-zeros.",
        "",
        table,
        "",
        "## Training curve",
        "",
        "`val_loss`: the held-out masked loss sctorch stops and picks on; `mean_pearson`: "
        "against the reference (benchmark only).",
        "",
        curve.to_markdown(index=False, floatfmt=".4f"),
    ]
    write_results(args.out, 'TCER preset="paper": epochs and checkpoint pick', body)
    print(command(__file__))


def _scores(pred: np.ndarray, observed: np.ndarray, truth: np.ndarray) -> dict:
    return {
        "mean_pearson": float(np.nanmean(sct.metrics.gene_pearson(pred, truth))),
        **zero_fill(pred, observed, truth),
    }


if __name__ == "__main__":
    main()
