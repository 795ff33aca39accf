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
    a = ad.AnnData(X.astype(np.float32), obs=pd.DataFrame({"t": lab},
                                                         index=[str(i) for i in range(180)]))
    s = sct.metrics.cluster_and_score(a, "t", resolution=0.3, n_pcs=10)
    assert s["ARI"] > 0.95
    assert "X_pca" not in a.obsm  # input untouched
    with pytest.raises(KeyError, match="labels_key"):
        sct.metrics.cluster_and_score(a, "missing")
