"""CUDA checks of TCER and scRobust (stImpute's is in test_stimpute.py); skipped without CUDA.

Run them on a GPU machine with ``pytest -m gpu`` (``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import numpy as np
import pytest

import sctorch as sct

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _intestine(n_cells=200, n_genes=64):
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:n_cells, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:n_genes]].copy()
    return a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()


def test_tcer_on_cuda_matches_cpu():
    a = _intestine()
    sct.tl.genomap(a, rng=0, progress=False)
    b = a.copy()
    kw = dict(n_features=4, epochs=2, rng=0, progress=False, return_model=True)
    m_gpu = sct.tl.tcer_impute(a, device="cuda", **kw)
    assert m_gpu.device.type == "cuda"
    sct.tl.tcer_impute(b, device="cpu", **kw)
    x, y = a.layers["tcer"].ravel(), b.layers["tcer"].ravel()
    assert np.isfinite(x).all()
    # same seed, same data: the GPU kernels differ from the CPU ones only in rounding
    assert np.corrcoef(x, y)[0, 1] > 0.99


def test_scrobust_embedding_on_cuda_matches_cpu_and_bf16():
    import torch

    a = sct.datasets.ifnb_pbmc(bundled=True)[:256].copy()
    model = sct.tl.scrobust_pretrain(
        a, d_model=32, n_heads=4, epochs=1, batch_size=64, device="cuda", rng=0, progress=False
    )
    gpu = sct.tl.scrobust_embed(
        a, model, n_genes=64, device="cuda", copy=True, progress=False
    ).obsm["X_scrobust"]
    cpu = sct.tl.scrobust_embed(a, model, n_genes=64, device="cpu", copy=True, progress=False).obsm[
        "X_scrobust"
    ]
    np.testing.assert_allclose(gpu, cpu, atol=2e-3, rtol=2e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf = sct.tl.scrobust_embed(
            a, model, n_genes=64, device="cuda", copy=True, progress=False
        ).obsm["X_scrobust"]
    r = [np.corrcoef(bf[:, j], cpu[:, j])[0, 1] for j in range(cpu.shape[1])]
    assert np.nanmedian(r) > 0.98
