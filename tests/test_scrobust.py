"""scRobust (Park & Lee 2024): tokens, pre-training, embedding, annotation, pathways, markers."""

from __future__ import annotations

import math
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import assert_unchanged, require_data, snapshot
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import sctorch as sct

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from sctorch.scrobust._data import _Batcher, _build_vocab, _prepare, _unique_rank  # noqa: E402
from sctorch.scrobust._module import GeneTokenEmbedding, nt_xent_loss  # noqa: E402

TINY = {
    "d_model": 32,
    "n_heads": 4,
    "dim_feedforward": 64,
    "dropout": 0.0,
    "head_dropout": 0.0,
    "lr": 2e-3,
    "batch_size": 32,
    "progress": False,
}


def planted(n_per=40, n_pops=2, n_markers=8, n_genes=40, seed=0, prefix="c"):
    """Populations that differ only in their marker genes (raw counts, CSR)."""
    rng = np.random.default_rng(seed)
    n = n_per * n_pops
    lam = np.full((n, n_genes), 1.0)
    pop = np.repeat(np.arange(n_pops), n_per)
    for k in range(n_pops):
        lam[pop == k, k * n_markers : (k + 1) * n_markers] = 12.0
    X = rng.poisson(lam).astype(np.float32)
    X[:, -1] += 1  # no empty cell
    a = ad.AnnData(sparse.csr_matrix(X))
    a.obs_names = [f"{prefix}{i}" for i in range(n)]
    a.var_names = [f"G{j}" for j in range(n_genes)]
    a.obs["pop"] = pd.Categorical([f"P{k}" for k in pop])
    return a


@pytest.fixture(scope="module")
def two_pops():
    return planted(seed=1)


@pytest.fixture(scope="module")
def model2(two_pops):
    return sct.tl.scrobust_pretrain(
        two_pops, epochs=4, n_genes_per_view=8, rng=0, **dict(TINY, lr=5e-3)
    )


# ----------------------------------------------------------------------------- tokens
def test_tokenisation_hand_made():
    X = sparse.csr_matrix(
        np.array([[0, 2.0, 0, 1.5], [3.0, 0, 0, 0], [0.5, 0.25, 4.0, 0]], dtype=np.float32)
    )
    a = ad.AnnData(X)
    a.var_names = ["A", "B", "C", "D"]
    a.obs_names = ["x", "y", "z"]
    vocab = ["PAD", "SEP", "UNKNOWN", "CLS", "MASK", "D", "C", "B"]  # gene 'A' is unknown
    model = sct.tl.ScRobustModel(None, vocab, {})
    # cell 'y' only expresses the unknown gene A -> refused
    with (
        pytest.warns(UserWarning, match="1 of 4 genes"),
        pytest.raises(ValueError, match=r"1 cell\(s\) of adata \(e.g. \['y'\]\)"),
    ):
        _prepare(a, model.token_ids, layer=None, input_scale="log1p", min_shared_genes=1)
    a2 = a[[0, 2]].copy()
    with pytest.warns(UserWarning):
        tok = _prepare(a2, model.token_ids, layer=None, input_scale="log1p", min_shared_genes=1)
    b = _Batcher(tok, pad_id=0, cls_id=3, device="cpu")
    # order by token id (a fixed priority) to get a deterministic sequence
    rank = torch.arange(len(vocab), dtype=torch.float64)
    ids, vals, pad = b.select(torch.tensor([0, 1]), 5, rank=rank)
    np.testing.assert_array_equal(ids.numpy(), [[3, 5, 7], [3, 6, 7]])
    np.testing.assert_allclose(vals.numpy(), [[1, 1.5, 2.0], [1, 4.0, 0.25]])
    assert not pad.any()
    ids, vals, pad = b.select(torch.tensor([1]), 1, rank=rank)  # the rarest-priority gene only
    np.testing.assert_array_equal(ids.numpy(), [[3, 6]])
    ids, vals, pad = b.select(torch.tensor([1, 0]), 5, rank=-rank)  # reversed priority
    np.testing.assert_array_equal(ids.numpy(), [[3, 7, 6], [3, 7, 5]])
    ids = torch.cat([ids, torch.zeros(2, 1, dtype=torch.long)], 1)  # a padding position
    vals = torch.cat([vals, torch.zeros(2, 1)], 1)
    # the token vector is the unit-norm gene vector times the value
    emb = GeneTokenEmbedding(len(vocab), 6)
    out = emb(ids, vals).detach().numpy()
    W = emb.weight.detach().numpy()
    for i in range(2):
        for j in range(3):
            w = W[ids[i, j]]
            np.testing.assert_allclose(
                out[i, j], w / np.linalg.norm(w) * vals[i, j].item(), rtol=1e-5, atol=1e-6
            )
    np.testing.assert_allclose(out[:, 3], 0.0)


def test_raw_counts_are_log_normalised():
    X = np.array([[1, 3, 0], [0, 2, 2]], dtype=np.float32)
    a = ad.AnnData(sparse.csr_matrix(X))
    a.var_names = ["A", "B", "C"]
    model = sct.tl.ScRobustModel(None, ["PAD", "SEP", "UNKNOWN", "CLS", "MASK", "A", "B", "C"], {})
    tok = _prepare(a, model.token_ids, layer=None, input_scale="counts", min_shared_genes=1)
    expect = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(tok.X.toarray(), expect, rtol=1e-5)
    np.testing.assert_array_equal(tok.ids, [5, 6, 6, 7])


def test_views_only_nonzero_genes_and_independent():
    rng = np.random.default_rng(0)
    X = (rng.random((30, 50)) < 0.4) * rng.integers(1, 9, (30, 50))
    X[0] = 0
    X[0, [3, 7]] = [1, 2]  # a cell with fewer genes than a view
    a = ad.AnnData(sparse.csr_matrix(X.astype(np.float32)))
    a.var_names = [f"g{j}" for j in range(50)]
    model = sct.tl.ScRobustModel(None, _build_vocab(None, a.var_names), {})
    tok = _prepare(a, model.token_ids, layer=None, input_scale="counts", min_shared_genes=1)
    b = _Batcher(tok, pad_id=0, cls_id=3, device="cpu")
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(30)
    v1 = b.select(rows, 6, generator=gen)
    v2 = b.select(rows, 6, generator=gen)
    differ = 0
    for v in (v1, v2):
        ids, vals, pad = (t.numpy() for t in v)
        assert (ids[:, 0] == 3).all() and (vals[:, 0] == 1).all() and not pad[:, 0].any()
        for i in range(30):
            genes = ids[i, 1:][~pad[i, 1:]] - 5
            assert len(genes) == min(6, int((X[i] > 0).sum()))
            assert len(set(genes)) == len(genes)  # without replacement
            assert (X[i, genes] > 0).all()  # only non-zero genes
            np.testing.assert_allclose(
                vals[i, 1:][~pad[i, 1:]], np.log1p(X[i, genes] / X[i].sum() * 1e4), rtol=1e-5
            )
    for i in range(1, 30):
        differ += set(v1[0][i].tolist()) != set(v2[0][i].tolist())
    assert differ >= 25  # drawn independently, not forced to coincide
    assert sorted(v1[0][0, 1:3].tolist()) == [5 + 3, 5 + 7] and v1[2][0, 3:].all()


def test_unique_rank_rarest_first():
    det = np.array([np.nan, 0.5, 0.1, 0.1, 0.9])
    np.testing.assert_array_equal(_unique_rank(det).numpy(), [4, 2, 0, 1, 3])


def test_cls_output_equals_full_encoder_output():
    # the cell embedding evaluates the last layer for the CLS query only; it must equal
    # position 0 of the full encoder, with padding, in eval and (dropout off) train mode,
    # for 1 and 2 layers
    from sctorch.scrobust._module import ScRobustEncoder

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (4, 12), generator=g)
    ids[:, 0] = 3
    scales = torch.rand(4, 12, generator=g) * 3
    scales[:, 0] = 1.0
    pad = torch.zeros(4, 12, dtype=torch.bool)
    pad[1, 7:] = True
    pad[3, 3:] = True
    for n_layers in (1, 2):
        torch.manual_seed(0)
        enc = ScRobustEncoder(50, d_model=16, n_heads=2, n_layers=n_layers, dropout=0.0)
        for mode in (enc.eval, enc.train):
            mode()
            with torch.no_grad():
                full = enc(ids, scales, pad)[:, 0]
                fast = enc.cls_output(ids, scales, pad)
            torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
        # gradients flow to the gene vectors of every non-padded token
        enc.train()
        enc.cls_output(ids, scales, pad).sum().backward()
        grad = enc.tokens.weight.grad
        assert grad[ids[3, 1:3]].abs().sum() > 0
        assert torch.all(grad[ids[3, 3:][~torch.isin(ids[3, 3:], ids[~pad])]] == 0)


# ----------------------------------------------------------------------------- loss
def test_nt_xent_hand_computed():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    z = np.array([[1, 0], [0, 1], [1, 1], [-1, 1]], dtype=float)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ z.T / tau
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    expect = np.mean(
        [
            -s[i, pos[i]] + math.log(sum(math.exp(s[i, k]) for k in range(4) if k != i))
            for i in range(4)
        ]
    )
    got = nt_xent_loss(z1, z2, temperature=tau).item()
    assert got == pytest.approx(expect, rel=1e-6)
    # identical, well separated pairs give a small loss
    e = torch.eye(4)
    assert nt_xent_loss(e, e, 0.07).item() < 1e-3


# ----------------------------------------------------------------------------- pre-training
def test_pretraining_separates_planted_populations(two_pops, model2):
    a = two_pops.copy()
    hist = model2.history["pretrain_mse"]
    assert len(hist) == 4 and hist[-1] < hist[0]
    assert model2.config["n_layers"] == 1 and model2.config["n_genes_per_view"] == 8
    sct.tl.scrobust_embed(a, model2, n_tokens=40, progress=False)
    E = a.obsm["X_scrobust"]
    assert E.shape == (80, 32) and E.dtype == np.float32
    km = KMeans(2, n_init=10, random_state=0).fit_predict(E)
    assert adjusted_rand_score(a.obs["pop"], km) > 0.8
    assert a.uns["X_scrobust"]["params"]["n_tokens"] == 40


def test_view_size_paper_ten_percent_default_fifty(two_pops):
    m = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=0, preset="paper", **TINY)
    nnz = np.diff(two_pops.X.indptr).mean()
    assert m.config["n_genes_per_view"] == max(8, round(0.1 * nnz))
    assert m.config.token_values == "log1p" and m.config.view_thinning is None
    m = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=0, **TINY)
    assert m.config["n_genes_per_view"] == 50 and m.config.view_thinning == (0.1, 1.0)


def test_seeds_reproduce(two_pops):
    # 8-gene thinned views: with the default 50 (every gene of these cells) the weights of
    # two same-seed runs differed after other tests had run (in_proj_bias by > 1e-6;
    # standalone they were equal) — an open issue, see benchmarks/results/scrobust.md
    kw = dict(TINY, dropout=0.1, head_dropout=0.3, n_genes_per_view=8)
    m1 = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=7, **kw)
    m2 = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=7, **kw)
    m3 = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=8, **kw)
    s1, s2, s3 = (m.network.state_dict() for m in (m1, m2, m3))
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    e1 = sct.tl.scrobust_embed(two_pops, m1, gene_order="random", rng=3, progress=False, copy=True)
    e2 = sct.tl.scrobust_embed(two_pops, m1, gene_order="random", rng=3, progress=False, copy=True)
    np.testing.assert_array_equal(e1.obsm["X_scrobust"], e2.obsm["X_scrobust"])


def test_save_load_identical(tmp_path, two_pops, model2):
    a = two_pops.copy()
    sct.tl.scrobust_embed(a, model2, progress=False)
    model2.save(tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # one file
    with pytest.raises(FileExistsError):
        model2.save(tmp_path / "m.safetensors")
    m = sct.tl.ScRobustModel.load(tmp_path / "m.safetensors", device="cpu")
    assert m.vocab == model2.vocab and m.config == model2.config
    assert m.history == model2.history and m.classes is None and m.gene_detection is None
    b = sct.tl.scrobust_embed(two_pops, m, progress=False, copy=True)
    np.testing.assert_array_equal(a.obsm["X_scrobust"], b.obsm["X_scrobust"])
    with pytest.raises(ValueError, match="is a folder"):
        sct.tl.ScRobustModel.load(tmp_path)


def test_embed_without_model_pretrains(two_pops):
    tiny = {k: v for k, v in TINY.items() if k != "progress"}
    a = sct.tl.scrobust_embed(
        two_pops, config=dict(tiny, epochs=1), n_tokens=10, progress=False, copy=True
    )
    assert a.obsm["X_scrobust"].shape == (80, 32)
    assert "X_scrobust" not in two_pops.obsm
    # the former pretrain_kwargs= still works (FutureWarning) and gives the same model
    with pytest.warns(FutureWarning, match="pretrain_kwargs"):
        b = sct.tl.scrobust_embed(
            two_pops, pretrain_kwargs=dict(TINY, epochs=1), n_tokens=10, progress=False, copy=True
        )
    # (same seed: equal up to float rounding, see test_seeds_reproduce)
    np.testing.assert_allclose(a.obsm["X_scrobust"], b.obsm["X_scrobust"], atol=1e-5)


# ----------------------------------------------------------------------------- annotation
@pytest.fixture(scope="module")
def annotated():
    full = planted(n_per=50, n_pops=3, n_markers=6, n_genes=36, seed=3)
    ref, query = full[::2].copy(), full[1::2].copy()
    base = sct.tl.scrobust_pretrain(ref, epochs=2, n_genes_per_view=8, rng=0, **TINY)
    before = {k: v.clone() for k, v in base.network.state_dict().items()}
    ft = sct.tl.scrobust_annotate(
        query,
        ref,
        labels_key="pop",
        model=base,
        n_tokens=36,
        epochs=6,
        batch_size=16,
        lr=2e-3,
        rng=0,
        progress=False,
        return_model=True,
        head="deep",
        validation_fraction=0,
    )
    return base, before, ft, ref, query


def test_annotation_planted_high_accuracy(annotated):
    base, before, ft, _ref, query = annotated
    acc = (query.obs["scrobust_label"].astype(str) == query.obs["pop"].astype(str)).mean()
    assert acc >= 0.9
    conf = query.obs["scrobust_confidence"]
    assert conf.between(1 / 3, 1).all() and conf.mean() > 0.6
    assert ft.classes == ["P0", "P1", "P2"] and ft.is_fine_tuned
    # the given model was copied, not fine-tuned in place
    for k, v in base.network.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not base.is_fine_tuned


def test_class_weights_balanced_hand_computed_and_reach_the_loss(annotated, tmp_path):
    from sctorch.scrobust._data import _class_weights

    labels = pd.Series(["b", "a", "a", "a", "c", "c"])
    # n / (n_classes × n_c) = 6 / (3 × [3, 1, 2]) for the sorted classes a, b, c
    np.testing.assert_allclose(_class_weights(labels, "balanced"), [2 / 3, 2.0, 1.0])
    np.testing.assert_allclose(_class_weights(labels, {"a": 1, "b": 5, "c": 2}), [1, 5, 2])
    assert _class_weights(labels, None) is None
    with pytest.raises(ValueError, match="no weight for 1 reference label"):
        _class_weights(labels, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="class_weight must be 'balanced'"):
        _class_weights(labels, "inverse")
    with pytest.raises(ValueError, match="finite and > 0"):
        _class_weights(labels, {"a": 1, "b": 0, "c": 1})

    base, _, _, ref, query = annotated
    r = ref[ref.obs["pop"].astype(str) != "P2"].copy()  # unbalanced: keep 5 cells of P2
    r = ad.concat([r, ref[ref.obs["pop"].astype(str) == "P2"][:5]])
    kw = dict(
        labels_key="pop",
        model=base,
        n_tokens=36,
        epochs=2,
        batch_size=16,
        lr=2e-3,
        rng=0,
        progress=False,
        copy=True,
    )
    bal = sct.tl.scrobust_annotate(query, r, **kw)
    w = dict(
        zip(["P0", "P1", "P2"], _class_weights(r.obs["pop"].astype(str), "balanced"), strict=True)
    )
    same = sct.tl.scrobust_annotate(query, r, class_weight=w, **kw)
    plain = sct.tl.scrobust_annotate(query, r, class_weight=None, **kw)
    np.testing.assert_array_equal(bal.obs["scrobust_confidence"], same.obs["scrobust_confidence"])
    assert not np.allclose(bal.obs["scrobust_confidence"], plain.obs["scrobust_confidence"])
    assert bal.uns["scrobust_label"]["params"]["class_weight"] == "balanced"
    same.write_h5ad(tmp_path / "weighted.h5ad")  # the recorded mapping is storable
    back = ad.read_h5ad(tmp_path / "weighted.h5ad").uns["scrobust_label"]["params"]
    assert back["class_weight"]["P2"] == pytest.approx(w["P2"])


def test_annotation_with_saved_finetuned_model(tmp_path, annotated):
    _, _, ft, _, query = annotated
    ft.save(tmp_path / "ft.safetensors")
    m = sct.tl.ScRobustModel.load(tmp_path / "ft.safetensors")
    np.testing.assert_array_equal(m.gene_detection, ft.gene_detection)  # stored as float64
    q = sct.tl.scrobust_annotate(query, model=m, n_tokens=36, progress=False, copy=True)
    assert (q.obs["scrobust_label"] == query.obs["scrobust_label"]).mean() > 0.95


def test_annotation_query_vocabulary_mismatch(annotated):
    _, _, ft, _, query = annotated
    q = query.copy()
    q.var_names = [g if i % 3 else f"X{i}" for i, g in enumerate(q.var_names)]  # 12 unknown
    with pytest.warns(UserWarning, match="12 of 36 genes of adata_query are not in the model"):
        sct.tl.scrobust_annotate(q, model=ft, n_tokens=36, progress=False)
    assert q.obs["scrobust_label"].notna().all()
    assert q.uns["scrobust_label"]["params"]["n_query_genes_skipped"] == 12
    q2 = query.copy()
    q2.var_names = [f"X{i}" for i in range(q2.n_vars)]
    snap = snapshot(q2)
    with pytest.raises(ValueError, match="shares only 0 of its 36 genes"):
        sct.tl.scrobust_annotate(q2, model=ft, progress=False)
    assert_unchanged(q2, snap)
    q3 = query.copy()  # names that differ only in case: the error says how to rename them
    q3.var_names = [g.swapcase() for g in q3.var_names]
    with pytest.raises(ValueError, match=r"case-sensitively: 36 genes match.*str\.\w+\(\)"):
        sct.tl.scrobust_annotate(q3, model=ft, progress=False)


def test_annotation_bad_inputs(annotated):
    _, _, ft, ref, query = annotated
    q = query.copy()
    for k in ("scrobust_label", "scrobust_confidence"):
        del q.obs[k]
    del q.uns["scrobust_label"]
    snap = snapshot(q)
    kw = dict(epochs=1, progress=False, model=ft)
    with pytest.raises(KeyError, match=r"'celltype' not found in adata_ref\.obs"):
        sct.tl.scrobust_annotate(q, ref, labels_key="celltype", **kw)
    with pytest.raises(ValueError, match="labels_key= is required"):
        sct.tl.scrobust_annotate(q, ref, **kw)
    r = ref.copy()
    r.obs["one"] = "T"
    with pytest.raises(ValueError, match="single class"):
        sct.tl.scrobust_annotate(q, r, labels_key="one", **kw)
    r.obs["nan"] = r.obs["pop"].astype(object)
    r.obs.iloc[3, r.obs.columns.get_loc("nan")] = np.nan
    with pytest.raises(ValueError, match="1 missing"):
        sct.tl.scrobust_annotate(q, r, labels_key="nan", **kw)
    with pytest.raises(ValueError, match="Give adata_ref"):
        sct.tl.scrobust_annotate(q, model=None, progress=False)
    q_empty = q.copy()
    X = q_empty.X.toarray()
    X[2] = 0
    q_empty.X = sparse.csr_matrix(X)
    snap_e = snapshot(q_empty)
    with pytest.raises(ValueError, match="zero total counts"):
        sct.tl.scrobust_annotate(q_empty, model=ft, progress=False)
    assert_unchanged(q_empty, snap_e)
    assert_unchanged(q, snap)


def test_bad_inputs_pretrain_and_embed(two_pops, model2):
    a = two_pops.copy()
    snap = snapshot(a)
    with pytest.raises(ValueError, match="non-integer"):
        b = a.copy()
        b.X = b.X * 0.5
        sct.tl.scrobust_pretrain(b, epochs=1, **TINY)
    # a cell whose only non-zero genes are outside the vocabulary
    c = a.copy()
    c.var_names = [*list(c.var_names[:-1]), "NEW"]
    X = c.X.toarray()
    X[5] = 0
    X[5, -1] = 4
    c.X = sparse.csr_matrix(X)
    snap_c = snapshot(c)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no non-zero expression"):
        sct.tl.scrobust_embed(c, model2, progress=False)
    assert_unchanged(c, snap_c)
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        sct.tl.scrobust_embed(a, model2, layer="counts", progress=False)
    with pytest.raises(ValueError, match="d_model=30 must be divisible"):
        sct.tl.scrobust_pretrain(a, **dict(TINY, d_model=30))
    with pytest.raises(ValueError, match="gene_order"):
        sct.tl.scrobust_embed(a, model2, gene_order="hvg", progress=False)
    assert_unchanged(a, snap)


# ----------------------------------------------------------------------------- vocab file
def test_whole_human_vocabulary_file():
    require_data("scrobust_vocab/whole_human_vocab.csv")
    path = sct.datasets.data_dir() / "scrobust_vocab" / "whole_human_vocab.csv"
    df = pd.read_csv(path)
    a = sct.datasets.ifnb_pbmc(bundled=True)[:64, :300].copy()
    a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    known = a.var_names.isin(df["SYMBOL"])
    with pytest.warns(UserWarning, match=f"{int((~known).sum())} of 300 genes"):
        m = sct.tl.scrobust_pretrain(a, vocab=path, epochs=1, rng=0, **TINY)
    assert len(m.vocab) == len(df) and m.cls_id == 3 and m.pad_id == 0
    sym_to_id = dict(zip(df["SYMBOL"], df["ID"], strict=True))
    g = a.var_names[known][:5]
    np.testing.assert_array_equal(m.token_ids(g), [sym_to_id[x] for x in g])
    assert m.network.encoder.tokens.weight.shape == (len(df), 32)


# ----------------------------------------------------------------------------- pathways
def test_pathway_scores_formula_and_labels(tmp_path, two_pops, model2):
    a = two_pops.copy()
    sets = {
        "setA": [f"G{j}" for j in range(8)] + ["NOT_A_GENE"],
        "setB": [f"G{j}" for j in range(8, 16)],
        "tiny": ["G30"],
    }
    with pytest.warns(UserWarning, match="1 gene set"):
        sct.tl.scrobust_pathway_scores(a, sets, model2)
    df = a.obsm["X_scrobust_pathways"]
    assert list(df.columns) == ["setA", "setB"] and (df.index == a.obs_names).all()
    # eqs. 16–20 by hand for one cell and one set
    W = model2.network.encoder.tokens.weight.detach().numpy().astype(float)
    W = W[model2.token_ids(sets["setB"])]
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    x = np.log1p(a.X[5].toarray().ravel() / a.X[5].sum() * 1e4)[8:16]
    p, c = W.sum(0), (x[:, None] * W).sum(0)
    assert df.iloc[5, 1] == pytest.approx(c @ p / (p @ p), rel=1e-4)
    assert a.uns["X_scrobust_pathways"]["genes_used"]["setA"] == sets["setA"][:8]
    labels = (
        a.obs["scrobust_pathway_label"]
        .astype(str)
        .str.replace("set", "P")
        .map({"PA": "P0", "PB": "P1"})
    )
    assert (labels == a.obs["pop"].astype(str)).mean() > 0.9
    # a GMT file gives the same scores
    gmt = tmp_path / "s.gmt"
    gmt.write_text(
        "setA\tna\t" + "\t".join(sets["setA"]) + "\nsetB\tna\t" + "\t".join(sets["setB"]) + "\n"
    )
    b = sct.tl.scrobust_pathway_scores(two_pops, gmt, model2, copy=True)
    np.testing.assert_allclose(b.obsm["X_scrobust_pathways"].to_numpy(), df.to_numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="None of the 1 gene sets"):
        sct.tl.scrobust_pathway_scores(two_pops, {"x": ["nope"]}, model2)


# ----------------------------------------------------------------------------- markers
def test_marker_genes_rank_genes_groups_shape(two_pops, model2):
    a = two_pops.copy()
    sct.tl.scrobust_marker_genes(a, "pop", model2, n_genes=5, progress=False)
    rec = a.uns["scrobust_markers"]
    assert rec["params"]["groupby"] == "pop" and rec["names"].dtype.names == ("P0", "P1")
    df = sc.get.rank_genes_groups_df(a, "P0", key="scrobust_markers")
    assert list(df.columns[:3]) == ["names", "scores", "logfoldchanges"] and len(df) == 5
    assert (np.diff(df["scores"]) <= 0).all()
    # hand aggregation of CLS attention for the top gene of P0
    tok = _prepare(a, model2.token_ids, layer=None, input_scale="counts", min_shared_genes=1)
    b = _Batcher(tok, pad_id=0, cls_id=3, device="cpu")
    ids, vals, pad = b.select(torch.arange(80), 800, rank=_unique_rank(tok.detection(45)))
    with torch.no_grad():
        w = model2.network.encoder.cls_attention(ids, vals, pad)
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, rtol=1e-5)
    gid = model2.token_ids([df["names"][0]])[0]
    per_cell = (w * (ids == gid)).sum(1).numpy()
    in0 = (a.obs["pop"] == "P0").to_numpy()
    assert df["scores"][0] == pytest.approx(per_cell[in0].mean() - per_cell[~in0].mean(), rel=1e-4)
    # planted markers (G0–G7 for P0, G8–G15 for P1) are found
    top0 = set(rec["names"]["P0"])
    top1 = set(rec["names"]["P1"])
    assert len(top0 & {f"G{j}" for j in range(8)}) >= 4
    assert len(top1 & {f"G{j}" for j in range(8, 16)}) >= 4
    with pytest.raises(KeyError, match="groupby 'nope'"):
        sct.tl.scrobust_marker_genes(a, "nope", model2, progress=False)


def test_import_does_not_load_torch():
    code = "import sys, sctorch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- model lifecycle
def test_history_is_flat_per_epoch(annotated, model2):
    _, _, ft, _, _ = annotated
    assert sorted(model2.history) == ["pretrain_contrastive", "pretrain_loss", "pretrain_mse"]
    h = ft.history
    assert len(h["pretrain_loss"]) == 2 and len(h["finetune_loss"]) == 6
    assert len(h["finetune_accuracy"]) == 6 and 0 <= min(h["finetune_accuracy"])
    assert h["finetune_accuracy"][-1] > h["finetune_accuracy"][0]
    np.testing.assert_allclose(
        np.add(h["pretrain_contrastive"], h["pretrain_mse"]), h["pretrain_loss"], rtol=1e-5
    )


def test_finetuned_round_trip_annotates_identically(tmp_path, annotated):
    _, _, ft, _, query = annotated
    path = tmp_path / "ft.safetensors"
    ft.save(path)
    m = sct.models.load(path, device="cpu")  # dispatch on the stored class
    assert type(m) is sct.tl.ScRobustModel and m.classes == ft.classes
    assert m.config == ft.config and m.config["n_classes"] == 3
    kw = dict(n_tokens=36, progress=False, copy=True, device="cpu")
    a = sct.tl.scrobust_annotate(query, model=ft, **kw)
    b = sct.tl.scrobust_annotate(query, model=m, **kw)
    np.testing.assert_array_equal(a.obs["scrobust_label"], b.obs["scrobust_label"])
    np.testing.assert_array_equal(a.obs["scrobust_confidence"], b.obs["scrobust_confidence"])
    np.testing.assert_array_equal(
        m.predict(query, n_tokens=36, progress=False), a.obs["scrobust_label"].astype(str)
    )


def test_reordered_vocabulary_or_wrong_classes_do_not_load(tmp_path, model2, annotated):
    from sctorch.models import ModelFileError

    m = sct.tl.ScRobustModel.load(_saved(model2, tmp_path / "a.safetensors"))
    m.genes = [*m.genes[:5], m.genes[6], m.genes[5], *m.genes[7:]]  # two genes swapped
    with pytest.raises(ModelFileError, match="not the one the model was trained with"):
        sct.tl.ScRobustModel.load(_saved(m, tmp_path / "b.safetensors"))
    m.genes = [m.genes[3], *m.genes[:3], *m.genes[4:]]  # CLS moved to id 0
    with pytest.raises(ModelFileError, match="special token PAD at id"):
        sct.tl.ScRobustModel.load(_saved(m, tmp_path / "c.safetensors"))
    m.genes = m.genes[:-1]
    with pytest.raises(ModelFileError, match="token embedding has 45 rows"):
        sct.tl.ScRobustModel.load(_saved(m, tmp_path / "d.safetensors"))
    ft = sct.tl.ScRobustModel.load(_saved(annotated[2], tmp_path / "ft.safetensors"))
    ft.classes = ft.classes[:2]
    with pytest.raises(ModelFileError, match="2 classes but its classifier has 3 outputs"):
        sct.tl.ScRobustModel.load(_saved(ft, tmp_path / "e.safetensors"))
    ft.classes = [*ft.classes, "P2"]
    ft.gene_detection = ft.gene_detection[:-1]
    with pytest.raises(ModelFileError, match="gene_detection has 40 values for 41"):
        sct.tl.ScRobustModel.load(_saved(ft, tmp_path / "f.safetensors"))


def _saved(model, path):
    model.save(path)
    return path


def test_callers_random_streams_are_left_unchanged(two_pops):
    torch.manual_seed(123)
    np.random.seed(123)
    expect_t, expect_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    m = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=5, **dict(TINY, dropout=0.1))
    r = two_pops.copy()
    sct.tl.scrobust_annotate(
        r, two_pops, labels_key="pop", model=m, n_tokens=20, epochs=1, rng=5, progress=False
    )
    torch.testing.assert_close(torch.rand(3), expect_t, rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expect_np)


# ----------------------------------------------------------------------------- input scale
def test_raw_counts_declared_log1p_are_refused(two_pops, model2):
    a = two_pops.copy()
    assert a.X.max() > 10  # integer counts
    snap = snapshot(a)
    with pytest.raises(ValueError, match="raw counts, but input_scale='log1p'"):
        sct.tl.scrobust_embed(a, model2, input_scale="log1p", progress=False)
    b = a.copy()
    b.X = b.X * 40.5  # not integers, far above any log1p value
    with pytest.raises(ValueError, match="log1p-normalised expression stays below 30"):
        sct.tl.scrobust_embed(b, model2, input_scale="log1p", progress=False)
    for fn in (
        lambda x: sct.tl.scrobust_pathway_scores(
            x, {"s": ["G0", "G1"]}, model2, input_scale="log1p"
        ),
        lambda x: sct.tl.scrobust_marker_genes(
            x, "pop", model2, input_scale="log1p", progress=False
        ),
    ):
        with pytest.raises(ValueError, match="input_scale='log1p'"):
            fn(a)
    assert_unchanged(a, snap)
    # valid log1p input gives the same embedding as the counts it came from
    c = a.copy()
    c.X = sparse.csr_matrix(np.log1p(a.X.toarray() / a.X.toarray().sum(1, keepdims=True) * 1e4))
    e1 = sct.tl.scrobust_embed(a, model2, progress=False, copy=True).obsm["X_scrobust"]
    e2 = sct.tl.scrobust_embed(c, model2, input_scale="log1p", progress=False, copy=True).obsm[
        "X_scrobust"
    ]
    e3 = sct.tl.scrobust_embed(c, model2, input_scale="auto", progress=False, copy=True).obsm[
        "X_scrobust"
    ]
    np.testing.assert_allclose(e2, e1, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(e3, e2)


# ----------------------------------------------------------------------------- h5ad-safe sets
def test_pathway_names_with_slash_survive_h5ad(tmp_path, two_pops, model2):
    import warnings

    a = two_pops.copy()
    sets = {
        "NK/ILC": [f"G{j}" for j in range(8)],
        "NK_ILC": [f"G{j}" for j in range(8, 16)],
        "B": [f"G{j}" for j in range(16, 24)],
    }
    sct.tl.scrobust_pathway_scores(a, sets, model2)
    assert list(a.obsm["X_scrobust_pathways"].columns) == ["NK_ILC-1", "NK_ILC", "B"]
    assert list(a.uns["X_scrobust_pathways"]["names"]) == list(sets)
    assert set(a.obs["scrobust_pathway_label"].cat.categories) == set(sets)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a.write_h5ad(tmp_path / "p.h5ad")
    assert not [w for w in rec if "slash" in str(w.message).lower()]
    b = ad.read_h5ad(tmp_path / "p.h5ad")
    pd.testing.assert_frame_equal(b.obsm["X_scrobust_pathways"], a.obsm["X_scrobust_pathways"])
    used = b.uns["X_scrobust_pathways"]["genes_used"]
    assert sorted(used) == ["B", "NK_ILC", "NK_ILC-1"]  # flat: not split into groups
    assert list(used["NK_ILC-1"]) == sets["NK/ILC"]
    assert list(b.uns["X_scrobust_pathways"]["names"]) == list(sets)
    assert (b.obs["scrobust_pathway_label"] == a.obs["scrobust_pathway_label"]).all()
    from sctorch.scrobust._pathways import h5ad_safe_names

    assert h5ad_safe_names(["a/b", "a_b", "a_b-1", "c/d/e"]) == ["a_b-2", "a_b", "a_b-1", "c_d_e"]


def test_model_api_without_anndata_keys(two_pops):
    from sctorch.scrobust import ScRobustConfig, ScRobustModel

    vocab = _build_vocab(None, two_pops.var_names)
    cfg = ScRobustConfig(d_model=16, n_heads=2, dropout=0.0, head_dropout=0.0)
    m = ScRobustModel(vocab=vocab, config=cfg)  # the network part of the method's settings
    assert type(m.config).__name__ == "ScRobustNetworkConfig" and m.config.d_model == 16
    with pytest.raises(ValueError, match="batch_size >= 2"):
        m.fit(two_pops, epochs=1, batch_size=1, progress=False)
    snap = snapshot(two_pops)
    assert m.fit(two_pops, epochs=1, lr=5e-3, progress=False) is m
    assert m.config.vocab_size == 45 and m.config.n_layers == 1
    assert m.config.dim_feedforward == 64 and m.config.input_scale == "counts"
    E = m.embed(two_pops, n_tokens=20, progress=False)
    assert E.shape == (80, 16) and E.dtype == np.float32
    ft = m.finetune(two_pops, two_pops.obs["pop"], n_tokens=20, epochs=1, lr=5e-3, progress=False)
    assert ft is not m and ft.is_fine_tuned and not m.is_fine_tuned
    P = ft.predict_proba(two_pops, n_tokens=20, progress=False)
    assert P.shape == (80, 2)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="no classifier"):
        m.predict_proba(two_pops, progress=False)
    with pytest.raises(ValueError, match="3 labels for 80"):
        m.finetune(two_pops, ["a", "b", "a"], epochs=1, progress=False)
    assert_unchanged(two_pops, snap)


# ----------------------------------------------------------------------------- issue 14
def test_rank_values_hand_computed():
    from sctorch.scrobust._data import rank_values

    # cell 0: values 1, 1, 3 -> ties take positions 0-1, 3 takes 2; cell 1: a single value
    indptr = np.array([0, 3, 4])
    out = rank_values(indptr, np.array([1.0, 3.0, 1.0, 7.0], dtype=np.float32))
    np.testing.assert_allclose(out, [1 + 2 / 6, 1 + 5 / 6, 1 + 2 / 6, 1.5])
    # invariant to the library size (a monotone transform of the cell's values)
    np.testing.assert_allclose(rank_values(indptr, np.array([5.0, 15, 5, 1])), out)


def test_thinned_views_keep_depth_apart(two_pops):
    from sctorch.scrobust._data import thin_counts

    model = sct.tl.scrobust_pretrain(two_pops, epochs=1, rng=0, **TINY)
    tok = model.tokens(two_pops)
    assert tok.counts is not None and tok.counts.sum() == two_pops.X.sum()
    rng = np.random.default_rng(0)
    t = thin_counts(tok.counts, tok.indptr, (0.5, 0.5), rng)
    assert np.all(t <= tok.counts) and abs(t.sum() / tok.counts.sum() - 0.5) < 0.02
    b = model.batcher(tok, "cpu")
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(8)
    ids, vals, pad = b.select_thinned(rows, 50, (0.1, 1.0), generator=g)
    assert torch.all(ids[:, 0] == model.cls_id) and not pad[:, 0].any()
    # only genes the cell expresses, each once, and values log1p of thinned counts
    for i in range(8):
        own = set(tok.ids[tok.indptr[i] : tok.indptr[i + 1]].tolist())
        got = ids[i, 1:][~pad[i, 1:]].tolist()
        assert set(got) <= own and len(got) == len(set(got))
    assert (vals[:, 1:][~pad[:, 1:]] > 0).all()


def test_knn_agreement_known_values():
    from sctorch.scrobust._select import knn_agreement

    rng = np.random.default_rng(0)
    e = rng.normal(size=(200, 8))
    assert knn_agreement(e, e.copy(), k=10) == 1.0
    assert knn_agreement(e, rng.normal(size=(200, 8)), k=10) < 0.15


def test_wide_head_is_balanced_logistic_regression():
    # the wide path alone is scikit-learn's balanced logistic regression on the reference
    # HVGs: same predictions on the query
    from sklearn.linear_model import LogisticRegression

    full = planted(n_per=40, n_pops=3, n_markers=4, n_genes=30, seed=5)
    ref, query = full[::2].copy(), full[1::2].copy()
    base = sct.tl.scrobust_pretrain(ref, epochs=1, rng=0, **TINY)
    ft = sct.tl.scrobust_annotate(
        query,
        ref,
        labels_key="pop",
        model=base,
        head="wide",
        rng=0,
        progress=False,
        return_model=True,
    )
    assert ft.config.head == "wide" and ft.config.n_wide == 30

    def lognorm(a):
        X = a.X.toarray()
        return np.log1p(X / X.sum(1, keepdims=True) * 1e4)

    lr = LogisticRegression(max_iter=1000, class_weight="balanced")
    lr.fit(lognorm(ref), ref.obs["pop"].astype(str))
    np.testing.assert_array_equal(
        query.obs["scrobust_label"].astype(str), lr.predict(lognorm(query))
    )


def test_wide_path_chooses_its_l2_strength_by_out_of_fold_macro_f1():
    """``fit_wide(c=None)``: the C of the grid whose 5-fold out-of-fold predictions score the
    best macro-F1, recomputed here with scikit-learn alone; a given C is used as is."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from sctorch.scrobust._select import WIDE_C_GRID, fit_wide

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 300))  # 300 noise features, two informative ones
    X[:, 0] += 1.2 * (y == 1)
    X[:, 1] += 1.2 * (y == 2)
    W = sparse.csr_matrix(X)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    f1 = {
        c: f1_score(
            y,
            cross_val_predict(LogisticRegression(C=c, max_iter=1000), W, y, cv=cv),
            average="macro",
        )
        for c in WIDE_C_GRID
    }
    coef, _, oof, c = fit_wide(W, y, 3, None, 0, oof=True, c=None)
    assert c == max(WIDE_C_GRID, key=f1.get)
    assert f1[c] > f1[1.0]  # with this many noise genes, sklearn's C=1 over-fits
    assert f1_score(y, oof.argmax(1), average="macro") == pytest.approx(f1[c])
    ref = LogisticRegression(C=c, max_iter=1000).fit(W, y)
    np.testing.assert_allclose(coef, ref.coef_, rtol=1e-4, atol=1e-5)
    coef1, _, none, c1 = fit_wide(W, y, 3, None, 0, oof=False, c=1.0)
    assert c1 == 1.0 and none is None
    np.testing.assert_allclose(
        coef1, LogisticRegression(max_iter=1000).fit(W, y).coef_, rtol=1e-4, atol=1e-5
    )


def test_wide_and_deep_gate_and_round_trip(tmp_path):
    full = planted(n_per=40, n_pops=3, n_markers=4, n_genes=30, seed=6)
    ref, query = full[::2].copy(), full[1::2].copy()
    base = sct.tl.scrobust_pretrain(ref, epochs=1, rng=0, **TINY)
    ft = sct.tl.scrobust_annotate(
        query, ref, labels_key="pop", model=base, epochs=2, rng=0, progress=False, return_model=True
    )
    assert ft.config.head == "wide_and_deep"
    gate = ft.history["finetune_gate"]  # wide F1, CE, then full F1, CE on held-out cells
    last = ft.network.classifier.net[-1].weight
    kept = gate[2] > gate[0] and gate[3] < gate[1]
    assert bool(last.abs().sum() > 0) == kept
    acc = (query.obs["scrobust_label"].astype(str) == query.obs["pop"].astype(str)).mean()
    assert acc >= 0.9
    ft.save(tmp_path / "ft.safetensors")
    back = sct.models.ScRobustModel.load(tmp_path / "ft.safetensors")
    np.testing.assert_array_equal(back.wide_ids, ft.wide_ids)
    np.testing.assert_allclose(
        back.predict_proba(query, progress=False),
        ft.predict_proba(query, progress=False),
        atol=1e-6,
    )
    # the wide path's L2 strength: chosen from the grid by default, kept in the file; a
    # given value reaches the regression through scrobust_annotate's settings
    from sctorch.scrobust._select import WIDE_C_GRID

    assert ft.history["wide_c"][0] in WIDE_C_GRID
    assert back.history["wide_c"] == ft.history["wide_c"]
    kw = dict(labels_key="pop", model=base, head="wide", rng=0, progress=False, return_model=True)
    weak = sct.tl.scrobust_annotate(query, ref, wide_c=3.0, **kw)
    strong = sct.tl.scrobust_annotate(query, ref, wide_c=0.03, **kw)
    assert weak.history["wide_c"] == [3.0] and strong.history["wide_c"] == [0.03]
    w3, w003 = (m.network.wide.weight.abs().sum().item() for m in (weak, strong))
    assert w003 < w3  # a stronger L2 penalty shrinks the weights


def test_presets_and_bad_arguments(two_pops):
    with pytest.raises(ValueError, match="preset"):
        sct.tl.scrobust_pretrain(two_pops, preset="fast", **TINY)
    with pytest.raises(ValueError, match="view_thinning"):
        sct.tl.scrobust_pretrain(two_pops, view_thinning=(0.5, 2.0), **TINY)
    with pytest.raises(ValueError, match="token_values"):
        sct.tl.scrobust_pretrain(two_pops, token_values="bins", **TINY)
    m = sct.tl.scrobust_pretrain(two_pops, epochs=2, select="knn", rng=0, **TINY)
    agree = m.history["pretrain_knn_agreement"]
    assert len(agree) == 2 and all(0 < v <= 1 for v in agree)
    m = sct.tl.scrobust_pretrain(two_pops, epochs=2, select="contrastive", rng=0, **TINY)
    assert len(m.history["pretrain_val_contrastive"]) == 2


def test_default_pretraining_length_is_a_budget_of_cells():
    from sctorch.scrobust import ScRobustConfig
    from sctorch.scrobust._config import budget_epochs

    # epochs=None: ceil(320,000 / n_obs) epochs, at least 1, at most 200
    assert [budget_epochs(n) for n in (2800, 1464, 100_000, 10**7, 1)] == [115, 200, 4, 1, 200]
    assert ScRobustConfig.preset("default").epochs is None
    assert ScRobustConfig.preset("default").pretrain_epochs(2800) == 115
    assert ScRobustConfig.preset("paper").pretrain_epochs(2800) == 10
    assert ScRobustConfig(epochs=7).pretrain_epochs(2800) == 7
    # the network part keeps the pre-training data's settings
    net = ScRobustConfig.preset("paper").network_config(46)
    assert (net.vocab_size, net.d_model, net.view_thinning, net.n_genes_per_view) == (
        46,
        512,
        None,
        None,
    )


# ----------------------------------------------------------------------------- issue 22
def test_presets_are_named_config_instances():
    from sctorch.scrobust import ScRobustConfig

    assert sct.tl.ScRobustConfig is ScRobustConfig
    assert set(ScRobustConfig.PRESETS) == {"default", "paper"}
    default, paper = ScRobustConfig.preset("default"), ScRobustConfig.preset("paper")
    assert default == ScRobustConfig()  # the field defaults are the default preset
    assert isinstance(paper, ScRobustConfig) and paper is not ScRobustConfig.PRESETS["paper"]
    assert (paper.view_thinning, paper.select, paper.n_genes_per_view) == (
        None,
        "contrastive",
        None,
    )
    assert (paper.d_model, paper.lr, paper.epochs) == (512, 5e-5, 10)
    assert (paper.head, paper.finetune_epochs, paper.finetune_lr) == ("deep", 20, 5e-5)
    assert (default.view_thinning, default.select, default.n_genes_per_view) == (
        (0.1, 1.0),
        None,
        50,
    )
    assert (default.d_model, default.lr, default.head) == (64, 1e-3, "wide_and_deep")
    assert (default.finetune_epochs, default.validation_fraction) == (10, 0.1)
    for preset in ScRobustConfig.PRESETS.values():
        preset.validate()
    with pytest.raises(ValueError, match="validation_fraction"):
        ScRobustConfig(validation_fraction=1.0).validate()
    with pytest.raises(ValueError, match="head"):
        ScRobustConfig(head="linear").validate()
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=8"):
        ScRobustConfig(d_model=30).validate()


def test_config_instance_dict_and_keywords_precedence(two_pops):
    from sctorch.scrobust import ScRobustConfig

    tiny = {k: v for k, v in TINY.items() if k != "progress"}
    kw = dict(rng=0, progress=False)
    # a dict updates the preset; explicit keywords win over it
    m = sct.tl.scrobust_pretrain(
        two_pops, preset="paper", config=dict(tiny, epochs=1, d_model=16), d_model=8, **kw
    )
    assert m.config.d_model == 8 and m.config.view_thinning is None  # the paper's views
    assert len(m.history["pretrain_loss"]) == 1
    assert len(m.history["pretrain_val_contrastive"]) == 1  # the paper's selection
    # an instance replaces the preset
    cfg = ScRobustConfig(epochs=1, n_genes_per_view=8, **tiny)
    m = sct.tl.scrobust_pretrain(two_pops, config=cfg, **kw)
    assert m.config.view_thinning == (0.1, 1.0) and m.config.n_genes_per_view == 8
    m2 = sct.tl.scrobust_pretrain(two_pops, config=cfg, n_genes_per_view=6, **kw)
    assert m2.config.n_genes_per_view == 6 and cfg.n_genes_per_view == 8  # not changed
    # the same settings as keywords give the same model
    m3 = sct.tl.scrobust_pretrain(two_pops, epochs=1, n_genes_per_view=8, **tiny, **kw)
    for k, v in m.network.state_dict().items():
        assert torch.equal(v, m3.network.state_dict()[k]), k
    with pytest.raises(ValueError, match="not both"):
        sct.tl.scrobust_pretrain(two_pops, preset="paper", config=cfg, **kw)
    # annotation: epochs / lr / batch_size / patience are the fine-tuning settings
    ft = sct.tl.scrobust_annotate(
        two_pops,
        two_pops,
        labels_key="pop",
        model=m,
        config={"finetune_epochs": 3, "head": "deep"},
        epochs=2,
        n_tokens=20,
        validation_fraction=0,
        progress=False,
        return_model=True,
    )
    assert len(ft.history["finetune_loss"]) == 2
    params = two_pops.uns["scrobust_label"]["params"]
    assert params["finetune_epochs"] == 2 and params["n_tokens"] == 20
    with pytest.raises(TypeError, match="both epochs= and finetune_epochs="):
        sct.tl.scrobust_annotate(
            two_pops, two_pops, labels_key="pop", model=m, epochs=1, finetune_epochs=1
        )
    del two_pops.obs["scrobust_label"], two_pops.obs["scrobust_confidence"]
    del two_pops.uns["scrobust_label"]


def test_unknown_keyword_and_unused_settings(two_pops, model2):
    with pytest.raises(
        TypeError, match=r"'d_modle' is not a setting of ScRobustConfig\. Did you mean 'd_model'"
    ):
        sct.tl.scrobust_pretrain(two_pops, d_modle=16)
    with pytest.raises(TypeError, match="not a setting"):
        sct.tl.scrobust_embed(two_pops, model2, n_neighbours=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        sct.tl.scrobust_pathway_scores(two_pops, {"s": ["G0", "G1"]}, model2, colour=1)
    a = two_pops.copy()
    with pytest.warns(UserWarning, match="d_model is not used: model= is given"):
        sct.tl.scrobust_embed(a, model2, d_model=16, progress=False)
    with pytest.warns(UserWarning, match="head is not used: scrobust_pretrain only pre-trains"):
        sct.tl.scrobust_pretrain(two_pops, epochs=1, head="deep", **TINY)


def test_renamed_keywords_warn_and_work(two_pops, model2, annotated):
    a, b = two_pops.copy(), two_pops.copy()
    sct.tl.scrobust_embed(a, model2, n_tokens=12, progress=False)
    with pytest.warns(FutureWarning, match="n_genes= is now called n_tokens="):
        sct.tl.scrobust_embed(b, model2, n_genes=12, progress=False)
    np.testing.assert_array_equal(a.obsm["X_scrobust"], b.obsm["X_scrobust"])
    _, _, ft, ref, query = annotated
    kw = dict(labels_key="pop", model=ft, epochs=1, rng=0, progress=False, copy=True)
    new = sct.tl.scrobust_annotate(query, ref, n_tokens=20, validation_fraction=0.2, **kw)
    with pytest.warns(FutureWarning, match="val_fraction= is now called validation_fraction="):
        with pytest.warns(FutureWarning, match="n_genes= is now called n_tokens="):
            old = sct.tl.scrobust_annotate(query, ref, n_genes=20, val_fraction=0.2, **kw)
    np.testing.assert_array_equal(new.obs["scrobust_confidence"], old.obs["scrobust_confidence"])
    with pytest.warns(FutureWarning, match="n_genes= is now called n_tokens="):
        p_old = ft.predict_proba(query, n_genes=20, progress=False)
    np.testing.assert_array_equal(p_old, ft.predict_proba(query, n_tokens=20, progress=False))
    sets = {"s1": ["G0", "G1", "G2"], "s2": ["G8", "G9", "G10"]}
    c = two_pops.copy()
    with pytest.warns(FutureWarning, match="label_key= is now called labels_key_added="):
        sct.tl.scrobust_pathway_scores(c, sets, model2, label_key="lab")
    d = sct.tl.scrobust_pathway_scores(two_pops, sets, model2, labels_key_added="lab", copy=True)
    assert (c.obs["lab"] == d.obs["lab"]).all() and "scrobust_pathway_label" not in c.obs
    # the former sentinels
    with pytest.warns(FutureWarning, match="select='none' is now select=None"):
        m = sct.tl.scrobust_pretrain(two_pops, epochs=1, select="none", rng=0, **TINY)
    with pytest.warns(FutureWarning, match="view_thinning=False is now view_thinning=None"):
        m = sct.tl.scrobust_pretrain(two_pops, epochs=1, view_thinning=False, rng=0, **TINY)
    assert m.config.view_thinning is None
    with pytest.warns(FutureWarning, match="d_model=None"):
        m = sct.tl.scrobust_pretrain(two_pops, **dict(TINY, d_model=None, epochs=1))
    assert m.config.d_model == 64  # the preset's


def test_random_state_is_the_alias_of_rng(two_pops, model2):
    kw = dict(TINY, epochs=1, n_genes_per_view=8)
    m1 = sct.tl.scrobust_pretrain(two_pops, rng=3, **kw)
    m2 = sct.tl.scrobust_pretrain(two_pops, random_state=3, **kw)
    for k, v in m1.network.state_dict().items():
        assert torch.equal(v, m2.network.state_dict()[k]), k
    e1 = sct.tl.scrobust_embed(
        two_pops, model2, gene_order="random", rng=4, progress=False, copy=True
    )
    e2 = sct.tl.scrobust_embed(
        two_pops, model2, gene_order="random", random_state=4, progress=False, copy=True
    )
    np.testing.assert_array_equal(e1.obsm["X_scrobust"], e2.obsm["X_scrobust"])
    with pytest.raises(TypeError, match="both rng= and its alias random_state="):
        sct.tl.scrobust_embed(two_pops, model2, rng=1, random_state=1)
    import inspect

    for f in (sct.tl.scrobust_pretrain, sct.tl.scrobust_embed, sct.tl.scrobust_annotate):
        params = inspect.signature(f).parameters
        assert "random_state" in params and len(params) <= 15, f.__name__
        assert "    random_state\n" in f.__doc__ and "{" not in f.__doc__, f.__name__


def test_return_rule(annotated):
    _, _, ft, ref, query = annotated
    kw = dict(model=ft, progress=False)
    q = query.copy()
    assert sct.tl.scrobust_annotate(q, **kw) is None and "scrobust_label" in q.obs
    c = sct.tl.scrobust_annotate(query, copy=True, **kw)
    assert isinstance(c, ad.AnnData) and c is not query
    q2 = query.copy()
    m = sct.tl.scrobust_annotate(q2, return_model=True, **kw)
    assert m is ft and "scrobust_label" in q2.obs
    both = sct.tl.scrobust_annotate(query, copy=True, return_model=True, **kw)
    assert isinstance(both, tuple) and isinstance(both[0], ad.AnnData) and both[1] is ft
    # scrobust_pretrain returns the model; the others None in place or the copy
    m = sct.tl.scrobust_pretrain(ref, epochs=1, **TINY)
    assert isinstance(m, sct.tl.ScRobustModel)
    r = ref.copy()
    assert sct.tl.scrobust_embed(r, m, progress=False) is None and "X_scrobust" in r.obsm
    assert isinstance(sct.tl.scrobust_embed(ref, m, progress=False, copy=True), ad.AnnData)


def test_old_model_files_load(tmp_path, model2):
    # a file written before the method's settings class existed: the same network config
    # under its old class name ScRobustConfig; the file stores only the fields
    import json

    from safetensors import safe_open

    path = model2.save(tmp_path / "m.safetensors") or tmp_path / "m.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    assert set(cfg) == {
        "vocab_size",
        "d_model",
        "n_heads",
        "n_layers",
        "dim_feedforward",
        "dropout",
        "head_dropout",
        "temperature",
        "n_genes_per_view",
        "input_scale",
        "n_classes",
        "token_values",
        "view_thinning",
        "head",
        "n_wide",
    }
    m = sct.tl.ScRobustModel.load(path)
    assert m.config == model2.config


def test_backed_input_embeds_like_in_memory(tmp_path, two_pops, model2):
    a = two_pops.copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    mem = model2.embed(a, progress=False, batch_size=16)
    sct.tl.scrobust_embed(b, model2, progress=False, batch_size=16)  # 5 blocks of 16 cells
    np.testing.assert_allclose(b.obsm["X_scrobust"], mem, atol=1e-5)
    b.file.close()


@pytest.mark.parametrize("select", [None, "contrastive", "knn"])
def test_backed_pretraining_reads_batches_from_disk_and_equals_memory(
    tmp_path, two_pops, monkeypatch, select
):
    from sctorch.scrobust import _data, _disk

    for mod in (_data, _disk):  # several blocks in the checking pass
        monkeypatch.setattr(mod, "BLOCK_ROWS", 16)
    two_pops.write_h5ad(tmp_path / "a.h5ad")
    b = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    kw = dict(TINY, epochs=2, n_genes_per_view=8, rng=0, select=select, batch_size=16)
    mem = sct.tl.scrobust_pretrain(two_pops, **kw)
    sizes = []
    real = _disk.read_rows
    monkeypatch.setattr(
        _disk,
        "read_rows",
        lambda X, rows: sizes.append(np.arange(X.shape[0])[rows].size) or real(X, rows),
    )
    disk = sct.tl.scrobust_pretrain(b, **kw)
    assert mem.history == disk.history
    for k, v in mem.network.state_dict().items():
        assert torch.equal(v, disk.network.state_dict()[k]), k
    # one read of a mini-batch per step (2 epochs x 5 steps); validation cells are read in
    # blocks of BLOCK_ROWS: never more than 16 rows at a time
    assert len(sizes) >= 10 and max(sizes) == 16
    b.file.close()


def test_backed_annotation_pathways_and_markers_equal_memory(tmp_path, annotated, two_pops, model2):
    _base, _before, ft, _ref, query = annotated
    query.write_h5ad(tmp_path / "q.h5ad")
    qb = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    mem = ft.predict_proba(query, n_tokens=36, batch_size=16, progress=False)
    np.testing.assert_allclose(
        ft.predict_proba(qb, n_tokens=36, batch_size=16, progress=False), mem, atol=1e-6
    )
    sct.tl.scrobust_annotate(qb, model=ft, n_tokens=36, batch_size=16, progress=False)
    assert (qb.obs["scrobust_label"] == query.obs["scrobust_label"]).all()
    qb.file.close()
    two_pops.write_h5ad(tmp_path / "a.h5ad")
    a = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    sets = {"setA": [f"G{j}" for j in range(8)], "setB": [f"G{j}" for j in range(8, 16)]}
    m = two_pops.copy()
    for fn, args, key in [
        (sct.tl.scrobust_pathway_scores, (sets, model2), "obsm"),
        (sct.tl.scrobust_marker_genes, ("pop", model2), "uns"),
    ]:
        kw = {} if key == "obsm" else {"n_genes": 5, "progress": False}
        fn(m, *args, **kw)
        fn(a, *args, **kw)
    for fn, args in [
        (sct.tl.scrobust_embed, (model2,)),
        (sct.tl.scrobust_annotate, ()),
        (sct.tl.scrobust_pathway_scores, (sets, model2)),
        (sct.tl.scrobust_marker_genes, ("pop", model2)),
    ]:
        with pytest.raises(ValueError, match="copy=True cannot copy"):  # before any work
            fn(a, *args, copy=True)
    np.testing.assert_allclose(
        a.obsm["X_scrobust_pathways"].to_numpy(),
        m.obsm["X_scrobust_pathways"].to_numpy(),
        rtol=1e-6,
    )
    assert (a.uns["scrobust_markers"]["names"] == m.uns["scrobust_markers"]["names"]).all()
    a.file.close()


def test_integer_reference_labels_come_back_as_integers(annotated):
    base, _, _, ref, query = annotated
    r = ref.copy()
    codes = {"P0": 10, "P1": 20, "P2": 30}
    r.obs["code"] = r.obs["pop"].astype(str).map(codes).astype(np.int64)
    kw = dict(model=base, n_tokens=36, epochs=1, batch_size=16, rng=0, progress=False, copy=True)
    by_code = sct.tl.scrobust_annotate(query, r, labels_key="code", **kw)
    by_name = sct.tl.scrobust_annotate(query, r, labels_key="pop", **kw)
    got = by_code.obs["scrobust_label"]
    assert list(got.cat.categories) == [10, 20, 30]
    assert isinstance(got.iloc[0], int | np.integer)
    np.testing.assert_array_equal(
        got.astype(int).to_numpy(), by_name.obs["scrobust_label"].astype(str).map(codes).to_numpy()
    )
