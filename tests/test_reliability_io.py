"""Issue 17: every public function of pp._simulation and metrics × each kind of bad input.

Each pair either raises the documented error type with a message that says what was
found, or is handled correctly (the same result as on a plain dense float copy); in
both cases the input AnnData (and, for a view, its parent) is left exactly unchanged.
"""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import sctorch as sct


def _base() -> ad.AnnData:
    """40 cells × 12 genes of integer counts, two planted groups in ``obs['t']``."""
    rng = np.random.default_rng(0)
    lab = np.repeat(["x", "y"], 20)
    mu = np.where((lab == "x")[:, None], 20.0, 1.0) * np.r_[np.ones(6), np.full(6, 0.05)]
    mu = mu + np.where((lab == "y")[:, None], np.r_[np.zeros(6), np.full(6, 20.0)], 0)
    X = rng.poisson(mu + 0.5).astype(np.float32)
    a = ad.AnnData(
        X, obs=pd.DataFrame({"t": pd.Categorical(lab)}, index=[f"c{i}" for i in range(40)])
    )
    a.var_names = [f"g{j}" for j in range(12)]
    a.var["extra"] = np.arange(12)
    a.uns["note"] = {"k": 1}
    a.obsm["X_rep"] = X[:, :3].copy() + 0.1
    return a


def _case(kind: str):
    """``(adata, parent_or_None, kwargs)`` for one kind of input."""
    a, parent, kw = _base(), None, {}
    if kind == "nonfinite":
        a.X[1, 1] = np.nan
    elif kind == "negative":
        a.X[1, 1] = -2.0
    elif kind == "noninteger":
        a.X[1, 1] = 0.5
    elif kind == "dup_var_names":
        a.var_names = ["g0", "g0", *a.var_names[2:]]
    elif kind == "zero_cells":
        a = a[:0].copy()
    elif kind == "one_cell":
        a = a[:1].copy()
    elif kind == "zero_genes":
        a = a[:, :0].copy()
    elif kind == "missing_layer":
        kw = {"layer": "counts"}
    elif kind == "csc":
        a.X = sparse.csc_matrix(a.X)
    elif kind == "int_dtype":
        a.X = a.X.astype(np.int16)
    elif kind == "view":
        parent = a
        a = parent[5:35]
    return a, parent, kw


KINDS = [
    "nonfinite",
    "negative",
    "noninteger",
    "dup_var_names",
    "zero_cells",
    "one_cell",
    "zero_genes",
    "missing_layer",
    "csc",
    "int_dtype",
    "view",
]


def _plain(adata) -> ad.AnnData:
    """A dense float32, non-view copy with the same values (the reference input)."""
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    return ad.AnnData(X.astype(np.float32), obs=adata.obs.copy(), var=adata.var.copy())


def _dense(M):
    return M.toarray() if sparse.issparse(M) else np.asarray(M)


# --------------------------------------------------------------------- the functions
def _simulate(a, kw):
    out = sct.pp.simulate_efficiency_loss(a, rng=3, copy=True, **kw)
    ref = sct.pp.simulate_efficiency_loss(_plain(a), rng=3, copy=True)
    Y = out.layers["observed"]
    assert sparse.issparse(Y) == sparse.issparse(a.X)
    if sparse.issparse(Y):
        assert Y.format == a.X.format
    expected_kind = "i" if a.X.dtype.kind in "iu" else "f"
    assert Y.dtype.kind == expected_kind and Y.dtype.itemsize >= 4
    np.testing.assert_array_equal(_dense(Y), _dense(ref.layers["observed"]))
    np.testing.assert_array_equal(out.obs["efficiency"], ref.obs["efficiency"])


def _select(a, kw):
    out = sct.pp.select_reference(a, **kw)
    ref = sct.pp.select_reference(_plain(a))
    assert out.shape == ref.shape and list(out.var_names) == list(ref.var_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(ref.X))


def _cluster(a, kw):
    s = sct.metrics.cluster_and_score(a, "t", resolution=0.2, n_pcs=5, n_neighbors=8, **kw)
    assert s["ARI"] > 0.9 and s["n_clusters"] >= 2


def _pairwise(a, kw):
    b = np.asarray(_plain(_base()[: a.n_obs, : a.n_vars]).X) + 1.0
    got = sct.metrics.pairwise_scores(a.X, b, axis="gene")
    ref = sct.metrics.pairwise_scores(np.asarray(_plain(a).X, dtype=np.float64), b, axis="gene")
    pd.testing.assert_frame_equal(got, ref)


FUNCS = {
    "simulate_efficiency_loss": _simulate,
    "select_reference": _select,
    "cluster_and_score": _cluster,
    "pairwise_scores": _pairwise,
}

_COUNTS_ERRORS = {
    "nonfinite": (ValueError, r"adata\.X contains 1 non-finite value"),
    "negative": (ValueError, r"adata\.X contains 1 negative value.*raw counts"),
    "noninteger": (ValueError, r"adata\.X contains 1 non-integer value.*raw integer counts"),
    "dup_var_names": (ValueError, r"1 duplicate name\(s\), e\.g\. \['g0'\].*make_unique"),
    "zero_cells": (ValueError, r"adata has 0 cells \(shape 0 × 12\)"),
    "zero_genes": (ValueError, r"adata has 0 genes \(shape 40 × 0\)"),
    "missing_layer": (KeyError, r"Layer 'counts' not found in adata\.layers.*layer=None"),
}
EXPECTED = {
    "simulate_efficiency_loss": _COUNTS_ERRORS,
    "select_reference": _COUNTS_ERRORS,
    "cluster_and_score": {
        "nonfinite": (ValueError, r"adata\.X contains 1 non-finite value.*impute"),
        "zero_cells": (ValueError, r"adata has 0 cell\(s\); clustering needs at least 2"),
        "one_cell": (ValueError, r"adata has 1 cell\(s\); clustering needs at least 2"),
        "zero_genes": (ValueError, r"adata\.X has 0 columns"),
        "missing_layer": (KeyError, r"Layer 'counts' not found in adata\.layers"),
    },
    "pairwise_scores": {
        "nonfinite": (ValueError, r"^a holds 1 non-finite value\(s\).*impute"),
        "zero_cells": (ValueError, r"a and b have 0 cells"),
        "zero_genes": (ValueError, r"a and b have 0 genes"),
    },
}
# not applicable: pairwise_scores takes matrices, not an AnnData layer
SKIP = {("pairwise_scores", "missing_layer")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("func", list(FUNCS))
def test_bad_input_raises_or_is_handled_and_input_unchanged(func, kind):
    if (func, kind) in SKIP:
        pytest.skip("not applicable")
    a, parent, kw = _case(kind)
    snap = snapshot(a)
    psnap = snapshot(parent) if parent is not None else None
    expected = EXPECTED[func].get(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy/anndata chatter on tiny inputs
        if expected is None:
            FUNCS[func](a, kw)
        else:
            err, match = expected
            with pytest.raises(err, match=match):
                FUNCS[func](a, kw)
    assert_unchanged(a, snap)
    if parent is not None:
        assert_unchanged(parent, psnap)


def test_simulate_in_place_on_a_view_leaves_the_parent_alone():
    parent = _base()
    psnap = snapshot(parent)
    v = parent[5:35]
    with pytest.warns(Warning, match="view"):  # anndata: the view becomes an actual AnnData
        sct.pp.simulate_efficiency_loss(v, rng=1)
    ref = sct.pp.simulate_efficiency_loss(parent[5:35].copy(), rng=1, copy=True)
    np.testing.assert_array_equal(v.layers["observed"], ref.layers["observed"])
    assert_unchanged(parent, psnap)


@pytest.mark.parametrize("bad", ["efficiency_shape", "efficiency_rate", "scale"])
@pytest.mark.parametrize("value", [0.0, -1.0, np.nan, np.inf])
def test_simulate_bad_parameters_leave_input_unchanged(bad, value):
    a = _base()
    snap = snapshot(a)
    with pytest.raises(ValueError, match=rf"{bad} must be a positive number"):
        sct.pp.simulate_efficiency_loss(a, **{bad: value})
    assert_unchanged(a, snap)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"min_library_quantile": 1.5}, r"min_library_quantile must lie in \[0, 1\]"),
        ({"min_detection": -0.1}, r"min_detection must lie in \[0, 1\]"),
        ({"detection_among": "some"}, r"detection_among must be 'all' or 'kept'"),
    ],
)
def test_select_reference_bad_parameters(kw, match):
    a = _base()
    snap = snapshot(a)
    with pytest.raises(ValueError, match=match):
        sct.pp.select_reference(a, **kw)
    assert_unchanged(a, snap)
