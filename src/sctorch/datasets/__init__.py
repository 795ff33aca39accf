"""Real data sets as AnnData: small bundled subsets, larger ones from a data directory.

The data directory is ``$SCTORCH_DATA_DIR`` if set, else ``../shared/data`` next to the
repository checkout. Loaders that need it raise :class:`FileNotFoundError` naming the
missing file and the variable. Nothing is downloaded.
"""

from ._gene_sets import gene_sets, read_gmt
from ._loaders import (
    data_dir,
    drosophila_embryo,
    esm2_gene_embeddings,
    ifnb_pbmc,
    intestine_moor2018,
    merfish_hypothalamus,
    osmfish,
    pbmc3k,
    zeisel2015,
)

__all__ = [
    "data_dir",
    "drosophila_embryo",
    "esm2_gene_embeddings",
    "gene_sets",
    "ifnb_pbmc",
    "intestine_moor2018",
    "merfish_hypothalamus",
    "osmfish",
    "pbmc3k",
    "read_gmt",
    "zeisel2015",
]
