"""stImpute's hyper-parameters: the default configuration and the authors' preset."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class StImputeConfig:
    """Hyper-parameters of stImpute; see :func:`sctorch.tl.stimpute` for their meaning.

    ``method="transfer"`` (default): k-NN mean + ridge transfer in a latent space
    (``latent``), ``n_neighbors=None`` / ``ridge_weight=None`` chosen by inner gene CV
    (:mod:`._transfer`). ``method="gnn"``: the paper's GNN (eqs. 7–12); ``n_neighbors=None``
    is 50 and ``alpha=None`` 0.7 below 10,000 spatial cells, else 0.5. ``preset="paper"``
    sets the authors' choices (:func:`paper_config`). Fixed by the paper / authors' code:
    ``latent_dim`` (AE width 100), ``gnn_dim`` (50), ``gnn_layers`` (2),
    ``cosine_weight`` (2, eq. 10), ``reliability_epochs`` (200).

    Raises
    ------
    ValueError
        If a setting is out of range.
    """

    n_neighbors: int | None = None
    alpha: float | None = None
    epochs: int = 10
    ae_epochs: int = 30
    n_rounds: int = 2
    batch_size: int = 512
    hidden_dim: int = 64
    graph_neighbors: int = 10
    reliability_folds: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_cells_per_epoch: int | None = 10_000
    case_sensitive: bool = True
    method: str = "transfer"
    latent: str = "pca"
    ridge_weight: float | None = None
    n_pcs: int = 30
    preset: str = "default"
    latent_dim: int = 100
    gnn_dim: int = 50
    gnn_layers: int = 2
    cosine_weight: float = 2.0
    reliability_epochs: int = 200

    def __post_init__(self):
        cap = self.max_cells_per_epoch
        if cap is not None and (not isinstance(cap, int | np.integer) or cap < 1):
            raise ValueError(
                f"max_cells_per_epoch must be a positive integer or None, got {cap!r}."
            )
        for name in (
            "epochs",
            "ae_epochs",
            "n_rounds",
            "batch_size",
            "hidden_dim",
            "latent_dim",
            "gnn_dim",
            "gnn_layers",
            "reliability_epochs",
            "n_pcs",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        gn = self.graph_neighbors
        if not isinstance(gn, int | np.integer) or gn < 0:
            raise ValueError(
                f"graph_neighbors must be 0 (no graph) or a positive integer, got {gn!r}."
            )
        rf = self.reliability_folds
        if not isinstance(rf, int | np.integer) or rf == 1 or rf < 0:
            raise ValueError(f"reliability_folds must be 0 (off) or >= 2, got {rf!r}.")
        k = self.n_neighbors
        if k is not None and (not isinstance(k, int | np.integer) or k < 1):
            raise ValueError(f"n_neighbors must be a positive integer or None, got {k!r}.")
        if self.alpha is not None and not (0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha!r}.")
        w = self.ridge_weight
        if w is not None and not (0.0 <= float(w) <= 1.0):
            raise ValueError(f"ridge_weight must lie in [0, 1] or be None, got {w!r}.")
        for name, allowed in (
            ("method", ("transfer", "gnn")),
            ("latent", ("pca", "autoencoder")),
            ("preset", ("default", "paper")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.method == "transfer" and self.alpha is not None:
            raise ValueError(
                "alpha is the GNN's weight (method='gnn'); the default transfer "
                "blends with ridge_weight."
            )
        if self.method == "gnn" and self.ridge_weight is not None:
            raise ValueError(
                "ridge_weight applies to method='transfer'; the GNN blends with alpha."
            )
        if self.preset == "paper" and self.method != "gnn":
            raise ValueError("preset='paper' is the paper's GNN; it needs method='gnn'.")

    def resolved_alpha(self, n_sp: int) -> float:
        """``alpha``, or its default for ``n_sp`` spatial cells."""
        if self.alpha is not None:
            return float(self.alpha)
        return 0.7 if n_sp < 10_000 else 0.5


def paper_config(n_sp: int, n_genes: int, **hyper) -> StImputeConfig:
    """The authors' settings (github.com/cquzys/stImpute ``model.py``), ``preset="paper"``.

    GNN (``method="gnn"``), dense cosine-*distance* gene graph with identity subtraction
    and row normalisation, reliability MLP on the in-sample cosine of the training genes,
    ``alpha·GNN + (1 − alpha)·k-NN mean`` with the k-NN mean rescaled per gene to the
    network's maximum; below 10,000 cells and 500 genes ``k = 50``, ``alpha = 0.7``, MLP
    width 256, else ``k = 20``, ``alpha = 0.5``, width 32; Adam lr 1e-2, weight decay 1e-2.
    Explicit keywords in ``hyper`` win.
    """
    small = n_sp < 10_000 and n_genes < 500
    base = dict(
        method="gnn",
        preset="paper",
        n_neighbors=50 if small else 20,
        alpha=0.7 if small else 0.5,
        hidden_dim=256 if small else 32,
        lr=1e-2,
        weight_decay=1e-2,
    )
    base.update({k: v for k, v in hyper.items() if v is not None})
    return StImputeConfig(**base)


def make_config(preset: str | None, n_sp: int, n_genes: int, **hyper) -> StImputeConfig:
    """The configuration of a public call: ``preset`` plus the keywords that are not None.

    ``preset`` is ``None``/``"default"`` or ``"paper"``; a keyword left at ``None`` keeps
    the preset's value.

    Raises
    ------
    ValueError
        If ``preset`` is unknown or a setting is out of range.
    """
    if preset not in (None, "default", "paper"):
        raise ValueError(f"preset must be None, 'default' or 'paper', got {preset!r}.")
    if preset == "paper":
        return paper_config(n_sp, n_genes, **hyper)
    return StImputeConfig(**{k: v for k, v in hyper.items() if v is not None})
