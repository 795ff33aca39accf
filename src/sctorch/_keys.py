"""Every default AnnData key that sctorch reads or writes, in one place.

Functions take ``key_added=`` (or a similar argument) to override these names;
the defaults below are what they use when nothing is given.
"""

from __future__ import annotations

# pp.simulate_efficiency_loss
OBSERVED_LAYER = "observed"
EFFICIENCY_OBS = "efficiency"

# tl.genomap
GENOMAP = "genomap"  # uns[GENOMAP]; var[f"{GENOMAP}_row"], var[f"{GENOMAP}_col"]

# tl.tcer_impute
TCER = "tcer"  # layers[TCER], uns[TCER]

# tl.stimpute / tl.stimpute_cv
STIMPUTE = "stimpute"  # obsm[STIMPUTE], uns[STIMPUTE]
STIMPUTE_CV = "stimpute_cv"  # layers[STIMPUTE_CV]

# tl.scrobust_*
SCROBUST_EMBED = "X_scrobust"
SCROBUST_LABEL = "scrobust_label"
SCROBUST_CONFIDENCE = "scrobust_confidence"
SCROBUST_PATHWAYS = "X_scrobust_pathways"
SCROBUST_PATHWAY_LABEL = "scrobust_pathway_label"
SCROBUST_MARKERS = "scrobust_markers"

# pp.esm_gene_embeddings
ESM2 = "esm2"  # varm[ESM2]

# inputs read from users' AnnData
SPATIAL = "spatial"  # obsm[SPATIAL]
