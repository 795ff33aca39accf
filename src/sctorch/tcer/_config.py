"""TCER settings: :class:`TCERParams` and the presets of :func:`sctorch.tl.tcer_impute`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._utils import check_positive

PRESETS: dict[str, dict[str, Any]] = {
    # sctorch's default: cross-cell context channel, Poisson blind-spot objective, count-scale
    # posterior output; k and beta by molecular cross-validation, early stopping on a
    # held-out masked loss; narrow network for a laptop CPU
    "fast": {
        "n_features": 16,
        "epochs": 20,
        "lr": 1e-3,
        "lr_step": 10,
        "patience": 3,
        "objective": "poisson",
        "observed_weight": 1.0,
        "n_neighbors": None,
        "output": "posterior",
    },
    # the paper's settings: F = 64, 100 epochs, lr halved every 40 epochs, its masking
    # scheme, measured non-zeros kept, each cell from its own GenoMap only
    "paper": {
        "n_features": 64,
        "epochs": 100,
        "lr": 1e-3,
        "lr_step": 40,
        "patience": None,
        "objective": "dropout",
        "observed_weight": 1.0,
        "n_neighbors": 0,
        "output": "observed",
    },
}


@dataclass
class TCERParams:
    """Hyper-parameters of a TCER model (recorded in ``uns['tcer']['params']`` and on save).

    See :func:`sctorch.tl.tcer_impute` for their meaning; the defaults are the ``"fast"``
    preset (:data:`PRESETS`). ``n_dfa`` is the number of DFA modules of ER-Net.
    ``n_neighbors=None`` and ``beta=None`` mean "choose by molecular cross-validation"
    (:mod:`sctorch.tcer._context`); the values chosen are on the fitted
    :class:`~sctorch.tcer.TCERModel` (``n_neighbors``, ``beta``). ``fft_weight`` applies to
    the ``"dropout"`` and ``"blind_spot"`` objectives (the Poisson loss has no FFT term).
    """

    n_features: int = 16
    n_dfa: int = 3
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    lr_step: int = 10
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    fft_weight: float = 0.1
    patience: int | None = 3
    validation_fraction: float = 0.1
    target_sum: float = 1e4
    observed_weight: float = 1.0
    objective: str = "poisson"
    n_neighbors: int | None = None
    output: str = "posterior"
    beta: float | None = None
    deformable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        lo, hi = (float(v) for v in self.mask_ratio)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(
                f"mask_ratio must satisfy 0 < low <= high < 1, got {self.mask_ratio!r}."
            )
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(
                f"validation_fraction must lie in [0, 0.5), got {self.validation_fraction}."
            )
        if self.objective not in ("poisson", "blind_spot", "dropout"):
            raise ValueError(
                f"objective must be 'poisson', 'blind_spot' or 'dropout', got {self.objective!r}."
            )
        if self.output not in ("posterior", "observed"):
            raise ValueError(f"output must be 'posterior' or 'observed', got {self.output!r}.")
        if self.n_neighbors is not None and (
            isinstance(self.n_neighbors, bool)
            or int(self.n_neighbors) != self.n_neighbors
            or self.n_neighbors < 0
        ):
            raise ValueError(
                f"n_neighbors must be None (chosen by molecular cross-validation)"
                f" or an integer >= 0, got {self.n_neighbors!r}."
            )
        if self.beta is not None and not (np.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(
                f"beta must be None (chosen by molecular cross-validation) or a "
                f"finite number >= 0, got {self.beta!r}."
            )
        if not 0.0 <= self.observed_weight <= 1.0:
            raise ValueError(f"observed_weight must lie in [0, 1], got {self.observed_weight!r}.")
        if min(self.epochs, self.batch_size, self.n_features, self.n_dfa, self.lr_step) < 1:
            raise ValueError(
                f"epochs, batch_size, n_features, n_dfa and lr_step must be >= 1; "
                f"got {self.epochs}, {self.batch_size}, {self.n_features}, "
                f"{self.n_dfa}, {self.lr_step}."
            )
        check_positive(lr=self.lr)
