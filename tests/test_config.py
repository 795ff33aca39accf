"""The one preset mechanism (sctorch._config) and the TCER / GenoMap surface built on it."""

import warnings

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sctorch as sct
from sctorch._config import renamed, resolve_config, warn_unused
from sctorch.tcer import TCERConfig


def test_presets_are_named_instances_and_fresh_copies():
    paper = TCERConfig.preset("paper")
    assert isinstance(paper, TCERConfig)
    assert (paper.n_features, paper.epochs, paper.objective, paper.n_neighbors) == (
        64,
        100,
        "dropout",
        0,
    )
    assert paper.patience is None and paper.output == "observed"
    assert TCERConfig.preset("default") == TCERConfig()
    paper.epochs = 1  # a copy: the registry is not changed
    assert TCERConfig.PRESETS["paper"].epochs == 100


def test_precedence_preset_then_config_then_keywords():
    # a dict updates the preset; keywords win over both
    cfg = resolve_config(TCERConfig, "paper", {"epochs": 7, "lr": 2e-3}, {"epochs": 3})
    assert (cfg.epochs, cfg.lr, cfg.n_features, cfg.objective) == (3, 2e-3, 64, "dropout")
    # an instance replaces the preset
    mine = TCERConfig(n_features=8, epochs=5)
    cfg = resolve_config(TCERConfig, None, mine, {"lr": 5e-4})
    assert (cfg.n_features, cfg.epochs, cfg.lr) == (8, 5, 5e-4)
    assert mine.lr == 1e-3  # the caller's instance is not modified
    # an explicit None is a value, not "use the preset"
    assert resolve_config(TCERConfig, None, None, {"patience": None}).patience is None


def test_bad_config_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="either preset='paper' or a TCERConfig"):
        resolve_config(TCERConfig, "paper", TCERConfig(), None)
    with pytest.raises(
        TypeError, match=r"'epoch' is not a setting of TCERConfig\. Did you mean 'epochs'"
    ):
        resolve_config(TCERConfig, None, None, {"epoch": 3})
    with pytest.raises(TypeError, match="config must be a TCERConfig, a dict"):
        resolve_config(TCERConfig, None, [("epochs", 3)], None)
    with pytest.raises(ValueError, match="preset must be one of \\['default', 'paper'\\]"):
        resolve_config(TCERConfig, "best", None, None)
    with pytest.raises(ValueError, match="mask_ratio must satisfy"):
        resolve_config(TCERConfig, None, {"mask_ratio": (0.6, 0.2)}, None)


def test_old_preset_name_still_works_with_a_future_warning():
    with pytest.warns(FutureWarning, match="preset='fast' is now called preset='default'"):
        cfg = resolve_config(TCERConfig, "fast", None, None)
    assert cfg == TCERConfig()


def test_renamed_keyword_and_unused_setting_helpers():
    kw = {"layer_sp": "counts"}
    with pytest.warns(FutureWarning, match="layer_sp= is now called layer="):
        assert renamed(kw, old="layer_sp", new="layer", where="f") == {"layer": "counts"}
    with pytest.raises(TypeError, match="both layer_sp= and its new name layer="):
        renamed({"layer_sp": 1, "layer": 2}, old="layer_sp", new="layer", where="f")
    with pytest.warns(UserWarning, match="epochs is not used: no network"):
        warn_unused({"epochs", "genes"}, {"epochs", "lr"}, "no network")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unused({"genes"}, {"epochs"}, "never shown")


def _tiny_counts(n=48, g=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(2.0, 1.0, (n, 1)) * rng.uniform(0.5, 3, (1, g))).astype(np.float32)
    X[X.sum(1) == 0, 0] = 1
    a = ad.AnnData(sparse.csr_matrix(X))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.var_names = [f"g{j}" for j in range(g)]
    return a


TINY = dict(n_features=4, epochs=1, n_neighbors=0, beta=1.0, validation_fraction=0.0)


def test_tcer_impute_takes_settings_by_config_or_keyword_with_the_same_result():
    a = _tiny_counts()
    sct.tl.genomap(a, rng=0, progress=False)
    by_kw = sct.tl.tcer_impute(a, rng=0, progress=False, copy=True, **TINY)
    by_cfg = sct.tl.tcer_impute(a, config=TCERConfig(**TINY), rng=0, progress=False, copy=True)
    by_dict = sct.tl.tcer_impute(a, config=TINY, random_state=0, progress=False, copy=True)
    np.testing.assert_array_equal(by_kw.layers["tcer"], by_cfg.layers["tcer"])
    np.testing.assert_array_equal(by_kw.layers["tcer"], by_dict.layers["tcer"])
    assert by_kw.uns["tcer"]["params"]["n_features"] == 4
    assert "tcer" not in a.layers  # copy=True left the input alone


def test_tcer_impute_return_rule_and_random_state_alias():
    a = _tiny_counts()
    sct.tl.genomap(a, rng=0, progress=False)
    assert sct.tl.tcer_impute(a, rng=0, progress=False, **TINY) is None
    model = sct.tl.tcer_impute(a, rng=0, progress=False, return_model=True, **TINY)
    assert isinstance(model, sct.models.TCERModel)
    out, model2 = sct.tl.tcer_impute(a, rng=0, progress=False, copy=True, return_model=True, **TINY)
    assert isinstance(out, ad.AnnData) and isinstance(model2, sct.models.TCERModel)
    with pytest.raises(TypeError, match="both rng= and its alias random_state="):
        sct.tl.tcer_impute(a, rng=0, random_state=0, progress=False, **TINY)
    with pytest.raises(TypeError, match="Did you mean 'n_features'"):
        sct.tl.tcer_impute(a, n_feature=4)


def test_genomap_settings_by_keyword_or_config():
    a = _tiny_counts()
    b = a.copy()
    sct.tl.genomap(a, rng=0, progress=False, max_iter=5, radius=1)
    sct.tl.genomap(
        b, random_state=0, progress=False, config=sct.tl.GenoMapConfig(max_iter=5, radius=1)
    )
    np.testing.assert_array_equal(a.var["genomap_row"], b.var["genomap_row"])
    np.testing.assert_array_equal(a.var["genomap_col"], b.var["genomap_col"])
    for m in (a, b):  # the settings given reached the solver
        params = m.uns["genomap"]["params"]
        assert (params["max_iter"], params["radius"]) == (5, 1)
    with pytest.raises(ValueError, match="solver must be 'exchange' or 'pot'"):
        sct.tl.genomap(a, solver="sinkhorn")


def test_genomap_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    import sctorch._utils as utils

    a = _tiny_counts()
    monkeypatch.setattr(utils, "available_memory", lambda: 1000)  # bytes
    with pytest.raises(MemoryError, match=r"16 genes.*select highly variable genes"):
        sct.tl.genomap(a, progress=False)
    assert "genomap" not in a.uns
    with pytest.raises(MemoryError, match="highly variable"):
        sct.tl.tcer_impute(a, progress=False, **TINY)
    assert "tcer" not in a.layers and "genomap" not in a.uns


def test_tcer_counts_layer_is_the_output_at_each_cells_depth():
    a = _tiny_counts()
    sct.tl.genomap(a, rng=0, progress=False)
    sct.tl.tcer_impute(a, rng=0, progress=False, counts_key="tcer_counts", **TINY)
    lib = np.asarray(a.X.sum(1)).ravel()
    expect = np.expm1(a.layers["tcer"]) * (lib / 1e4)[:, None]
    np.testing.assert_allclose(a.layers["tcer_counts"], expect, rtol=1e-5)
    assert a.uns["tcer"]["params"]["counts_key"] == "tcer_counts"
    # beta = 0: the posterior is the observed rate, so the count layer is the counts
    b = a.copy()
    sct.tl.tcer_impute(b, rng=0, progress=False, counts_key="c", **(TINY | {"beta": 0.0}))
    np.testing.assert_allclose(b.layers["c"], a.X.toarray(), rtol=1e-4, atol=1e-4)


def test_tcer_training_budget_bounds_the_cells_per_epoch():
    from sctorch.tcer._data import MaskedBatches

    seen = []

    def images_of(cells):
        seen.append(np.asarray(cells))
        return np.ones((len(cells), 1, 4, 4), dtype=np.float32)

    data = MaskedBatches(
        images_of,
        np.arange(100),
        np.arange(100, 140),
        gene_px=np.ones((4, 4), bool),
        mask_ratio=(0.1, 0.5),
        objective="poisson",
        batch_size=16,
        seed=0,
        device="cpu",
        max_cells=32,
    )
    assert sum(len(inp) for inp, _, _ in data.val) == 8  # 32 // 4 validation cells
    seen.clear()
    for epoch in range(3):
        batches = list(data(epoch))
        assert sum(b[0].shape[0] for b in batches) == 32
    drawn = np.concatenate(seen)
    assert len(np.unique(drawn)) > 32  # a new draw each epoch
    assert TCERConfig.preset("paper").max_cells_per_epoch is None
    with pytest.raises(ValueError, match="max_cells_per_epoch must be None"):
        TCERConfig(max_cells_per_epoch=0).validate()


def test_tcer_pearson_criterion_and_linear_space_keep_the_earlier_default():
    # the fingerprint of the earlier default (recorded before issue 23) is reproduced with
    # criterion="pearson", space="linear", shrinkage="global"; the new default chooses by
    # the Poisson likelihood, one beta per gene, and averages on the square-root scale
    import test_fingerprints as F

    a = F._intestine_small()
    sct.tl.genomap(a, rng=0, progress=False)
    model = sct.tl.tcer_impute(
        a,
        n_features=4,
        epochs=2,
        rng=0,
        progress=False,
        return_model=True,
        criterion="pearson",
        space="linear",
        shrinkage="global",
        objective="poisson",
    )
    old = [43296.6303, 197896.541, 6.46132469, 3.42000031, 3.70656705, 1.98113263, 4.1567173]
    np.testing.assert_allclose(F._summary(a.layers["tcer"]), old, rtol=2e-4)
    assert model.n_neighbors == 20


def test_molecular_cross_validation_poisson_prefers_the_true_prior_and_extends_its_grid():
    from sctorch import tcer

    rng = np.random.default_rng(0)
    truth = np.repeat(rng.gamma(1.0, 50.0, (2, 30)), 100, axis=0)  # two cell types, rates
    size = np.full(200, 0.02)
    counts = sparse.csr_matrix(rng.poisson(truth * size[:, None]).astype(np.float32))
    half_a, half_b = tcer.split_molecules(counts, size, seed=0)
    beta, scores = tcer.choose_beta(half_a, half_b, truth.astype(np.float32))
    assert max(scores) > max(tcer.BETA_GRID)  # the exact prior: the grid was extended
    wrong = truth[rng.permutation(200)]
    bad, _ = tcer.choose_beta(half_a, half_b, wrong.astype(np.float32))
    assert bad < beta


def test_sqrt_space_posterior_and_neighbour_mean_known_answers():
    from sctorch import tcer

    y = np.array([[0.0, 4.0, 9.0]])
    s = np.array([1.0])
    mu = np.array([[4.0, 4.0, 1.0]])
    # beta = 0: the observed rate; beta -> inf: the prior; beta = s: the mean of the roots
    np.testing.assert_allclose(tcer.posterior(y, s, mu, 0.0, "sqrt"), y)
    np.testing.assert_allclose(tcer.posterior(y, s, mu, np.inf, "sqrt"), mu)
    np.testing.assert_allclose(tcer.posterior(y, s, mu, 1.0, "sqrt"), [[1.0, 4.0, 4.0]])
    np.testing.assert_allclose(tcer.posterior(y, s, mu, 1.0, "linear"), [[2.0, 4.0, 5.0]])
    counts = sparse.csr_matrix(np.array([[4.0, 0.0], [0.0, 9.0], [1.0, 1.0]]))
    r = tcer.Rates.in_memory(counts, np.ones(3), 1e4)
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    sq = tcer.neighbour_mean(r, idx, np.arange(3), "sqrt")
    np.testing.assert_allclose(sq[0], [((0 + 1) / 2) ** 2, ((3 + 1) / 2) ** 2])
    lin = tcer.neighbour_mean(r, idx, np.arange(3))
    np.testing.assert_allclose(lin[0], [0.5, 5.0])
    assert (sq <= lin + 1e-6).all()  # the root mean squared never exceeds the mean
    with pytest.raises(ValueError, match="space must be one of"):
        tcer.posterior(y, s, mu, 1.0, "log")


def test_random_state_is_rngs_alias_in_preprocessing():
    a = _tiny_counts()
    b = sct.pp.simulate_efficiency_loss(a, efficiency_shape=10, rng=3, copy=True)
    c = sct.pp.simulate_efficiency_loss(a, efficiency_shape=10, random_state=3, copy=True)
    np.testing.assert_array_equal(b.layers["observed"].toarray(), c.layers["observed"].toarray())


def test_neighbour_posterior_is_the_rule_of_its_parts():
    from sctorch import tcer

    a = _tiny_counts(n=60, g=12)
    r = tcer.Rates(a.X, None, 1e4)
    out, k, beta = tcer.neighbour_posterior(r, k=7, space="sqrt", criterion="poisson", seed=0)
    assert k == 7 and beta.shape == (12,) and (beta >= 0).all()  # one beta per gene
    idx = tcer.neighbour_index(r, 7, seed=0)
    mu = tcer.neighbour_mean(r, idx, np.arange(60), "sqrt")
    counts, size = r.counts(slice(None))
    np.testing.assert_allclose(out, tcer.posterior(counts, size, mu, beta, "sqrt"), rtol=1e-6)
    # one beta for all genes: choose_beta_on's on the same validation cells
    one, _, b1 = tcer.neighbour_posterior(r, k=7, space="sqrt", shrinkage="global", seed=0)
    val = np.sort(np.random.default_rng(0).permutation(60)[:6])
    ref, _ = tcer.choose_beta_on(
        r,
        val,
        lambda own, cells: tcer.neighbour_mean(r, idx, cells, "sqrt"),
        seed=0,
        space="sqrt",
    )
    assert b1 == ref
    np.testing.assert_allclose(one, tcer.posterior(counts, size, mu, b1, "sqrt"), rtol=1e-6)
    lin = tcer.neighbour_posterior(r, k=7, space="linear", seed=0)[0]
    assert not np.allclose(out, lin)
