"""GenoMap settings: :class:`GenoMapConfig` (the solver of :func:`sctorch.tl.genomap`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._config import MethodConfig


@dataclass
class GenoMapConfig(MethodConfig):
    """Settings of the GenoMap construction (Gromov–Wasserstein gene placement).

    Give them to :func:`sctorch.tl.genomap` as ``config=`` or one by one as keywords.

    Attributes
    ----------
    metric
        Interaction distance: ``"correlation"`` (1 − Pearson, the papers' choice) or
        ``"cosine"``.
    epsilon
        Entropic regularisation of GW (on distances scaled to [0, 1]); ``0`` is exact.
    max_iter
        Maximum GW iterations.
    tol
        Stop when an iteration improves the GW objective by less than ``tol`` (relative).
    solver
        Exact solver (``epsilon=0``): ``"exchange"`` or ``"pot"`` (see
        :func:`sctorch.tl.genomap`).
    radius
        ``solver="exchange"``: genes on pixels at most this far apart (Chebyshev distance)
        are considered for a swap.
    batch_size
        Cells read at a time to compute the interaction distance.
    """

    PRESETS: ClassVar[dict[str, GenoMapConfig]] = {}

    metric: str = "correlation"
    epsilon: float = 0.0
    max_iter: int = 100
    tol: float = 1e-6
    solver: str = "exchange"
    radius: int = 2
    batch_size: int = 2048

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        if not (np.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"epsilon must be a finite number >= 0, got {self.epsilon!r}.")
        if int(self.max_iter) < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}.")
        if int(self.radius) < 1:
            raise ValueError(f"radius must be >= 1, got {self.radius}.")
        if self.solver not in ("exchange", "pot"):
            raise ValueError(f"solver must be 'exchange' or 'pot', got {self.solver!r}.")
        if self.metric not in ("correlation", "cosine"):
            raise ValueError(f"metric must be 'correlation' or 'cosine', got {self.metric!r}.")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


GenoMapConfig.PRESETS = {"default": GenoMapConfig()}
