"""Worker for tests/test_scaling.py: a tiny TCER fit or scRobust pre-training.

Run as ``python tests/ddp_worker.py METHOD OUT.json`` (one process) or under
``torchrun --nproc_per_node 2 tests/ddp_worker.py METHOD OUT.json``; rank 0 writes the loss
curve, a checksum of the weights and the world size to ``OUT.json``.
"""

import hashlib
import json
import sys

import numpy as np
import torch

import sctorch as sct
from sctorch.models._distributed import is_main_process, rank, world_size

torch.set_num_threads(1)


def main(method: str, out: str) -> None:
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:192, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:49]].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    if method == "tcer":
        sct.tl.genomap(a, rng=0, progress=False)
        model = sct.tl.tcer_impute(
            a,
            n_features=4,
            epochs=3,
            batch_size=32,
            patience=None,
            # the objective the tolerances of test_scaling.py were derived for (the data
            # parallelism is the same for every objective: one loss function per batch)
            objective="poisson",
            rng=0,
            progress=False,
            return_model=True,
        )
        curve = model.history["train_loss"]
    else:
        model = sct.tl.scrobust_pretrain(
            a,
            d_model=16,
            n_heads=2,
            epochs=3,
            batch_size=32,
            n_genes_per_view=8,
            dropout=0.0,
            head_dropout=0.0,
            rng=0,
            progress=False,
        )
        curve = model.history["pretrain_loss"]
    h = hashlib.sha256()
    for v in model.module.state_dict().values():
        h.update(v.detach().cpu().numpy().tobytes())
    weights = np.concatenate(
        [v.detach().cpu().numpy().ravel() for v in model.module.state_dict().values()]
    )
    with open(f"{out}.rank{rank()}", "w") as fh:  # every rank: its weights' checksum
        fh.write(h.hexdigest())
    if is_main_process():
        with open(out, "w") as fh:
            json.dump(
                {
                    "loss": curve,
                    "weights": weights[:2000].tolist(),
                    "world_size": world_size(),
                    "sha": h.hexdigest(),
                },
                fh,
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
