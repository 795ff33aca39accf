import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from sklearn import metrics as skm

import sctorch as sct


@pytest.fixture
def pair():
    rng = np.random.default_rng(1)
    a = rng.poisson(1.0, size=(70, 25)).astype(float)
    b = a + rng.normal(0, 1, size=a.shape)
    b[:, 3] = 2.0  # constant gene
    a[5] = 0.0  # all-zero cell in a
    return a, b


def test_gene_and_cell_metrics_match_scipy_sklearn(pair):
    a, b = pair
    for A, B in ((a, b), (sparse.csr_matrix(a), b), (sparse.csc_matrix(a), sparse.csr_matrix(b))):
        g = sct.metrics.pairwise_scores(A, B, axis="gene", batch_size=16)
        c = sct.metrics.pairwise_scores(A, B, axis="cell", batch_size=16)
        for j in range(a.shape[1]):
            if j == 3:
                assert np.isnan(g["pearson"][j])
            else:
                assert g["pearson"][j] == pytest.approx(stats.pearsonr(a[:, j], b[:, j])[0])
            cos = skm.pairwise.cosine_similarity(a[:, [j]].T, b[:, [j]].T)[0, 0]
            assert g["cosine"][j] == pytest.approx(cos)
            assert g["mse"][j] == pytest.approx(skm.mean_squared_error(a[:, j], b[:, j]))
        for i in range(a.shape[0]):
            if i == 5:
                assert np.isnan(c["pearson"][i]) and np.isnan(c["cosine"][i])
            else:
                assert c["pearson"][i] == pytest.approx(stats.pearsonr(a[i], b[i])[0])
            assert c["mse"][i] == pytest.approx(np.mean((a[i] - b[i]) ** 2))
    np.testing.assert_allclose(sct.metrics.gene_pearson(a, b), g["pearson"], equal_nan=True)
    np.testing.assert_allclose(sct.metrics.cell_cosine(a, b), c["cosine"], equal_nan=True)


def test_shape_mismatch_raises(pair):
    a, b = pair
    with pytest.raises(ValueError, match="differ in shape"):
        sct.metrics.gene_pearson(a, b[:, :-1])


def test_clustering_scores_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.8, t, rng.integers(0, 4, 200))
    s = sct.metrics.clustering_scores(t, p)
    assert s["ARI"] == pytest.approx(skm.adjusted_rand_score(t, p))
    assert s["FMI"] == pytest.approx(skm.fowlkes_mallows_score(t, p))
    assert s["NMI"] == pytest.approx(skm.normalized_mutual_info_score(t, p))
    assert s["completeness"] == pytest.approx(skm.completeness_score(t, p))
    assert sct.metrics.clustering_scores(t, t)["ARI"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="missing"):
        sct.metrics.clustering_scores([1, None, 2], [1, 2, 2])


def test_cluster_and_score_recovers_planted_groups():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, size=(3, 30))
    lab = np.repeat(["x", "y", "z"], 60)
    X = np.abs(centers[np.repeat([0, 1, 2], 60)] + rng.normal(0, 0.5, size=(180, 30)))
    a = ad.AnnData(
        X.astype(np.float32), obs=pd.DataFrame({"t": lab}, index=[str(i) for i in range(180)])
    )
    from conftest import assert_unchanged, snapshot

    snap = snapshot(a)
    s = sct.metrics.cluster_and_score(a, "t", resolution=0.3, n_pcs=10)
    assert s["ARI"] > 0.95
    assert_unchanged(a, snap)  # no X_pca, neighbours or anything else written into it
    with pytest.raises(KeyError, match="labels_key"):
        sct.metrics.cluster_and_score(a, "missing")


_PAIR_FUNCS = [
    ("pairwise_scores", {"axis": "gene"}),
    ("pairwise_scores", {"axis": "cell"}),
    ("gene_pearson", {}),
    ("cell_pearson", {}),
    ("gene_cosine", {}),
    ("cell_cosine", {}),
    ("gene_mse", {}),
    ("cell_mse", {}),
]


@pytest.mark.parametrize(("func", "kw"), _PAIR_FUNCS)
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_pair_metrics_refuse_non_finite(pair, func, kw, fmt):
    a, b = pair
    a, b = a.copy(), b.copy()
    a[2, 4] = np.nan
    b[0, 0] = np.inf
    b[1, 1] = -np.inf
    conv = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt]
    A, B = conv(a), conv(b)
    f = getattr(sct.metrics, func)
    with pytest.raises(
        ValueError,
        match=r"a holds 1 non-finite value\(s\) \(NaN or inf\) and "
        r"b holds 2 non-finite",
    ) as e:
        f(A, B, **kw)
    assert "impute" in str(e.value)
    with pytest.raises(ValueError, match=r"^b holds 2 non-finite"):
        f(np.nan_to_num(a), B, **kw)
    with pytest.raises(ValueError, match=r"a and b have 0 cells"):
        f(a[:0], b[:0], **kw)
    with pytest.raises(ValueError, match=r"a and b have 0 genes"):
        f(a[:, :0], b[:, :0], **kw)


def test_pair_metrics_integer_and_list_input(pair):
    a, b = pair
    ai = a.astype(np.int8)
    np.testing.assert_allclose(sct.metrics.gene_mse(ai, b), sct.metrics.gene_mse(a, b))
    np.testing.assert_allclose(
        sct.metrics.cell_pearson(a.tolist(), b.tolist()),
        sct.metrics.cell_pearson(a, b),
        equal_nan=True,
    )
    with pytest.raises(ValueError, match="not a number"):
        sct.metrics.gene_mse(a.astype(str), b)


def test_clustering_scores_refuse_non_finite_and_empty():
    with pytest.raises(ValueError, match=r"non-finite.*1 in labels_true, 2 in labels_pred"):
        sct.metrics.clustering_scores([1.0, np.inf, 2.0], [np.nan, -np.inf, 2.0])
    with pytest.raises(ValueError, match=r"empty \(0 cells\)"):
        sct.metrics.clustering_scores([], [])
    with pytest.raises(ValueError, match="must be 1-D"):
        sct.metrics.clustering_scores(np.zeros((3, 2)), np.zeros((3, 2)))


def _blobs(n=60, g=8):
    rng = np.random.default_rng(0)
    lab = np.repeat(["x", "y"], n // 2)
    X = np.abs(rng.normal(0, 0.3, size=(n, g)) + 3 * (lab == "x")[:, None])
    return ad.AnnData(
        X.astype(np.float32), obs=pd.DataFrame({"t": lab}, index=[str(i) for i in range(n)])
    )


def test_cluster_and_score_refuses_bad_input_before_clustering():
    from conftest import assert_unchanged, snapshot

    a = _blobs()
    a.X[3, 2] = np.nan
    a.obsm["r"] = np.ones((a.n_obs, 2))
    a.obsm["r"][0, 0] = np.inf
    snap = snapshot(a)
    with pytest.raises(ValueError, match=r"adata\.X contains 1 non-finite"):
        sct.metrics.cluster_and_score(a, "t")
    with pytest.raises(ValueError, match=r"adata\.obsm\['r'\] contains 1 non-finite"):
        sct.metrics.cluster_and_score(a, "t", use_rep="r")
    assert_unchanged(a, snap)
    b = _blobs()
    b.obs.loc["0", "t"] = np.nan
    with pytest.raises(ValueError, match=r"missing or non-finite.*1 in labels_true"):
        sct.metrics.cluster_and_score(b, "t")
    with pytest.raises(ValueError, match=r"adata has 1 cell\(s\)"):
        sct.metrics.cluster_and_score(_blobs()[:1].copy(), "t")
    with pytest.raises(ValueError, match=r"adata\.X has 0 columns"):
        sct.metrics.cluster_and_score(_blobs()[:, :0].copy(), "t")


def test_cluster_and_score_one_gene_clusters_the_gene():
    s = sct.metrics.cluster_and_score(_blobs()[:, :1].copy(), "t", resolution=0.1)
    assert s["ARI"] > 0.9


# ----------------------------------------------------------------------------- issue 24
def _frames(pair):
    a, b = pair
    genes = [f"g{j}" for j in range(a.shape[1])]
    cells = [f"c{i}" for i in range(a.shape[0])]
    return pd.DataFrame(a, index=cells, columns=genes), pd.DataFrame(b, index=cells, columns=genes)


def test_dataframes_are_aligned_by_label_and_keep_gene_names(pair):
    A, B = _frames(pair)
    expect = sct.metrics.pairwise_scores(A.to_numpy(), B.to_numpy(), axis="gene")
    shuffled = B.iloc[::-1, ::-1]  # the same data, rows and columns in another order
    got = sct.metrics.pairwise_scores(A, shuffled, axis="gene")
    assert list(got.index) == list(A.columns)  # gene names kept, in a's order
    np.testing.assert_allclose(got.to_numpy(), expect.to_numpy(), equal_nan=True)
    g = sct.metrics.gene_pearson(A, shuffled)
    assert isinstance(g, pd.Series) and list(g.index) == list(A.columns)
    np.testing.assert_allclose(g.to_numpy(), expect["pearson"].to_numpy(), equal_nan=True)
    c = sct.metrics.cell_mse(A, shuffled)
    assert list(c.index) == list(A.index)
    # plain arrays stay positional and return arrays
    assert isinstance(sct.metrics.gene_pearson(*pair), np.ndarray)


def test_label_mismatch_is_refused_naming_the_labels(pair):
    A, B = _frames(pair)
    B = B.rename(columns={"g3": "XYZ"})
    with pytest.raises(ValueError, match=r"gene.*'g3'.*'XYZ'"):
        sct.metrics.gene_pearson(A, B)
    A2, B2 = _frames(pair)
    B2 = B2.rename(index={"c0": "other"})
    with pytest.raises(ValueError, match=r"cell.*'c0'.*'other'"):
        sct.metrics.cell_pearson(A2, B2)


def test_anndata_inputs_are_aligned_by_obs_and_var_names(pair):
    A, B = _frames(pair)
    a = ad.AnnData(A.to_numpy(), obs=pd.DataFrame(index=A.index), var=pd.DataFrame(index=A.columns))
    b = ad.AnnData(B.to_numpy(), obs=pd.DataFrame(index=B.index), var=pd.DataFrame(index=B.columns))
    expect = sct.metrics.pairwise_scores(A, B)
    got = sct.metrics.pairwise_scores(a, b[::-1, ::-1].copy())
    pd.testing.assert_frame_equal(got, expect)
    mixed = sct.metrics.gene_mse(a, B.iloc[:, ::-1])
    np.testing.assert_allclose(mixed.to_numpy(), expect["mse"].to_numpy())


def test_cluster_and_score_reads_a_backed_anndata(tmp_path):
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 40)
    X = rng.poisson(0.3, (120, 30)).astype(np.float32)
    for g in range(3):
        X[groups == g, g * 10 : (g + 1) * 10] += rng.poisson(5, (40, 10))
    a = ad.AnnData(sparse.csr_matrix(np.log1p(X)))
    a.obs["group"] = pd.Categorical(groups.astype(str))
    a.write_h5ad(tmp_path / "a.h5ad")
    expect = sct.metrics.cluster_and_score(a, "group", n_pcs=5, n_neighbors=10)
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    got = sct.metrics.cluster_and_score(backed, "group", n_pcs=5, n_neighbors=10)
    assert got == expect
    # the pair metrics read a backed AnnData by blocks too
    np.testing.assert_allclose(
        sct.metrics.gene_pearson(backed, a).to_numpy(),
        sct.metrics.gene_pearson(a.X, a.X),
        equal_nan=True,
    )


def _lognorm(X):
    X = np.asarray(X, dtype=np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


def test_denoising_scores_match_the_openproblems_formulas():
    rng = np.random.default_rng(0)
    truth = rng.gamma(0.5, 2.0, size=(40, 12))
    full = rng.poisson(truth * 10)
    full[:, 0] += 1  # every cell keeps a train and a test molecule
    test = rng.binomial(full, 0.1)
    train = full - test
    train[:, 0] += 1
    test[:, 1] += 1
    denoised = 0.5 * train + 0.5 * train.mean(0) * train.sum(1, keepdims=True) / train.sum(1).mean()
    s = sct.metrics.denoising_scores(sparse.csr_matrix(train), test, denoised)

    def nll(pred, true):
        return float(np.mean(pred - true * np.log(pred + 1e-6)))

    depth = test.sum() / train.sum()
    mse = float(np.mean((_lognorm(test) - _lognorm(denoised)) ** 2))
    assert s["mse"] == pytest.approx(mse, rel=1e-10)
    assert s["poisson"] == pytest.approx(nll(denoised * depth, test), rel=1e-10)
    assert s["poisson_op"] == pytest.approx(nll(test, denoised * depth), rel=1e-10)
    base = float(np.mean((_lognorm(test) - _lognorm(train)) ** 2))
    assert s["mse_scaled"] == pytest.approx((base - mse) / base, rel=1e-10)
    # the task's controls score 0 (no denoising: the input) and 1 (perfect: the held-out counts)
    for control, value in ((train, 0.0), (test, 1.0)):
        c = sct.metrics.denoising_scores(train, test, control)
        for key in ("mse_scaled", "poisson_scaled", "poisson_op_scaled"):
            assert c[key] == pytest.approx(value, abs=1e-12)


def test_denoising_scores_refuse_bad_input():
    train = np.ones((3, 2))
    with pytest.raises(ValueError, match="one shape"):
        sct.metrics.denoising_scores(train, np.ones((3, 3)), train)
    with pytest.raises(ValueError, match="denoised holds 1 NaN, infinite or negative"):
        sct.metrics.denoising_scores(train, train, np.array([[1.0, -1.0], [1, 1], [1, 1]]))
    with pytest.raises(ValueError, match="at least one count"):
        sct.metrics.denoising_scores(train, np.zeros((3, 2)), train)
