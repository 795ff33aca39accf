"""The pipeline subcommands of the ``sctorch`` command on small ``.h5ad`` files."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sctorch as sct
from sctorch.cli import main


def _planted(n_per=40, n_genes=36, seed=0):
    """Two populations with their own marker genes, raw Poisson counts."""
    rng = np.random.default_rng(seed)
    mu = np.full((2, n_genes), 0.5)
    mu[0, : n_genes // 4] = 6.0
    mu[1, n_genes // 4 : n_genes // 2] = 6.0
    labels = np.repeat([0, 1], n_per)
    X = rng.poisson(mu[labels]).astype(np.float32)
    a = ad.AnnData(X)
    a.var_names = [f"g{i}" for i in range(n_genes)]
    a.obs_names = [f"c{i}" for i in range(len(labels))]
    a.obs["pop"] = pd.Categorical(np.array(["A", "B"])[labels])
    a.var["highly_variable"] = np.arange(n_genes) < 30
    return a


@pytest.fixture()
def counts_file(tmp_path):
    path = tmp_path / "in.h5ad"
    _planted().write_h5ad(path)
    return path


def test_output_never_replaces_input(counts_file, capsys):
    before = counts_file.read_bytes()
    assert main(["genomap", str(counts_file), str(counts_file), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "is the input file" in err and "--overwrite" in err
    assert counts_file.read_bytes() == before
    other = counts_file.with_name("exists.h5ad")
    other.write_bytes(b"keep me")
    assert main(["genomap", str(counts_file), str(other), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert other.read_bytes() == b"keep me"
    assert (
        main(
            [
                "genomap",
                str(counts_file.with_name("missing.h5ad")),
                str(counts_file.with_name("o.h5ad")),
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    assert not counts_file.with_name("o.h5ad").exists()


def test_genomap_command_matches_function(counts_file, tmp_path):
    out = tmp_path / "gm.h5ad"
    assert (
        main(
            [
                "genomap",
                str(counts_file),
                str(out),
                "--genes-key",
                "highly_variable",
                "--seed",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    res = ad.read_h5ad(out)
    expected = sct.tl.genomap(
        ad.read_h5ad(counts_file),
        genes=res.var["highly_variable"].values,
        rng=3,
        progress=False,
        copy=True,
    )
    for col in ("genomap_row", "genomap_col"):
        np.testing.assert_array_equal(res.var[col].values, expected.var[col].values)
    assert (res.var["genomap_row"].values[~res.var["highly_variable"].values] == -1).all()
    np.testing.assert_array_equal(res.X, ad.read_h5ad(counts_file).X)  # data untouched
    # --overwrite lets the output replace the input in place
    assert main(["genomap", str(out), str(out), "--overwrite", "--quiet"]) == 0
    assert (ad.read_h5ad(out).var["genomap_row"] >= 0).all()


def test_genomap_command_bad_genes_key(counts_file, tmp_path, capsys):
    assert main(["genomap", str(counts_file), str(tmp_path / "o.h5ad"), "--genes-key", "nope"]) == 1
    assert "not a column of var" in capsys.readouterr().err


def test_tcer_command_trains_saves_and_reimputes(counts_file, tmp_path):
    out, model = tmp_path / "t.h5ad", tmp_path / "tcer.safetensors"
    assert (
        main(
            [
                "tcer",
                str(counts_file),
                str(out),
                "--epochs",
                "1",
                "--n-features",
                "4",
                "--model-out",
                str(model),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    res = ad.read_h5ad(out)
    assert res.layers["tcer"].shape == res.shape
    assert np.isfinite(res.layers["tcer"]).all() and (res.layers["tcer"] >= 0).all()
    assert res.uns["tcer"]["params"]["epochs"] == 1
    # the saved model re-imputes the same cells to the same values
    out2 = tmp_path / "t2.h5ad"
    assert (
        main(
            [
                "tcer",
                str(counts_file),
                str(out2),
                "--model",
                str(model),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        ad.read_h5ad(out2).layers["tcer"], res.layers["tcer"], rtol=1e-4, atol=1e-5
    )


def test_stimpute_command(tmp_path):
    sp, ref = sct.datasets.drosophila_embryo(bundled=True)
    held = list(sp.var_names[:3])
    sp = sp[:300, [g for g in sp.var_names if g not in held]].copy()
    sp_path, ref_path = tmp_path / "sp.h5ad", tmp_path / "ref.h5ad"
    sp.write_h5ad(sp_path)
    ref.write_h5ad(ref_path)
    out, pred = tmp_path / "out.h5ad", tmp_path / "pred.h5ad"
    args = [
        str(sp_path),
        str(ref_path),
        "--genes",
        ",".join(held),
        "--epochs",
        "1",
        "--ae-epochs",
        "2",
        "--n-neighbors",
        "10",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(["stimpute", *args[:2], str(out), *args[2:]]) == 0
    res = ad.read_h5ad(out)
    assert list(res.obsm["stimpute"].columns) == held
    assert res.obsm["stimpute"].shape == (300, 3)
    assert res.n_vars == sp.n_vars  # the spatial genes are kept as they were
    assert main(["stimpute", *args[:2], str(pred), *args[2:], "--predicted-only"]) == 0
    p = ad.read_h5ad(pred)
    assert list(p.var_names) == held and p.n_obs == 300
    np.testing.assert_array_equal(p.obsm["spatial"], sp.obsm["spatial"])
    # same seed, same call: the predicted-genes AnnData holds the same predictions
    np.testing.assert_allclose(
        np.asarray(p.X), res.obsm["stimpute"].to_numpy(), rtol=1e-5, atol=1e-6
    )


def test_scrobust_commands(counts_file, tmp_path, capsys):
    tiny = ["--d-model", "16", "--n-heads", "2", "--lr", "5e-3", "--device", "cpu", "--quiet"]
    emb, mdir = tmp_path / "e.h5ad", tmp_path / "model"
    assert (
        main(
            [
                "scrobust",
                "embed",
                str(counts_file),
                str(emb),
                "--epochs",
                "1",
                "--n-genes",
                "16",
                "--model-out",
                str(mdir),
                *tiny,
            ]
        )
        == 0
    )
    X = ad.read_h5ad(emb).obsm["X_scrobust"]
    assert X.shape == (80, 16) and np.isfinite(X).all()
    # an existing --model-out is refused before any training, and nothing is written
    again = tmp_path / "again.h5ad"
    assert (
        main(
            [
                "scrobust",
                "embed",
                str(counts_file),
                str(again),
                "--epochs",
                "1",
                "--model-out",
                str(mdir),
                *tiny,
            ]
        )
        == 1
    )
    assert "--model-out" in capsys.readouterr().err and not again.exists()
    # annotate with a reference, keep the fine-tuned model, then annotate from it alone
    ann, ann2, ft = tmp_path / "a.h5ad", tmp_path / "a2.h5ad", tmp_path / "ft"
    assert (
        main(
            [
                "scrobust",
                "annotate",
                str(counts_file),
                str(ann),
                "--reference",
                str(counts_file),
                "--labels-key",
                "pop",
                "--model",
                str(mdir),
                "--epochs",
                "8",
                "--n-genes",
                "18",
                "--model-out",
                str(ft),
                *tiny,
            ]
        )
        == 0
    )
    a = ad.read_h5ad(ann)
    truth = ad.read_h5ad(counts_file).obs["pop"].astype(str).values
    assert (a.obs["scrobust_label"].astype(str).values == truth).mean() >= 0.9
    assert (
        main(
            [
                "scrobust",
                "annotate",
                str(counts_file),
                str(ann2),
                "--model",
                str(ft),
                "--n-genes",
                "18",
                *tiny,
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        ad.read_h5ad(ann2).obs["scrobust_label"].values, a.obs["scrobust_label"].values
    )


def test_scrobust_annotate_needs_reference_or_model(counts_file, tmp_path, capsys):
    assert main(["scrobust", "annotate", str(counts_file), str(tmp_path / "o.h5ad")]) == 1
    assert "--reference" in capsys.readouterr().err
    assert (
        main(
            [
                "scrobust",
                "annotate",
                str(counts_file),
                str(tmp_path / "o.h5ad"),
                "--reference",
                str(counts_file),
            ]
        )
        == 1
    )
    assert "--labels-key" in capsys.readouterr().err


def test_demo_fails_with_clear_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sctorch demo: error:") and str(blocker) in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("sparse_x", [False, True])
def test_backed_option_gives_the_in_memory_outputs(tmp_path, sparse_x):
    from scipy import sparse

    a = _planted()
    if sparse_x:
        a.X = sparse.csr_matrix(a.X)
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    tiny = ["--d-model", "16", "--n-heads", "2", "--lr", "5e-3", "--device", "cpu", "--quiet"]
    runs = {
        "genomap": (["genomap"], ["--genes-key", "highly_variable", "--quiet"]),
        "tcer": (["tcer"], ["--epochs", "1", "--n-features", "4", "--device", "cpu", "--quiet"]),
        "embed": (["scrobust", "embed"], ["--epochs", "1", "--n-genes", "16", *tiny]),
        "annotate": (
            ["scrobust", "annotate"],
            [
                "--reference",
                str(src),
                "--labels-key",
                "pop",
                "--pretrain-epochs",
                "1",
                "--epochs",
                "2",
                "--n-genes",
                "18",
                *tiny,
            ],
        ),
    }
    for name, (cmd, opts) in runs.items():
        mem, disk = tmp_path / f"{name}_mem.h5ad", tmp_path / f"{name}_disk.h5ad"
        assert main([*cmd, str(src), str(mem), *opts]) == 0
        assert main([*cmd, str(src), str(disk), *opts, "--backed"]) == 0
        m, d = ad.read_h5ad(mem), ad.read_h5ad(disk)
        assert (d.X != m.X).sum() == 0  # the cells are copied from the file unchanged
        for key in {"genomap": ["genomap_row", "genomap_col"]}.get(name, []):
            np.testing.assert_array_equal(d.var[key], m.var[key])
        if name == "tcer":
            np.testing.assert_array_equal(d.layers["tcer"], m.layers["tcer"])
        if name == "embed":
            np.testing.assert_allclose(d.obsm["X_scrobust"], m.obsm["X_scrobust"], atol=1e-6)
        if name == "annotate":
            assert (d.obs["scrobust_label"] == m.obs["scrobust_label"]).all()
            np.testing.assert_allclose(
                d.obs["scrobust_confidence"], m.obs["scrobust_confidence"], atol=1e-6
            )
