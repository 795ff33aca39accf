"""Shared fixtures: real-data access that skips (or fails in CI) when data are absent."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import sparse

from sctorch.datasets import data_dir


def require_data(relative: str):
    """Skip the test if ``relative`` is absent from the data directory (fail in CI)."""
    base = data_dir()
    if base is None or not (base / relative).exists():
        msg = f"real data {relative!r} not found (set SCTORCH_DATA_DIR)"
        if os.environ.get("SCTORCH_REQUIRE_DATA") == "1":
            pytest.fail(msg + " and SCTORCH_REQUIRE_DATA=1")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def intestine_reference():
    """The TCER/SAVER high-quality reference of the full intestine data (1,037 × 2,781)."""
    require_data("intestine_moor2018/intestine_moor2018.h5ad")
    import sctorch as sct

    return sct.pp.select_reference(sct.datasets.intestine_moor2018())


@pytest.fixture
def small_counts():
    """A small random counts AnnData (60 cells × 40 genes, CSR, float32 integers)."""
    import anndata as ad

    rng = np.random.default_rng(0)
    X = rng.negative_binomial(2, 0.3, size=(60, 40)).astype(np.float32)
    X[:, :5] = 0
    X[0, 0] = 3
    a = ad.AnnData(sparse.csr_matrix(X))
    a.obs_names = [f"c{i}" for i in range(60)]
    a.var_names = [f"g{j}" for j in range(40)]
    return a


def snapshot(adata):
    """A comparable summary of an AnnData, to assert it was left unchanged."""
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
    return {
        "X": X.copy(),
        "layers": sorted(adata.layers.keys()),
        "obs": list(adata.obs.columns),
        "var": list(adata.var.columns),
        "uns": sorted(adata.uns.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "var_names": list(adata.var_names),
    }


def assert_unchanged(adata, snap):
    now = snapshot(adata)
    np.testing.assert_array_equal(now.pop("X"), snap["X"], err_msg="adata.X was modified")
    for k, v in now.items():
        assert v == snap[k], f"adata.{k} changed: {snap[k]} -> {v}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest (and most reproducibly) on one intra-op thread."""
    import torch

    torch.set_num_threads(1)
