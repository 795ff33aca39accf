"""Time the three methods at their paper settings on one GPU (fp32 and bf16 autocast).

Run by ``benchmarks/gpu_check.sh`` on a machine with CUDA; writes
``benchmarks/results/gpu.md``. Each part is bounded (a few epochs; seconds per epoch are
reported so that the paper's full epoch counts can be extrapolated), so that the whole
check fits in about 8 minutes:

- TCER ``preset="paper"`` (F = 64, 3 DFA modules) on pbmc3k's 2,000 most-detected genes
- stImpute defaults on the Drosophila pair (84 shared genes; fp32 only: its sparse
  graph aggregation takes float32);
  (fp32 only: torchvision's deformable convolution has no bfloat16 kernel);
- scRobust at the paper's width (d_model 512, 8 heads, 1 layer, 50 genes per view) on
  ifnb PBMC: pre-training epochs and embedding throughput.

``--device cpu --smoke`` runs the same code on tiny subsets (to check the script).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import _harness
import numpy as np

import sctorch as sct

HERE = Path(__file__).resolve().parent


def _autocast(device: str, bf16: bool):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def tcer(device, bf16, smoke):
    a = sct.datasets.pbmc3k() if not smoke else sct.datasets.intestine_moor2018(bundled=True)
    n_genes = 2000 if not smoke else 64
    a = a[:, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:n_genes]].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    if smoke:
        a = a[:200].copy()
    sct.tl.genomap(a, rng=0, progress=False)
    epochs = 5 if not smoke else 1
    with _autocast(device, bf16):
        model, sec = _timed(
            lambda: sct.tl.tcer_impute(
                a,
                preset="paper",
                epochs=epochs,
                device=device,
                rng=0,
                progress=False,
                return_model=True,
                **({"n_features": 8} if smoke else {}),
            ),
            device,
        )
    n_ep = len(model.history["train_loss"])
    return {
        "data": f"{a.n_obs} × {a.n_vars}",
        "epochs": n_ep,
        "seconds": sec,
        "s/epoch (incl. GenoMap-free fit + impute)": sec / n_ep,
        "paper 100 epochs (extrapolated s)": 100 * sec / n_ep,
    }


def stimpute(device, bf16, smoke):
    sp, ref = sct.datasets.drosophila_embryo(bundled=smoke)
    if smoke:
        sp, ref = sp[:300].copy(), ref[:300].copy()
    held = list(sp.var_names[:10])
    meas = sp[:, [g for g in sp.var_names if g not in set(held)]].copy()
    kw = {"epochs": 1, "ae_epochs": 2, "reliability_folds": 0} if smoke else {}
    with _autocast(device, bf16):
        _, sec = _timed(
            lambda: sct.tl.stimpute(
                meas, ref, genes=held, device=device, rng=0, progress=False, **kw
            ),
            device,
        )
    return {"data": f"{meas.n_obs} spatial × {ref.n_obs} reference cells", "seconds": sec}


def scrobust(device, bf16, smoke):
    a = sct.datasets.ifnb_pbmc(bundled=smoke)
    if smoke:
        a = a[:128].copy()
    d = 512 if not smoke else 32
    epochs = 2 if not smoke else 1
    with _autocast(device, bf16):
        model, sec = _timed(
            lambda: sct.tl.scrobust_pretrain(
                a,
                d_model=d,
                n_heads=8 if not smoke else 4,
                n_layers=1,
                epochs=epochs,
                n_genes_per_view=50,
                device=device,
                rng=0,
                progress=False,
            ),
            device,
        )
        _, emb_sec = _timed(
            lambda: sct.tl.scrobust_embed(
                a, model, n_genes=800, device=device, rng=0, progress=False, copy=True
            ),
            device,
        )
    return {
        "data": f"{a.n_obs} × {a.n_vars}",
        "epochs": epochs,
        "seconds": sec,
        "s/epoch": sec / epochs,
        "embed cells/s (800 tokens)": a.n_obs / emb_sec,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny subsets (checks the script)")
    p.add_argument("--out", default=str(HERE / "results" / "gpu.md"))
    args = p.parse_args(argv)
    import torch

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU (smoke test)"
    body = [f"Device: {name}; torch {torch.__version__}.", ""]
    # bf16 autocast only where it applies: torchvision's deform_conv2d (TCER) has no
    # bfloat16 kernel, and torch-geometric's sparse aggregation (stImpute) takes float32
    for title, fn, precisions in (
        ("TCER, preset='paper'", tcer, (False,)),
        ("stImpute, defaults", stimpute, (False,)),
        ("scRobust, paper width", scrobust, (False, True)),
    ):
        rows = []
        for bf16 in precisions:
            r = fn(args.device, bf16, args.smoke)
            rows.append(
                [
                    ("bf16 autocast" if bf16 else "fp32"),
                    *[f"{v:.3g}" if isinstance(v, float) else v for v in r.values()],
                ]
            )
            print(title, rows[-1], flush=True)
        body += [f"## {title}", "", *_harness.markdown_table(["precision", *r.keys()], rows), ""]
    _harness.write_results(args.out, "GPU timing (paper settings, one GPU)", body)


if __name__ == "__main__":
    main()
