"""scRobust settings: :class:`ScRobustConfig` (the method), its "default" and "paper" presets.

``"paper"`` is Park & Lee 2024 and the authors' code (github DMCB-GIST/scRobust): token
values ``log1p(x / library × 10⁴)``, both views drawn from the same cell at its own depth,
the checkpoint with the lowest held-out contrastive loss, a two-layer classifier on the CLS
output with fine-tuning epochs picked by validation macro-F1. ``"default"`` departs where
the benchmarks (``benchmarks/results/scrobust.md``, ``scrobust_depth.md``) showed the
paper's design losing to PCA or a linear model: views binomially thinned to independent
depths, 50 genes per view, a narrower network trained at a higher rate, the last epoch,
and a wide-and-deep classifier. Within-cell rank values and k-NN-agreement model selection
were measured and not kept (they are options).

:class:`ScRobustNetworkConfig` is the network's part (what a saved model file holds to
rebuild the network); :meth:`ScRobustConfig.network_config` derives it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from .._config import MethodConfig
from .._utils import check_positive

__all__ = ["ScRobustConfig", "ScRobustNetworkConfig", "budget_epochs"]

#: pre-training length when ``epochs=None``, in cells encoded (each step encodes
#: ``batch_size`` cells): ``epochs = ceil(PRETRAIN_CELLS / n_obs)``, at most
#: ``MAX_PRETRAIN_EPOCHS``; about 5,000 steps of 64 cells whatever the number of cells
#: (``benchmarks/results/scrobust_steps.md``: 10 epochs of 2,800 PBMCs clustered below
#: PCA, 115 above it; on Zeisel 2015 both stayed below PCA).
PRETRAIN_CELLS = 320_000
MAX_PRETRAIN_EPOCHS = 200

#: the fields of :class:`ScRobustConfig` that only fine-tuning (annotation) reads
FINETUNE_FIELDS = (
    "head",
    "n_wide_genes",
    "wide_c",
    "validation_fraction",
    "finetune_patience",
    "n_tokens",
    "finetune_epochs",
    "finetune_batch_size",
    "finetune_lr",
    "class_weight",
)
#: the fields of :class:`ScRobustConfig` that only pre-training reads
PRETRAIN_FIELDS = (
    "token_values",
    "view_thinning",
    "select",
    "patience",
    "n_genes_per_view",
    "d_model",
    "n_layers",
    "n_heads",
    "dim_feedforward",
    "dropout",
    "head_dropout",
    "temperature",
    "epochs",
    "batch_size",
    "lr",
)


def budget_epochs(n_obs: int) -> int:
    """The pre-training budget rule: ``ceil(PRETRAIN_CELLS / n_obs)`` epochs, 1 to 200."""
    return int(min(MAX_PRETRAIN_EPOCHS, max(1, -(-PRETRAIN_CELLS // max(int(n_obs), 1)))))


@dataclasses.dataclass
class ScRobustNetworkConfig:
    """Hyper-parameters of a scRobust network (everything needed to rebuild it).

    This is :attr:`ScRobustModel.config` and what a saved model file holds; the method's
    settings are :class:`ScRobustConfig`. ``n_layers``, ``dim_feedforward`` and
    ``n_genes_per_view`` may be ``None`` before pre-training (1 layer, or 2 for ≥ 20,000
    cells; ``4 × d_model``; 10 % of the mean number of detected genes, at least 8);
    :meth:`ScRobustModel.fit` fills them in. ``input_scale`` is the scale of the
    pre-training data, ``n_classes`` the outputs of the fine-tuned classifier (0: none).
    ``token_values`` (``"log1p"``, the paper's, or ``"rank"``), ``view_thinning``
    (``None``, the paper's, or the range of per-cell binomial thinning rates of
    pre-training views) and ``head``/``n_wide`` (the classifier layout, see
    :meth:`~sctorch.scrobust._module.ScRobustNetwork.set_classifier`) default to the
    paper's design, so models saved before these fields existed load unchanged. Fields can
    also be read as ``config["d_model"]``.
    """

    vocab_size: int = 0
    d_model: int = 512
    n_heads: int = 8
    n_layers: int | None = None
    dim_feedforward: int | None = None
    dropout: float = 0.1
    head_dropout: float = 0.3
    temperature: float = 0.07
    n_genes_per_view: int | None = None
    input_scale: str = "counts"
    n_classes: int = 0
    token_values: str = "log1p"
    view_thinning: tuple[float, float] | None = None
    head: str = "deep"
    n_wide: int = 0

    def __getitem__(self, key: str):
        """Dict-style read access (``config["d_model"]``), as the former dict config."""
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


@dataclasses.dataclass
class ScRobustConfig(MethodConfig):
    """Settings of scRobust: pre-training, network and annotation (fine-tuning).

    The field defaults are the ``"default"`` preset; ``ScRobustConfig.PRESETS`` holds the
    named instances ``"default"`` and ``"paper"`` (``ScRobustConfig.preset("paper")``).
    Give them to the ``sctorch.tl.scrobust_*`` functions as ``preset=``, ``config=`` or one
    by one as keywords. Names of pre-training settings are plain (``epochs``, ``lr``,
    ``batch_size``, ``patience``); the fine-tuning settings whose names would clash carry
    the prefix ``finetune_`` (:func:`sctorch.tl.scrobust_annotate` maps its keywords
    ``epochs``, ``lr``, ``batch_size`` and ``patience`` to them).

    Attributes
    ----------
    input_scale
        Scale of the input: ``"counts"`` (raw integer counts, log-normalised to 10⁴ per cell
        then log1p, as the authors' code), ``"log1p"`` (log-normalised values; integer
        counts and values above 30 are refused) or ``"auto"`` (counts when every value is
        a non-negative integer); see :func:`sctorch._utils.resolve_input_scale`.
    min_shared_genes
        Fewest genes of the data that must be in the model's vocabulary.
    token_values
        ``"log1p"`` (the paper's) or ``"rank"`` (within-cell ranks) token values.
    view_thinning
        ``(low, high)``: each pre-training view is binomially thinned at its own per-cell
        rate drawn from this range (counts input); ``None``: off (the paper's views share
        the cell's depth).
    select
        Pre-training epoch selection: ``"contrastive"`` (lowest NT-Xent of 10 % held-out
        cells, the authors' rule), ``"knn"`` (agreement of the 15-NN graphs of two thinned
        copies of the cells; counts input) or ``None``: off, the last epoch is kept.
    patience
        Pre-training epochs without improvement of the selection score before stopping
        (``None``: never stop early).
    n_genes_per_view
        Genes per pre-training view (``None``: 10 % of the mean number of detected genes
        per cell, at least 8, the paper's).
    d_model, n_heads, n_layers, dim_feedforward, dropout
        Encoder width, attention heads, layers (``None``: 1, or 2 when ``n_obs ≥
        20,000``), feed-forward width (``None``: ``4 × d_model``) and dropout.
    head_dropout, temperature
        Dropout in the two-layer heads; NT-Xent temperature τ.
    epochs
        Pre-training passes over the cells; ``None``: the pre-training budget rule,
        ``ceil(320,000 / n_obs)`` epochs, at most 200, i.e. ~5,000 steps of 64 cells (10
        epochs of 2,800 PBMCs clustered below PCA, 115 above:
        ``benchmarks/results/scrobust_steps.md``).
    batch_size, lr
        Pre-training cells per step (≥ 2: NT-Xent needs a negative) and Adam learning rate.
    head
        Classifier layout: ``"wide_and_deep"``, ``"deep"`` (the paper's) or ``"wide"`` (see
        :func:`sctorch.tl.scrobust_annotate`).
    n_wide_genes
        HVGs of the reference read by the wide (linear) path.
    wide_c
        Inverse L2 strength (scikit-learn's ``C``) of the wide path's logistic regression;
        ``None`` (default) chooses it from ``(0.03, 0.1, 0.3, 1, 3)`` by the out-of-fold
        macro-F1 on the reference's training part (labels of the reference only; on ifnb
        it chose 0.03–1 and lifted macro-F1 at 0 % and 50 % added dropout:
        ``benchmarks/results/scrobust_peers_annotation.md``); ``1.0`` is scikit-learn's
        default, used before.
    validation_fraction
        Stratified part of the reference held out to choose the fine-tuning epoch by its
        macro-F1 (0 keeps the last epoch).
    finetune_patience
        Fine-tuning epochs without improvement before stopping (``None``: never early).
    n_tokens
        Highly unique genes (tokens) per cell in fine-tuning and classification (800 as the
        paper).
    finetune_epochs, finetune_batch_size, finetune_lr
        Fine-tuning passes (at most), cells per step (also per forward pass when
        classifying) and Adam learning rate.
    class_weight
        Weights of the classes in the cross-entropy: ``"balanced"`` weighs class ``c`` by
        ``n / (n_classes × n_c)``, as scikit-learn; a mapping ``{label: weight}`` (every
        reference label) or ``None`` (unweighted, the authors' plain cross-entropy).
    """

    PRESETS: ClassVar[dict[str, ScRobustConfig]] = {}

    # reading the data
    input_scale: str = "counts"
    min_shared_genes: int = 10
    # pre-training and the network
    token_values: str = "log1p"
    view_thinning: tuple[float, float] | None = (0.1, 1.0)
    select: str | None = None
    patience: int | None = None
    n_genes_per_view: int | None = 50
    d_model: int = 64
    n_heads: int = 8
    n_layers: int | None = None
    dim_feedforward: int | None = None
    dropout: float = 0.1
    head_dropout: float = 0.3
    temperature: float = 0.07
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    # fine-tuning (annotation)
    head: str = "wide_and_deep"
    n_wide_genes: int = 2000
    wide_c: float | None = None
    validation_fraction: float = 0.1
    finetune_patience: int | None = None
    n_tokens: int = 800
    finetune_epochs: int = 10
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    class_weight: str | Mapping[str, float] | None = "balanced"

    def __post_init__(self):
        if self.view_thinning is not None:
            try:  # one representation of the rate range (validated in validate())
                self.view_thinning = tuple(float(v) for v in self.view_thinning)
            except (TypeError, ValueError):
                pass

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        check_positive(
            d_model=self.d_model,
            n_heads=self.n_heads,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            temperature=self.temperature,
            n_genes_per_view=self.n_genes_per_view,
            n_layers=self.n_layers,
            dim_feedforward=self.dim_feedforward,
            patience=self.patience,
            n_tokens=self.n_tokens,
            finetune_epochs=self.finetune_epochs,
            finetune_batch_size=self.finetune_batch_size,
            finetune_lr=self.finetune_lr,
            n_wide_genes=self.n_wide_genes,
            finetune_patience=self.finetune_patience,
            wide_c=self.wide_c,
        )
        if self.input_scale not in ("counts", "log1p", "auto"):
            raise ValueError(
                f"input_scale must be 'counts', 'log1p' or 'auto', got {self.input_scale!r}."
            )
        if self.token_values not in ("rank", "log1p"):
            raise ValueError(f"token_values must be 'rank' or 'log1p', got {self.token_values!r}.")
        if self.select not in (None, "knn", "contrastive"):
            raise ValueError(
                f"select must be 'knn', 'contrastive' or None (off), got {self.select!r}."
            )
        thin = self.view_thinning
        if thin is not None:
            try:
                lo, hi = (float(x) for x in thin)
                ok = 0 < lo <= hi <= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(
                    "view_thinning must be (low, high) with 0 < low <= high <= 1, "
                    f"or None (off); got {thin!r}."
                )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}.")
        if self.head not in ("wide_and_deep", "deep", "wide"):
            raise ValueError(f"head must be 'wide_and_deep', 'deep' or 'wide', got {self.head!r}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}."
            )
        cw = self.class_weight
        if not (cw is None or isinstance(cw, str | Mapping)):
            raise ValueError(
                f"class_weight must be 'balanced', a mapping {{label: weight}} or None, got {cw!r}."
            )

    def pretrain_epochs(self, n_obs: int) -> int:
        """Pre-training epochs for ``n_obs`` cells: ``epochs``, or the budget rule if ``None``."""
        return budget_epochs(n_obs) if self.epochs is None else int(self.epochs)

    def network_config(self, vocab_size: int) -> ScRobustNetworkConfig:
        """The network part of these settings, for a vocabulary of ``vocab_size`` tokens."""
        opt = {
            k: (None if getattr(self, k) is None else int(getattr(self, k)))
            for k in ("n_layers", "dim_feedforward", "n_genes_per_view")
        }
        return ScRobustNetworkConfig(
            vocab_size=int(vocab_size),
            d_model=int(self.d_model),
            n_heads=int(self.n_heads),
            dropout=float(self.dropout),
            head_dropout=float(self.head_dropout),
            temperature=float(self.temperature),
            input_scale=self.input_scale,
            token_values=self.token_values,
            view_thinning=None
            if self.view_thinning is None
            else tuple(float(x) for x in self.view_thinning),
            **opt,
        )


ScRobustConfig.PRESETS = {
    "default": ScRobustConfig(),
    "paper": ScRobustConfig(
        view_thinning=None,
        select="contrastive",
        n_genes_per_view=None,
        d_model=512,
        lr=5e-5,
        epochs=10,
        head="deep",
        finetune_lr=5e-5,
        finetune_epochs=20,
    ),
}
