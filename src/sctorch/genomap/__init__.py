"""GenoMap: gene–gene interactions laid out as an image (Islam & Xing 2023; TCER §GenoMap).

A GenoMap places every gene on its own pixel of an ``H × W`` grid so that genes that
interact (are co-expressed) lie close together: the Gromov–Wasserstein coupling between
the gene–gene interaction distance and the 2-D Euclidean distance between grid points,
rounded to a one-to-one gene → pixel map so that an image maps back to genes exactly.

The public functions are :func:`sctorch.tl.genomap`, :func:`sctorch.tl.genomap_images`,
:func:`sctorch.tl.genomap_to_genes`, :func:`sctorch.tl.genomap_quality` and
:func:`sctorch.pl.genomap`. This package holds the method itself:

- ``_config``: :class:`GenoMapConfig`, the solver's settings;
- ``_distance``: the interaction distance (TCER eqs. 1–2);
- ``_solver``: grid geometry, spectral start, the GW solvers (eqs. 3–9);
- ``_placement``: grid shape, the placement read from AnnData, images <-> genes
  (:class:`Placement`, also used by TCER);
- ``_quality``: layout-quality scores of a placement.
"""

from ._config import GenoMapConfig
from ._distance import interaction_distance
from ._placement import Placement, check_placement, grid_shape, placement_index, select_cells
from ._quality import genomap_quality
from ._solver import gw_objective, solve

__all__ = [
    "GenoMapConfig",
    "Placement",
    "check_placement",
    "genomap_quality",
    "grid_shape",
    "gw_objective",
    "interaction_distance",
    "placement_index",
    "select_cells",
    "solve",
]
