import anndata as ad
import numpy as np
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import sctorch as sct


def test_efficiency_and_means_match_model_on_real_data(intestine_reference):
    ref = intestine_reference.copy()
    sct.pp.simulate_efficiency_loss(ref, efficiency_shape=10, efficiency_rate=2000, rng=0)
    tau = ref.obs["efficiency"].to_numpy()
    # Gamma(10, rate 2000): mean 0.005, sd sqrt(10)/2000
    se = np.sqrt(10) / 2000 / np.sqrt(ref.n_obs)
    assert abs(tau.mean() - 0.005) < 4 * se
    assert abs(tau.std() / (np.sqrt(10) / 2000) - 1) < 0.15

    X = ref.X.toarray().astype(np.float64)
    Y = ref.layers["observed"]
    assert sparse.issparse(Y)
    Y = Y.toarray()
    lam = X / X.sum(1, keepdims=True) * 1e5
    mu = tau[:, None] * lam
    # per cell: the observed library is Poisson(tau_c * 1e5)
    z_cell = (Y.sum(1) - mu.sum(1)) / np.sqrt(mu.sum(1))
    assert abs(z_cell.mean()) < 4 / np.sqrt(ref.n_obs)
    assert 0.85 < z_cell.std() < 1.15
    # per gene: the sum over cells is Poisson(sum_c tau_c lambda_gc)
    z_gene = (Y.sum(0) - mu.sum(0)) / np.sqrt(mu.sum(0))
    assert abs(z_gene.mean()) < 4 / np.sqrt(ref.n_vars)
    assert 0.85 < z_gene.std() < 1.15


def test_integer_output_seed_and_sparse_dense_agree(small_counts):
    a = small_counts.copy()
    d = ad.AnnData(small_counts.X.toarray(), obs=small_counts.obs, var=small_counts.var)
    r1 = sct.pp.simulate_efficiency_loss(a, efficiency_shape=15, rng=3, copy=True)
    r2 = sct.pp.simulate_efficiency_loss(a, efficiency_shape=15, rng=3, copy=True)
    r3 = sct.pp.simulate_efficiency_loss(a, efficiency_shape=15, rng=4, copy=True)
    rd = sct.pp.simulate_efficiency_loss(d, efficiency_shape=15, rng=3, copy=True)
    y1 = r1.layers["observed"].toarray()
    assert np.array_equal(y1, np.round(y1)) and (y1 >= 0).all()
    assert np.array_equal(y1, r2.layers["observed"].toarray())
    assert np.array_equal(r1.obs["efficiency"], r2.obs["efficiency"])
    assert not np.array_equal(r1.obs["efficiency"], r3.obs["efficiency"])
    assert isinstance(rd.layers["observed"], np.ndarray)
    np.testing.assert_array_equal(rd.layers["observed"], y1)
    # zeros stay zero; copy=True left the input alone
    assert (y1[small_counts.X.toarray() == 0] == 0).all()
    assert "observed" not in a.layers


def test_layer_and_key_added(small_counts):
    a = small_counts.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X * 0.5  # not counts any more: must read the layer
    out = sct.pp.simulate_efficiency_loss(a, layer="counts", key_added="ds", rng=0)
    assert out is None
    assert "ds" in a.layers and a.layers["ds"].shape == a.shape
    assert a.uns["ds"]["params"]["efficiency_shape"] == 10


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda X: X.__setitem__((1, 1), np.nan), "non-finite"),
        (lambda X: X.__setitem__((1, 1), -2.0), "negative"),
        (lambda X: X.__setitem__((1, 1), 0.5), "non-integer"),
        (lambda X: X.__setitem__((2, slice(None)), 0.0), "zero total counts"),
    ],
)
def test_bad_counts_raise_and_leave_adata_unchanged(small_counts, mutate, match):
    X = small_counts.X.toarray()
    mutate(X)
    a = ad.AnnData(X, obs=small_counts.obs.copy(), var=small_counts.var.copy())
    snap = snapshot(a)
    with pytest.raises(ValueError, match=match):
        sct.pp.simulate_efficiency_loss(a)
    assert_unchanged(a, snap)


def test_missing_layer_and_duplicate_names(small_counts):
    a = small_counts.copy()
    snap = snapshot(a)
    with pytest.raises(KeyError, match=r"not found in adata\.layers"):
        sct.pp.simulate_efficiency_loss(a, layer="counts")
    assert_unchanged(a, snap)
    a.var_names = ["g0"] * 2 + list(a.var_names[2:])
    snap = snapshot(a)
    with pytest.raises(ValueError, match="duplicate"):
        sct.pp.simulate_efficiency_loss(a)
    with pytest.raises(ValueError, match="duplicate"):
        sct.pp.select_reference(a)
    assert_unchanged(a, snap)


def test_select_reference_handmade():
    # 8 cells: libraries 1..8 (x10); gene 0 in all cells, gene 1 in 1 cell, gene 2 in 4 cells
    X = np.zeros((8, 3), dtype=np.float32)
    X[:, 0] = np.arange(1, 9) * 10
    X[7, 1] = 1
    X[4:, 2] = 1
    a = ad.AnnData(X)
    a.var_names = ["a", "b", "c"]
    ref = sct.pp.select_reference(a, min_library_quantile=0.5, min_detection=0.25)
    lib = X.sum(1)
    assert ref.n_obs == int((lib >= np.quantile(lib, 0.5)).sum()) == 4
    assert list(ref.var_names) == ["a", "c"]  # b is in 1/8 cells < 25 %
    kept = sct.pp.select_reference(
        a, min_library_quantile=0.5, min_detection=0.3, detection_among="kept"
    )
    assert list(kept.var_names) == ["a", "c"]  # c is in 4/4 kept cells
    assert "reference" in ref.uns and "reference" not in a.uns


def test_select_reference_empty_raises(small_counts):
    snap = snapshot(small_counts)
    with pytest.raises(ValueError, match=r"kept \d+ cell\(s\) and 0 gene"):
        sct.pp.select_reference(small_counts, min_detection=1.0)
    assert_unchanged(small_counts, snap)


def test_intestine_reference_shape_and_protocol_pearson(intestine_reference):
    from sctorch._utils import log_normalize

    assert intestine_reference.shape == (1037, 2781)
    ref = intestine_reference.copy()
    ref_log = log_normalize(ref.X)
    means = []
    for shape in (15, 10, 8):
        sct.pp.simulate_efficiency_loss(ref, efficiency_shape=shape, rng=0)
        means.append(
            np.nanmean(sct.metrics.gene_pearson(log_normalize(ref.layers["observed"]), ref_log))
        )
    # the expected figures: roughly 0.36, 0.30, 0.27
    np.testing.assert_allclose(means, [0.36, 0.30, 0.27], atol=0.015)
    assert means[0] > means[1] > means[2]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8])
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_small_integer_dtypes_do_not_overflow(dtype, fmt):
    # one dominant gene: with scale 1e7 its observed counts (~4e4) exceed int8/int16/uint8
    X = np.ones((12, 6), dtype=np.float32)
    X[:, 0] = 100
    X[3, 2:] = 0
    conv = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt]
    ref = sct.pp.simulate_efficiency_loss(ad.AnnData(conv(X)), scale=1e7, rng=5, copy=True)
    a = ad.AnnData(conv(X.astype(dtype)))
    snap = snapshot(a)
    out = sct.pp.simulate_efficiency_loss(a, scale=1e7, rng=5, copy=True)
    assert_unchanged(a, snap)
    Y, Yref = out.layers["observed"], ref.layers["observed"]
    assert Y.dtype == np.int32 and sparse.issparse(Y) == (fmt != "dense")
    if fmt != "dense":
        assert Y.format == fmt
        Y, Yref = Y.toarray(), Yref.toarray()
    assert Y.max() > np.iinfo(dtype).max  # the values that used to wrap around
    np.testing.assert_array_equal(Y, Yref.astype(np.int64))  # the same draws as float input
    assert (Y >= 0).all()


def test_float16_and_huge_scale_keep_counts_exact(small_counts):
    a = ad.AnnData(small_counts.X.toarray().astype(np.float16))
    y = sct.pp.simulate_efficiency_loss(a, scale=1e8, rng=0, copy=True).layers["observed"]
    assert y.dtype == np.float32 and y.max() > 2048  # float16 holds integers up to 2048 only
    b = ad.AnnData(small_counts.X.toarray().astype(np.int32))
    yb = sct.pp.simulate_efficiency_loss(b, scale=1e13, rng=0, copy=True).layers["observed"]
    assert yb.dtype == np.int64 and yb.max() > np.iinfo(np.int32).max
    assert (yb >= 0).all()


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
@pytest.mark.parametrize("func", ["simulate_efficiency_loss", "select_reference"])
def test_empty_adata_raises(shape, func):
    a = ad.AnnData(np.zeros(shape, dtype=np.float32))
    snap = snapshot(a)
    what = "cells" if shape[0] == 0 else "genes"
    with pytest.raises(ValueError, match=rf"adata has 0 {what} \(shape {shape[0]} × {shape[1]}\)"):
        getattr(sct.pp, func)(a)
    assert_unchanged(a, snap)
