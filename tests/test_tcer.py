import anndata as ad
import numpy as np
import pytest
import torch
from conftest import assert_unchanged, snapshot
from scipy import sparse

import sctorch as sct
from sctorch.genomap import Placement
from sctorch.models import ModelFileError
from sctorch.tcer import TCERConfig, TCERModel
from sctorch.tcer._module import (
    PLACEHOLDER,
    BatchParallelDeformConv2d,
    ERNet,
    mask_blind_spot,
    mask_nonzero,
    tcer_loss,
)


def _with_grid_placement(a, shape, rng=0):
    """A random one-to-one gene -> pixel placement written in the GenoMap keys."""
    H, W = shape
    pix = np.random.default_rng(rng).permutation(H * W)[: a.n_vars]
    a.var["genomap_row"] = pix // W
    a.var["genomap_col"] = pix % W
    a.uns["genomap"] = {"shape": (H, W), "objective": 0.0}
    return a


def _planted_counts(n_cells=96, n_genes=30, seed=0):
    """Counts from a rank-2 model: two gene programmes whose activity varies by cell."""
    rng = np.random.default_rng(seed)
    act = rng.gamma(2.0, 1.0, size=(n_cells, 2))
    load = np.zeros((2, n_genes))
    load[0, : n_genes // 2] = rng.uniform(1, 3, n_genes // 2)
    load[1, n_genes // 2 :] = rng.uniform(1, 3, n_genes - n_genes // 2)
    mu = act @ load + 0.1
    X = rng.poisson(mu).astype(np.float32)
    X[X.sum(1) == 0, 0] = 1
    a = ad.AnnData(sparse.csr_matrix(X))
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.var_names = [f"g{j}" for j in range(n_genes)]
    return a


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (13, 10), (4, 4)])
def test_ernet_output_shape_matches_input(shape):
    net = ERNet(n_features=4)
    x = torch.rand(3, 1, *shape)
    assert net(x).shape == x.shape
    with pytest.raises(ValueError, match="batch, 1, H, W"):
        net(torch.rand(3, *shape))


def test_batch_parallel_deform_conv_equals_torchvision():
    from torchvision.ops import DeformConv2d

    torch.manual_seed(0)
    ref = DeformConv2d(6, 5, 3, padding=1)
    par = BatchParallelDeformConv2d(6, 5, 3, padding=1)
    par.load_state_dict(ref.state_dict())
    x = torch.randn(7, 6, 9, 8)  # odd batch: unequal slices
    off = torch.randn(7, 18, 9, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        outs, grads = [], []
        for m in (ref, par):
            xi, oi = x.clone().requires_grad_(), off.clone().requires_grad_()
            m.zero_grad()
            y = m(xi, oi)
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            outs.append(y.detach())
            if m is par:  # the threaded path ran, not the plain torchvision module
                assert type(y.grad_fn).__name__ == "_ChunkedDeformConvBackward"
            grads.append([xi.grad, oi.grad, m.weight.grad, m.bias.grad])
        with torch.no_grad():
            y_eval = par(x, off)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for g_par, g_ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g_par, g_ref, rtol=1e-5, atol=1e-5)
    assert not y_eval.requires_grad
    torch.testing.assert_close(y_eval, outs[1], rtol=0, atol=0)


def _deform_in_child(module, x, off, queue):
    torch.set_num_threads(2)
    y = module(x, off)
    y.sum().backward()
    queue.put(float(y.detach().sum()))


def test_batch_parallel_deform_conv_works_in_a_forked_child():
    # the parent's thread pool does not survive fork(); a child must not wait on it
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = BatchParallelDeformConv2d(4, 4, 3, padding=1)
        x, off = torch.randn(4, 4, 6, 6), torch.zeros(4, 18, 6, 6)
        m(x, off).sum().backward()  # the parent creates its pool
        queue = ctx.Queue()
        proc = ctx.Process(target=_deform_in_child, args=(m, x, off, queue))
        proc.start()
        proc.join(60)
        alive = proc.is_alive()
        if alive:
            proc.kill()
    finally:
        torch.set_num_threads(threads)
    assert not alive and proc.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(float(m(x, off).detach().sum()), rel=1e-5)


def test_mask_nonzero_hides_requested_fraction_and_never_padding():
    g = torch.Generator().manual_seed(0)
    H, W = 10, 10
    gene_px = torch.zeros(H, W, dtype=torch.bool)
    gene_px.view(-1)[:90] = True  # last 10 pixels are empty (no gene)
    x = torch.zeros(4, H, W)
    x.view(4, -1)[:, :60] = torch.rand(4, 60) + 0.1  # 60 non-zeros per image
    inp, masked = mask_nonzero(x, 0.25, 0.25, gene_px, g)
    assert masked.flatten(1).sum(1).tolist() == [15, 15, 15, 15]  # round(0.25 * 60)
    assert (x[masked] > 0).all()
    # zeros on gene pixels carry the placeholder, padding stays 0, visible non-zeros unchanged
    zero_gene = gene_px & (x == 0)
    assert (inp[zero_gene] == PLACEHOLDER).all()
    assert (inp[:, ~gene_px] == 0).all()
    vis = (x > 0) & ~masked
    assert torch.equal(inp[vis], x[vis])
    _, hidden = mask_blind_spot(x, 0.3, 0.3, gene_px, g)
    assert not hidden[:, ~gene_px].any()
    assert abs(hidden.float().sum().item() / (4 * 90) - 0.3) < 0.08


def test_tcer_loss_hand_computed():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])
    target = torch.tensor([[[2.0, 2.0], [5.0, 1.0]]])
    known = torch.tensor([[[True, True], [False, True]]])
    # spatial L1 on the known pixels: (1 + 0 + 3) / 3
    assert tcer_loss(pred, target, known, 0.0).item() == pytest.approx(4 / 3)
    assert tcer_loss(pred, target, known, 0.0, squared=True).item() == pytest.approx(10 / 3)
    fp = torch.fft.rfft2(pred * known)
    ft = torch.fft.rfft2(target * known)
    expect = 4 / 3 + 0.5 * torch.abs(fp - ft).mean().item()
    assert tcer_loss(pred, target, known, 0.5).item() == pytest.approx(expect)


def test_training_on_planted_low_rank_genomap_beats_observed_error():
    rng = np.random.default_rng(0)
    H, W, n = 8, 8, 224
    # low-rank counts on a raster placement: a top and a bottom programme
    u, v = rng.gamma(2, 1, size=(n, 1)), rng.gamma(2, 1, size=(n, 1))
    rows = np.repeat(np.arange(H), W)
    cols = np.tile(np.arange(W), H)
    counts = rng.poisson(20 * (u * (rows < 4) + v * (rows >= 4)) + 1).astype(np.float32)
    a = ad.AnnData(counts)
    a.var_names = [f"g{i}" for i in range(H * W)]
    p = TCERConfig(
        n_features=8,
        epochs=12,
        batch_size=32,
        lr=3e-3,
        lr_step=100,
        mask_ratio=(0.2, 0.4),
        fft_weight=0.1,
        patience=None,
        objective="dropout",
        validation_fraction=0.15,
        n_neighbors=0,
        output="observed",
    )
    model = TCERModel(config=p, genes=a.var_names, placement=Placement(rows, cols, (H, W)))
    model.fit(a[:192], rng=0, device="cpu", progress=False)
    assert len(model.history["val_loss"]) == 12 and len(model.history["train_loss"]) == 12
    assert model.scale == pytest.approx(float(sct._utils.log_normalize(a[:192].X).max()))
    # new cells: hide 30 % of their non-zero pixels
    x = torch.as_tensor(model.placement.images(sct._utils.log_normalize(a[192:].X) / model.scale))
    g = torch.Generator().manual_seed(1)
    inp, masked = mask_nonzero(x, 0.3, 0.3, torch.ones(H, W, dtype=torch.bool), g)
    with torch.no_grad():
        pred = model.module(inp[:, None]).squeeze(1)
    err_net = (pred - x).abs()[masked].mean().item()
    err_obs = x[masked].mean().item()  # a hidden pixel observed as 0
    assert err_net < 0.5 * err_obs


@pytest.fixture(scope="module")
def trained():
    a = _with_grid_placement(_planted_counts(), (6, 6))
    model = sct.tl.tcer_impute(
        a,
        n_features=4,
        epochs=2,
        batch_size=32,
        progress=False,
        rng=0,
        return_model=True,
        device="cpu",
        objective="dropout",
        observed_weight=1.0,
        n_neighbors=0,
        output="observed",
    )
    return a, model


def test_tcer_impute_writes_log_normalised_layer(trained):
    a, _ = trained
    out = a.layers["tcer"]
    assert out.shape == a.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all()
    logn = sct._utils.log_normalize(a.X).toarray()
    nz = logn > 0
    np.testing.assert_allclose(out[nz], logn[nz], rtol=1e-5)  # observed kept
    assert (out[~nz] > 0).mean() > 0.5  # zeros imputed
    assert len(a.uns["tcer"]["history"]["train_loss"]) == 2
    assert a.uns["tcer"]["params"]["n_features"] == 4


def test_save_load_identical_and_determinism(trained, tmp_path):
    a, model = trained
    path = tmp_path / "tcer.safetensors"
    model.save(path)
    loaded = TCERModel.load(path, device="cpu")
    b = a.copy()
    model.impute(b, key_added="m1", progress=False, device="cpu")
    loaded.impute(b, key_added="m2", progress=False, device="cpu")
    np.testing.assert_array_equal(b.layers["m1"], b.layers["m2"])
    np.testing.assert_array_equal(b.layers["m1"], a.layers["tcer"])
    # same seed, same device -> same result
    c = _with_grid_placement(_planted_counts(), (6, 6))
    sct.tl.tcer_impute(
        c,
        n_features=4,
        epochs=2,
        batch_size=32,
        progress=False,
        rng=0,
        device="cpu",
        objective="dropout",
        observed_weight=1.0,
        n_neighbors=0,
        output="observed",
    )
    np.testing.assert_array_equal(c.layers["tcer"], a.layers["tcer"])
    with pytest.raises(ModelFileError, match="not a sctorch model file"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        TCERModel.load(tmp_path / "other.safetensors")


def test_impute_new_cells_with_missing_genes_warns(trained):
    _, model = trained
    new = _planted_counts(n_cells=20, seed=5)[:, 3:].copy()  # 3 model genes missing
    with pytest.warns(UserWarning, match="3 of the model's 30 genes"):
        model.impute(new, progress=False, device="cpu")
    assert new.layers["tcer"].shape == new.shape
    with pytest.raises(ValueError, match="shares 5 of the model's 30 genes"):
        model.impute(_planted_counts(n_cells=20)[:, :5].copy(), progress=False)


def test_bad_inputs_raise_and_leave_adata_unchanged():
    base = _with_grid_placement(_planted_counts(n_cells=40), (6, 6))
    # normalised data passed as counts
    a = base.copy()
    a.X = sct._utils.log_normalize(a.X)
    snap = snapshot(a)
    with pytest.raises(ValueError, match="non-integer"):
        sct.tl.tcer_impute(a, epochs=1, progress=False)
    assert_unchanged(a, snap)
    # a cell with zero counts
    X = base.X.toarray()
    X[3] = 0
    a = _with_grid_placement(ad.AnnData(X, obs=base.obs, var=base.var[[]]), (6, 6))
    snap = snapshot(a)
    with pytest.raises(ValueError, match="zero total counts"):
        sct.tl.tcer_impute(a, epochs=1, progress=False)
    assert_unchanged(a, snap)
    # a GenoMap that does not match the genes (two genes on one pixel / off the grid)
    a = base.copy()
    a.var["genomap_row"] = 0
    a.var["genomap_col"] = 0
    snap = snapshot(a)
    with pytest.raises(ValueError, match="one-to-one"):
        sct.tl.tcer_impute(a, epochs=1, progress=False)
    a.uns["genomap"] = {"shape": (2, 2)}
    a.var["genomap_row"] = np.arange(a.n_vars) // 6
    a.var["genomap_col"] = np.arange(a.n_vars) % 6
    with pytest.raises(ValueError, match="outside"):
        sct.tl.tcer_impute(a, epochs=1, progress=False)
    assert "tcer" not in a.layers and "tcer" not in a.uns
    with pytest.raises(ValueError, match="preset"):
        sct.tl.tcer_impute(base.copy(), preset="huge", progress=False)
    with pytest.raises(KeyError, match="counts"):
        sct.tl.tcer_impute(base.copy(), layer="counts", progress=False)


def test_blind_spot_output_keeps_or_blends_observed_values():
    a = _with_grid_placement(_planted_counts(n_cells=64), (6, 6))
    model = sct.tl.tcer_impute(
        a,
        n_features=4,
        epochs=1,
        batch_size=32,
        progress=False,
        rng=0,
        return_model=True,
        device="cpu",
        objective="blind_spot",
        output="observed",
    )
    # output="observed": measured values kept (the paper's rule), zeros get the prediction
    assert model.params.observed_weight == 1.0 and model.n_neighbors > 0
    model.params.observed_weight = 0.0
    model.impute(a, key_added="pred", progress=False, device="cpu")
    x = sct._utils.log_normalize(a.X).toarray()
    np.testing.assert_allclose(
        a.layers["tcer"], np.where(x > 0, x, a.layers["pred"]), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(a.layers["pred"][x > 0], x[x > 0])  # the prediction differs
    model.params.observed_weight = 0.25
    model.impute(a, key_added="blend", progress=False, device="cpu")
    expect = np.where(x > 0, 0.25 * x + 0.75 * a.layers["pred"], a.layers["pred"])
    np.testing.assert_allclose(a.layers["blend"], expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="observed_weight"):
        sct.tl.tcer_impute(a.copy(), observed_weight=2.0, progress=False)


def test_network_sees_a_bounded_chunk_and_gives_the_same_prediction(monkeypatch):
    # inference memory is set by how many GenoMaps ER-Net sees at once; chunking them
    # must not change the prediction (each image is computed on its own)
    from sctorch.tcer import _model

    a = _with_grid_placement(_planted_counts(n_cells=40), (6, 6))
    for objective in ("blind_spot", "dropout"):
        p = TCERConfig(n_features=4, epochs=1, batch_size=32, objective=objective)
        model = TCERModel.from_genomap(a, p).fit(a, rng=0, device="cpu", progress=False)
        imgs = np.random.default_rng(1).random((40, model.module.in_channels, 6, 6))
        imgs = (imgs * (imgs > 0.4)).astype(np.float32)
        seen = []
        forward = model.module.forward

        def counted(x, seen=seen, forward=forward):
            seen.append(len(x))
            return forward(x)

        monkeypatch.setattr(model.module, "forward", counted)
        monkeypatch.setattr(_model, "NETWORK_CHUNK", 1000)
        whole = model._predict_images(imgs, "cpu")
        monkeypatch.setattr(_model, "NETWORK_CHUNK", 7)
        seen.clear()
        chunked = model._predict_images(imgs, "cpu")
        assert max(seen) == 7 and sum(seen) % 40 == 0
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
        assert (chunked[:, ~model.placement.pixel_mask()] == 0).all()


def test_noise2noise_trains_on_split_molecules_and_predicts_from_the_whole_cell(monkeypatch):
    from sctorch.tcer._config import SPLIT_FRACTION

    a = _with_grid_placement(_planted_counts(n_cells=96), (6, 6))
    p = TCERConfig(n_features=4, epochs=3, batch_size=32, objective="noise2noise", prior="network")
    model = TCERModel.from_genomap(a, p).fit(a, rng=0, device="cpu", progress=False)
    assert model.use_network and model.n_neighbors > 0
    # the held-out molecules' loss fell during training (it starts at the context itself)
    assert model.history["val_loss"][-1] < model.history["val_loss"][0]
    rates, shared, _ = model._rates(a, None, "the data", all_genes=True)
    idx = model._neighbours(rates, 0)
    cells = np.arange(10, 30)
    inputs, target = model._split_images(rates, idx, shared)(cells, np.random.default_rng(3))
    frac = np.random.default_rng(3).uniform(*SPLIT_FRACTION, size=cells.size)[:, None]
    counts, size = rates.counts(cells)
    size = size[:, None]
    part = np.expm1(model.placement.genes_of(inputs[:, 0]) * model.scale) * frac * size
    rest = np.expm1(model.placement.genes_of(target) * model.scale) * (1 - frac) * size
    # the two parts are integer counts that add up to the cell's counts
    np.testing.assert_allclose(part + rest, counts.toarray(), atol=2e-3)
    np.testing.assert_allclose(part, np.round(part), atol=2e-3)
    assert (part > 0.5).sum() > 0.4 * (counts.toarray() > 0).sum() and (rest > 0.5).any()
    # the context channel is the neighbours' (the cell's own molecules are in neither)
    whole = model._cell_images(rates, rates.rates(cells).toarray(), cells, idx, shared)
    np.testing.assert_array_equal(inputs[:, 1], whole[:, 1])
    # inference: the network sees the cell's whole GenoMap, nothing hidden
    seen = []
    forward = model.module.forward

    def record(x):
        seen.append(x.clone())
        return forward(x)

    monkeypatch.setattr(model.module, "forward", record)
    model._predict_images(whole, "cpu")
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0].numpy(), whole)


# ---------------------------------------------------------------------- model lifecycle
def _small_model(n_dfa=3, seed=0):
    a = _with_grid_placement(_planted_counts(n_cells=48), (6, 6))
    p = TCERConfig(n_features=4, n_dfa=n_dfa, epochs=1, batch_size=32)
    model = TCERModel.from_genomap(a, p).fit(a, rng=seed, device="cpu", progress=False)
    return a, model


def test_round_trip_rebuilds_the_same_network_and_output(tmp_path):
    # n_dfa != 3: save/load must rebuild ER-Net with the stored n_dfa (the old load did,
    # training did not), through the one constructor _build_module
    a, model = _small_model(n_dfa=1)
    assert len(model.module.dfa) == 1
    path = tmp_path / "m.safetensors"
    model.save(path)
    for loaded in (TCERModel.load(path, device="cpu"), sct.models.load(path, device="cpu")):
        assert type(loaded) is TCERModel and len(loaded.module.dfa) == 1
        assert loaded.genes == model.genes and loaded.scale == model.scale
        assert loaded.params == model.params and loaded.history == model.history
        np.testing.assert_array_equal(loaded.placement.rows, model.placement.rows)
        assert loaded.placement.shape == (6, 6)
        np.testing.assert_array_equal(
            loaded.predict(a, progress=False, device="cpu"),
            model.predict(a, progress=False, device="cpu"),
        )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
    model.save(path, overwrite=True)
    assert sct.tl.TCERModel is sct.models.TCERModel is TCERModel


@pytest.mark.parametrize(
    "corruption", ["two_genes_one_pixel", "off_grid", "gene_list_length", "unplaced"]
)
def test_placement_integrity_is_checked_on_load(tmp_path, corruption):
    _, model = _small_model()
    p = model.placement
    if corruption == "two_genes_one_pixel":
        p.rows[1], p.cols[1] = p.rows[0], p.cols[0]
        match = "not one-to-one"
    elif corruption == "off_grid":
        p.rows[0] = 6
        match = "outside the 6 × 6 grid"
    elif corruption == "gene_list_length":
        model.genes = model.genes[:-1]
        match = "gene list has 29 genes but the placement has 30 rows"
    else:
        p.rows[0] = p.cols[0] = -1
        match = "leaves 1 gene"
    path = tmp_path / "bad.safetensors"
    model.save(path)  # save does not check: this crafts the corrupted file
    with pytest.raises(ModelFileError, match=match):
        TCERModel.load(path)


def test_training_leaves_the_callers_random_streams_unchanged():
    a = _with_grid_placement(_planted_counts(n_cells=40), (6, 6))
    torch.manual_seed(123)
    np.random.seed(123)
    expect_t, expect_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    sct.tl.tcer_impute(a, n_features=4, epochs=1, progress=False, device="cpu", rng=5)
    torch.testing.assert_close(torch.rand(3), expect_t, rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expect_n)
