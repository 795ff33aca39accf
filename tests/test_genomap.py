"""GenoMap: placement, images, inverse, quality metric and plot (issue 3)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from conftest import assert_unchanged, snapshot
from scipy import ndimage, sparse

import sctorch as sct
from sctorch import genomap as G
from sctorch.genomap import _solver as S


def _blocks(n_cells=300, n_per_block=18, seed=0, as_sparse=True):
    """Counts with two blocks of strongly co-expressed genes (each driven by one factor)."""
    rng = np.random.default_rng(seed)
    fa = rng.gamma(1.0, 1.0, size=n_cells)
    fb = rng.gamma(1.0, 1.0, size=n_cells)
    base = rng.uniform(2.0, 6.0, size=2 * n_per_block)
    lam = np.concatenate(
        [np.outer(fa, base[:n_per_block]), np.outer(fb, base[n_per_block:])], axis=1
    )
    X = rng.poisson(lam).astype(np.float32)
    X[:, 0] += 1  # no all-zero cell
    perm = rng.permutation(X.shape[1])  # genes of the blocks interleaved in var order
    X = X[:, perm]
    block = (perm >= n_per_block).astype(int)
    a = ad.AnnData(sparse.csr_matrix(X) if as_sparse else X)
    a.var_names = [f"g{j}" for j in range(X.shape[1])]
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.var["block"] = block
    return a


def _pixels(a, key="genomap"):
    return a.var[f"{key}_row"].to_numpy(), a.var[f"{key}_col"].to_numpy()


def test_grid_shape_is_smallest_near_square():
    assert G.grid_shape(1024) == (32, 32)
    assert G.grid_shape(2025) == (45, 45)
    assert G.grid_shape(5000) == (71, 71)
    assert G.grid_shape(10) == (3, 4)
    for n in range(1, 300):
        h, w = G.grid_shape(n)
        assert h * w >= n and 0 <= w - h <= 1
        assert (h - 1) * w < n  # one row fewer would not fit


def test_placement_is_bijection_and_writes_keys(small_counts):
    a = small_counts[:, 5:].copy()  # drop the all-zero genes
    out = sct.tl.genomap(a, progress=False, copy=True)
    assert "genomap" not in a.uns  # copy=True left the input alone
    rows, cols = _pixels(out)
    h, w = out.uns["genomap"]["shape"]
    assert (h, w) == (6, 6) and rows.dtype.kind == "i"
    flat = rows * w + cols
    assert np.unique(flat).size == a.n_vars  # every gene its own pixel
    assert ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).all()
    assert set(flat) == set(range(a.n_vars))  # the first n pixels in raster order
    rec = out.uns["genomap"]
    assert 0 < rec["objective"] < 1 and rec["params"]["metric"] == "correlation"
    assert rec["params"]["counts_input"]


def test_round_trip_exact_dense_and_sparse(small_counts, tmp_path):
    a = small_counts[:, 5:].copy()
    genes = list(a.var_names[::2])
    sct.tl.genomap(a, genes=genes, progress=False)
    a.write_h5ad(tmp_path / "a.h5ad")  # the placement survives h5ad
    a = ad.read_h5ad(tmp_path / "a.h5ad")
    rows, _ = _pixels(a)
    assert (rows[1::2] == -1).all() and (rows[::2] >= 0).all()
    dense = a.X.toarray()
    for X in (a.X, dense):
        b = ad.AnnData(X, var=a.var.copy(), uns=a.uns.copy())
        imgs = sct.tl.genomap_images(b, batch_size=7)
        assert imgs.dtype == np.float32 and imgs.shape == (60, 4, 5)
        back = sct.tl.genomap_to_genes(imgs, b)
        assert back.shape == (60, a.n_vars) and back.dtype == np.float32
        np.testing.assert_array_equal(back[:, ::2], dense[:, ::2])
        assert np.isnan(back[:, 1::2]).all()
        # empty pixels are zero: 18 placed genes on a 4 x 5 grid leave 2 empty
        assert np.count_nonzero(imgs.reshape(60, -1).any(0) == 0) >= 2
        assert (imgs.reshape(60, -1)[:, 18:] == 0).all()
    sub = sct.tl.genomap_images(a, cells=["c3", "c1"])
    np.testing.assert_array_equal(sub[1], sct.tl.genomap_images(a, cells=[1])[0])
    # images from another source, with a channel axis
    net = np.random.default_rng(0).random((3, 1, 4, 5)).astype(np.float32)
    back = sct.tl.genomap_to_genes(net, a)
    r, c = _pixels(a)
    np.testing.assert_array_equal(back[:, 0], net[:, 0, r[0], c[0]])
    with pytest.raises(ValueError, match=r"shape \(n_cells, 4, 5\)"):
        sct.tl.genomap_to_genes(np.zeros((2, 5, 4)), a)


def test_two_blocks_form_two_contiguous_regions():
    a = _blocks()
    sct.tl.genomap(a, progress=False, rng=0)
    rows, cols = _pixels(a)
    h, w = a.uns["genomap"]["shape"]
    for b in (0, 1):
        mask = np.zeros((h, w), bool)
        sel = a.var["block"].to_numpy() == b
        mask[rows[sel], cols[sel]] = True
        _, n_comp = ndimage.label(mask)  # 4-connectivity
        assert n_comp == 1, f"block {b} is split into {n_comp} regions"
    q = sct.tl.genomap_quality(a)
    # the best a layout can do: every neighbour from the same block
    R = 1 - G.interaction_distance(a)
    blk = a.var["block"].to_numpy()
    same = (blk[:, None] == blk[None, :]) & ~np.eye(blk.size, dtype=bool)
    within, across = R[same].mean(), R[~same & (blk[:, None] != blk[None, :])].mean()
    assert within > 0.4 and across < 0  # the planted structure
    assert q["coherence"] > 0.85 * within
    assert q["neighbor_coherence"] > 0.25  # random layouts mix the blocks
    assert q["spearman"] > 0.5


def test_same_seed_same_placement_and_solver_improves_init():
    a = _blocks(seed=3, n_per_block=12)
    b = a.copy()
    sct.tl.genomap(a, progress=False, rng=7)
    sct.tl.genomap(b, progress=False, rng=7)
    np.testing.assert_array_equal(_pixels(a)[0], _pixels(b)[0])
    np.testing.assert_array_equal(_pixels(a)[1], _pixels(b)[1])
    c = a.copy()
    sct.tl.genomap(c, progress=False, rng=7, max_iter=0, key_added="init")
    assert a.uns["genomap"]["objective"] <= c.uns["init"]["objective"] + 1e-12


def test_fft_gradient_and_objective_match_pot():
    import ot

    rng = np.random.default_rng(1)
    n, shape = 23, (5, 5)
    Z = rng.standard_normal((40, n))
    C1 = 1 - np.corrcoef(Z.T)
    np.fill_diagonal(C1, 0)
    perm = rng.permutation(n)
    pos_all = S.positions(shape, n)
    D = S.grid_distance_rows(pos_all, slice(None))
    P = np.zeros((n, n))
    P[np.arange(n), perm] = 1
    grad = S._gradient(C1, perm, S.GridConv(shape, n))
    np.testing.assert_allclose(grad, C1 @ P @ D, rtol=1e-5, atol=1e-4)
    # the scaled objective equals POT's square-loss GW loss of the coupling P / n
    C1s, Ds = C1 / C1.max(), D / D.max()
    p = np.full(n, 1 / n)
    constC, hC1, hC2 = ot.gromov.init_matrix(C1s, Ds, p, p, "square_loss")
    pot = ot.gromov.gwloss(constC, hC1, hC2, P / n)
    ours = G.gw_objective(C1, pos_all[perm])
    assert ours == pytest.approx(pot, rel=1e-10)


def test_other_solvers_give_bijections(small_counts):
    a = small_counts[:, 5:25].copy()
    for kw in (
        {"solver": "pot", "max_iter": 20},
        {"epsilon": 5e-2, "max_iter": 20},
        {"metric": "cosine"},
    ):
        out = sct.tl.genomap(a, progress=False, copy=True, **kw)
        rows, cols = _pixels(out)
        assert np.unique(rows * 5 + cols).size == 20, kw


def test_quality_hand_computed():
    # 4 genes on a 2 x 2 grid; coherence by hand from the correlation matrix
    rng = np.random.default_rng(0)
    X = rng.random((50, 4)).astype(np.float32)
    X[:, 1] = X[:, 0] * 0.9 + 0.1 * X[:, 1]
    a = ad.AnnData(X)
    a.var_names = list("abcd")
    a.var["genomap_row"] = [0, 0, 1, 1]
    a.var["genomap_col"] = [0, 1, 0, 1]
    a.uns["genomap"] = {"shape": (2, 2)}
    R = np.corrcoef(X.T.astype(np.float64))
    nbrs = {0: [1, 2], 1: [0, 3], 2: [0, 3], 3: [1, 2]}
    want = np.mean([np.mean([R[i, j] for j in js]) for i, js in nbrs.items()])
    q = sct.tl.genomap_quality(a, rng=0)
    assert q["coherence"] == pytest.approx(want, rel=1e-9)
    perm = np.random.default_rng(0).permutation(4)
    pos = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])[perm]
    grid = np.empty((2, 2), int)
    grid[pos[:, 0], pos[:, 1]] = np.arange(4)
    nb_r = {i: [grid[r, 1 - c], grid[1 - r, c]] for i, (r, c) in enumerate(pos)}
    want_r = np.mean([np.mean([R[i, j] for j in js]) for i, js in nb_r.items()])
    assert q["coherence_random"] == pytest.approx(want_r, rel=1e-9)
    assert q["neighbor_coherence"] == pytest.approx(want - want_r, rel=1e-9)
    C1 = 1 - R
    D = np.array(
        [[0, 1, 1, np.sqrt(2)], [1, 0, np.sqrt(2), 1], [1, np.sqrt(2), 0, 1], [np.sqrt(2), 1, 1, 0]]
    )
    gw = np.mean((C1 / C1.max() - D / D.max()) ** 2)
    assert q["gw_objective"] == pytest.approx(gw, rel=1e-9)


@pytest.mark.parametrize(
    ("make", "kwargs", "err", "match"),
    [
        (lambda a: a[:, :3].copy(), {}, ValueError, "at least 4 genes"),
        (lambda a: a, {"genes": ["g0", "g1", "g2"]}, ValueError, "at least 4 genes"),
        (lambda a: _with_col(a, 2, 0.0), {}, ValueError, "constant across cells"),
        (lambda a: _with_col(_lognorm(a), 2, 0.5), {}, ValueError, "constant across cells"),
        (lambda a: a, {"shape": (5, 5)}, ValueError, "fewer than the 36 genes"),
        (lambda a: _with_col(a, 3, np.nan, row=4), {}, ValueError, "non-finite"),
        (lambda a: a, {"genes": ["g0", "nope"]}, KeyError, "not in adata.var_names"),
        (lambda a: a, {"layer": "missing"}, KeyError, "missing"),
        (lambda a: a, {"metric": "euclid"}, ValueError, "metric must be"),
        (lambda a: a, {"epsilon": -1.0}, ValueError, "epsilon"),
    ],
)
def test_bad_input_clear_error_and_unchanged(make, kwargs, err, match):
    a = make(_blocks(n_cells=40, as_sparse=False))
    snap = snapshot(a)
    with pytest.raises(err, match=match):
        sct.tl.genomap(a, progress=False, **kwargs)
    assert_unchanged(a, snap)


def _lognorm(a):
    a.X = np.log1p(np.asarray(a.X, dtype=np.float32) * 0.37)  # non-integer: used as given
    return a


def _with_col(a, j, value, row=None):
    X = np.array(a.X, dtype=np.float32)
    if row is None:
        X[:, j] = value
    else:
        X[row, j] = value
    a.X = X
    return a


def test_placement_index_errors():
    a = _blocks(n_cells=40, n_per_block=4)
    with pytest.raises(KeyError, match=r"run sctorch\.tl\.genomap"):
        sct.tl.genomap_images(a)
    sct.tl.genomap(a, progress=False)
    rows, _cols, shape = G.placement_index(a)
    assert shape == (3, 3) and rows.shape == (8,)
    b = a.copy()
    b.var["genomap_row"] = 0
    b.var["genomap_col"] = 0
    with pytest.raises(ValueError, match="not one-to-one"):
        G.placement_index(b)
    b = a.copy()
    del b.var["genomap_col"]
    with pytest.raises(KeyError, match="genomap_col"):
        sct.tl.genomap_to_genes(np.zeros((1, 3, 3)), b)
    b = a.copy()
    b.var.iloc[0, b.var.columns.get_loc("genomap_row")] = 7
    with pytest.raises(ValueError, match="outside"):
        G.placement_index(b)


def test_real_data_beats_naive_layout():
    """Bundled intestine subset, 400 genes: coherence above the naive PCA layout."""
    import scanpy as sc

    a = sct.datasets.intestine_moor2018(bundled=True)
    sc.pp.filter_genes(a, min_cells=10)
    a = a[:, np.argsort(-np.asarray(a.X.sum(0)).ravel())[:400]].copy()
    sct.tl.genomap(a, progress=False)
    ours = sct.tl.genomap_quality(a)
    # naive layout: rows by the first, within rows by the second principal axis of the
    # gene correlation matrix
    C1 = G.interaction_distance(a)
    _, vec = np.linalg.eigh(1 - C1)
    h, w = a.uns["genomap"]["shape"]
    order = np.argsort(vec[:, -1])
    rows = np.empty(a.n_vars, int)
    cols = np.empty(a.n_vars, int)
    for r, start in enumerate(range(0, a.n_vars, w)):
        idx = order[start : start + w]
        idx = idx[np.argsort(vec[idx, -2])]
        rows[idx] = r
        cols[idx] = np.arange(idx.size)
    a.var["naive_row"], a.var["naive_col"] = rows, cols
    a.uns["naive"] = {"shape": (h, w)}
    naive = sct.tl.genomap_quality(a, key="naive")
    assert ours["neighbor_coherence"] > naive["neighbor_coherence"] > 0
    assert ours["gw_objective"] < naive["gw_objective"]


def test_plot_rows_per_group(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    a = _blocks(n_cells=40, n_per_block=6)
    a.obs["grp"] = np.where(np.arange(40) < 30, "x", "y")
    sct.tl.genomap(a, progress=False)
    fig, axes = sct.pl.genomap(a, groupby="grp", n_per_group=4, show=False, save=tmp_path / "g.png")
    assert axes.shape == (2, 4) and (tmp_path / "g.png").stat().st_size > 0
    assert fig.axes[0] is axes[0, 0]
    shown = axes[0, 0].images[0].get_array()
    assert shown.shape == (3, 4)
    with pytest.raises(KeyError, match="groupby"):
        sct.pl.genomap(a, groupby="nope", show=False)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_quality_lives_in_tl_and_metrics_imports_no_method():
    import ast
    import inspect

    assert not hasattr(sct.metrics, "genomap_quality")
    assert sct.tl.genomap_quality is G.genomap_quality
    tree = ast.parse(inspect.getsource(sct.metrics))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] in ("tl", "genomap", "tcer") for m in mods), mods


def test_placement_images_and_genes_of_are_inverse_and_checked():
    p = G.Placement(np.array([0, 1, -1, 2]), np.array([1, 0, -1, 2]), (3, 3))
    X = sparse.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(3, 4))
    imgs = p.images(X, batch_size=2)
    assert imgs.shape == (3, 3, 3) and imgs[0, 0, 1] == 1 and imgs[0, 2, 2] == 4
    assert imgs.sum() == X.toarray()[:, [0, 1, 3]].sum()
    back = p.genes_of(imgs)
    np.testing.assert_array_equal(back[:, [0, 1, 3]], X.toarray()[:, [0, 1, 3]])
    assert np.isnan(back[:, 2]).all()
    np.testing.assert_array_equal(p.images(X, cells=np.array([2]))[0], imgs[2])
    with pytest.raises(ValueError, match="not one-to-one"):
        G.Placement(np.array([0, 0]), np.array([1, 1]), (2, 2)).check()
    with pytest.raises(ValueError, match="outside the 2 × 2 grid"):
        G.Placement(np.array([0, 2]), np.array([1, 1]), (2, 2)).check()
