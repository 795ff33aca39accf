"""Rebuild the real-data subsets bundled in ``src/sctorch/datasets/_data`` from ``../shared/data``.

Run from the repository root: ``python scripts/build_bundled_data.py``.
"""

import os

import anndata as ad
import numpy as np
import scanpy as sc
from scipy import sparse

SRC = os.environ.get("SCTORCH_DATA_DIR", "../shared/data")
OUT = "src/sctorch/datasets/_data"


def top_detected(a, n):
    """Indices (sorted) of the ``n`` genes detected in the most cells."""
    det = np.asarray((a.X > 0).sum(0)).ravel()
    return np.sort(np.argsort(-det, kind="stable")[:n])


def save(a, name):
    """Write ``a`` gzip-compressed and report its size."""
    if sparse.issparse(a.X):
        a.X = sparse.csr_matrix(a.X).astype(np.float32)
    a.write_h5ad(f"{OUT}/{name}", compression="gzip")
    print(name, a.shape, f"{os.path.getsize(f'{OUT}/{name}') / 1e6:.2f} MB")


def main():
    """Build the four bundled files."""
    a = ad.read_h5ad(f"{SRC}/intestine_moor2018/intestine_moor2018.h5ad")
    a = a[:, top_detected(a, 1200)].copy()
    a.obs = a.obs[["zone"]]
    save(a, "intestine_moor2018_1200genes.h5ad")

    insitu = ad.read_h5ad(f"{SRC}/drosophila_embryo/bdtnp_insitu_84genes.h5ad")
    save(insitu, "drosophila_insitu_84genes.h5ad")
    scrna = ad.read_h5ad(f"{SRC}/drosophila_embryo/scrna_karaiskos2017_raw.h5ad")
    keep = set(insitu.var_names) | set(scrna.var_names[top_detected(scrna, 1000)])
    scrna = scrna[:, [g in keep for g in scrna.var_names]].copy()
    save(scrna, "drosophila_scrna_1000genes.h5ad")

    ifnb = ad.read_h5ad(f"{SRC}/ifnb_pbmc/ifnb_2800.h5ad")
    lognorm = ifnb.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    hvg = sc.pp.highly_variable_genes(lognorm, flavor="seurat", n_top_genes=2000, inplace=False)
    ifnb = ifnb[:, hvg["highly_variable"].to_numpy()].copy()
    ifnb.obs = ifnb.obs[["sample", "cell_type"]]
    save(ifnb, "ifnb_pbmc_2000hvg.h5ad")


if __name__ == "__main__":
    main()
