"""TCER settings: :class:`TCERConfig` and its presets (:func:`sctorch.tl.tcer_impute`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._config import MethodConfig
from .._utils import check_positive

#: the training objectives: name -> (blind-spot masks of all gene pixels, squared error,
#: rate parameterisation); the one place that says what each objective does
OBJECTIVES: dict[str, dict[str, bool]] = {
    # "poisson" (rate parameterisation): ER-Net predicts a rate as a log-ratio to its context
    "poisson": {"blind_spot": True, "squared": False, "poisson": True, "split": False},
    # the same rate, scored by the squared error of its square root: minimised by the
    # variance-stabilised mean (E√r)², the scale of space="sqrt"
    "sqrt": {"blind_spot": True, "squared": True, "poisson": True, "split": False},
    "blind_spot": {"blind_spot": True, "squared": True, "poisson": False, "split": False},
    "dropout": {"blind_spot": False, "squared": False, "poisson": False, "split": False},
    # noise2noise at the molecule level: each cell's counts are split binomially, ER-Net
    # sees one part's whole GenoMap (and the context) and predicts the other part's rates
    # (Poisson loss, every gene pixel); no pixel is hidden, at inference or in training
    "noise2noise": {"blind_spot": False, "squared": False, "poisson": True, "split": True},
}

#: range of the fraction of a cell's molecules ER-Net sees with ``objective="noise2noise"``
#: (drawn per cell and batch; the rest are the target): the network learns to denoise at
#: depths from half the cell's to near its full depth, where it is applied
SPLIT_FRACTION = (0.5, 0.9)

#: the prior rules of the posterior output (:attr:`TCERConfig.prior`)
PRIORS = ("auto", "network", "context")
#: how the posterior's prior weight is shared between genes (:attr:`TCERConfig.shrinkage`)
SHRINKAGES = ("gene", "global")


def check_shrinkage(shrinkage: str, criterion: str, beta) -> None:
    """Raise ``ValueError`` for an unknown or unusable ``shrinkage``.

    Unusable: a per-gene choice of β (``"gene"`` with ``beta=None``) by a criterion other
    than ``"poisson"`` (:func:`sctorch.tcer.choose_gene_beta` scores the Poisson loss).
    """
    if shrinkage not in SHRINKAGES:
        raise ValueError(f"shrinkage must be one of {SHRINKAGES}, got {shrinkage!r}.")
    if shrinkage == "gene" and beta is None and criterion != "poisson":
        raise ValueError(
            "shrinkage='gene' chooses each gene's beta by its held-out Poisson loss and "
            f"needs criterion='poisson', got {criterion!r}; use shrinkage='global'."
        )


@dataclass
class TCERConfig(MethodConfig):
    """Settings of TCER (recorded in ``uns['tcer']['params']`` and in saved models).

    The field defaults are the ``"default"`` preset; ``TCERConfig.PRESETS`` holds the named
    instances ``"default"`` and ``"paper"`` (``TCERConfig.preset("paper")``). Give them to
    :func:`sctorch.tl.tcer_impute` as ``preset=``, ``config=`` or one by one as keywords.

    Attributes
    ----------
    n_features
        ER-Net width ``F`` (the paper: 64).
    n_dfa
        Number of DFA modules of ER-Net (the paper: 3).
    epochs
        Most training epochs (the paper: 100). The default's 3 (of at most
        ``max_cells_per_epoch`` cells each) is a short fixed budget: in every ablation the
        network added little or nothing over its own starting point, the neighbour mean
        (``benchmarks/results/tcer.md``, ``tcer_denoising.md``), so it gets no more of the
        run time than it earns, and ``prior="auto"`` drops it when held-out molecules
        say it does not pay.
    batch_size
        GenoMaps per training batch (the paper: 64).
    max_cells_per_epoch
        Training cells drawn (without replacement, anew each epoch) per epoch, and four
        times the most validation cells scored per epoch: a bounded budget, so training
        time does not grow with the number of cells (``None``: all cells, as the paper).
        Every cell is still imputed.
    lr, lr_step
        Adam learning rate (β = 0.9, 0.999) and the epoch interval at which it is halved
        (the paper: 1e-3, halved every 40 epochs).
    mask_ratio
        ``(r_low, r_high)``: range of the per-image fraction of pixels hidden in training.
    fft_weight
        λ, the weight of the frequency-domain L1 term (objectives ``"dropout"`` and
        ``"blind_spot"``; the Poisson loss has none).
    patience
        Epochs without validation improvement before stopping (``None``: never stop early).
    validation_fraction
        Fraction of cells held out (with fixed masks) for the validation loss; 0 trains on
        all cells and keeps the last weights.
    target_sum
        Library size of the log-normalisation ``log1p(counts / library × target_sum)``.
    observed_weight
        Weight ``w`` of an observed non-zero value against the prediction with
        ``output="observed"`` (0–1).
    objective
        ``"poisson"``, ``"sqrt"``, ``"blind_spot"`` or ``"dropout"`` (the paper's); see
        :func:`sctorch.tl.tcer_impute`. ``"sqrt"``: the Poisson objective's rate scored by
        the squared error of its square root, minimised by the variance-stabilised mean
        ``(E√r)²`` that ``space="sqrt"`` averages to. ``"noise2noise"``: no pixel is
        hidden; each cell's counts are split binomially (a fraction drawn from
        :data:`SPLIT_FRACTION` to the input), and ER-Net predicts the other part's rates
        from the input part's whole GenoMap and the context, by their Poisson loss on every
        gene pixel (molecular noise2noise; not in the paper). At inference it sees the
        cell's full counts.
    n_neighbors
        Cells in the cross-cell context: ``None`` chooses it by molecular
        cross-validation (:mod:`sctorch.tcer._mcv`), 0 switches the context off (one
        input channel, as the paper).
    output
        ``"posterior"`` or ``"observed"`` (the paper's).
    beta
        Prior weight β of the posterior output, in units of library size / 10⁴, the same
        for every gene (``None``: chosen by molecular cross-validation on the held-out
        cells, per ``shrinkage``).
    shrinkage
        With ``beta=None``: ``"gene"`` (default) chooses one β per gene, each by its own
        held-out Poisson loss pulled towards the curve of the genes of its expression
        level (:func:`sctorch.tcer.choose_gene_beta`; needs ``criterion="poisson"``);
        ``"global"`` one β for all genes (sctorch's earlier default). A gene whose
        expression varies little between neighbouring cells is shrunk more. SAVER also
        fits its prior per gene; the paper has no posterior. Per-gene β raised both
        openproblems scores on every data set of ``benchmarks/results/tcer_denoising.md``.
    space
        The scale on which the cross-cell context is averaged and the posterior output is
        taken: ``"sqrt"`` (default; the variance-stabilising square root of Poisson
        counts, as MAGIC's "sqrt" normalisation: a gene detected in few neighbours is
        filled with much less than its plain mean) or ``"linear"`` (SAVER's posterior on
        rates, sctorch's earlier default). Measured in
        ``benchmarks/results/tcer_denoising.md``.
    criterion
        The molecular cross-validation criterion that chooses ``n_neighbors`` and ``beta``:
        ``"poisson"`` (the likelihood of held-out molecules; MCV's own) or ``"pearson"``
        (mean gene-wise correlation, sctorch's earlier criterion, which at full depth
        keeps the observed data: ``benchmarks/results/tcer_denoising.md``).
    prior
        The prior mean of the posterior output (``output="posterior"`` with the cross-cell
        context): ``"auto"`` (default) uses ER-Net's prediction only if, on the held-out
        cells, its posterior scores higher by molecular cross-validation (``criterion``)
        than the posterior on the neighbour mean the network starts from, and otherwise
        the neighbour mean (then no cell is passed through the network at inference);
        ``"network"`` always ER-Net's; ``"context"`` the neighbour mean, with no network
        trained at all (the "no ER-Net" ablation, in seconds). The choice and both
        scores are in ``uns[key]["selection"]["prior"]``.
    deformable
        ``False`` replaces the deformable convolutions of the DFA modules by plain ones
        (an ablation).
    extra
        Free-form record kept with the model (not used by training).

    The values chosen for ``n_neighbors=None`` and ``beta=None`` are on the fitted
    :class:`~sctorch.tcer.TCERModel` (``n_neighbors``, ``beta``).
    """

    PRESETS: ClassVar[dict[str, TCERConfig]] = {}
    PRESET_ALIASES: ClassVar[dict[str, str]] = {"fast": "default"}

    n_features: int = 16
    n_dfa: int = 3
    epochs: int = 3
    batch_size: int = 64
    max_cells_per_epoch: int | None = 1024
    lr: float = 1e-3
    lr_step: int = 10
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    fft_weight: float = 0.1
    patience: int | None = 3
    validation_fraction: float = 0.1
    target_sum: float = 1e4
    observed_weight: float = 1.0
    objective: str = "sqrt"
    n_neighbors: int | None = None
    output: str = "posterior"
    beta: float | None = None
    shrinkage: str = "gene"
    space: str = "sqrt"
    criterion: str = "poisson"
    prior: str = "auto"
    deformable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        try:  # one representation of the ratio range (validated in validate())
            self.mask_ratio = tuple(float(v) for v in self.mask_ratio)
        except (TypeError, ValueError):
            pass

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        if len(self.mask_ratio) != 2:
            raise ValueError(f"mask_ratio must be (low, high), got {self.mask_ratio!r}.")
        lo, hi = (float(v) for v in self.mask_ratio)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(
                f"mask_ratio must satisfy 0 < low <= high < 1, got {self.mask_ratio!r}."
            )
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(
                f"validation_fraction must lie in [0, 0.5), got {self.validation_fraction}."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}."
            )
        if self.space not in ("linear", "sqrt"):
            raise ValueError(f"space must be 'linear' or 'sqrt', got {self.space!r}.")
        if self.criterion not in ("poisson", "pearson"):
            raise ValueError(f"criterion must be 'poisson' or 'pearson', got {self.criterion!r}.")
        check_shrinkage(self.shrinkage, self.criterion, self.beta)
        if self.output not in ("posterior", "observed"):
            raise ValueError(f"output must be 'posterior' or 'observed', got {self.output!r}.")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}.")
        if self.prior == "context" and (self.output != "posterior" or self.n_neighbors == 0):
            raise ValueError(
                "prior='context' (the neighbour mean without ER-Net) needs "
                "output='posterior' and the cross-cell context (n_neighbors None or > 0); "
                f"got output={self.output!r}, n_neighbors={self.n_neighbors!r}."
            )
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
        cap = self.max_cells_per_epoch
        if cap is not None and (isinstance(cap, bool) or int(cap) != cap or cap < 4):
            raise ValueError(
                f"max_cells_per_epoch must be None (all cells) or an integer >= 4, got {cap!r}."
            )

    @property
    def blind_spot(self) -> bool:
        """Whether training hides any gene pixel, zeros included (not only the non-zeros)."""
        return OBJECTIVES[self.objective]["blind_spot"]

    @property
    def poisson(self) -> bool:
        """Whether ER-Net predicts a Poisson rate (a log-ratio to the context)."""
        return OBJECTIVES[self.objective]["poisson"]

    @property
    def split(self) -> bool:
        """Whether training splits molecules (``"noise2noise"``) instead of hiding pixels."""
        return OBJECTIVES[self.objective]["split"]

    @property
    def squared(self) -> bool:
        """Whether the spatial error term is squared (``"blind_spot"``) rather than absolute."""
        return OBJECTIVES[self.objective]["squared"]


TCERConfig.PRESETS = {
    # sctorch's default: cross-cell context channel, Poisson blind-spot objective, count-scale
    # posterior output; k and beta by molecular cross-validation, early stopping on a
    # held-out masked loss; narrow network for a laptop CPU, trained on a short budget
    # and used only where held-out molecules say it beats the neighbour mean
    "default": TCERConfig(),
    # the paper's settings: F = 64, 100 epochs, lr halved every 40 epochs, its masking
    # scheme, measured non-zeros kept, each cell from its own GenoMap only
    "paper": TCERConfig(
        max_cells_per_epoch=None,
        space="linear",
        n_features=64,
        epochs=100,
        lr_step=40,
        patience=None,
        objective="dropout",
        n_neighbors=0,
        output="observed",
        prior="network",
    ),
}
