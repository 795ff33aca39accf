"""stImpute (Zeng et al. 2024): planted gene modules, the real ESM-2 gene graph, I/O, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, require_data, snapshot
from scipy import sparse

import sctorch as sct
from sctorch.metrics import gene_pearson

pytest.importorskip("torch_geometric")

FAST = dict(method="gnn", epochs=2, ae_epochs=3, reliability_folds=0, progress=False)


def planted(
    n_sp=240, n_ref=240, n_types=6, n_modules=6, per_module=6, dropout=0.3, seed=0, n_noise=0
):
    """A reference with known gene modules and a spatial set measuring part of each module.

    Cells belong to types with module activities; a gene's true value is its module's
    activity times a loading. Spatial cells are measured exactly (log1p); the reference
    loses 70 % of its values at random (rescaled), so a gene's k-NN mean over few
    neighbours is noisy while pooling the gene's module partners (the gene graph) is not.
    ``n_noise`` extra genes are sparse spikes, independent between the two sets (nothing
    to predict).
    Embeddings put each module on its own axis (plus noise).
    """
    rng = np.random.default_rng(seed)
    n_mod_genes = n_modules * per_module
    load = rng.uniform(0.5, 1.5, n_mod_genes)
    module = np.repeat(np.arange(n_modules), per_module)
    prog = rng.gamma(2.0, 1.0, (n_types, n_modules)) * (rng.random((n_types, n_modules)) < 0.6)

    def draw(n):
        t = rng.integers(0, n_types, n)
        return (prog[t] * rng.lognormal(0, 0.3, (n, n_modules)))[:, module] * load

    sp_true, ref_true = draw(n_sp), draw(n_ref)
    ref = ref_true * (rng.random(ref_true.shape) < dropout) / dropout
    genes = [f"m{m}g{j}" for m in range(n_modules) for j in range(per_module)]
    if n_noise:

        def spikes(n):  # sparse values, independent between the two sets
            return rng.gamma(2.0, 1.0, (n, n_noise)) * (rng.random((n, n_noise)) < 0.15)

        ref = np.hstack([ref, spikes(n_ref)])
        sp_true = np.hstack([sp_true, spikes(n_sp)])
        genes += [f"noise{j}" for j in range(n_noise)]
        module = np.concatenate([module, n_modules + np.arange(n_noise)])
    dims = n_modules + n_noise
    emb = np.eye(dims)[module] * 3 + rng.normal(0, 0.3, (len(genes), dims))
    sp = ad.AnnData(np.log1p(sp_true).astype(np.float32))
    sp.var_names, sp.obs_names = genes, [f"s{i}" for i in range(n_sp)]
    sp.obsm["spatial"] = rng.random((n_sp, 2)).astype(np.float32)
    rf = ad.AnnData(np.log1p(ref).astype(np.float32))
    rf.var_names, rf.obs_names = genes, [f"r{i}" for i in range(n_ref)]
    return sp, rf, pd.DataFrame(emb, index=genes)


@pytest.fixture(scope="module")
def plant():
    return planted()


HELD = [f"m{m}g0" for m in range(6)]


def test_gnn_beats_knn_mean_on_planted_modules(plant):
    sp, rf, emb = plant
    kw = dict(
        genes=HELD,
        gene_embeddings=emb,
        n_neighbors=5,
        graph_neighbors=5,
        return_adata=True,
        **{**FAST, "epochs": 3},
    )
    knn = sct.tl.stimpute(sp, rf, alpha=0.0, **kw)
    gnn = sct.tl.stimpute(sp, rf, alpha=1.0, **kw)
    truth = sp[:, HELD].X
    r_knn = gene_pearson(truth, knn.X)
    r_gnn = gene_pearson(truth, gnn.X)
    # pooling the module partners through the graph removes the reference dropout noise
    assert r_gnn.mean() > r_knn.mean() + 0.15, (r_gnn, r_knn)
    assert (r_gnn > r_knn).sum() >= 5
    # alpha=0 is exactly the mean of the k neighbours' reference expression
    assert list(knn.var_names) == HELD


def test_knn_mean_is_the_mean_of_neighbours(plant):
    sp, rf, _ = plant
    out = sct.tl.stimpute(
        sp, rf, genes=["m0g0"], alpha=0.0, n_neighbors=1, return_adata=True, **FAST
    )
    # with k = 1 every prediction is one reference cell's value of the gene
    vals = set(np.round(rf[:, "m0g0"].X.ravel(), 5))
    assert set(np.round(out.X.ravel(), 5)) <= vals


def test_writes_obsm_uns_and_blend(plant):
    sp, rf, emb = plant
    a = sp.copy()
    res = sct.tl.stimpute(
        a, rf, genes=HELD, gene_embeddings=emb, n_neighbors=10, **{**FAST, "reliability_folds": 3}
    )
    assert res is None
    df = a.obsm["stimpute"]
    assert isinstance(df, pd.DataFrame) and df.shape == (a.n_obs, len(HELD))
    assert list(df.columns) == HELD and (df.index == a.obs_names).all()
    rec = a.uns["stimpute"]
    assert list(rec["genes"]) == HELD
    assert rec["reliability"].shape == (len(HELD),) and np.isfinite(rec["reliability"]).all()
    assert (np.abs(rec["reliability"]) <= 1.0).all()  # an estimated Pearson correlation
    p = rec["params"]
    assert p["weight"] == 0.7 and p["n_train"] == 30 and p["n_with_embedding"] == 36
    assert p["method"] == "gnn" and p["k"] == 10
    assert "non-integer" in p["spatial_scale"]
    np.testing.assert_array_equal(a.X, sp.X)  # X untouched
    # default genes: every reference gene the spatial set does not measure
    b = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    c = sct.tl.stimpute(b, rf, copy=True, **FAST)
    assert list(c.obsm["stimpute"].columns) == HELD and "stimpute" not in b.obsm


def test_reliability_ranks_predictable_genes_higher():
    sp, rf, emb = planted(n_noise=12, seed=1)
    held = [f"m{m}g0" for m in range(6)] + [f"noise{j}" for j in range(6)]
    out = sct.tl.stimpute(
        sp,
        rf,
        genes=held,
        gene_embeddings=emb,
        n_neighbors=10,
        return_adata=True,
        **{**FAST, "reliability_folds": 5},
    )
    rel = out.var["reliability"].to_numpy()
    # module genes are predictable, noise genes (no shared signal) are not
    assert rel[:6].mean() > rel[6:].mean() + 0.2, rel


def test_paper_reliability_is_clipped_to_cosine_range(plant, monkeypatch):
    # preset="paper": an MLP whose raw output leaves [-1, 1] gives scores clipped to it
    from sctorch.stimpute import _module as nn_st

    class Overshooting(nn_st.ReliabilityMLP):
        def forward(self, profiles):
            return super().forward(profiles) * 0.0 + 3.0

    monkeypatch.setattr(nn_st, "ReliabilityMLP", Overshooting)
    sp, rf, emb = plant
    out = sct.tl.stimpute(
        sp,
        rf,
        genes=HELD,
        gene_embeddings=emb,
        n_neighbors=10,
        return_adata=True,
        preset="paper",
        **{**FAST, "reliability_folds": 2},
    )
    np.testing.assert_array_equal(out.var["reliability"].to_numpy(), 1.0)


def test_sparse_dense_and_seeds(plant):
    sp, rf, _ = plant
    counts_sp = ad.AnnData(np.round(np.expm1(sp.X) * 3).astype(np.float32), obs=sp.obs, var=sp.var)
    counts_rf = ad.AnnData(np.round(np.expm1(rf.X) * 3).astype(np.float32), obs=rf.obs, var=rf.var)
    kw = dict(genes=HELD, n_neighbors=5, return_adata=True, rng=3, **FAST)
    dense = sct.tl.stimpute(counts_sp, counts_rf, **kw)
    sp_s = counts_sp.copy()
    sp_s.X = sparse.csr_matrix(sp_s.X)
    rf_s = counts_rf.copy()
    rf_s.X = sparse.csc_matrix(rf_s.X)
    sp_layer = counts_sp.copy()
    sp_layer.layers["counts"] = sparse.csr_matrix(counts_sp.X)
    sp_layer.X = np.zeros_like(counts_sp.X)
    sparse_out = sct.tl.stimpute(sp_s, rf_s, **kw)
    layer_out = sct.tl.stimpute(sp_layer, rf_s, layer="counts", **kw)
    np.testing.assert_allclose(sparse_out.X, dense.X, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer_out.X, dense.X, rtol=1e-4, atol=1e-5)
    assert "raw counts" in dense.uns["stimpute"]["params"]["spatial_scale"]
    again = sct.tl.stimpute(counts_sp, counts_rf, **kw)
    np.testing.assert_array_equal(again.X, dense.X)
    other = sct.tl.stimpute(counts_sp, counts_rf, **{**kw, "rng": 4})
    assert not np.allclose(other.X, dense.X)


def test_case_insensitive_matching_keeps_names(plant):
    sp, rf, _ = plant
    low = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    low.var_names = [g.upper() for g in low.var_names]
    with pytest.raises(ValueError, match="Found 0 gene"):
        sct.tl.stimpute(low, rf, **FAST)
    out = sct.tl.stimpute(low, rf, case_sensitive=False, return_adata=True, **FAST)
    assert list(out.var_names) == HELD  # the reference's spelling
    assert all(g.isupper() for g in low.var_names)


def test_bad_input_errors_leave_inputs_unchanged(plant):
    sp, rf, emb = plant
    a, r = sp.copy(), rf.copy()
    sa, sr = snapshot(a), snapshot(r)
    other = ad.AnnData(np.ones((50, 3), np.float32))
    other.var_names = ["x", "y", "z"]
    with pytest.raises(ValueError, match=r"Found 0 gene\(s\) shared"):
        sct.tl.stimpute(a, other, **FAST)
    with pytest.raises(KeyError, match=r"2 of the 3 requested gene\(s\).*'nope1'"):
        sct.tl.stimpute(a, r, genes=["m0g0", "nope1", "nope2"], **FAST)
    with pytest.raises(ValueError, match="has 240 cells but n_neighbors=500"):
        sct.tl.stimpute(a, r, n_neighbors=500, **FAST)
    bad_emb = {g: np.ones(8 if i < 30 else 5) for i, g in enumerate(emb.index)}
    with pytest.raises(ValueError, match=r"different dimensions per gene \(8 dims: 30 gene"):
        sct.tl.stimpute(a, r, genes=HELD, gene_embeddings=bad_emb, **FAST)
    with pytest.raises(ValueError, match="alpha"):
        sct.tl.stimpute(a, r, genes=HELD, alpha=1.5, **FAST)
    with pytest.raises(KeyError, match="Layer 'nope'"):
        sct.tl.stimpute(a, r, genes=HELD, layer="nope", **FAST)
    assert_unchanged(a, sa)
    assert_unchanged(r, sr)
    nan = sp.copy()
    nan.X[3, 4] = np.nan
    s_nan = snapshot(nan)
    with pytest.raises(ValueError, match=r"adata_sp \(adata.X\) contains 1 non-finite"):
        sct.tl.stimpute(nan, r, genes=HELD, **FAST)
    assert_unchanged(nan, s_nan)
    with pytest.raises(ValueError, match="n_folds"):
        sct.tl.stimpute_cv(a, r, n_folds=1, **FAST)
    with pytest.raises(ValueError, match="max_cells_per_epoch"):
        sct.tl.stimpute(a, r, genes=HELD, max_cells_per_epoch=0, **FAST)
    assert_unchanged(a, sa)


def test_feature_blocks_are_bounded_and_epochs_subsample(plant):
    from sctorch.stimpute._data import CellData
    from sctorch.stimpute._graph import GeneSimilarity

    sp, rf, _ = plant
    sim = GeneSimilarity(3, None, np.zeros(3, bool), rf.X[:, :3])
    data = CellData(
        sp.X[:, :2],
        rf.X[:, :3],
        2,
        lambda c: sim.knn_graph(c, 3),
        n_neighbors=50,
        batch_size=512,
        max_cells_per_epoch=100,
        device="cpu",
        seed=0,
    )
    # one (batch, genes, k) block holds at most 2**23 values: 10,000 genes -> 16 cells
    assert data.batch_size(10_000) == 2**23 // (10_000 * 50) == 16
    assert data.batch_size(10) == 512
    cells = data.epoch_cells()
    assert len(cells) == 100 and len(set(cells)) == 100 and cells.max() < 240
    data.cap = None
    assert sorted(data.epoch_cells()) == list(range(240))
    # the k-NN features of a batch are the neighbours' reference values, gene by gene
    nbr = np.arange(240 * 50).reshape(240, 50) % 240
    x = data.features(np.array([3, 7]), np.array([0, 2]), nbr)
    assert tuple(x.shape) == (2, 2, 50)
    np.testing.assert_allclose(x[1, 1].numpy(), rf.X[nbr[7], 2])


def test_stimpute_cv_table_and_layer(plant):
    sp, rf, emb = plant
    a = sp[:, :24].copy()  # modules 0-3
    a.var_names = list(a.var_names)
    extra = ad.AnnData(np.zeros((a.n_obs, 1), np.float32), obs=a.obs)
    extra.var_names = ["only_in_spatial"]
    a = ad.concat([a, extra], axis=1, merge="first")
    a.obsm["spatial"] = sp.obsm["spatial"]
    tab = sct.tl.stimpute_cv(
        a, rf, n_folds=3, gene_embeddings=emb, n_neighbors=5, **{**FAST, "reliability_folds": 3}
    )
    assert list(tab.columns) == ["pearson", "cosine", "mse", "reliability", "fold"]
    assert list(tab.index) == list(a.var_names[:24])
    assert sorted(tab["fold"].unique()) == [0, 1, 2]
    L = a.layers["stimpute_cv"]
    assert L.shape == a.shape and np.isnan(L[:, -1]).all() and np.isfinite(L[:, :24]).all()
    # the table is the held-out layer scored against the measurement
    g = 7
    r = np.corrcoef(L[:, g], a.X[:, g])[0, 1]
    assert tab["pearson"].iloc[g] == pytest.approx(r, abs=1e-5)
    mse = np.mean((L[:, g] - a.X[:, g]) ** 2)
    assert tab["mse"].iloc[g] == pytest.approx(mse, rel=1e-4)
    assert np.isfinite(tab["reliability"]).all()
    assert tab["pearson"].median() > 0.3


def test_gene_graph_from_expression_is_symmetric_topk():
    rng = np.random.default_rng(0)
    base = rng.random((100, 3))
    X = np.hstack([base[:, [0]] * [1, 2, 3], base[:, [1]] * [1, 1.5, 2], base[:, [2]] * [1, 3, 4]])
    genes = [f"g{i}" for i in range(9)]
    A = sct.tl.stimpute_gene_graph(genes, expression=sparse.csr_matrix(X), n_neighbors=2)
    assert A.shape == (9, 9) and (A != A.T).nnz == 0 and A.diagonal().sum() == 0
    assert ((A > 0).sum(1).A1 >= 2).all()
    # exact multiples of one column have cosine 1: each gene's 2 neighbours are its module
    for block in ([0, 1, 2], [3, 4, 5], [6, 7, 8]):
        for i in block:
            assert set(A[i].indices) == set(block) - {i}
            np.testing.assert_allclose(A[i].data, 1.0, atol=1e-5)
    dense = sct.tl.stimpute_gene_graph(genes, expression=X, n_neighbors=2)
    assert (abs(dense - A) > 1e-5).nnz == 0
    # embeddings override expression for pairs that both have one (eq. 6)
    emb = pd.DataFrame(np.eye(8)[[0, 0, 1, 1, 2, 2, 3, 3, 4]], index=genes)
    B = sct.tl.stimpute_gene_graph(genes, gene_embeddings=emb, expression=X, n_neighbors=1)
    assert set(B[0].indices) == {1} and set(B[2].indices) == {3}
    with pytest.raises(ValueError, match="no embedding and no reference expression"):
        sct.tl.stimpute_gene_graph(genes, gene_embeddings=emb.iloc[:4], n_neighbors=2)


def test_gene_graph_on_real_osmfish_esm2_embeddings():
    require_data("esm2_gene_embeddings/osmFISH_emb.h5ad")
    emb = sct.datasets.esm2_gene_embeddings("osmFISH")
    genes = list(sct.datasets.osmfish().var_names) if _has_osmfish() else list(emb.index[:33])
    k = 5
    A = sct.tl.stimpute_gene_graph(genes, gene_embeddings=emb, n_neighbors=k)
    assert A.shape == (33, 33) and (A != A.T).nnz == 0 and A.diagonal().sum() == 0
    deg = (A > 0).sum(1).A1
    assert (deg >= k).all() and A.nnz <= 2 * k * 33 and A.nnz < 0.5 * 33 * 32
    # hand check of one edge weight: cosine of the two embeddings
    i, j = A[0].indices[0], 0
    e = emb.loc[genes].to_numpy(np.float64)
    cos = e[i] @ e[j] / np.linalg.norm(e[i]) / np.linalg.norm(e[j])
    assert A[j, i] == pytest.approx(cos, abs=1e-5)
    # co-expressed markers are closer than a random pair: Sox10 / Pdgfra (oligodendrocyte
    # precursors) are linked in the k = 5 graph, Aldoc / Gfap (astrocytes) above the median.
    # (Plp1 / Sox10, the example, is NOT: its ESM-2 cosine is at the 18th
    # percentile of all pairs: a proteolipid and a transcription factor share no fold.)
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    S = n @ n.T
    off = S[np.triu_indices(33, 1)]
    ix = {g: genes.index(g) for g in ("Sox10", "Pdgfra", "Aldoc", "Gfap")}
    assert A[ix["Sox10"], ix["Pdgfra"]] > 0
    assert (S[ix["Sox10"], ix["Pdgfra"]] > off).mean() > 0.9
    assert (S[ix["Aldoc"], ix["Gfap"]] > off).mean() > 0.7


def _has_osmfish():
    base = sct.datasets.data_dir()
    return base is not None and (base / "osmfish_sscortex/osmFISH_prep.h5ad").exists()


def test_return_adata_with_squidpy_on_osmfish():
    require_data("osmfish_sscortex/osmFISH_prep.h5ad")
    sq = pytest.importorskip("squidpy")
    import matplotlib

    matplotlib.use("Agg")
    osm = sct.datasets.osmfish()
    rng = np.random.default_rng(0)
    order = rng.permutation(osm.n_obs)
    sp = osm[order[:1500]].copy()
    ref = osm[order[1500:3000]].copy()  # a same-tissue "reference" for the smoke test
    held = ["Plp1", "Gad2", "Vip"]
    sp_meas = sp[:, [g for g in sp.var_names if g not in held]].copy()
    emb = sct.datasets.esm2_gene_embeddings("osmFISH") if _has_esm() else None
    out = sct.tl.stimpute(
        sp_meas, ref, genes=held, gene_embeddings=emb, n_neighbors=20, return_adata=True, **FAST
    )
    assert out.shape == (1500, 3) and "stimpute" not in sp_meas.obsm
    np.testing.assert_array_equal(out.obsm["spatial"], sp.obsm["spatial"])
    assert (out.obs["ClusterName"] == sp.obs["ClusterName"]).all()
    sq.gr.spatial_neighbors(out, coord_type="generic", n_neighs=6)
    assert out.obsp["spatial_connectivities"].shape == (1500, 1500)
    sq.pl.spatial_scatter(out, color="Plp1", shape=None)
    truth = sp[:, held].X.toarray() if sparse.issparse(sp.X) else sp[:, held].X
    r = gene_pearson(np.log1p(truth / truth.sum(1, keepdims=True).clip(1)), out.X)
    assert np.nanmean(r) > 0.2  # real signal (Plp1: oligodendrocytes) is recovered


def _has_esm():
    base = sct.datasets.data_dir()
    return base is not None and (base / "esm2_gene_embeddings/osmFISH_emb.h5ad").exists()


@pytest.mark.gpu
def test_cuda_matches_shape_and_quality(plant):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sp, rf, emb = plant
    out = sct.tl.stimpute(
        sp,
        rf,
        genes=HELD,
        gene_embeddings=emb,
        n_neighbors=5,
        alpha=1.0,
        graph_neighbors=5,
        device="cuda",
        return_adata=True,
        **{**FAST, "epochs": 3},
    )
    assert gene_pearson(sp[:, HELD].X, out.X).mean() > 0.5


# ----------------------------------------------------------------------------- the model
def _fit_model(sp, rf, emb, **kw):
    kw = {"method": "gnn", **kw}
    return sct.models.StImputeModel(
        n_neighbors=5, graph_neighbors=5, epochs=2, ae_epochs=3, reliability_folds=2, **kw
    ).fit(sp, rf, genes=HELD, gene_embeddings=emb, rng=0, progress=False)


def test_model_predict_matches_stimpute_and_survives_save_load(plant, tmp_path):
    sp, rf, emb = plant
    kw = dict(
        genes=HELD,
        gene_embeddings=emb,
        n_neighbors=5,
        epochs=2,
        ae_epochs=3,
        reliability_folds=2,
        progress=False,
        return_adata=True,
        preset="paper",
    )
    out, model = sct.tl.stimpute(sp, rf, return_model=True, **kw)
    np.testing.assert_array_equal(out.X, sct.tl.stimpute(sp, rf, **kw).X)
    assert isinstance(model, sct.models.StImputeModel)
    assert model.targets == HELD and len(model.genes) == 30
    np.testing.assert_array_equal(model.reliability, out.var["reliability"].to_numpy())
    assert len(model.history["autoencoder_loss"]) == 3 and len(model.history["gnn_loss"]) == 4
    assert len(model.history["reliability_loss"]) == 200
    pred = model.predict(sp)
    assert list(pred.columns) == HELD and (pred.index == sp.obs_names).all()
    np.testing.assert_array_equal(pred.to_numpy(), out.X)  # the fit's own output
    # a gene's values do not depend on which others are requested
    two = model.predict(sp, genes=[HELD[3], HELD[1]])
    np.testing.assert_array_equal(two.to_numpy(), out.X[:, [3, 1]])
    path = tmp_path / "stimpute.safetensors"
    model.save(path)
    for loaded in (
        sct.models.StImputeModel.load(path, device="cpu"),
        sct.models.load(path, device="cpu"),
    ):
        assert type(loaded) is sct.models.StImputeModel
        assert loaded.genes == model.genes and loaded.targets == model.targets
        assert loaded.config == model.config and loaded.alpha == model.alpha
        np.testing.assert_array_equal(loaded.reliability, model.reliability)
        np.testing.assert_array_equal(loaded.predict(sp).to_numpy(), out.X)
    with pytest.raises(KeyError, match="not among the model's 6 predictable genes"):
        model.predict(sp, genes=["m0g1"])  # a training gene


def test_model_predicts_a_new_section(plant):
    sp, rf, emb = plant
    measured = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    model = _fit_model(measured[:160], rf, emb)
    # new cells: same genes, never seen in training
    new = measured[160:]
    pred = model.predict(new)
    assert pred.shape == (80, 6) and (pred.index == new.obs_names).all()
    truth = sp[160:, HELD].X
    assert gene_pearson(truth, pred.to_numpy()).mean() > 0.5
    # a cell's prediction does not depend on the other cells of its section
    whole = model.predict(measured)
    np.testing.assert_allclose(pred.to_numpy(), whole.to_numpy()[160:], rtol=1e-5, atol=1e-6)
    # a new section with genes in another order, one missing (zero-filled, with a warning)
    shuffled = new[:, list(new.var_names[::-1][1:])].copy()
    with pytest.warns(UserWarning, match="1 of the model's 30 training genes are missing"):
        part = model.predict(shuffled)
    assert part.shape == (80, 6) and np.isfinite(part.to_numpy()).all()
    with pytest.raises(ValueError, match="measures 0 of the model's 30 training genes"):
        model.predict(ad.AnnData(np.ones((3, 2), np.float32), var=pd.DataFrame(index=["x", "y"])))
    with pytest.raises(ValueError, match="not been trained"):
        sct.models.StImputeModel().predict(new)


def test_stimpute_leaves_the_callers_random_streams_alone(plant):
    import torch

    sp, rf, _ = plant
    torch.manual_seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(123)
    np.random.seed(123)
    sct.tl.stimpute(
        sp, rf, genes=["m0g0"], n_neighbors=5, return_adata=True, **{**FAST, "reliability_folds": 2}
    )
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_case_only_mismatch_is_reported(plant):
    sp, rf, _ = plant
    part = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    part.var_names = [g.upper() if i >= 9 else g for i, g in enumerate(part.var_names)]
    with pytest.warns(
        UserWarning,
        match=r"Only 9 of the 30 spatial genes match the "
        r"reference's var_names exactly, but 30 match ignoring case .*"
        r"case_sensitive=False",
    ):
        sct.tl.stimpute(part, rf, return_adata=True, **FAST)
    with pytest.raises(
        ValueError,
        match=r"Found 0 gene.*Only 0 of the 21 .* 21 match "
        "ignoring case",
    ):
        sct.tl.stimpute(part[:, 9:].copy(), rf, **FAST)
    with pytest.warns(UserWarning, match="but 30 match ignoring case"):
        sct.tl.stimpute_cv(part, rf, n_folds=2, n_neighbors=5, **FAST)


def test_overwrite_warnings_and_degenerate_inputs(plant):
    sp, rf, _ = plant
    a = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    sct.tl.stimpute(a, rf, n_neighbors=5, **FAST)
    first = a.obsm["stimpute"].copy()
    with pytest.warns(
        UserWarning,
        match=r"Overwriting the existing adata_sp.obsm\['stimpute'\] "
        r"and adata_sp.uns\['stimpute'\]",
    ):
        sct.tl.stimpute(a, rf, n_neighbors=5, rng=1, **FAST)
    assert not np.allclose(first.to_numpy(), a.obsm["stimpute"].to_numpy())  # overwritten
    one = sp[:1].copy()
    s_one = snapshot(one)
    with pytest.raises(ValueError, match=r"adata_sp has 1 cell.*at least 2 cells"):
        sct.tl.stimpute_cv(one, rf, n_folds=2, n_neighbors=5, **FAST)
    assert_unchanged(one, s_one)
    X = rf.X[:, :6].copy()
    X[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"expression contains 1 non-finite"):
        sct.tl.stimpute_gene_graph(list(rf.var_names[:6]), expression=X, n_neighbors=2)


def test_no_torch_jit_deprecation_warning_on_import():
    import os
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always'); "
        "from sctorch.stimpute._train import torch_modules; torch_modules()"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "always"},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "torch.jit.script" not in res.stderr


# ----------------------------------------------------------------------------- default method
DEFAULT = dict(progress=False, return_adata=True)


def test_transfer_known_answers(plant):
    sp, rf, _ = plant
    # k = 1, w = 0: every prediction is one reference cell's value of the gene
    out = sct.tl.stimpute(sp, rf, genes=["m0g0"], n_neighbors=1, ridge_weight=0.0, **DEFAULT)
    assert set(np.round(out.X.ravel(), 5)) <= set(np.round(rf[:, "m0g0"].X.ravel(), 5))
    assert out.uns["stimpute"]["params"]["k"] == 1
    # w = 1: a gene that is a linear function of measured genes is recovered by the ridge
    rng = np.random.default_rng(0)
    Z = rng.gamma(2.0, 1.0, size=(600, 8)).astype(np.float32)  # non-negative, non-integer
    lin = Z[:, :3] @ np.array([1.0, 0.5, 0.8], np.float32)
    both = ad.AnnData(np.column_stack([Z, lin]))
    both.var_names = [f"g{i}" for i in range(8)] + ["target"]
    res = sct.tl.stimpute(
        both[:300].copy(), both[300:].copy(), genes=["target"], ridge_weight=1.0, n_pcs=8, **DEFAULT
    )
    assert gene_pearson(lin[:300, None], res.X)[0] > 0.99


def test_default_chooses_k_and_w_from_measured_genes_only(plant):
    sp, rf, _ = plant
    out = sct.tl.stimpute(sp, rf, genes=HELD, **DEFAULT)
    p = out.uns["stimpute"]["params"]
    assert p["method"] == "transfer" and p["k"] in (10, 20, 50, 100)
    assert p["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    # the held-out genes' spatial values are never read: scrambling them changes nothing
    b = sp.copy()
    cols = [list(sp.var_names).index(g) for g in HELD]
    b.X[:, cols] = np.random.default_rng(1).permutation(b.X[:, cols])
    again = sct.tl.stimpute(b, rf, genes=HELD, **DEFAULT)
    np.testing.assert_array_equal(again.X, out.X)
    np.testing.assert_array_equal(again.var["reliability"], out.var["reliability"])
    # it beats its own k-NN mean (w = 0) on the planted modules
    truth = sp[:, HELD].X
    knn = sct.tl.stimpute(sp, rf, genes=HELD, ridge_weight=0.0, n_neighbors=p["k"], **DEFAULT)
    assert gene_pearson(truth, out.X).mean() >= gene_pearson(truth, knn.X).mean() - 1e-6


def test_default_reliability_ranks_predictable_genes_higher():
    sp, rf, _ = planted(n_noise=12, seed=1)
    held = [f"m{m}g0" for m in range(6)] + [f"noise{j}" for j in range(6)]
    out = sct.tl.stimpute(sp, rf, genes=held, **DEFAULT)
    rel = out.var["reliability"].to_numpy()
    assert np.isfinite(rel).all() and (np.abs(rel) <= 1).all()
    # module genes are predictable, noise genes (no shared signal) are not
    assert rel[:6].mean() > rel[6:].mean() + 0.3, rel
    truth = sp[:, held].X
    acc = gene_pearson(truth, out.X)
    assert np.corrcoef(rel, acc)[0, 1] > 0.7, (rel, acc)  # estimates the held-out Pearson


@pytest.mark.parametrize("latent", ["pca", "autoencoder"])
def test_transfer_model_predicts_saves_and_loads(plant, tmp_path, latent):
    sp, rf, _ = plant
    measured = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    ae = {"ae_epochs": 3} if latent == "autoencoder" else {}  # the PCA space trains none
    out, model = sct.tl.stimpute(measured, rf, latent=latent, return_model=True, **ae, **DEFAULT)
    assert model.targets == HELD
    np.testing.assert_allclose(model.predict(measured).to_numpy(), out.X, rtol=1e-5, atol=1e-6)
    two = model.predict(measured, genes=[HELD[3], HELD[1]])
    np.testing.assert_allclose(two.to_numpy(), out.X[:, [3, 1]], rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = sct.models.load(path, device="cpu")
    assert loaded.k == model.k and loaded.alpha == model.alpha
    np.testing.assert_allclose(loaded.predict(measured).to_numpy(), out.X, rtol=1e-5, atol=1e-6)
    assert gene_pearson(sp[:, HELD].X, out.X).mean() > 0.5


@pytest.mark.parametrize("as_sparse", [False, True])
def test_backed_input_gives_the_in_memory_prediction(plant, tmp_path, as_sparse):
    sp, rf, _ = plant
    counts = np.round(np.expm1(sp.X) * 3).astype(np.float32)
    measured = ad.AnnData(
        sparse.csr_matrix(counts) if as_sparse else counts, obs=sp.obs, var=sp.var
    )
    measured = measured[:, [g for g in sp.var_names if g not in HELD]].copy()
    path = tmp_path / "sp.h5ad"
    measured.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    mem = sct.tl.stimpute(measured, rf, **DEFAULT)
    on_disk, model = sct.tl.stimpute(backed, rf, return_model=True, **DEFAULT)
    np.testing.assert_allclose(on_disk.X, mem.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(backed).to_numpy(), mem.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(measured).to_numpy(), mem.X, rtol=1e-5, atol=1e-5)
    # a backed reference too (its training and target genes read by blocks)
    rf.write_h5ad(tmp_path / "ref.h5ad")
    ref_backed = ad.read_h5ad(tmp_path / "ref.h5ad", backed="r")
    both = sct.tl.stimpute(backed, ref_backed, **DEFAULT)
    np.testing.assert_allclose(both.X, mem.X, rtol=1e-5, atol=1e-5)
    pd.testing.assert_frame_equal(
        sct.tl.stimpute_cv(backed, ref_backed, n_folds=2, progress=False),
        sct.tl.stimpute_cv(measured, rf, n_folds=2, progress=False),
    )
    ref_backed.file.close()
    backed.file.close()


def test_paper_distance_graph_and_no_graph(plant):
    from sctorch.stimpute._graph import GeneSimilarity, distance_graph

    sp, rf, _ = plant
    sim = GeneSimilarity(5, None, np.zeros(5, bool), rf.X[:, :5])
    A = distance_graph(sim, np.arange(5)).toarray()
    # dense cosine distances, identity subtracted, rows normalised (authors' GS_block)
    S = sim.block(np.arange(5), np.arange(5))
    D = 1 - S - np.eye(5)
    np.testing.assert_allclose(A, D / D.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(A.sum(1), 1.0, rtol=1e-5)
    assert (np.diag(A) < 0).all()
    # graph_neighbors=0: the GNN without a gene graph still predicts
    out = sct.tl.stimpute(
        sp, rf, genes=HELD, graph_neighbors=0, n_neighbors=5, return_adata=True, **FAST
    )
    assert np.isfinite(out.X).all() and out.shape == (sp.n_obs, len(HELD))
    with pytest.raises(ValueError, match="preset must be"):
        sct.tl.stimpute(sp, rf, genes=HELD, preset="authors", **FAST)
    with pytest.raises(ValueError, match="ridge_weight"):
        sct.tl.stimpute(sp, rf, genes=HELD, ridge_weight=2.0, progress=False)
    with pytest.raises(ValueError, match="alpha is the GNN's weight"):
        sct.tl.stimpute(sp, rf, genes=HELD, alpha=0.5, progress=False)


# ----------------------------------------------------------------------------- public surface
# settings of a fast transfer run: k and w fixed, no inner CV
QUICK = dict(genes=HELD, n_neighbors=5, ridge_weight=0.5, reliability_folds=0, progress=False)
QUICK_CV = {k: v for k, v in QUICK.items() if k != "genes"}


def _params(adata, key="stimpute"):
    return adata.uns[key]["params"]


def test_signatures_and_config_export():
    import inspect

    from sctorch.stimpute import StImputeConfig

    assert sct.tl.StImputeConfig is StImputeConfig
    for f in (sct.tl.stimpute, sct.tl.stimpute_cv):
        ps = inspect.signature(f).parameters
        assert len(ps) <= 15, (f.__name__, len(ps))
        assert {"layer", "ref_layer", "preset", "config", "rng", "random_state", "copy"} <= set(ps)
        assert ps["copy"].default is False and ps["preset"].default == "default"
        for name in ps:  # every parameter is documented
            assert f"\n    {'**' if name == 'kwargs' else ''}{name}\n" in f.__doc__, name
        assert "{" not in f.__doc__.split("Parameters")[1].split("Returns")[0]
    # the presets are named instances; the paper's size-dependent settings are None
    assert set(StImputeConfig.PRESETS) == {"default", "paper"}
    assert StImputeConfig.preset("default") == StImputeConfig()
    paper = StImputeConfig.preset("paper")
    assert (paper.method, paper.design, paper.lr, paper.weight_decay) == (
        "gnn",
        "paper",
        0.01,
        0.01,
    )
    assert paper.n_neighbors is None and paper.alpha is None and paper.hidden_dim is None


def test_paper_size_rule_is_resolved_from_the_data_size():
    from sctorch.stimpute import StImputeConfig

    paper = StImputeConfig.preset("paper")
    small = paper.resolved(9_999, 499)
    assert (small.n_neighbors, small.alpha, small.hidden_dim) == (50, 0.7, 256)
    for n_sp, n_genes in ((10_000, 100), (300, 500)):
        big = paper.resolved(n_sp, n_genes)
        assert (big.n_neighbors, big.alpha, big.hidden_dim) == (20, 0.5, 32)
    # explicit values win over the rule; resolved() does not change the config
    mine = paper.replace(n_neighbors=7, hidden_dim=16).resolved(300, 40)
    assert (mine.n_neighbors, mine.alpha, mine.hidden_dim) == (7, 0.7, 16)
    assert paper.n_neighbors is None
    # the default GNN: alpha by the number of cells only; k stays for the fit (50)
    gnn = StImputeConfig(method="gnn")
    assert gnn.resolved(300, 600).alpha == 0.7 and gnn.resolved(20_000, 10).alpha == 0.5
    assert gnn.resolved(300, 600).n_neighbors is None and gnn.resolved(1, 1).hidden_dim == 64
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer or None"):
        StImputeConfig(hidden_dim=0).validate()
    with pytest.raises(ValueError, match="design must be one of"):
        StImputeConfig(design="authors").validate()
    with pytest.raises(ValueError, match=r"design='paper'.*needs method='gnn'"):
        StImputeConfig(design="paper").validate()


def test_config_instance_dict_and_keywords_precedence(plant):
    from sctorch.stimpute import StImputeConfig

    sp, rf, _ = plant
    base = sct.tl.stimpute(sp, rf, copy=True, **QUICK)
    assert _params(base)["n_pcs"] == 30 and _params(base)["k"] == 5
    # a config instance replaces the preset; a dict updates it; keywords win over both
    inst = StImputeConfig(n_pcs=4, n_neighbors=5, ridge_weight=0.5, reliability_folds=0)
    a = sct.tl.stimpute(sp, rf, genes=HELD, config=inst, copy=True, progress=False)
    d = sct.tl.stimpute(sp, rf, config={"n_pcs": 4}, copy=True, **QUICK)
    k = sct.tl.stimpute(
        sp, rf, config={"n_pcs": 4, "n_neighbors": 9}, copy=True, **{**QUICK, "n_neighbors": 3}
    )
    assert _params(a)["n_pcs"] == _params(d)["n_pcs"] == 4
    np.testing.assert_array_equal(a.obsm["stimpute"].to_numpy(), d.obsm["stimpute"].to_numpy())
    assert not np.allclose(a.obsm["stimpute"].to_numpy(), base.obsm["stimpute"].to_numpy())
    assert _params(k)["k"] == 3 and _params(k)["n_pcs"] == 4
    assert inst.n_pcs == 4 and inst.n_neighbors == 5  # the caller's config is not changed
    # a non-default preset and a config instance: ambiguous, refused
    with pytest.raises(ValueError, match="either preset='paper' or a StImputeConfig"):
        sct.tl.stimpute(sp, rf, genes=HELD, preset="paper", config=inst, progress=False)
    with pytest.raises(TypeError, match="config must be a StImputeConfig"):
        sct.tl.stimpute(sp, rf, genes=HELD, config="paper", progress=False)
    # an unknown keyword names the closest setting
    with pytest.raises(TypeError, match=r"'n_neighbours' is not a setting.*'n_neighbors'"):
        sct.tl.stimpute(sp, rf, genes=HELD, n_neighbours=5, progress=False)
    with pytest.raises(TypeError, match="'n_neighbours' is not a setting"):
        sct.tl.stimpute_cv(sp, rf, n_neighbours=5, progress=False)
    # the paper preset with the authors' size rule: k = 50 on this small section
    with pytest.raises(ValueError, match="n_neighbors=50"):
        sct.tl.stimpute(sp[:, 6:].copy(), rf[:40].copy(), preset="paper", progress=False)


def test_unused_settings_warn(plant):
    sp, rf, emb = plant
    with pytest.warns(UserWarning, match=r"ae_epochs, epochs, lr are not used: method='transfer'"):
        sct.tl.stimpute(sp, rf, epochs=3, ae_epochs=2, lr=0.1, copy=True, **QUICK)
    with pytest.warns(UserWarning, match=r"hidden_dim is not used"):  # in a config dict too
        sct.tl.stimpute(sp, rf, config={"hidden_dim": 8}, copy=True, **QUICK)
    with pytest.warns(UserWarning, match=r"gene_embeddings is not used: method='transfer'"):
        sct.tl.stimpute(sp, rf, gene_embeddings=emb, copy=True, **QUICK)
    with pytest.warns(UserWarning, match=r"n_pcs is not used: method='transfer' with latent="):
        sct.tl.stimpute_cv(
            sp[:, :12].copy(),
            rf,
            n_folds=2,
            latent="autoencoder",
            n_pcs=5,
            ae_epochs=1,
            n_neighbors=5,
            ridge_weight=0.5,
            reliability_folds=0,
            progress=False,
            copy=True,
        )
    with pytest.warns(UserWarning, match=r"n_pcs is not used: method='gnn'"):
        sct.tl.stimpute(sp, rf, n_pcs=5, n_neighbors=5, return_adata=True, genes=HELD, **FAST)
    with pytest.warns(UserWarning, match=r"graph_neighbors is not used: design='paper'"):
        sct.tl.stimpute(
            sp,
            rf,
            genes=HELD,
            preset="paper",
            graph_neighbors=3,
            n_neighbors=5,
            return_adata=True,
            **FAST,
        )
    # settings the method uses, and the preset's own values, do not warn
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sct.tl.stimpute(sp, rf, n_pcs=10, copy=True, **QUICK)
        sct.tl.stimpute(sp, rf, ae_epochs=1, latent="autoencoder", copy=True, **QUICK)


def test_random_state_alias_and_renamed_layers(plant):
    sp, rf, _ = plant
    counts = ad.AnnData(np.zeros_like(sp.X), obs=sp.obs, var=sp.var)
    counts.layers["log"] = sp.X.copy()
    ref = ad.AnnData(np.zeros_like(rf.X), obs=rf.obs, var=rf.var)
    ref.layers["log"] = rf.X.copy()
    kw = dict(QUICK, reliability_folds=2, ridge_weight=None)  # the inner CV draws folds
    by_rng = sct.tl.stimpute(sp, rf, rng=5, return_adata=True, **kw)
    by_alias = sct.tl.stimpute(sp, rf, random_state=5, return_adata=True, **kw)
    np.testing.assert_array_equal(by_rng.X, by_alias.X)
    np.testing.assert_array_equal(by_rng.var["reliability"], by_alias.var["reliability"])
    with pytest.raises(TypeError, match="both rng= and its alias random_state="):
        sct.tl.stimpute(sp, rf, rng=1, random_state=1, **QUICK)
    tab = sct.tl.stimpute_cv(sp[:, :12].copy(), rf, n_folds=2, rng=2, **QUICK_CV)
    tab2 = sct.tl.stimpute_cv(sp[:, :12].copy(), rf, n_folds=2, random_state=2, **QUICK_CV)
    pd.testing.assert_frame_equal(tab, tab2)
    # layer_sp / layer_ref: the former names of layer / ref_layer, with a FutureWarning
    new = sct.tl.stimpute(counts, ref, layer="log", ref_layer="log", return_adata=True, **QUICK)
    with pytest.warns(FutureWarning, match="layer_sp= is now called layer="):
        with pytest.warns(FutureWarning, match="layer_ref= is now called ref_layer="):
            old = sct.tl.stimpute(
                counts, ref, layer_sp="log", layer_ref="log", return_adata=True, **QUICK
            )
    np.testing.assert_array_equal(new.X, old.X)
    np.testing.assert_allclose(
        new.X, sct.tl.stimpute(sp, rf, return_adata=True, **QUICK).X, rtol=1e-6, atol=1e-6
    )
    assert _params(new)["layer"] == "log" and _params(new)["ref_layer"] == "log"
    with pytest.raises(TypeError, match="both layer= and its former name"):
        with pytest.warns(FutureWarning):
            sct.tl.stimpute(counts, ref, layer="log", layer_sp="log", **QUICK)


def test_return_rule(plant):
    sp, rf, _ = plant
    a = sp.copy()
    assert sct.tl.stimpute(a, rf, **QUICK) is None and "stimpute" in a.obsm
    b = sp.copy()
    model = sct.tl.stimpute(b, rf, return_model=True, **QUICK)
    assert isinstance(model, sct.models.StImputeModel) and "stimpute" in b.obsm
    c = sp.copy()
    cp = sct.tl.stimpute(c, rf, copy=True, **QUICK)
    assert isinstance(cp, ad.AnnData) and "stimpute" not in c.obsm and "stimpute" in cp.obsm
    cp2, model2 = sct.tl.stimpute(c, rf, copy=True, return_model=True, **QUICK)
    assert "stimpute" not in c.obsm and isinstance(model2, sct.models.StImputeModel)
    np.testing.assert_array_equal(cp2.obsm["stimpute"].to_numpy(), a.obsm["stimpute"].to_numpy())
    np.testing.assert_array_equal(model.predict(sp).to_numpy(), a.obsm["stimpute"].to_numpy())
    new, model3 = sct.tl.stimpute(c, rf, return_adata=True, return_model=True, **QUICK)
    assert list(new.var_names) == HELD and "stimpute" not in c.obsm
    assert model3.targets == HELD
    # stimpute_cv returns its table; with copy=True (copy, table), the input untouched
    sub = sp[:, :12].copy()
    kw = QUICK_CV
    tab = sct.tl.stimpute_cv(sub, rf, n_folds=2, **kw)
    assert isinstance(tab, pd.DataFrame) and "stimpute_cv" in sub.layers
    sub2 = sp[:, :12].copy()
    s2 = snapshot(sub2)
    cp3, tab3 = sct.tl.stimpute_cv(sub2, rf, n_folds=2, copy=True, **kw)
    assert_unchanged(sub2, s2)
    pd.testing.assert_frame_equal(tab, tab3)
    np.testing.assert_array_equal(cp3.layers["stimpute_cv"], sub.layers["stimpute_cv"])
    with pytest.raises(TypeError, match="return_adata"):
        sct.tl.stimpute_cv(sub, rf, n_folds=2, return_adata=True, **kw)


def test_model_files_with_the_former_preset_field_load(plant, tmp_path):
    """A model saved before ``StImputeConfig.preset`` was renamed ``design`` still loads."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from sctorch.models._base import _header_digests

    sp, rf, _ = plant
    model = sct.tl.stimpute(sp.copy(), rf, return_model=True, **QUICK)
    path = tmp_path / "new.safetensors"
    model.save(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    cfg = json.loads(meta["config"])
    cfg["preset"] = cfg.pop("design")  # the header of a file written before the rename
    meta["config"] = json.dumps(cfg)
    tensors = load_file(str(path))
    meta.update(_header_digests(meta, tensors))
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=meta)
    loaded = sct.models.load(old, device="cpu")
    assert loaded.config == model.config and loaded.config.design == "default"
    np.testing.assert_array_equal(loaded.predict(sp).to_numpy(), model.predict(sp).to_numpy())


def test_return_adata_keeps_coordinates_under_any_obsm_key(plant):
    sp, rf, _ = plant
    sp = sp[:, [g for g in sp.var_names if g not in HELD]].copy()
    xyz = np.random.default_rng(0).normal(size=(sp.n_obs, 3))
    sp.obsm["spatial3d"] = xyz
    out = sct.tl.stimpute(
        sp,
        rf,
        genes=HELD,
        method="transfer",
        reliability_folds=0,
        n_neighbors=10,
        ridge_weight=0.5,
        return_adata=True,
        progress=False,
    )
    np.testing.assert_array_equal(out.obsm["spatial3d"], xyz)
    out.obsm["spatial3d"][0, 0] = 99.0  # a copy: the input is untouched
    assert sp.obsm["spatial3d"][0, 0] == xyz[0, 0] != 99.0
