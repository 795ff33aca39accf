"""TCER's cross-cell context, count-scale posterior and molecular cross-validation."""

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sctorch as sct
from sctorch import tcer
from sctorch.tcer._model import TCERModel


def _rates(X, target_sum=1e4):
    return tcer.Rates(sparse.csr_matrix(np.asarray(X, dtype=np.float32)), None, target_sum)


def _two_types(n_per=40, n_genes=30, depth=200.0, seed=0):
    """Counts of two cell types with distinct programmes, and their true rates."""
    rng = np.random.default_rng(seed)
    prof = rng.gamma(1.0, 1.0, size=(2, n_genes))
    prof[0, : n_genes // 2] *= 8
    prof[1, n_genes // 2 :] *= 8
    prof /= prof.sum(1, keepdims=True)
    types = np.repeat([0, 1], n_per)
    lib = rng.uniform(0.5, 1.5, types.size) * depth
    truth = prof[types] * 1e4  # rates per 1e4
    counts = rng.poisson(prof[types] * lib[:, None]).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    return counts, truth, types


def test_neighbour_index_excludes_self_and_stays_within_the_type():
    counts, _, types = _two_types()
    idx = tcer.neighbour_index(_rates(counts), 10, n_pcs=5)
    assert idx.shape == (80, 10)
    assert not (idx == np.arange(80)[:, None]).any()
    assert (types[idx] == types[:, None]).mean() > 0.95
    # duplicated cells: a cell's own position is still dropped, never a twin
    dup = np.vstack([counts[:5], counts[:5]])
    idx = tcer.neighbour_index(_rates(dup), 3, n_pcs=2)
    assert not (idx == np.arange(10)[:, None]).any()
    with pytest.raises(ValueError, match="at least 2 cells"):
        tcer.neighbour_index(_rates(counts[:1]), 3)


def test_neighbour_mean_and_posterior_known_answers():
    X = np.array([[1, 0, 3], [0, 2, 2], [4, 4, 0]], dtype=np.float32)
    r = _rates(X, target_sum=4.0)  # sizes 1, 1, 2 -> rates = counts / size
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    np.testing.assert_allclose(tcer.neighbour_mean(r, idx, [0]), [[1.0, 2.0, 1.0]])
    counts, size = r.counts(slice(None))
    np.testing.assert_allclose(size, [1.0, 1.0, 2.0])
    mu = np.full((3, 3), 2.0)
    post = tcer.posterior(counts, size, mu, 1.0)
    np.testing.assert_allclose(post[2], [(4 + 2) / 3, (4 + 2) / 3, 2 / 3], rtol=1e-6)
    observed = r.rates(slice(None)).toarray()
    np.testing.assert_allclose(tcer.posterior(counts, size, mu, 0.0), observed)
    np.testing.assert_allclose(tcer.posterior(counts, size, mu, np.inf), mu)


def test_split_molecules_is_a_binomial_partition_with_own_sizes():
    rng = np.random.default_rng(1)
    X = sparse.csr_matrix(rng.poisson(5.0, size=(200, 20)).astype(np.float32))
    size = np.asarray(X.sum(1)).ravel() / 1e4
    (a, sa), (b, sb) = tcer.split_molecules(X, size, seed=0)
    np.testing.assert_array_equal((a + b).toarray(), X.toarray())
    assert (a.toarray() >= 0).all() and (b.toarray() >= 0).all()
    assert abs(a.sum() / X.sum() - 0.5) < 0.01
    np.testing.assert_allclose(sa + sb, size)
    np.testing.assert_allclose(sa, np.asarray(a.sum(1)).ravel() / 1e4, rtol=1e-6)
    # one probability per cell (a Generator drawn from): each cell keeps its own share
    p = np.tile([0.0, 1.0, 0.2, 0.8], 50)
    (a, _), (b, _) = tcer.split_molecules(X, size, np.random.default_rng(0), p=p)
    np.testing.assert_array_equal((a + b).toarray(), X.toarray())
    assert a[p == 0].sum() == 0 and b[p == 1].sum() == 0
    share = np.asarray(a.sum(1)).ravel() / np.asarray(X.sum(1)).ravel()
    np.testing.assert_allclose([share[p == q].mean() for q in (0.2, 0.8)], [0.2, 0.8], atol=0.02)


def test_molecular_cross_validation_trusts_a_true_prior_and_not_a_wrong_one():
    counts, truth, _ = _two_types(n_per=150, depth=100.0)
    r = _rates(counts)
    half_a, half_b = tcer.split_molecules(*r.counts(slice(None)), seed=0)
    good, good_scores = tcer.choose_beta(half_a, half_b, truth)
    wrong = truth[np.random.default_rng(0).permutation(truth.shape[0])]  # other cells' rates
    bad, _ = tcer.choose_beta(half_a, half_b, wrong)
    med = float(np.median(half_a[1]))
    assert good >= 5 * med  # the exact prior: lean on it
    assert bad <= 0.5 * med  # a shuffled prior: mostly keep the data
    assert good_scores[max(tcer.BETA_GRID)] > good_scores[0.0]


def test_choose_neighbours_prefers_k_within_the_cell_type():
    counts, _, _ = _two_types(n_per=15, depth=300.0)
    k, scores = tcer.choose_neighbours(
        _rates(counts), seed=0, cells=np.arange(30), grid=(5, 10, 29)
    )
    assert set(scores) == {5, 10, 29}
    assert k in (5, 10)  # 29 neighbours must mix the two types


def _placed(counts):
    a = ad.AnnData(sparse.csr_matrix(counts))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{j}" for j in range(a.n_vars)]
    H = W = int(np.ceil(np.sqrt(a.n_vars)))
    a.var["genomap_row"] = np.arange(a.n_vars) // W
    a.var["genomap_col"] = np.arange(a.n_vars) % W
    a.uns["genomap"] = {"shape": [H, W], "objective": 0.0}
    return a


@pytest.fixture(scope="module")
def default_model():
    counts, truth, _ = _two_types(n_per=60, depth=150.0)
    a = _placed(counts)
    model = sct.tl.tcer_impute(
        a,
        n_features=4,
        epochs=2,
        batch_size=32,
        rng=0,
        progress=False,
        device="cpu",
        return_model=True,
    )
    return a, model, truth


def test_default_output_is_the_posterior_of_the_chosen_prior(default_model):
    a, model, truth = default_model
    p = model.params
    assert p.objective == "sqrt" and p.output == "posterior" and p.n_neighbors is None
    assert p.prior == "auto"
    assert p.shrinkage == "gene"
    assert model.n_neighbors in tcer.K_GRID
    assert model.beta.shape == (a.n_vars,) and (model.beta >= 0).all()
    assert set(model.selection) == {"n_neighbors", "beta", "prior"}
    rec = a.uns["tcer"]
    assert rec["params"]["n_neighbors_fitted"] == model.n_neighbors
    np.testing.assert_array_equal(rec["params"]["beta_fitted"], model.beta)
    assert set(rec["selection"]["n_neighbors"]) == {str(k) for k in tcer.K_GRID}
    # the gate: the network is used exactly when its held-out score is the higher
    prior = model.selection["prior"]
    assert set(prior) == {"context", "network"}
    assert model.use_network == (prior["network"] > prior["context"])
    assert rec["params"]["prior_fitted"] == ("network" if model.use_network else "context")
    assert model.selection["beta"]["gene"] == prior[rec["params"]["prior_fitted"]]
    # per-gene beta scores at least as well as the best single beta on the same split
    assert model.selection["beta"]["gene"] >= model.selection["beta"]["global"] - 1e-3
    out = a.layers["tcer"]
    assert out.shape == a.shape and np.isfinite(out).all() and (out >= 0).all()
    # the written layer is log1p of the posterior (sqrt space) with the chosen prior mu
    r = tcer.Rates(a.X, None, 1e4)
    idx = tcer.neighbour_index(r, model.n_neighbors, seed=0)
    everyone, genes = np.arange(a.n_obs), np.arange(a.n_vars)
    own = r.rates(slice(None)).toarray()
    if model.use_network:
        mu = model._prior(model._cell_images(r, own, everyone, idx, genes), "cpu", genes)
    else:
        mu = tcer.neighbour_mean(r, idx, everyone, p.space)
    counts, size = r.counts(slice(None))
    np.testing.assert_allclose(
        out, np.log1p(tcer.posterior(counts, size, mu, model.beta, p.space)), rtol=1e-5, atol=1e-6
    )
    # it recovers the true expression better than the observed data
    obs = np.log1p(r.rates(slice(None)).toarray())
    ref = np.log1p(truth)
    assert (
        np.nanmean(sct.metrics.gene_pearson(out, ref))
        > np.nanmean(sct.metrics.gene_pearson(obs, ref)) + 0.05
    )


def test_choose_prior_on_prefers_the_true_prior_and_keeps_the_first_on_a_tie():
    counts, truth, _ = _two_types(n_per=150, depth=100.0)
    r = _rates(counts)
    cells = np.arange(r.n)
    wrong = truth[np.random.default_rng(0).permutation(truth.shape[0])]
    priors = {
        "wrong": lambda own, pos: wrong[pos],
        "true": lambda own, pos: truth[pos],
    }
    name, beta, scores = tcer.choose_prior_on(r, cells, priors, seed=0)
    assert name == "true" and set(scores) == {"wrong", "true"}
    assert max(scores["true"].values()) > max(scores["wrong"].values())
    # the same scores as choose_beta on the same split
    half_a, half_b = tcer.split_molecules(*r.counts(cells), seed=0)
    b, sc = tcer.choose_beta(half_a, half_b, truth)
    assert beta == b and sc == scores["true"]
    # a given beta is scored as given; identical priors: the first listed wins
    same = {"a": priors["true"], "b": priors["true"]}
    name, beta, scores = tcer.choose_prior_on(r, cells, same, seed=0, beta=0.05)
    assert name == "a" and beta == 0.05 and len(scores["a"]) == 1


def test_gene_beta_shrinks_the_genes_the_prior_knows_and_keeps_the_others_observed():
    # genes 0-9 follow the prior exactly (every cell at the same rate); genes 10-19 vary
    # from cell to cell around a prior that knows nothing of it
    rng = np.random.default_rng(0)
    n, g = 400, 20
    truth = np.full((n, g), 20.0)
    truth[:, 10:] = rng.gamma(0.5, 40.0, size=(n, 10))
    size = np.full(n, 2.0)
    counts = sparse.csr_matrix(rng.poisson(truth * size[:, None]).astype(np.float32))
    half_a, half_b = tcer.split_molecules(counts, size, seed=0)
    mu = np.full((n, g), 20.0)
    mu[:, 10:] = truth[:, 10:].mean()
    beta, scores = tcer.choose_gene_beta(half_a, half_b, mu, space="sqrt")
    assert beta.shape == (g,)
    assert beta[:10].min() > 10 * beta[10:].max()  # the known genes lean on the prior
    assert scores["gene"] > scores["global"]
    # the curves it minimises are the per-gene sums of mcv_scores' loss
    grid = (0.0, 1.0, 5.0)
    L = tcer.gene_mcv_losses(half_a, half_b, mu, grid, space="sqrt")
    ref = tcer.mcv_scores(half_a, half_b, mu, grid, space="sqrt")
    ok = (half_a[1] > 0) & (half_b[1] > 0)
    for i, b in enumerate(grid):
        assert -L[i].sum() / (ok.sum() * g) == pytest.approx(ref[b], rel=1e-9)
    # a per-gene beta of the wrong length is refused
    with pytest.raises(ValueError, match="one per gene"):
        tcer.posterior(counts, size, mu, beta[:5], "sqrt")
    with pytest.raises(ValueError, match="criterion='poisson'"):
        tcer.choose_prior_on(
            _rates(counts.toarray()),
            np.arange(n),
            {"p": lambda o, c: mu[c]},
            seed=0,
            criterion="pearson",
            shrinkage="gene",
        )


def test_gene_beta_pools_a_sparse_gene_with_genes_of_its_expression_level():
    # genes 0-199: sparse (~15 held-out molecules each, far below the gene pooling's 100;
    # ~3,000 for the 200, above the group pooling's 1,000) and exactly at the prior;
    # genes 200-399: abundant, varying around a prior that knows nothing of it, so their
    # molecules want a small beta and dominate a single pool
    rng = np.random.default_rng(0)
    n, g = 300, 200
    truth = np.concatenate([np.full((n, g), 0.1), rng.gamma(0.5, 100.0, size=(n, g))], 1)
    size = np.ones(n)
    counts = sparse.csr_matrix(rng.poisson(truth).astype(np.float32))
    half_a, half_b = tcer.split_molecules(counts, size, seed=0)
    mu = np.concatenate([np.full((n, g), 0.1), np.full((n, g), truth[:, g:].mean())], 1)

    def beta(**kw):
        return tcer.choose_gene_beta(half_a, half_b, mu, space="sqrt", **kw)[0]

    def error(b):  # of the sparse genes' posterior, on the square-root scale
        post = tcer.posterior(counts, size, mu, b, "sqrt")
        return np.mean((np.sqrt(post[:, :g]) - np.sqrt(truth[:, :g])) ** 2)

    one_pool, grouped = beta(group=None), beta()  # the default: groups of 200 genes
    # one pool: the sparse genes follow the abundant genes' small beta
    assert one_pool[:g].max() < 1.0
    # two groups by prior mean: the sparse genes lean on the prior, the others stay small
    assert np.median(grouped[:g]) > 10 * np.median(one_pool[:g])
    assert grouped[g:].max() < 1.0
    assert error(grouped) < 0.1 * error(one_pool)
    # the group's curve is pooled with all genes': without that pooling the sparse
    # group leans further on the prior; with overwhelming pooling it is the single pool
    alone = beta(group_pooling=0.0)
    assert np.median(alone[:g]) > np.median(grouped[:g]) and error(alone) < error(grouped)
    np.testing.assert_array_equal(beta(group_pooling=1e12), one_pool)
    # 40 genes in groups of 200: one group, the single pool
    few = slice(g - 20, g + 20)
    a40 = ((half_a[0][:, few], half_a[1]), (half_b[0][:, few], half_b[1]))
    b40, _ = tcer.choose_gene_beta(*a40, mu[:, few], space="sqrt")
    b40_one, _ = tcer.choose_gene_beta(*a40, mu[:, few], space="sqrt", group=None)
    np.testing.assert_array_equal(b40, b40_one)
    # choose_prior_on passes the grouping on (the benchmarks' one-pool ablation uses it)
    r, cells = _rates(counts.toarray()), np.arange(n)
    split = tcer.split_molecules(*r.counts(cells), seed=0)
    chosen = {}
    for group in (None, 200):
        _, chosen[group], _ = tcer.choose_prior_on(
            r, cells, {"p": lambda o, c: mu[c]}, seed=0, space="sqrt", shrinkage="gene", group=group
        )
        expected, _ = tcer.choose_gene_beta(*split, mu, space="sqrt", group=group)
        np.testing.assert_array_equal(chosen[group], expected)
    assert not np.array_equal(chosen[None], chosen[200])


def test_context_prior_trains_nothing_and_is_the_neighbour_posterior():
    counts, _, _ = _two_types(n_per=40, depth=150.0)
    a = _placed(counts)
    model = sct.tl.tcer_impute(
        a, prior="context", n_neighbors=10, rng=0, progress=False, device="cpu", return_model=True
    )
    assert not model.use_network and model.history["train_loss"] == []
    assert a.uns["tcer"]["params"]["prior_fitted"] == "context"
    r = tcer.Rates(a.X, None, 1e4)
    idx = tcer.neighbour_index(r, 10, seed=0)
    mu = tcer.neighbour_mean(r, idx, np.arange(a.n_obs), "sqrt")
    counts_, size = r.counts(slice(None))
    np.testing.assert_allclose(
        a.layers["tcer"],
        np.log1p(tcer.posterior(counts_, size, mu, model.beta, "sqrt")),
        rtol=1e-5,
        atol=1e-6,
    )
    # on data that lack some model genes, each gene keeps its own beta
    sub = a[:, 5:].copy()
    with pytest.warns(UserWarning, match="5 of the model's"):
        out = model.predict(sub, progress=False, device="cpu")
    rs = tcer.Rates(sub.X, None, 1e4)
    mu_s = tcer.neighbour_mean(rs, tcer.neighbour_index(rs, 10, seed=0), np.arange(a.n_obs), "sqrt")
    np.testing.assert_allclose(
        out,
        np.log1p(tcer.posterior(*rs.counts(slice(None)), mu_s, model.beta[5:], "sqrt")),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="prior='context'"):
        sct.tl.tcer_impute(a, prior="context", n_neighbors=0, progress=False)


def test_fitted_context_and_beta_survive_save_and_load(default_model, tmp_path):
    a, model, _ = default_model
    a.write_h5ad(tmp_path / "a.h5ad")  # the uns record is writable
    np.testing.assert_array_equal(
        ad.read_h5ad(tmp_path / "a.h5ad").uns["tcer"]["params"]["beta_fitted"], model.beta
    )
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = TCERModel.load(path, device="cpu")
    assert loaded.n_neighbors == model.n_neighbors
    np.testing.assert_array_equal(loaded.beta, model.beta)
    assert loaded.use_network == model.use_network
    assert loaded.module.in_channels == 2
    np.testing.assert_array_equal(
        loaded.predict(a, progress=False, device="cpu"),
        model.predict(a, progress=False, device="cpu"),
    )
    with pytest.raises(ValueError, match="at least 2 cells"):
        model.predict(a[:1].copy(), progress=False, device="cpu")


def test_bad_context_settings_raise_before_anything_is_written():
    counts, _, _ = _two_types(n_per=10)
    a = _placed(counts)
    for kw, match in (
        ({"n_neighbors": -1}, "n_neighbors"),
        ({"n_neighbors": 2.5}, "n_neighbors"),
        ({"output": "mean"}, "output"),
        ({"beta": -1.0}, "beta"),
        ({"objective": "l2"}, "objective"),
        ({"prior": "mean"}, "prior"),
    ):
        with pytest.raises(ValueError, match=match):
            sct.tl.tcer_impute(a, epochs=1, progress=False, **kw)
    assert "tcer" not in a.layers and "tcer" not in a.uns


def test_magic_openproblems_returns_the_count_scale_of_each_cell():
    """One profile at different depths comes back as it went in (reversed normalisation)."""
    pytest.importorskip("magic")
    rng = np.random.default_rng(0)
    profile = rng.integers(1, 5, size=20).astype(float)
    depth = rng.integers(1, 4, size=60)[:, None]
    X = np.where(np.repeat([True, False], 30)[:, None], profile, profile[::-1]) * depth
    with np.errstate(divide="ignore", invalid="ignore"):  # identical cells: zero distances
        out = tcer.magic_openproblems(sparse.csr_matrix(X))
    np.testing.assert_allclose(out, X, rtol=1e-8)
    X[3] = 0
    with pytest.raises(ValueError, match="1 cell"):
        tcer.magic_openproblems(X)
