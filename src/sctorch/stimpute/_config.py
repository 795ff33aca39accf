"""stImpute's settings: one config dataclass, its presets ``"default"`` and ``"paper"``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from .._config import MethodConfig

#: the authors' size rule (``preset="paper"``): "small" below both bounds
PAPER_SMALL_CELLS = 10_000
PAPER_SMALL_GENES = 500


@dataclasses.dataclass
class StImputeConfig(MethodConfig):
    """Settings of stImpute (Zeng et al. 2024, Commun Biol 7:1271, §Methods).

    A preset is a named instance (``StImputeConfig.PRESETS``): ``"default"`` (the
    measured default, :func:`sctorch.tl.stimpute`) and ``"paper"`` (the authors' code,
    github.com/cquzys/stImpute ``model.py``: ``method="gnn"``, ``design="paper"``, Adam lr
    1e-2 and weight decay 1e-2, and ``n_neighbors`` / ``alpha`` / ``hidden_dim`` left to
    their size rule). Give one to :func:`sctorch.tl.stimpute` as ``preset=`` or
    ``config=``; :meth:`resolved` fills the size-dependent ``None`` fields at fit time.

    Attributes
    ----------
    method
        ``"transfer"`` (default: k-NN mean + ridge transfer in a latent space, inner gene
        cross-validation; :mod:`sctorch.stimpute._transfer`) or ``"gnn"`` (the paper's
        autoencoder + gene GNN, eqs. 1–12).
    latent
        Latent space of the transfer: ``"pca"`` or ``"autoencoder"`` (eqs. 1–3). Unused by
        ``method="gnn"`` (which always uses the autoencoder).
    n_neighbors
        Reference neighbours ``k`` per spatial cell. ``None``: chosen by the inner gene CV
        from 10, 20, 50, 100 (transfer; 50 when ``reliability_folds=0``); 50 (GNN,
        ``design="default"``); the authors' size rule, 50 below 10,000 spatial cells and
        500 spatial genes, else 20 (``design="paper"``).
    ridge_weight
        Weight ``w`` of the ridge term of the transfer, in [0, 1]; ``None``: chosen by the
        inner CV from 0, 0.25, 0.5, 0.75, 1 (0.5 when ``reliability_folds=0``). Must be
        ``None`` with ``method="gnn"``.
    n_pcs
        Principal components of ``latent="pca"``.
    reliability_folds
        Folds of the inner gene cross-validation (selection and reliability); ``0`` skips
        it (reliability NaN); otherwise at least 2.
    alpha
        GNN weight of eq. 12 in [0, 1] (``method="gnn"``; ``0``: the k-NN mean only); must
        be ``None`` with ``method="transfer"``. ``None``: 0.7 below 10,000 spatial cells,
        else 0.5 (``design="default"``); 0.7 below 10,000 spatial cells and 500 spatial
        genes, else 0.5 (``design="paper"``).
    epochs
        Passes per GNN fit and per autoencoder refit (eq. 11; ``method="gnn"``).
    ae_epochs
        Passes of the initial autoencoder training (``method="gnn"`` or
        ``latent="autoencoder"``).
    n_rounds
        Rounds of the alternating AE / GNN training (eq. 11; ``method="gnn"``).
    batch_size
        Spatial cells per mini-batch of the networks (an upper bound; unused by the PCA
        transfer).
    hidden_dim
        Width of the GNN's MLP head (eq. 9). ``None``: the authors' size rule, 256 below
        10,000 spatial cells and 500 spatial genes, else 32 (``design="paper"``); 64
        (``design="default"``).
    graph_neighbors
        Neighbours per gene in the GNN's gene graph (eqs. 4–6); ``0``: no graph (an
        ablation). Unused by ``design="paper"`` (dense distance graph).
    lr, weight_decay
        Adam settings of the GNN (``method="gnn"``).
    max_cells_per_epoch
        Cells visited per training epoch of the networks: all cells, shuffled, when there
        are fewer, else a fresh random subset of this size each epoch; ``None`` always
        uses every cell. Prediction always covers every cell.
    case_sensitive
        Match gene names exactly (``True``) or ignoring case; ``var_names`` are never
        renamed.
    design
        ``"default"`` or ``"paper"``: the authors' code's choices inside the GNN (dense
        cosine-distance gene graph with identity subtraction and row normalisation,
        sum aggregation, weighted k-NN features, the k-NN mean rescaled to the network's
        maximum before the blend, eq. 13's reliability MLP on the in-sample cosine).
        ``"paper"`` needs ``method="gnn"``. (Model files saved before this field was
        renamed call it ``preset``; they load unchanged.)
    latent_dim, gnn_dim, gnn_layers
        Autoencoder width (100), GraphSAGE width (50) and depth (2): fixed by the paper.
    cosine_weight
        Weight of the cell and gene cosine losses in eq. 10 (2 in the paper).
    reliability_epochs
        Full-batch epochs of eq. 13's reliability MLP (``design="paper"``; 200 as the
        authors' code).
    """

    PRESETS: ClassVar[dict[str, StImputeConfig]] = {}

    n_neighbors: int | None = None
    alpha: float | None = None
    epochs: int = 10
    ae_epochs: int = 30
    n_rounds: int = 2
    batch_size: int = 512
    hidden_dim: int | None = 64
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
    design: str = "default"
    latent_dim: int = 100
    gnn_dim: int = 50
    gnn_layers: int = 2
    cosine_weight: float = 2.0
    reliability_epochs: int = 200

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting.

        Raises
        ------
        ValueError
            If a setting is out of range or the settings contradict each other
            (``alpha`` with the transfer, ``ridge_weight`` with the GNN,
            ``design="paper"`` without the GNN).
        """
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
            "latent_dim",
            "gnn_dim",
            "gnn_layers",
            "reliability_epochs",
            "n_pcs",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        h = self.hidden_dim
        if h is not None and (not isinstance(h, int | np.integer) or h < 1):
            raise ValueError(f"hidden_dim must be a positive integer or None, got {h!r}.")
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
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.number) or v < 0:
                raise ValueError(f"{name} must be a non-negative number, got {v!r}.")
        for name, allowed in (
            ("method", ("transfer", "gnn")),
            ("latent", ("pca", "autoencoder")),
            ("design", ("default", "paper")),
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
        if self.design == "paper" and self.method != "gnn":
            raise ValueError(
                "design='paper' (preset='paper') is the paper's GNN; it needs method='gnn'."
            )

    def resolved(self, n_sp: int, n_genes: int) -> StImputeConfig:
        """A copy with the size-dependent ``None`` settings filled in for one data set.

        Parameters
        ----------
        n_sp
            Spatial cells (``adata_sp.n_obs``).
        n_genes
            Genes of the spatial data (``adata_sp.n_vars``), for the authors' size rule.

        Returns
        -------
        A validated :class:`StImputeConfig`. ``design="paper"``: ``n_neighbors``,
        ``alpha`` and ``hidden_dim`` left at ``None`` become 50 / 0.7 / 256 below 10,000
        cells and 500 genes, else 20 / 0.5 / 32 (the authors' ``model.py``).
        ``design="default"``: ``hidden_dim=None`` becomes 64 and, for the GNN,
        ``alpha=None`` 0.7 below 10,000 cells, else 0.5; ``n_neighbors=None`` stays (chosen
        at fit: by the inner CV, or 50 for the GNN).
        """
        changes: dict = {}
        if self.design == "paper":
            small = n_sp < PAPER_SMALL_CELLS and n_genes < PAPER_SMALL_GENES
            for name, (a, b) in (
                ("n_neighbors", (50, 20)),
                ("alpha", (0.7, 0.5)),
                ("hidden_dim", (256, 32)),
            ):
                if getattr(self, name) is None:
                    changes[name] = a if small else b
        else:
            if self.hidden_dim is None:
                changes["hidden_dim"] = 64
            if self.method == "gnn" and self.alpha is None:
                changes["alpha"] = 0.7 if n_sp < PAPER_SMALL_CELLS else 0.5
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def unused(self) -> tuple[tuple[str, ...], str]:
        """The settings this configuration does not use, and why (for ``warn_unused``)."""
        gnn_only = ("epochs", "n_rounds", "hidden_dim", "graph_neighbors", "lr", "weight_decay")
        fixed_gnn = ("gnn_dim", "gnn_layers", "cosine_weight", "reliability_epochs")
        if self.method == "transfer":
            if self.latent == "pca":
                names = (
                    *gnn_only,
                    *fixed_gnn,
                    "ae_epochs",
                    "batch_size",
                    "max_cells_per_epoch",
                    "latent_dim",
                )
                return names, "method='transfer' with latent='pca' trains no network"
            return (
                (*gnn_only, *fixed_gnn, "n_pcs"),
                "method='transfer' with latent='autoencoder' trains only the autoencoder",
            )
        if self.design == "paper":
            return (
                ("latent", "n_pcs", "graph_neighbors"),
                "design='paper' uses the autoencoder space and a dense distance graph",
            )
        return (
            ("latent", "n_pcs", "reliability_epochs"),
            "method='gnn' uses the autoencoder space (and the held-out reliability)",
        )

    # ------------------------------------------------------------------ saved models
    @classmethod
    def from_saved(cls, d: dict) -> dict:
        """A saved model's config dict in today's field names (``preset`` → ``design``)."""
        d = dict(d)
        if "preset" in d and "design" not in d:
            d["design"] = d.pop("preset")
        return d


StImputeConfig.PRESETS = {
    "default": StImputeConfig(),
    "paper": StImputeConfig(
        method="gnn",
        design="paper",
        n_neighbors=None,
        alpha=None,
        hidden_dim=None,
        lr=1e-2,
        weight_decay=1e-2,
    ),
}
