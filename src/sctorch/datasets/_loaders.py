"""Loaders for the bundled subsets and the on-disk real data sets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

_BUNDLED = Path(__file__).parent / "_data"
_ENV = "SCTORCH_DATA_DIR"


def data_dir() -> Path | None:
    """The data directory: ``$SCTORCH_DATA_DIR``, else ``../shared/data`` beside the repository.

    Returns
    -------
    The :class:`~pathlib.Path` of the directory, or ``None`` when ``SCTORCH_DATA_DIR`` is
    unset and no ``shared/data`` folder sits beside the repository checkout. Never raises;
    the loaders raise :class:`FileNotFoundError` when a file is missing.
    """
    env = os.environ.get(_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]  # src/sctorch/datasets/_loaders.py -> repo
    cand = repo.parent / "shared" / "data"
    return cand if cand.is_dir() else None


def _path(relative: str) -> Path:
    """Absolute path of a file in the data directory, or a clear :class:`FileNotFoundError`."""
    base = data_dir()
    if base is None:
        raise FileNotFoundError(
            f"Data file {relative!r} not found: no data directory. Set the environment variable "
            f"{_ENV} to the folder that holds it (e.g. export {_ENV}=/path/to/shared/data)."
        )
    p = base / relative
    if not p.exists():
        raise FileNotFoundError(
            f"Data file {str(p)!r} not found. Set the environment variable {_ENV} to the folder "
            f"that holds {relative!r} (currently {_ENV}={os.environ.get(_ENV)!r})."
        )
    return p


def _read(relative: str) -> ad.AnnData:
    with warnings.catch_warnings():  # some source files use an older h5ad encoding
        warnings.filterwarnings("ignore", category=ad.OldFormatWarning)
        return ad.read_h5ad(_path(relative))


def _bundled(name: str) -> ad.AnnData:
    return ad.read_h5ad(_BUNDLED / name)


def intestine_moor2018(*, bundled: bool = False) -> ad.AnnData:
    """Mouse small-intestine epithelium with crypt–villus zones (Moor et al. 2018, 10x).

    Moor et al., Cell 175:1156 (2018), GEO GSE109413; files from the novosparc repository
    (rajewsky-lab/novosparc, BSD-3-Clause). The same tissue as the TCER paper's first
    data set.

    Parameters
    ----------
    bundled
        ``True``: the subset shipped with sctorch (all 1,383 cells × the 1,200 genes
        detected in the most cells), usable with no data directory. ``False``: the full
        matrix from the data directory (``intestine_moor2018/intestine_moor2018.h5ad``).

    Returns
    -------
    AnnData of **raw integer UMI counts** (CSR, float32 storing integers), 1,383 cells ×
    27,998 genes (full) or × 1,200 (bundled); ``obs['zone']`` (categorical, zones 0–6)
    and ``obsm['X_tsne']`` (full only).

    Raises
    ------
    FileNotFoundError
        If ``bundled=False`` and the data directory lacks the file.
    """
    if bundled:
        a = _bundled("intestine_moor2018_1200genes.h5ad")
    else:
        a = _read("intestine_moor2018/intestine_moor2018.h5ad")
    a.obs["zone"] = a.obs["zone"].astype(str).astype("category")
    return a


def pbmc3k() -> ad.AnnData:
    """10x Genomics PBMC 3k raw counts (the matrix of ``scanpy.datasets.pbmc3k``).

    10x Genomics public data set (CC BY 4.0), taken from the ``desc`` 2.1.1 wheel (MIT).

    Returns
    -------
    AnnData of **raw integer UMI counts**, 2,700 cells × 32,738 genes; ``var_names`` are
    gene symbols made unique (``var_names_make_unique``), ``var['gene_ids']`` Ensembl ids.
    No cell-type labels.

    Raises
    ------
    FileNotFoundError
        If the data directory lacks ``pbmc3k/pbmc3k_raw_counts.h5ad``.
    """
    a = _read("pbmc3k/pbmc3k_raw_counts.h5ad")
    a.var_names_make_unique()
    return a


def ifnb_pbmc(*, bundled: bool = False) -> ad.AnnData:
    """Human PBMC, control vs IFN-β stimulated (Kang et al. 2018, Nat Biotech 36:89).

    The SeuratData ``ifnb`` subset of 2,800 cells, from the rDeepmaps repository (MIT);
    GEO GSE96583; labels are Seurat's ``seurat_annotations``.

    Parameters
    ----------
    bundled
        ``True``: the shipped subset (all 2,800 cells × 2,000 highly variable genes,
        Scanpy ``seurat`` flavour on log-normalised data). ``False``: the full matrix from
        the data directory (``ifnb_pbmc/ifnb_2800.h5ad``, 14,053 genes).

    Returns
    -------
    AnnData of **raw integer UMI counts**; ``obs['cell_type']`` (13 types),
    ``obs['sample']`` (CTRL / STIM). The source's randomly generated sex column is dropped.

    Raises
    ------
    FileNotFoundError
        If ``bundled=False`` and the data directory lacks the file.
    """
    a = _bundled("ifnb_pbmc_2000hvg.h5ad") if bundled else _read("ifnb_pbmc/ifnb_2800.h5ad")
    a.obs = a.obs[["sample", "cell_type"]].copy()
    for c in ("sample", "cell_type"):
        a.obs[c] = a.obs[c].astype("category")
    return a


def drosophila_embryo(*, bundled: bool = False) -> tuple[ad.AnnData, ad.AnnData]:
    """Paired Drosophila embryo in situ atlas and Drop-seq scRNA-seq (DREAM challenge).

    Spatial: BDTNP in situ atlas (Fowlkes et al. 2008, Cell 133:364), 3,039 locations ×
    84 genes, continuous normalised intensities, as shipped by novosparc (BSD-3-Clause).
    scRNA-seq: Karaiskos et al. 2017 (Science 358:194), 1,297 cells, raw counts
    (DREAM Single-Cell Transcriptomics Challenge, Synapse syn15665609). All 84 in situ
    genes are in the scRNA-seq matrix.

    Parameters
    ----------
    bundled
        ``True``: the shipped pair (all in situ data; the scRNA-seq on the 84 in situ
        genes plus the 1,000 genes detected in the most cells, 1,079 genes).
        ``False``: the full pair from ``drosophila_embryo/`` in the data directory
        (8,924 scRNA-seq genes).

    Returns
    -------
    ``(insitu, scrna)``. ``insitu``: 3,039 × 84, continuous values,
    ``obsm['spatial3d']`` (x, y, z) and ``obsm['spatial']`` (x, z: the lateral view).
    ``scrna``: 1,297 cells × genes of **raw integer counts**.

    Raises
    ------
    FileNotFoundError
        If ``bundled=False`` and the data directory lacks the files.
    """
    if bundled:
        insitu = _bundled("drosophila_insitu_84genes.h5ad")
        scrna = _bundled("drosophila_scrna_1000genes.h5ad")
    else:
        insitu = _read("drosophila_embryo/bdtnp_insitu_84genes.h5ad")
        scrna = _read("drosophila_embryo/scrna_karaiskos2017_raw.h5ad")
    xyz = np.asarray(insitu.obsm["spatial3d"], dtype=np.float32)
    insitu.obsm["spatial"] = xyz[:, [0, 2]].copy()
    return insitu, scrna


def osmfish() -> ad.AnnData:
    """OsmFISH mouse somatosensory cortex (Codeluppi et al. 2018, Nat Methods 15:932).

    From drieslab/spatial-datasets (MIT), ``2018_osmFISH_SScortex``.

    Returns
    -------
    AnnData of **raw integer counts**, 5,328 cells × 33 genes; ``obs['ClusterName']``
    (32 clusters), ``obs['ClusterID']``, ``obs['Region']``; ``obsm['spatial']`` (x, y).

    Raises
    ------
    FileNotFoundError
        If the data directory lacks ``osmfish_sscortex/osmFISH_prep.h5ad``.
    """
    return _read("osmfish_sscortex/osmFISH_prep.h5ad")


def merfish_hypothalamus(*, drop_blanks: bool = False) -> ad.AnnData:
    """MERFISH mouse hypothalamic preoptic region, one slice (Moffitt et al. 2018, Science).

    From the OrgaCCC repository (``data/merfish.h5ad``).

    Parameters
    ----------
    drop_blanks
        Remove the 5 ``Blank_*`` control probes (``var['blank']`` marks them either way).

    Returns
    -------
    AnnData, 4,975 cells × 160 features (155 genes + 5 blanks) or × 155, **continuous**
    (Moffitt's volume-normalised values, not counts); ``obs['celltype']`` (15 classes);
    ``obsm['spatial']``.

    Raises
    ------
    FileNotFoundError
        If the data directory lacks ``merfish_hypothalamus/merfish.h5ad``.
    """
    a = _read("merfish_hypothalamus/merfish.h5ad")
    a.var["blank"] = a.var_names.str.lower().str.startswith("blank")
    if drop_blanks:
        a = a[:, ~a.var["blank"].to_numpy()].copy()
    return a


def zeisel2015(subset: str = "descend") -> ad.AnnData:
    """Partial Zeisel et al. 2015 (Science 347:1138) mouse cortex/hippocampus UMI counts.

    The full matrix is not available offline; two published subsets are.

    Parameters
    ----------
    subset
        ``"descend"``: 1,464 cells × 1,000 genes with ``obs['cell_type']`` (pyramidal CA1,
        interneurons, endothelial-mural), from jingshuw/descend (GPL ≥ 2).
        ``"saver"``: 200 cells × 3,529 genes, no labels, from mohuangx/SAVER (MIT).

    Returns
    -------
    AnnData of **raw integer UMI counts**.

    Raises
    ------
    ValueError
        If ``subset`` is not one of the two names.
    FileNotFoundError
        If the data directory lacks the file.
    """
    files = {
        "descend": "zeisel2015_subsets/descend_zeisel_1464cells_1000genes.h5ad",
        "saver": "zeisel2015_subsets/saver_linnarsson_200cells_3529genes.h5ad",
    }
    if subset not in files:
        raise ValueError(f"subset must be one of {sorted(files)}, got {subset!r}.")
    a = _read(files[subset])
    if "cell_type" in a.obs:
        a.obs["cell_type"] = a.obs["cell_type"].astype("category")
    return a


_ESM_FILES = {
    "osmfish": "osmFISH_emb.h5ad",
    "merfish": "MERFISH_emb.h5ad",
    "mouse_brain": "Mouse_brain_emb.h5ad",
}


def esm2_gene_embeddings(name: str = "osmFISH") -> pd.DataFrame:
    """StImpute's precomputed ESM-2 protein embeddings of mouse genes.

    ESM-2 ``esm2_t36_3B_UR50D``, last layer, mean-pooled over residues, as published
    with stImpute (Zeng et al. 2024, Commun Biol 7:1271; GitHub cquzys/stImpute).
    Read from the AnnData copies ``esm2_gene_embeddings/<name>_emb.h5ad`` in the data
    directory (genes × dimensions); the original pickled files beside them are never
    opened, because unpickling a file can run code.

    Parameters
    ----------
    name
        ``"osmFISH"`` (275 genes, all 33 osmFISH genes), ``"MERFISH"`` (209 genes, 154 of
        the 155 MERFISH genes) or ``"Mouse_brain"`` (117 genes); case-insensitive.

    Returns
    -------
    DataFrame of float32, **genes × 2,560 dimensions** (index: gene symbols as ``str``;
    columns: ``RangeIndex`` 0–2,559).

    Raises
    ------
    ValueError
        If ``name`` is unknown, or the file holds duplicate gene names or non-finite
        values.
    FileNotFoundError
        If the data directory lacks ``esm2_gene_embeddings/<name>_emb.h5ad`` (names the
        file and ``SCTORCH_DATA_DIR``; a ``.pkl`` alone is not read).
    """
    key = str(name).lower()
    if key not in _ESM_FILES:
        raise ValueError(f"name must be one of 'osmFISH', 'MERFISH', 'Mouse_brain'; got {name!r}.")
    rel = f"esm2_gene_embeddings/{_ESM_FILES[key]}"
    a = _read(rel)  # HDF5 through anndata: no unpickling
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    X = np.asarray(X, dtype=np.float32)
    genes = a.obs_names.astype(str)
    if not genes.is_unique:
        dup = genes[genes.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{rel} holds duplicate gene names, e.g. {dup}; the file is damaged. "
            "Replace it with the copy described in its SOURCE.txt."
        )
    if not np.isfinite(X).all():
        raise ValueError(
            f"{rel} holds {int((~np.isfinite(X)).sum())} non-finite value(s); the "
            "file is damaged. Replace it with the copy described in its SOURCE.txt."
        )
    return pd.DataFrame(X, index=pd.Index(genes, name=None), columns=pd.RangeIndex(X.shape[1]))
