import numpy as np
import pandas as pd
import pytest
from conftest import require_data

import sctorch as sct
from sctorch._utils import is_integer_matrix


@pytest.mark.parametrize(
    ("loader", "path", "shape", "obs_cols", "counts"),
    [
        (
            sct.datasets.intestine_moor2018,
            "intestine_moor2018/intestine_moor2018.h5ad",
            (1383, 27998),
            ["zone"],
            True,
        ),
        (sct.datasets.pbmc3k, "pbmc3k/pbmc3k_raw_counts.h5ad", (2700, 32738), [], True),
        (
            sct.datasets.ifnb_pbmc,
            "ifnb_pbmc/ifnb_2800.h5ad",
            (2800, 14053),
            ["sample", "cell_type"],
            True,
        ),
        (
            sct.datasets.osmfish,
            "osmfish_sscortex/osmFISH_prep.h5ad",
            (5328, 33),
            ["ClusterName", "Region"],
            True,
        ),
        (
            sct.datasets.merfish_hypothalamus,
            "merfish_hypothalamus/merfish.h5ad",
            (4975, 160),
            ["celltype"],
            False,
        ),
        (
            sct.datasets.zeisel2015,
            "zeisel2015_subsets/descend_zeisel_1464cells_1000genes.h5ad",
            (1464, 1000),
            ["cell_type"],
            True,
        ),
    ],
)
def test_loader_shapes_and_labels(loader, path, shape, obs_cols, counts):
    require_data(path)
    a = loader()
    assert a.shape == shape
    for c in obs_cols:
        assert c in a.obs and a.obs[c].notna().all()
    assert a.var_names.is_unique
    assert is_integer_matrix(a.X) == counts


def test_label_contents():
    require_data("ifnb_pbmc/ifnb_2800.h5ad")
    assert sct.datasets.ifnb_pbmc().obs["cell_type"].nunique() == 13
    assert "sex_RANDOM_do_not_use" not in sct.datasets.ifnb_pbmc().obs
    assert sct.datasets.intestine_moor2018().obs["zone"].nunique() == 7
    m = sct.datasets.merfish_hypothalamus(drop_blanks=True)
    assert m.shape == (4975, 155) and m.obs["celltype"].nunique() == 15
    assert "spatial" in sct.datasets.osmfish().obsm
    assert sct.datasets.zeisel2015("saver").shape == (200, 3529)


def test_drosophila_pair():
    require_data("drosophila_embryo/bdtnp_insitu_84genes.h5ad")
    insitu, scrna = sct.datasets.drosophila_embryo()
    assert insitu.shape == (3039, 84) and scrna.shape == (1297, 8924)
    assert insitu.obsm["spatial"].shape == (3039, 2) and insitu.obsm["spatial3d"].shape[1] == 3
    assert set(insitu.var_names) <= set(scrna.var_names)
    assert is_integer_matrix(scrna.X) and not is_integer_matrix(insitu.X)


def test_bundled_subsets_need_no_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCTORCH_DATA_DIR", str(tmp_path / "nowhere"))
    a = sct.datasets.intestine_moor2018(bundled=True)
    assert a.shape == (1383, 1200) and a.obs["zone"].nunique() == 7 and is_integer_matrix(a.X)
    insitu, scrna = sct.datasets.drosophila_embryo(bundled=True)
    assert insitu.shape == (3039, 84) and scrna.n_obs == 1297
    assert set(insitu.var_names) <= set(scrna.var_names)
    i = sct.datasets.ifnb_pbmc(bundled=True)
    assert i.shape == (2800, 2000) and i.obs["cell_type"].nunique() == 13
    for g in ("CD14", "MS4A1", "NKG7", "PPBP"):
        assert g in i.var_names


def test_missing_file_error_names_file_and_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("SCTORCH_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"SCTORCH_DATA_DIR") as e:
        sct.datasets.pbmc3k()
    assert "pbmc3k_raw_counts.h5ad" in str(e.value)
    with pytest.raises(FileNotFoundError, match="SCTORCH_DATA_DIR"):
        sct.datasets.gene_sets("hallmark")


def test_esm2_embeddings():
    require_data("esm2_gene_embeddings/osmFISH_emb.h5ad")
    e = sct.datasets.esm2_gene_embeddings("osmFISH")
    assert isinstance(e, pd.DataFrame) and e.shape == (275, 2560)
    osm_genes = ["Gad2", "Slc32a1", "Plp1", "Sox10"]
    assert all(g in e.index for g in osm_genes)
    assert e.dtypes.iloc[0] == np.float32 and np.isfinite(e.to_numpy()).all()
    assert sct.datasets.esm2_gene_embeddings("MERFISH").shape == (209, 2560)
    assert list(e.columns) == list(range(2560)) and e.index.dtype == object
    with pytest.raises(ValueError, match="osmFISH"):
        sct.datasets.esm2_gene_embeddings("nope")


class _Exploit:
    """Unpickling this creates ``path``: stands for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_esm2_embeddings_never_unpickle(monkeypatch, tmp_path):
    import pickle

    folder = tmp_path / "esm2_gene_embeddings"
    folder.mkdir()
    marker = tmp_path / "pwned.txt"
    (folder / "osmFISH_emb.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    monkeypatch.setenv("SCTORCH_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SCTORCH_DATA_DIR") as e:
        sct.datasets.esm2_gene_embeddings("osmFISH")
    assert "osmFISH_emb.h5ad" in str(e.value)
    assert not marker.exists()


def test_gene_sets(tmp_path):
    require_data("gene_sets/pegasuspy_1.10.2/h.all.v7.5.1.symbols.gmt")
    h = sct.datasets.gene_sets("hallmark")
    assert len(h) == 50 and "HALLMARK_TNFA_SIGNALING_VIA_NFKB" in h
    assert h["HALLMARK_TNFA_SIGNALING_VIA_NFKB"][:3] == ["JUNB", "CXCL2", "ATF3"]
    p = sct.datasets.gene_sets("scrobust_pancreas")
    assert len(p) == 10 and len(p["alpha"]) == 21
    imm = sct.datasets.gene_sets("human_immune_markers")
    assert "CD3D" in imm["T cell"] and "CD4 Naive T cell" in imm
    st = sct.datasets.gene_sets("sctype", tissue="Pancreas")
    assert len(st) == 15
    with pytest.raises(ValueError, match="tissue="):
        sct.datasets.gene_sets("sctype")
    gmt = tmp_path / "x.gmt"
    gmt.write_text("A\tdesc\tG1\tG2\tG1\nB\t\tG3\n")
    assert sct.datasets.read_gmt(gmt) == {"A": ["G1", "G2"], "B": ["G3"]}
    assert sct.datasets.gene_sets(gmt) == {"A": ["G1", "G2"], "B": ["G3"]}


def test_read_gmt_duplicate_set_names_raise(tmp_path):
    gmt = tmp_path / "dup.gmt"
    gmt.write_text("A\td\tG1\nB\td\tG2\nA\td\tG3\nB\td\tG4\nC\td\tG5\n")
    with pytest.raises(ValueError, match=r"'A' on lines 1, 3; 'B' on lines 2, 4") as e:
        sct.datasets.read_gmt(gmt)
    assert "dup.gmt" in str(e.value) and "rename or merge" in str(e.value)
    with pytest.raises(ValueError, match="'A' on lines 1, 3"):
        sct.datasets.gene_sets(gmt)
    (tmp_path / "noname.gmt").write_text("\td\tG1\n")
    with pytest.raises(ValueError, match="line 1 has an empty gene-set name"):
        sct.datasets.read_gmt(tmp_path / "noname.gmt")


def test_gene_set_json_duplicate_names_raise(tmp_path):
    j = tmp_path / "dup.json"
    j.write_text('{"A": ["G1"], "B": ["G2"], "A": ["G3"]}')
    with pytest.raises(ValueError, match=r"dup\.json.*\['A'\].*more than once"):
        sct.datasets.gene_sets(j)
    peg = tmp_path / "peg.json"
    peg.write_text(
        '{"cell_types": [{"name": "T", "markers": [{"genes": ["CD3D+"]}], '
        '"subtypes": {"cell_types": [{"name": "T", "markers": []}]}}]}'
    )
    with pytest.raises(ValueError, match="'T' is defined more than once"):
        sct.datasets.gene_sets(peg)
