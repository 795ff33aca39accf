"""esm_gene_embeddings on a tiny randomly initialised ESM-2 saved as a local checkpoint."""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pytest

import sctorch as sct
from sctorch.pp import _esm

esm = pytest.importorskip("esm")
torch = pytest.importorskip("torch")

SEQS = {
    "Plp1": "MGLLECCARCLVGAPFASLVATGLCFFGVALFCGCGHEALTGTEKLIETYFSKNYQDYEYLINVIHAFQYVIYGTASFFFLY",
    "Sox10": ["MAEEQDLSEV", "MAEEQDLSEVELSPVGSEEPRCLSPGSAPSLGPDGGGGGSGLRASPGPGELGKVKKEQQDGEADDDKF"],
    "Gfap": "MERRRITSAARRSYVSSGEMMVGGLAPGRRLGPGTRLSLARMPPPLPTRVDFSLAGALNAGFKETRASERAEMMELNDRFASY*",
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A 2-layer, 32-dim ESM-2 in fair-esm's checkpoint format (``esm2_*.pt``)."""
    from esm.model.esm2 import ESM2

    torch.manual_seed(0)
    net = ESM2(num_layers=2, embed_dim=32, attention_heads=2, alphabet="ESM-1b", token_dropout=True)
    cfg = argparse.Namespace(
        encoder_layers=2, encoder_embed_dim=32, encoder_attention_heads=2, token_dropout=True
    )
    path = tmp_path_factory.mktemp("esm") / "esm2_t2_32_tiny.pt"
    torch.save(
        {"model": {f"encoder.{k}": v for k, v in net.state_dict().items()}, "cfg": {"model": cfg}},
        path,
    )
    return path, net


def _direct(net, seq, layer=2):
    """Reference: the residue-mean of ``layer`` computed straight from the ESM2 module."""
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, toks = alphabet.get_batch_converter()([("x", seq)])
    net.eval()
    with torch.no_grad():
        rep = net(toks, repr_layers=[layer])["representations"][layer][0, 1 : len(seq) + 1]
    return rep


def test_round_trip_shape_known_values_and_isoforms(tiny_ckpt):
    path, net = tiny_ckpt
    df = sct.pp.esm_gene_embeddings(
        ["Plp1", "Sox10", "Gfap", "Missing"], SEQS, model=path, progress=False
    )
    assert list(df.index) == ["Plp1", "Sox10", "Gfap"] and df.shape == (3, 32)
    assert df.dtypes.unique().tolist() == [np.float32]
    # equals the mean over residues of the last layer; Sox10 uses its longest isoform,
    # Gfap's trailing stop '*' is dropped
    np.testing.assert_allclose(
        df.loc["Plp1"], _direct(net, SEQS["Plp1"]).mean(0).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        df.loc["Sox10"], _direct(net, SEQS["Sox10"][1]).mean(0).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        df.loc["Gfap"], _direct(net, SEQS["Gfap"][:-1]).mean(0).numpy(), atol=1e-5
    )
    # layer 1 differs from the last layer
    d1 = sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=path, layer=1, progress=False)
    np.testing.assert_allclose(
        d1.loc["Plp1"], _direct(net, SEQS["Plp1"], 1).mean(0).numpy(), atol=1e-5
    )
    # deterministic
    again = sct.pp.esm_gene_embeddings(["Plp1", "Sox10", "Gfap"], SEQS, model=path, progress=False)
    np.testing.assert_array_equal(again.to_numpy(), df.to_numpy())


def test_long_sequences_are_windowed(tiny_ckpt):
    path, net = tiny_ckpt
    seq = SEQS["Plp1"]  # 81 residues, windows of 30: 30 + 30 + 21
    df = sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=path, max_length=30, progress=False)
    parts = [_direct(net, seq[i : i + 30]) for i in range(0, len(seq), 30)]
    expected = torch.cat(parts).mean(0).numpy()  # mean over all residues of all windows
    np.testing.assert_allclose(df.loc["Plp1"], expected, atol=1e-5)


def test_cache_hit_skips_the_model(tiny_ckpt, tmp_path, monkeypatch):
    path, _ = tiny_ckpt
    cache = tmp_path / "cache"
    first = sct.pp.esm_gene_embeddings(
        ["Plp1", "Gfap"], SEQS, model=path, cache=cache, progress=False
    )
    assert len(list(cache.glob("*.npy"))) == 2

    def boom(*a, **k):
        raise AssertionError("model loaded despite a full cache")

    monkeypatch.setattr(_esm, "_load_model", boom)
    hit = sct.pp.esm_gene_embeddings(
        ["Plp1", "Gfap"], SEQS, model=path, cache=cache, progress=False
    )
    np.testing.assert_array_equal(hit.to_numpy(), first.to_numpy())
    # another layer is another cache key: the model is needed again
    with pytest.raises(AssertionError, match="model loaded"):
        sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=path, cache=cache, layer=1, progress=False)


def test_fasta_anndata_and_stimpute_input(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt
    fasta = tmp_path / "p.fa"
    fasta.write_text(
        f">sp|P60202|MYELP_MOUSE Myelin proteolipid OS=Mus musculus GN=Plp1 PE=1\n"
        f"{SEQS['Plp1'][:40]}\n{SEQS['Plp1'][40:]}\n>Gfap\n{SEQS['Gfap']}\n"
    )
    a = ad.AnnData(np.zeros((2, 3), np.float32))
    a.var_names = ["Plp1", "Gfap", "Xist"]
    assert sct.pp.esm_gene_embeddings(a, fasta, model=path, progress=False) is None
    V = a.varm["esm2"]
    assert V.shape == (3, 32) and np.isnan(V[2]).all() and np.isfinite(V[:2]).all()
    ref = sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=path, progress=False)
    np.testing.assert_allclose(V[0], ref.loc["Plp1"], atol=1e-6)
    df = sct.pp.esm_gene_embeddings(["Plp1", "Gfap"], fasta, model=path, progress=False)
    g = sct.tl.stimpute_gene_graph(["Plp1", "Gfap"], gene_embeddings=df, n_neighbors=1)
    assert g.nnz == 2


def test_errors(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt
    with pytest.raises(ValueError, match="None of the 2 genes has a protein sequence"):
        sct.pp.esm_gene_embeddings(["A", "B"], SEQS, model=path, progress=False)
    with pytest.raises(ValueError, match="not amino-acid letters"):
        sct.pp.esm_gene_embeddings(["A"], {"A": "MK1J"}, model=path, progress=False)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=path, layer=5, progress=False)
    with pytest.raises(FileNotFoundError):
        sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=tmp_path / "nope.pt", progress=False)
    with pytest.raises(ValueError, match="Unknown fair-esm model"):
        sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model="not_a_model", progress=False)
    bad = tmp_path / "esm2_bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a fair-esm checkpoint"):
        sct.pp.esm_gene_embeddings(["Plp1"], SEQS, model=bad, progress=False)
